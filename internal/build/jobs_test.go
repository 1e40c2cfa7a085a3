package build_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
)

func resultsByAttr(rs []*db.Result) map[string]*db.Result {
	m := map[string]*db.Result{}
	for _, r := range rs {
		m[r.Attr] = r
	}
	return m
}

// attrJobs returns the attribute of each attr job of a build, in order.
func attrJobs(t *testing.T, s *ts.BuildServer, id int64) []string {
	t.Helper()
	jobs, err := s.DB.BuildJobs(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, j := range jobs {
		if j.Kind == db.JobAttr {
			out = append(out, j.Attr)
		}
	}
	return out
}

// TestEvaluationPerAttribute: each attribute is evaluated on its own: one
// that does not evaluate is recorded failed with its own error, and the
// others are still queued and built, each as a job of its own.
func TestEvaluationPerAttribute(t *testing.T) {
	t.Parallel()
	nonce := ts.Nonce()
	src := flakeRepo(t, ts.Flake{Nonce: nonce,
		Packages:   []ts.FlakePackage{ts.GoodPackage("alpha", 0), ts.FailingPackage("bad"), ts.GoodPackage("zeta", 0)},
		EvalErrors: []string{"broken"},
	})
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})
	b := s.WaitFinished(t, s.Trigger(t, "app"))
	log := s.Log(t, b.ID)
	res := resultsByAttr(b.Results)
	if b.Status != db.StatusFailed || len(b.Results) != 5 {
		t.Fatalf("build = %+v with results %+v; want failed with checks, broken, alpha, bad, zeta; log:\n%s", b.Build, b.Results, log)
	}
	broken := res["broken"]
	if broken == nil || broken.Kind != "package" || broken.Status != db.ResultFailed || broken.DrvPath != "" ||
		!strings.HasPrefix(broken.Error, "error: fixture package broken does not evaluate") || broken.JobID == nil {
		t.Errorf("result broken = %+v, want failed with its evaluation error and no derivation", broken)
	}
	for _, name := range []string{"alpha", "zeta"} {
		if r := res[name]; r == nil || r.Status != db.ResultSuccess || !strings.HasSuffix(r.DrvPath, "-"+name+".drv") {
			t.Errorf("result %s = %+v, want built", name, r)
		} else if out := readOutput(t, r); out != name+" "+nonce+"\n" {
			t.Errorf("%s holds %q", name, out)
		}
	}
	requireFailure(t, res["bad"], "bad", "fixture package bad fails on purpose")
	// The flake check evaluates every package too: it fails on broken.
	if c := res["checks"]; c == nil || c.Status != db.ResultFailed || !strings.Contains(c.LogTail, "fixture package broken does not evaluate") {
		t.Errorf("result checks = %+v, want failed on broken", c)
	}
	if want := "3 of 5 attributes failed: checks (check), broken (package), bad (package)"; b.Error != want {
		t.Errorf("build error = %q, want %q", b.Error, want)
	}
	// One job per attribute that evaluated, in name order; none for broken.
	if got := attrJobs(t, s, b.ID); strings.Join(got, " ") != "alpha bad zeta" {
		t.Errorf("attr jobs = %v, want alpha bad zeta", got)
	}
	ts.RequireLogInOrder(t, log,
		"Failed to evaluate package broken",
		"Building package alpha...",
		"Successfully built package alpha",
		"Failed to build package bad",
		"Successfully built package zeta",
		"Build failed for commit "+b.ShortCommit+": "+b.Error,
	)
	// The attribute's own part of the log: its evaluation error.
	code, body := s.Do(t, "GET", fmt.Sprintf("/api/v1/builds/%d/results/%d/log", b.ID, broken.ID), nil, nil)
	if code != http.StatusOK || !strings.Contains(string(body), "fixture package broken does not evaluate") || strings.Contains(string(body), "alpha") {
		t.Errorf("log of broken = %d %q, want its evaluation error only", code, body)
	}
}

// TestFailedDerivationRemembered: a derivation that failed is not built
// again by the next build of the same commit (its result says so), and a
// forced build builds it again.
func TestFailedDerivationRemembered(t *testing.T) {
	t.Parallel()
	eachDB(t, testFailedDerivationRemembered)
}

func testFailedDerivationRemembered(t *testing.T, dsn func(string) string) {
	src := flakeRepo(t, ts.Flake{Nonce: ts.Nonce(), Packages: []ts.FlakePackage{ts.FailingPackage("bad"), ts.GoodPackage("good", 0)}})
	dataDir := t.TempDir()
	s := ts.StartBuildServer(t, ts.BuildServerConfig{DataDir: dataDir, Database: dsn(dataDir), Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})

	first := s.WaitFinished(t, s.Trigger(t, "app"))
	bad := resultsByAttr(first.Results)["bad"]
	requireFailure(t, bad, "bad", "fixture package bad fails on purpose")
	memo, err := s.DB.LookupDerivation(t.Context(), bad.DrvPath)
	if err != nil || memo.Status != db.DrvFailed || memo.BuildID != first.ID || memo.Error != bad.Error {
		t.Fatalf("remembered outcome of %s = %+v, %v; want failed in build %d", bad.DrvPath, memo, err, first.ID)
	}
	if good := resultsByAttr(first.Results)["good"]; good == nil {
		t.Fatal("no result for good")
	} else if m, err := s.DB.LookupDerivation(t.Context(), good.DrvPath); err != nil || m.Status != db.DrvBuilt || len(m.OutPaths) != 1 || m.OutPaths[0] != good.OutPaths[0] {
		t.Errorf("remembered outcome of good = %+v, %v; want built with its output", m, err)
	}

	second := s.WaitFinished(t, s.Trigger(t, "app"))
	log := s.Log(t, second.ID)
	again := resultsByAttr(second.Results)["bad"]
	wantErr := fmt.Sprintf("%s (failed before, in build %d; not rebuilt: trigger a forced build to retry)", bad.Error, first.ID)
	if second.Status != db.StatusFailed || again == nil || again.Status != db.ResultFailed || again.DrvPath != bad.DrvPath || again.Error != wantErr {
		t.Fatalf("second build = %+v, bad = %+v; want bad failed with %q; log:\n%s", second.Build, again, wantErr, log)
	}
	if got := attrJobs(t, s, second.ID); strings.Join(got, " ") != "good" {
		t.Errorf("attr jobs of the second build = %v, want good only", got)
	}
	if !strings.Contains(log, "Not building package bad: its derivation "+bad.DrvPath+" failed in build") ||
		strings.Contains(log, "Building package bad...") || strings.Contains(log, "fails on purpose") {
		t.Errorf("log of the second build rebuilt bad, or does not say why not:\n%s", log)
	}

	var forced db.Build
	s.JSON(t, "POST", "/api/v1/repositories/app/builds?force=1", http.StatusCreated, &forced)
	third := s.WaitFinished(t, forced.ID)
	log = s.Log(t, third.ID)
	if r := resultsByAttr(third.Results)["bad"]; r == nil || r.Error != bad.Error {
		t.Errorf("forced build's bad = %+v, want built again and failed with %q", r, bad.Error)
	}
	ts.RequireLogInOrder(t, log, "Building package bad...", "bad> fixture package bad fails on purpose")
	if code, body := s.Do(t, "POST", "/api/v1/repositories/app/builds?force=maybe", nil, nil); code != http.StatusBadRequest {
		t.Errorf("force=maybe = %d %s, want 400", code, body)
	}
}
