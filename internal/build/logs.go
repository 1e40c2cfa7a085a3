package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
)

// liveLog is an active build's log file. Followers wait on changed(), a
// channel closed and replaced at every write, and on done.
type liveLog struct {
	mu   sync.Mutex
	f    *os.File
	size int64 // bytes written: where the next write lands
	ch   chan struct{}
	done chan struct{}
	// err is the first failed write, reported by close: a build goes on
	// when its log cannot be written, but not without a trace.
	err error
}

func openLiveLog(path string) (*liveLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build log: %w", err)
	}
	return &liveLog{f: f, ch: make(chan struct{}), done: make(chan struct{})}, nil
}

// Write appends to the log; git and nix write their output here directly.
func (l *liveLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.f.Write(p)
	l.size += int64(n)
	if err != nil && l.err == nil {
		l.err = err
	}
	close(l.ch)
	l.ch = make(chan struct{})
	return n, err
}

// Line writes one log line, the way the spec's script echoes its progress.
// A failed write is kept for close to report.
func (l *liveLog) Line(format string, args ...any) {
	_, _ = fmt.Fprintf(l, format+"\n", args...)
}

// offset is the log's length so far: an attribute's part of the log is
// the bytes between its offsets before and after it is built.
func (l *liveLog) offset() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}

func (l *liveLog) changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ch
}

// close closes the file and reports the first write that failed, if any.
func (l *liveLog) close() error {
	l.mu.Lock()
	err := errors.Join(l.err, l.f.Close())
	close(l.ch)
	l.ch = make(chan struct{})
	l.mu.Unlock()
	close(l.done)
	if err != nil {
		return fmt.Errorf("write build log %s: %w", l.f.Name(), err)
	}
	return nil
}

// linkLatest points ${DATA_DIR}/logs/<repo>.log, the spec's log file, at
// the newest build's log, replacing the link atomically.
func linkLatest(link, target string) error {
	tmp := fmt.Sprintf("%s.%d.tmp", link, time.Now().UnixNano())
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("link newest log: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		return errors.Join(fmt.Errorf("link newest log: %w", err), os.Remove(tmp))
	}
	return nil
}

// appendNote appends a line to a finished build's log.
func appendNote(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = io.WriteString(f, line+"\n")
	return errors.Join(err, f.Close())
}

// TailLines returns the last n lines of the newest log of repo, reading
// backwards from the end so a large log is not read whole.
func (o *Orchestrator) TailLines(repo string, n int) ([]string, error) {
	return tailFile(filepath.Join(o.cfg.DataDir, "logs", repo+".log"), n)
}

func tailFile(path string, n int) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return []string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const chunk = 64 << 10
	end := st.Size()
	var buf []byte
	for end > 0 && bytes.Count(buf, []byte{'\n'}) <= n {
		start := max(0, end-chunk)
		part := make([]byte, end-start)
		if _, err := f.ReadAt(part, start); err != nil && err != io.EOF {
			return nil, fmt.Errorf("read log: %w", err)
		}
		buf = append(part, buf...)
		end = start
	}
	buf = bytes.TrimSuffix(buf, []byte{'\n'})
	if len(buf) == 0 {
		return []string{}, nil
	}
	lines := bytes.Split(buf, []byte{'\n'})
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = string(l)
	}
	return out, nil
}

// tailLines is the end of the log file's bytes [start, end): its last n
// lines, at most maxTailBytes of them.
func tailLines(path string, start, end int64, n int) (string, error) {
	const maxTailBytes = 16 << 10
	if end-start > maxTailBytes {
		start = end - maxTailBytes
	}
	if end <= start {
		return "", nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read log: %w", err)
	}
	defer f.Close()
	buf := make([]byte, end-start)
	if _, err := f.ReadAt(buf, start); err != nil && err != io.EOF {
		return "", fmt.Errorf("read log: %w", err)
	}
	lines := bytes.Split(bytes.TrimRight(buf, "\n"), []byte{'\n'})
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte{'\n'})), nil
}

// ResultLog copies the part of build b's log that result r wrote to w, up
// to its current end while r builds. ok is false when r's part of the log
// was not recorded (results from before the server recorded it).
func (o *Orchestrator) ResultLog(b *db.Build, r *db.Result, w io.Writer) (ok bool, err error) {
	if r.LogStart == nil {
		return false, nil
	}
	f, err := os.Open(b.LogPath)
	if err != nil {
		return false, fmt.Errorf("open log of build %d: %w", b.ID, err)
	}
	defer f.Close()
	var src io.Reader = io.NewSectionReader(f, *r.LogStart, 1<<62)
	if r.LogEnd != nil {
		src = io.NewSectionReader(f, *r.LogStart, *r.LogEnd-*r.LogStart)
	}
	_, err = io.Copy(w, src)
	return true, err
}

// Follow sends a build's log to fn in chunks as it grows, starting at
// offset, and returns when the build has finished and its log is sent, or
// when ctx ends.
func (o *Orchestrator) Follow(ctx context.Context, b *db.Build, offset int64, fn func([]byte) error) error {
	f, err := os.Open(b.LogPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open log of build %d: %w", b.ID, err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	for {
		live := o.live(b.ID)
		var changed, done <-chan struct{}
		if live != nil {
			// Take the channel before reading, so a write between the read
			// and the wait is not missed.
			changed, done = live.changed(), live.done
		}
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if err := fn(buf[:n]); err != nil {
					return err
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		if live == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-done:
		}
	}
}
