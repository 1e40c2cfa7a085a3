// Package git clones and updates the repositories the server builds, with
// the git command line.
package git

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/command"
)

// env keeps git from ever waiting on a terminal prompt for credentials.
var env = []string{"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false", "SSH_ASKPASS=/bin/false", "GIT_SSH_COMMAND=ssh -o BatchMode=yes"}

func run(ctx context.Context, dir string, stdout, stderr io.Writer, args ...string) error {
	cmd := command.New(ctx, command.Cmd{Dir: dir, Env: env, Stdout: stdout, Stderr: stderr}, "git", args...)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("git %s: %w", args[0], err)
	}
	return nil
}

// IsRepo reports whether dir is the top of a git work tree with a HEAD.
func IsRepo(ctx context.Context, dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
		return false
	}
	_, err := command.Output(ctx, command.Cmd{Dir: dir, Env: env}, "git", "rev-parse", "--verify", "HEAD")
	return err == nil
}

// Head returns the full and short commit ids of HEAD.
func Head(ctx context.Context, dir string) (full, short string, err error) {
	out, err := command.Output(ctx, command.Cmd{Dir: dir, Env: env}, "git", "rev-parse", "HEAD")
	if err != nil {
		return "", "", err
	}
	full = strings.TrimSpace(string(out))
	out, err = command.Output(ctx, command.Cmd{Dir: dir, Env: env}, "git", "rev-parse", "--short", "HEAD")
	if err != nil {
		return "", "", err
	}
	return full, strings.TrimSpace(string(out)), nil
}

// ErrStalled is the cause of a remote operation ended because git printed
// nothing for the client's IdleTimeout.
var ErrStalled = errors.New("no progress")

// Client runs the git commands that talk to a remote: a remote that accepts
// a connection and then never answers would otherwise hold a build until
// the build timeout.
type Client struct {
	// IdleTimeout ends a clone, fetch or ls-remote that has printed nothing
	// (not even progress) for this long; 0 means never.
	IdleTimeout time.Duration
}

// Clone clones branch of url into dir, writing git's progress to log.
func (c Client) Clone(ctx context.Context, url, branch, dir string, log io.Writer) error {
	return c.remote(ctx, "", nil, log, url, "clone", "--progress", "--branch", branch, "--", url, dir)
}

// Update fetches origin and resets the work tree hard to origin/branch.
func (c Client) Update(ctx context.Context, dir, branch, url string, log io.Writer) error {
	if err := c.remote(ctx, dir, nil, log, url, "fetch", "--progress", "origin"); err != nil {
		return err
	}
	return run(ctx, dir, log, log, "reset", "--hard", "origin/"+branch, "--")
}

// RemoteHead returns the commit branch points to at url, without cloning.
func (c Client) RemoteHead(ctx context.Context, url, branch string) (string, error) {
	var out, errb bytes.Buffer
	if err := c.remote(ctx, "", &out, &errb, url, "ls-remote", "--", url, "refs/heads/"+branch); err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	fields := strings.Fields(out.String())
	if len(fields) < 2 {
		return "", fmt.Errorf("git ls-remote %s: no branch %s", url, branch)
	}
	return fields[0], nil
}

// remote runs a git command that talks to url, ending it with ErrStalled
// when it prints nothing for c.IdleTimeout. Progress lines (ended by \r)
// count as output but stay out of the log; stdout nil means the log.
func (c Client) remote(ctx context.Context, dir string, stdout, log io.Writer, url string, args ...string) error {
	active := make(chan struct{}, 1)
	errw := &progressWriter{w: log, active: active}
	outw := errw
	if stdout != nil {
		outw = &progressWriter{w: stdout, active: active}
	}
	// A last line without a newline (git's "fatal: ..." usually has one).
	flush := func(err error) error {
		ferr := errors.Join(outw.flush(), errw.flush())
		if err != nil {
			return err
		}
		return ferr
	}
	if c.IdleTimeout <= 0 {
		return flush(run(ctx, dir, outw, errw, args...))
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTimer(c.IdleTimeout)
		defer t.Stop()
		for {
			select {
			case <-active:
				t.Reset(c.IdleTimeout)
			case <-t.C:
				cancel(ErrStalled)
				return
			case <-done:
				return
			}
		}
	}()
	err := flush(run(ctx, dir, outw, errw, args...))
	if err != nil && errors.Is(context.Cause(ctx), ErrStalled) {
		return fmt.Errorf("git %s: %w: git printed nothing for %s (git_timeout); check that %s answers, or raise git_timeout if it is only slow",
			args[0], ErrStalled, c.IdleTimeout, url)
	}
	return err
}

// progressWriter passes whole lines to w, drops git's progress updates
// (lines ended by a carriage return) and signals active on every write.
// When git's stdout and stderr share one, exec copies both from one
// goroutine, so Write is never called concurrently.
type progressWriter struct {
	w      io.Writer
	active chan struct{}
	line   []byte
}

func (p *progressWriter) Write(b []byte) (int, error) {
	select {
	case p.active <- struct{}{}:
	default:
	}
	for _, c := range b {
		switch c {
		case '\r':
			p.line = p.line[:0]
		case '\n':
			p.line = append(p.line, c)
			if _, err := p.w.Write(p.line); err != nil {
				return 0, err
			}
			p.line = p.line[:0]
		default:
			p.line = append(p.line, c)
		}
	}
	return len(b), nil
}

// flush writes a last line that had no newline.
func (p *progressWriter) flush() error {
	if len(p.line) == 0 {
		return nil
	}
	_, err := p.w.Write(append(p.line, '\n'))
	p.line = nil
	return err
}
