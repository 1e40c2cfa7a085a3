package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultDebounce is how long the watcher waits for a burst of events to
// settle before it looks at the symlink again.
const DefaultDebounce = time.Second

// Watch reports, on the returned channel, every change of the target of the
// symlink at path, until ctx ends. It watches path's parent directory:
// switching a system replaces the link atomically (a new link renamed over
// the old name), which an inotify watch on the link itself would miss.
// Events are debounced, and a signal is sent only when readlink(path)
// differs from the last value seen, so other files in the directory never
// signal. Signals do not queue: one pending signal stands for any number of
// changes.
func Watch(ctx context.Context, path string, debounce time.Duration, log *slog.Logger) (<-chan struct{}, error) {
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", path, err)
	}
	if err := w.Add(dir); err != nil {
		return nil, errors.Join(fmt.Errorf("watch %s: watch directory %s: %w", path, dir, err), w.Close())
	}
	// Read after the watch is in place, so no change falls in between.
	last := readLink(path)
	changes := make(chan struct{}, 1)
	go func() {
		defer func() {
			if err := w.Close(); err != nil {
				log.Warn("stop watching current system", "path", path, "err", err)
			}
		}()
		timer := time.NewTimer(debounce)
		timer.Stop()
		for {
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Clean(ev.Name) == path {
					timer.Reset(debounce)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("watching current system", "path", path, "err", err)
				// The event queue may have overflowed: look again.
				timer.Reset(debounce)
			case <-timer.C:
				now := readLink(path)
				if now == last {
					continue
				}
				log.Debug("current system changed", "path", path, "from", last, "to", now)
				last = now
				select {
				case changes <- struct{}{}:
				default:
				}
			}
		}
	}()
	return changes, nil
}

// readLink returns the target of the symlink at path, made absolute
// against its directory, or "" when there is no link.
func readLink(path string) string {
	t, err := os.Readlink(path)
	if err != nil {
		return ""
	}
	if !filepath.IsAbs(t) {
		t = filepath.Join(filepath.Dir(path), t)
	}
	return t
}
