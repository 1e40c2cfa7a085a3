package testsupport

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// BuilderOptions configure StartBuilder.
type BuilderOptions struct {
	DB    string // --db
	Name  string // --name
	Jobs  int    // --jobs; default 1
	Lease time.Duration
	// DataDir is --data-dir; default a new temporary directory.
	DataDir string
	// PushTo and PushNetrc are --push-to and --push-netrc.
	PushTo, PushNetrc string
	// Env is added to the builder's environment ("KEY=value"), after the
	// tests' offline NIX_CONFIG (a NIX_CONFIG here replaces it).
	Env []string
}

// Builder is a `crystal-forge builder` process started by a test.
type Builder struct {
	Name       string
	Cmd        *exec.Cmd
	StderrFile string
	done       chan struct{}
	state      *os.ProcessState
}

// StartBuilder starts `crystal-forge builder` with the tests' offline Nix
// settings. The test's cleanup kills it if it still runs.
func StartBuilder(t testing.TB, opts BuilderOptions) *Builder {
	t.Helper()
	if opts.Jobs == 0 {
		opts.Jobs = 1
	}
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	args := []string{"builder", "--db", opts.DB, "--name", opts.Name, "--jobs", fmt.Sprint(opts.Jobs), "--data-dir", opts.DataDir}
	if opts.Lease > 0 {
		args = append(args, "--lease", opts.Lease.String())
	}
	if opts.PushTo != "" {
		args = append(args, "--push-to", opts.PushTo, "--push-netrc", opts.PushNetrc)
	}
	b := &Builder{Name: opts.Name, StderrFile: filepath.Join(t.TempDir(), "stderr"), done: make(chan struct{})}
	stderr, err := os.Create(b.StderrFile)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd := exec.Command(CrystalForgeBinary(t), args...)
	cmd.Env = append(serverEnv(os.Environ()), "NIX_CONFIG="+nixConfig, "NIX_PATH=", "XDG_CACHE_HOME="+t.TempDir())
	cmd.Env = append(cmd.Env, opts.Env...)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start builder %s: %v", opts.Name, err)
	}
	b.Cmd = cmd
	go func() {
		_ = cmd.Wait()
		b.state = cmd.ProcessState
		close(b.done)
	}()
	t.Cleanup(func() {
		if b.Running() {
			b.Signal(t, syscall.SIGKILL)
			<-b.done
		}
		if t.Failed() {
			t.Logf("builder %s stderr:\n%s", b.Name, tailString(b.Stderr(), 8000))
		}
	})
	return b
}

// Stderr is what the builder wrote so far.
func (b *Builder) Stderr() string {
	data, _ := os.ReadFile(b.StderrFile)
	return string(data)
}

// Running reports whether the process has not exited.
func (b *Builder) Running() bool {
	select {
	case <-b.done:
		return false
	default:
		return true
	}
}

// Signal sends sig to the builder process alone.
func (b *Builder) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := b.Cmd.Process.Signal(sig); err != nil && b.Running() {
		t.Fatalf("signal builder %s: %v", b.Name, err)
	}
}

// Wait waits for the builder to exit and returns its exit code.
func (b *Builder) Wait(t testing.TB) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(WaitTimeout):
		t.Fatalf("builder %s did not exit; stderr:\n%s", b.Name, tailString(b.Stderr(), 4000))
	}
	return b.state.ExitCode()
}

// Descendants returns the processes below the builder (its nix and the
// builds nix runs), from /proc.
func (b *Builder) Descendants() []int { return procDescendants(b.Cmd.Process.Pid) }

// Logged reports whether the builder's log has a line containing s.
func (b *Builder) Logged(s string) bool { return strings.Contains(b.Stderr(), s) }
