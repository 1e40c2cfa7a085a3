// Package command runs external programs (git, nix) in their own process
// group, so cancelling a build kills everything it started, not just the
// first process, and so they end when the server dies.
package command

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"runtime"
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
	// OutliveParent keeps the program running when this process dies. By
	// default it gets SIGTERM instead (see New); set it for work that must
	// not stop half-way, like activating a system.
	OutliveParent bool
}

// Process is one prepared program run.
type Process struct {
	cmd *exec.Cmd
}

// New returns a program run that is killed with its whole process group
// when ctx ends (SIGTERM, then SIGKILL after a grace period), and that gets
// SIGTERM when this process dies, even by SIGKILL.
//
// The parent-death signal is SIGTERM, not SIGKILL, on purpose: nix answers
// SIGTERM by stopping its builders, but a SIGKILLed nix leaves them running
// (they run as a build user, and the kernel clears their own parent-death
// signal when Nix switches to that user). A nix left behind would also keep
// holding its store locks, so the next build of the same path would wait on
// it silently.
func New(ctx context.Context, c Cmd, name string, args ...string) *Process {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.Dir
	if len(c.Env) > 0 {
		cmd.Env = append(cmd.Environ(), c.Env...)
	}
	cmd.Stdout, cmd.Stderr, cmd.Stdin = c.Stdout, c.Stderr, c.Stdin
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !c.OutliveParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	}
	cmd.Cancel = func() error {
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 10 * time.Second
	return &Process{cmd: cmd}
}

// Run starts the program and waits for it to end.
//
// The kernel sends the parent-death signal when the *thread* that forked
// the child exits, not the process, and the Go runtime ends an OS thread
// when a goroutine exits while locked to it (golang/go#27505). Locking this
// goroutine to its thread from before the fork until the child is reaped
// keeps that thread alive, and unused by anything else, for exactly as long
// as the child runs, so the signal fires only when the process dies.
func (p *Process) Run() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return p.cmd.Run()
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
