// Package git clones and updates the repositories the server builds, with
// the git command line.
package git

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/command"
)

// env keeps git from ever waiting on a terminal prompt for credentials.
var env = []string{"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false", "SSH_ASKPASS=/bin/false", "GIT_SSH_COMMAND=ssh -o BatchMode=yes"}

func run(ctx context.Context, dir string, log io.Writer, args ...string) error {
	cmd := command.New(ctx, command.Cmd{Dir: dir, Env: env, Stdout: log, Stderr: log}, "git", args...)
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

// Clone clones branch of url into dir, writing git's progress to log.
func Clone(ctx context.Context, url, branch, dir string, log io.Writer) error {
	return run(ctx, "", log, "clone", "--branch", branch, "--", url, dir)
}

// Update fetches origin and resets the work tree hard to origin/branch.
func Update(ctx context.Context, dir, branch string, log io.Writer) error {
	if err := run(ctx, dir, log, "fetch", "origin"); err != nil {
		return err
	}
	return run(ctx, dir, log, "reset", "--hard", "origin/"+branch, "--")
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

// RemoteHead returns the commit branch points to at url, without cloning.
func RemoteHead(ctx context.Context, url, branch string) (string, error) {
	out, err := command.Output(ctx, command.Cmd{Env: env}, "git", "ls-remote", "--", url, "refs/heads/"+branch)
	if err != nil {
		return "", err
	}
	fields := strings.Fields(string(out))
	if len(fields) < 2 {
		return "", fmt.Errorf("git ls-remote %s: no branch %s", url, branch)
	}
	return fields[0], nil
}
