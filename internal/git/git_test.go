package git_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/git"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestSilentRemote: a remote that accepts the connection and never
// answers fails a clone, a fetch and an ls-remote once git has printed
// nothing for IdleTimeout, with an error that says what to do.
func TestSilentRemote(t *testing.T) {
	t.Parallel()
	addr := ts.SilentRemote(t)
	c := git.Client{IdleTimeout: time.Second}
	for _, url := range []string{"git://" + addr + "/repo.git", "http://" + addr + "/repo.git"} {
		// A work tree whose origin is the silent remote, for the fetch.
		work := filepath.Join(t.TempDir(), "work")
		ts.Git(t, "", "clone", "--quiet", ts.NewGitRepo(t, map[string]string{"f": "x"}), work)
		ts.Git(t, work, "remote", "set-url", "origin", url)
		for _, tt := range []struct {
			op  string
			run func() error
		}{
			{"clone", func() error {
				return c.Clone(t.Context(), url, "main", filepath.Join(t.TempDir(), "clone"), &bytes.Buffer{})
			}},
			{"fetch", func() error { return c.Update(t.Context(), work, "main", url, &bytes.Buffer{}) }},
			{"ls-remote", func() error { _, err := c.RemoteHead(t.Context(), url, "main"); return err }},
		} {
			err := tt.run()
			if !errors.Is(err, git.ErrStalled) {
				t.Errorf("%s %s: error %v, want ErrStalled", tt.op, url, err)
				continue
			}
			for _, want := range []string{"git " + tt.op, "nothing for 1s", "git_timeout", url} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%s %s: error %q does not say %q", tt.op, url, err, want)
				}
			}
		}
	}
}

// TestCloneAndFetch: with an idle timeout set, a remote that answers
// works, and git's progress updates stay out of the log.
func TestCloneAndFetch(t *testing.T) {
	t.Parallel()
	origin := ts.NewGitRepo(t, map[string]string{"f": "one"})
	c := git.Client{IdleTimeout: 10 * time.Minute}
	dir := filepath.Join(t.TempDir(), "clone")
	var log bytes.Buffer
	if err := c.Clone(t.Context(), origin, "main", dir, &log); err != nil {
		t.Fatalf("clone: %v\n%s", err, log.String())
	}
	next := ts.Commit(t, origin, map[string]string{"f": "two"})
	if err := c.Update(t.Context(), dir, "main", origin, &log); err != nil {
		t.Fatalf("update: %v\n%s", err, log.String())
	}
	if full, _, err := git.Head(t.Context(), dir); err != nil || full != next {
		t.Errorf("HEAD after update = %s (%v), want %s", full, err, next)
	}
	if head, err := c.RemoteHead(t.Context(), origin, "main"); err != nil || head != next {
		t.Errorf("RemoteHead = %s (%v), want %s", head, err, next)
	}
	if strings.Contains(log.String(), "\r") {
		t.Errorf("progress updates reached the log: %q", log.String())
	}
	if !strings.Contains(log.String(), "Cloning into") {
		t.Errorf("log %q lacks git's own lines", log.String())
	}
}
