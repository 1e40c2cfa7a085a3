package testenv

import "testing"

func TestUnderCI(t *testing.T) {
	for _, tc := range []struct {
		ci   string
		want bool
	}{{"true", true}, {"1", true}, {"", false}, {"false", false}, {"0", false}} {
		t.Setenv("CI", tc.ci)
		if got := UnderCI(); got != tc.want {
			t.Errorf("CI=%q: UnderCI() = %v, want %v", tc.ci, got, tc.want)
		}
	}
}

func TestLookPathFinds(t *testing.T) {
	if p := LookPath(t, "it is everywhere", "no-such-program-cf", "sh"); p == "" {
		t.Fatal("LookPath did not find sh")
	}
}

// recorder notes how Missing ended the test instead of ending this one.
type recorder struct {
	testing.TB
	failed, skipped bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Fatalf(string, ...any) { r.failed = true }
func (r *recorder) Skip(...any)           { r.skipped = true }

func TestMissingFailsUnderCI(t *testing.T) {
	for _, tc := range []struct {
		ci         string
		fail, skip bool
	}{{"true", true, false}, {"", false, true}} {
		t.Setenv("CI", tc.ci)
		r := &recorder{TB: t}
		LookPath(r, "hint", "no-such-program-cf")
		if r.failed != tc.fail || r.skipped != tc.skip {
			t.Errorf("CI=%q: failed=%v skipped=%v, want failed=%v skipped=%v", tc.ci, r.failed, r.skipped, tc.fail, tc.skip)
		}
	}
}
