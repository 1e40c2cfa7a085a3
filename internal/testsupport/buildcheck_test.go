package testsupport

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/db"
)

func TestCheckBuildSucceeded(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	if err := os.WriteFile(out, []byte("built\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "never-built")
	ok := func(attr string, outs ...string) *db.Result {
		return &db.Result{Attr: attr, Kind: "package", Status: db.ResultSuccess, OutPaths: outs}
	}
	build := func(status string, results ...*db.Result) api.Build {
		return api.Build{Build: &db.Build{ID: 7, Status: status}, Results: results}
	}
	for _, tc := range []struct {
		what string
		b    api.Build
		want string // "" for success, else part of the error
	}{
		{"every result built", build(db.StatusSuccess, ok("a", out), ok("b", out)), ""},
		{"build failed", build(db.StatusFailed, ok("a", out)), "build 7 is failed"},
		{"build cancelled", build(db.StatusCancelled, ok("a", out)), "is cancelled"},
		{"no results", build(db.StatusSuccess), "no results"},
		{"a result failed in a successful build", build(db.StatusSuccess, ok("a", out),
			&db.Result{Attr: "b", Kind: "package", Status: db.ResultFailed, Error: "exit 1"}), `package b is failed, want success (error "exit 1")`},
		{"a result skipped", build(db.StatusSuccess, &db.Result{Attr: "c", Kind: "nixos", Status: db.ResultSkipped}), "nixos c is skipped"},
		{"a result still running", build(db.StatusSuccess, &db.Result{Attr: "c", Kind: "package", Status: db.ResultRunning}), "package c is running"},
		{"success without output", build(db.StatusSuccess, ok("a")), "without an output path"},
		{"a flake check has no output", build(db.StatusSuccess, &db.Result{Attr: "checks", Kind: "check", Status: db.ResultSuccess}, ok("a", out)), ""},
		{"output not on disk", build(db.StatusSuccess, ok("a", out, missing)), missing},
		{"no build", api.Build{}, "no build"},
	} {
		err := CheckBuildSucceeded(tc.b)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v, want success", tc.what, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.what, err, tc.want)
		}
	}
}

// fakeBuilds answers with a fixed sequence of build states, the last one
// repeated, and counts the requests.
type fakeBuilds struct {
	mu     sync.Mutex
	states []api.Build
	calls  int
}

func (f *fakeBuilds) Build(t testing.TB, id int64) api.Build {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.states[min(f.calls, len(f.states)-1)]
	f.calls++
	return b
}

func (f *fakeBuilds) Log(t testing.TB, id int64) string { return "the build's log line" }

// fatalRecorder records a test's fatal failure instead of failing it.
type fatalRecorder struct {
	testing.TB
	failure string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.failure = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *fatalRecorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }

// run calls f with r as its test, in a goroutine so Fatalf can end it.
func (r *fatalRecorder) run(f func(testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
}

// TestWaitBuildFailsAtOnce checks that the waits give up at the first
// sight of a build that ended in another state, with its log, instead of
// polling until WaitTimeout.
func TestWaitBuildFailsAtOnce(t *testing.T) {
	b := func(status string) api.Build {
		return api.Build{Build: &db.Build{ID: 3, Status: status, Error: "boom"}}
	}
	blocker := NewBlocker(t, "never")
	for _, tc := range []struct {
		what   string
		states []api.Build
		wait   func(testing.TB, Builds)
		calls  int
		want   string
	}{
		{"succeed, but it failed", []api.Build{b(db.StatusQueued), b(db.StatusRunning), b(db.StatusFailed)},
			func(t testing.TB, s Builds) { WaitBuildSucceeded(t, s, 3) }, 3, "build 3 ended failed"},
		{"end cancelled, but it failed", []api.Build{b(db.StatusFailed)},
			func(t testing.TB, s Builds) { WaitBuildEnded(t, s, 3, db.StatusCancelled) }, 1, "ended failed"},
		{"a builder that never starts", []api.Build{b(db.StatusRunning), b(db.StatusFailed)},
			func(t testing.TB, s Builds) { blocker.WaitStarted(t, s, 3) }, 2, "the builder of never to start"},
		{"succeed, but a result failed", []api.Build{{Build: &db.Build{ID: 3, Status: db.StatusSuccess},
			Results: []*db.Result{{Attr: "a", Kind: "package", Status: db.ResultFailed}}}},
			func(t testing.TB, s Builds) { WaitBuildSucceeded(t, s, 3) }, 1, "package a is failed"},
	} {
		s := &fakeBuilds{states: tc.states}
		r := &fatalRecorder{TB: t}
		r.run(func(t testing.TB) { tc.wait(t, s) })
		if r.failure == "" {
			t.Errorf("%s: the wait returned", tc.what)
			continue
		}
		if !strings.Contains(r.failure, tc.want) || !strings.Contains(r.failure, "the build's log line") {
			t.Errorf("%s: failed with %q, want %q and the build's log", tc.what, r.failure, tc.want)
		}
		if s.calls != tc.calls {
			t.Errorf("%s: asked for the build %d times, want %d (once per state until it ended)", tc.what, s.calls, tc.calls)
		}
	}

	// A build that gets there returns.
	s := &fakeBuilds{states: []api.Build{b(db.StatusQueued), b(db.StatusRunning), b(db.StatusCancelled)}}
	r := &fatalRecorder{TB: t}
	var got api.Build
	r.run(func(t testing.TB) { got = WaitBuildEnded(t, s, 3, db.StatusCancelled) })
	if r.failure != "" || got.Build == nil || got.Status != db.StatusCancelled {
		t.Errorf("waiting for a build that ends cancelled: %q, got %+v", r.failure, got.Build)
	}
}
