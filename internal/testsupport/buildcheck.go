package testsupport

// Checks and waits on builds, for every test that drives a build server:
// in process (BuildServer) or as a process (Server).

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/db"
)

// resultKindCheck is the kind of the result of `nix flake check`.
const resultKindCheck = "check"

// Builds is a build server a test can ask about a build: *BuildServer and
// *Server.
type Builds interface {
	// Build returns GET /api/v1/builds/{id}: the build and its results.
	Build(t testing.TB, id int64) api.Build
	// Log returns the build's whole log.
	Log(t testing.TB, id int64) string
}

// CheckBuildSucceeded says why b is not a build that succeeded: its status
// is not success, it has no result, or a result's status is not success,
// it has no output path (a flake check has none), or an output path does
// not exist on disk. Results
// are checked one by one, whatever the build's status says about them.
func CheckBuildSucceeded(b api.Build) error {
	if b.Build == nil {
		return errors.New("no build")
	}
	var errs []error
	if b.Status != db.StatusSuccess {
		errs = append(errs, fmt.Errorf("build %d is %s, want %s (error %q)", b.ID, b.Status, db.StatusSuccess, b.Error))
	}
	if len(b.Results) == 0 {
		errs = append(errs, fmt.Errorf("build %d has no results: it built nothing", b.ID))
	}
	for _, r := range b.Results {
		if r.Status != db.ResultSuccess {
			errs = append(errs, fmt.Errorf("%s %s is %s, want %s (error %q)", r.Kind, r.Attr, r.Status, db.ResultSuccess, r.Error))
			continue
		}
		// The flake check builds the flake's checks but records no output.
		if len(r.OutPaths) == 0 && r.Kind != resultKindCheck {
			errs = append(errs, fmt.Errorf("%s %s succeeded without an output path", r.Kind, r.Attr))
		}
		for _, p := range r.OutPaths {
			if _, err := os.Stat(p); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: output %s: %w", r.Kind, r.Attr, p, err))
			}
		}
	}
	return errors.Join(errs...)
}

// RequireBuildSucceeded fails the test, printing the build's log, unless
// b succeeded (see CheckBuildSucceeded).
func RequireBuildSucceeded(t testing.TB, s Builds, b api.Build) {
	t.Helper()
	if err := CheckBuildSucceeded(b); err != nil {
		t.Fatalf("%v\nlog of build %d:\n%s", err, b.ID, s.Log(t, b.ID))
	}
}

// WaitBuild polls build id until cond holds and returns the build. When
// the build has ended (it is no longer queued or running) and cond does
// not hold, it fails at once, printing the build and its log: the build
// will never get there.
func WaitBuild(t testing.TB, s Builds, id int64, what string, cond func(api.Build) bool) api.Build {
	t.Helper()
	var b api.Build
	WaitUntil(t, fmt.Sprintf("build %d: %s", id, what), func() bool {
		b = s.Build(t, id)
		if cond(b) {
			return true
		}
		if !b.Active() {
			t.Fatalf("build %d ended %s (error %q) while waiting for %s; results:\n%s\nlog:\n%s",
				id, b.Status, b.Error, what, describeResults(b), s.Log(t, id))
		}
		return false
	})
	return b
}

// WaitBuildSucceeded waits until build id ends and requires that it
// succeeded (see RequireBuildSucceeded).
func WaitBuildSucceeded(t testing.TB, s Builds, id int64) api.Build {
	t.Helper()
	b := WaitBuild(t, s, id, "it to succeed", func(b api.Build) bool { return b.Status == db.StatusSuccess })
	RequireBuildSucceeded(t, s, b)
	return b
}

// WaitBuildEnded waits until build id ends in status; any other end fails
// at once with the build's log.
func WaitBuildEnded(t testing.TB, s Builds, id int64, status string) api.Build {
	t.Helper()
	return WaitBuild(t, s, id, "it to end "+status, func(b api.Build) bool { return b.Status == status })
}

func describeResults(b api.Build) string {
	if len(b.Results) == 0 {
		return "  none"
	}
	var sb strings.Builder
	for _, r := range b.Results {
		fmt.Fprintf(&sb, "  %s %s: %s %q %v\n", r.Kind, r.Attr, r.Status, r.Error, r.OutPaths)
	}
	return strings.TrimSuffix(sb.String(), "\n")
}
