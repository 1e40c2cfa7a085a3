package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
)

// jobLogFlush is how often a job's new log lines go to the database, where
// the server (on this machine or another) appends them to the build's log.
const jobLogFlush = 200 * time.Millisecond

// jobLogChunk is the most a job's log holds before it is flushed early.
const jobLogChunk = 64 << 10

// jobLog is a running job's log: git's and nix's output and the spec's
// lines, sent to the database in chunks of whole lines as it grows, and
// kept in a local file for the tails of failed attributes. Offsets are
// into the job's own log.
type jobLog struct {
	db     *db.DB
	job    *db.Job
	notify func(buildID int64)

	mu      sync.Mutex
	f       *os.File
	size    int64
	pending []byte
	err     error // the first write or flush that failed

	flushMu sync.Mutex // one flush at a time, so chunks keep their order
	stop    chan struct{}
	done    chan struct{}
}

func openJobLog(d *db.DB, dir string, j *db.Job, notify func(int64)) (*jobLog, error) {
	f, err := os.CreateTemp(dir, fmt.Sprintf("job-%d-*.log", j.ID))
	if err != nil {
		return nil, fmt.Errorf("open the log of job %d: %w", j.ID, err)
	}
	l := &jobLog{db: d, job: j, notify: notify, f: f, stop: make(chan struct{}), done: make(chan struct{})}
	go l.flusher()
	return l, nil
}

func (l *jobLog) flusher() {
	defer close(l.done)
	t := time.NewTicker(jobLogFlush)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.flush(false)
		}
	}
}

// Write appends to the log; git and nix write their output here directly.
func (l *jobLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	n, err := l.f.Write(p)
	l.size += int64(n)
	if err != nil && l.err == nil {
		l.err = err
	}
	l.pending = append(l.pending, p...)
	full := len(l.pending) >= jobLogChunk
	l.mu.Unlock()
	if full {
		l.flush(false)
	}
	// The database copy is what counts: a failed local copy only loses
	// the tails of failed attributes.
	return len(p), nil
}

// Line writes one log line, the way the spec's script echoes its progress.
func (l *jobLog) Line(format string, args ...any) {
	_, _ = fmt.Fprintf(l, format+"\n", args...)
}

// offset is the job's log's length so far.
func (l *jobLog) offset() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size
}

// flush sends the pending whole lines (everything, when final) to the
// database. A failed insert keeps them for the next flush.
func (l *jobLog) flush(final bool) {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	n := len(l.pending)
	if !final {
		n = bytes.LastIndexByte(l.pending, '\n') + 1
	}
	chunk := bytes.Clone(l.pending[:n])
	l.mu.Unlock()
	if len(chunk) == 0 {
		return
	}
	err := l.db.AppendJobLog(context.Background(), l.job.BuildID, l.job.ID, l.job.Attempts, chunk, time.Now())
	l.mu.Lock()
	if err != nil {
		if l.err == nil {
			l.err = err
		}
		l.mu.Unlock()
		return
	}
	l.pending = l.pending[len(chunk):]
	l.mu.Unlock()
	if l.notify != nil {
		l.notify(l.job.BuildID)
	}
}

// tail is the end of the job's log bytes [start, end): its last n lines.
func (l *jobLog) tail(start, end int64, n int) (string, error) {
	return tailLines(l.f.Name(), start, end, n)
}

// close sends the rest of the log, removes the local copy and reports the
// first write that failed, if any.
func (l *jobLog) close() error {
	close(l.stop)
	<-l.done
	l.flush(true)
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.err
	if len(l.pending) > 0 {
		err = errors.Join(err, fmt.Errorf("%d bytes of the log not stored", len(l.pending)))
	}
	err = errors.Join(err, l.f.Close(), os.Remove(l.f.Name()))
	if err != nil {
		return fmt.Errorf("log of job %d: %w", l.job.ID, err)
	}
	return nil
}
