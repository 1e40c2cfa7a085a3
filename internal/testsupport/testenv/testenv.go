// Package testenv decides what a test does when a program it drives is
// missing: skip on a developer's machine, fail under CI, where `make test`
// has installed everything and a skip would hide a broken install step.
//
// It imports nothing of the project, so any package's tests can use it.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// UnderCI reports whether the tests run under CI (CI=true, as CI systems
// and .ci/run set it).
func UnderCI() bool {
	v := os.Getenv("CI")
	return v == "true" || v == "1"
}

// Missing ends the test because something it needs is not there: under CI
// it fails, elsewhere it skips. why says what is missing and how to get it.
func Missing(t testing.TB, why string) {
	t.Helper()
	if UnderCI() {
		t.Fatalf("%s (CI=true: a missing tool fails the test instead of skipping it)", why)
		return
	}
	t.Skip(why)
}

// LookPath returns the path of the first of names found on PATH, or ends
// the test with Missing, naming hint (e.g. "`make test` installs nix-bin").
func LookPath(t testing.TB, hint string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Missing(t, names[0]+" is not on PATH; "+hint)
	return ""
}
