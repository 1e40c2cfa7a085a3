package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
)

// tailSize is how much of a failed command's output goes into its error.
const tailSize = 2000

// outputLog is an io.Writer for a subprocess's stdout and stderr: it logs
// each line and keeps the last tailSize bytes for error messages.
type outputLog struct {
	log *slog.Logger

	mu      sync.Mutex
	partial []byte
	tail    []byte
}

func newOutputLog(log *slog.Logger) *outputLog { return &outputLog{log: log} }

func (o *outputLog) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.tail = append(o.tail, p...)
	if len(o.tail) > 2*tailSize {
		o.tail = append(o.tail[:0], o.tail[len(o.tail)-tailSize:]...)
	}
	o.partial = append(o.partial, p...)
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		o.emit(o.partial[:i])
		o.partial = o.partial[i+1:]
	}
	return len(p), nil
}

// Flush logs an unterminated last line.
func (o *outputLog) Flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.partial) > 0 {
		o.emit(o.partial)
		o.partial = nil
	}
}

func (o *outputLog) emit(line []byte) {
	if s := strings.TrimRight(string(line), "\r"); s != "" {
		o.log.Info(s)
	}
}

// Tail returns the end of the output, trimmed.
func (o *outputLog) Tail() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := strings.TrimSpace(string(o.tail))
	if len(s) > tailSize {
		s = "…" + s[len(s)-tailSize:]
	}
	return s
}
