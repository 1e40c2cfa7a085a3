// Package command runs external programs (git, nix) in their own process
// group, so cancelling a build kills everything it started, not just the
// first process.
package command

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Cmd describes one program run.
type Cmd struct {
	Dir    string
	Env    []string // added to the inherited environment
	Stdout io.Writer
	Stderr io.Writer
	Stdin  io.Reader
}

// New returns an exec.Cmd that is killed with its whole process group when
// ctx ends (SIGTERM, then SIGKILL after a grace period).
func New(ctx context.Context, c Cmd, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(cmd.Environ(), c.Env...)
	}
	cmd.Stdout, cmd.Stderr, cmd.Stdin = c.Stdout, c.Stderr, c.Stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Output runs the program and returns its stdout; on failure the error
// carries the command line and the end of stderr.
func Output(ctx context.Context, c Cmd, name string, args ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if err := New(ctx, c, name, args...).Run(); err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(errb.String(), 2000))
	}
	return out.Bytes(), nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
