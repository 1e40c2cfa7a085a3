package build_test

// Integration tests of the orchestrator: git repositories created by the
// test, real nix builds, SQLite in a temporary data directory (and, for
// some, PostgreSQL: eachDB), observed through the API and the files the
// orchestrator writes.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// eachDB runs f as a subtest on SQLite and on PostgreSQL; dsn returns a
// database of the subtest's engine (SQLite: in dataDir).
func eachDB(t *testing.T, f func(t *testing.T, dsn func(dataDir string) string)) {
	t.Run("sqlite", func(t *testing.T) {
		f(t, func(dataDir string) string { return filepath.Join(dataDir, "crystal-forge.db") })
	})
	t.Run("postgres", func(t *testing.T) {
		f(t, func(string) string { return pgtest.NewDatabase(t) })
	})
}

func flakeRepo(t *testing.T, f ts.Flake) string {
	t.Helper()
	if f.System == "" {
		f.System = config.DefaultSystem()
	}
	return ts.NewGitRepo(t, map[string]string{"flake.nix": f.Nix()})
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func readOutput(t *testing.T, r *db.Result) string {
	t.Helper()
	if r.Status != db.ResultSuccess || len(r.OutPaths) != 1 || !strings.HasPrefix(r.OutPaths[0], "/nix/store/") {
		t.Fatalf("result %s = %+v, want success with one store path", r.Attr, r)
	}
	data, err := os.ReadFile(r.OutPaths[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func requireGCRoot(t *testing.T, link, target string) {
	t.Helper()
	if got, err := os.Readlink(link); err != nil || got != target {
		t.Errorf("GC root %s -> %q (%v), want %s", link, got, err, target)
	}
}

// requireFailedStatus checks the spec status of a repository whose last
// build failed.
func requireFailedStatus(t *testing.T, s *ts.BuildServer, repo, commit string) {
	t.Helper()
	st := s.SpecStatus(t, repo)
	if st.IsRunning || str(st.LastStatus) != "failed" || st.LastStart == nil || st.LastFinish == nil {
		t.Errorf("status of %s = running %v, last_status %s, start %s, finish %s; want failed",
			repo, st.IsRunning, str(st.LastStatus), str(st.LastStart), str(st.LastFinish))
	}
	if commit == "" && st.LastCommit != nil || commit != "" && str(st.LastCommit) != commit {
		t.Errorf("last_commit of %s = %s, want %q", repo, str(st.LastCommit), commit)
	}
}

// TestHomeManagerModules: a flake with homeManagerModules gets a test home
// configuration built with home-manager (here a local stand-in) and the
// flake's default module.
func TestHomeManagerModules(t *testing.T) {
	t.Parallel()
	nonce := ts.Nonce()
	hmFlake, nixPath := ts.HomeManagerFixture(t, nonce)
	src := flakeRepo(t, ts.Flake{Nonce: nonce, Packages: []ts.FlakePackage{ts.GoodPackage("tool", 0)}, HomeManagerModule: true})
	s := ts.StartBuildServer(t, ts.BuildServerConfig{
		Repositories:     []config.Repository{ts.MainBranchRepo("dotfiles", src)},
		HomeManagerFlake: hmFlake,
		NixPath:          nixPath,
	})
	b := ts.WaitBuildSucceeded(t, s, s.Trigger(t, "dotfiles"))
	log := s.Log(t, b.ID)
	if len(b.Results) != 3 {
		t.Fatalf("build = %+v with %d results, want success with checks, tool and home-manager; log:\n%s", b.Build, len(b.Results), log)
	}
	check, tool, hm := b.Results[0], b.Results[1], b.Results[2]
	if check.Attr != "checks" || check.Kind != "check" || check.Status != db.ResultSuccess ||
		tool.Attr != "tool" || tool.Kind != "package" || hm.Kind != "home-manager" || hm.Attr != "homeManagerConfiguration" {
		t.Fatalf("results = %+v, %+v, %+v", check, tool, hm)
	}
	if want := (db.ResultCounts{Built: 3}); b.Counts != want {
		t.Errorf("counts = %+v, want %+v", b.Counts, want)
	}
	readOutput(t, tool)
	out := readOutput(t, hm)
	// Two modules: the test home and the flake's default module, which
	// the stand-in applied.
	if !strings.HasPrefix(out, "modules: 2\n") || !strings.Contains(out, `"username":"test"`) || !strings.Contains(out, `"marker":"`+nonce+`"`) {
		t.Errorf("activation package holds %q, want 2 modules: the test home and the flake's", out)
	}
	requireGCRoot(t, filepath.Join(s.DataDir, "gcroots", "dotfiles", "home-manager"), hm.OutPaths[0])
	ts.RequireLogInOrder(t, log,
		"Successfully built package tool",
		"Found homeManagerModules, building test home configuration...",
		"Successfully built home-manager configuration",
		"Build complete. All dependencies cached.",
	)
}

// TestLegacyBuild: a repository without flake.nix is built with nix-build
// of default.nix; a failing default.nix fails the build.
func TestLegacyBuild(t *testing.T) {
	t.Parallel()
	nonce := ts.Nonce()
	good := ts.NewGitRepo(t, map[string]string{"default.nix": ts.LegacyDefaultNix(nonce, `echo "legacy $nonce" > $out`)})
	bad := ts.NewGitRepo(t, map[string]string{"default.nix": ts.LegacyDefaultNix(nonce, `echo "legacy build fails on purpose"; exit 1`)})
	s := ts.StartBuildServer(t, ts.BuildServerConfig{
		Repositories: []config.Repository{ts.MainBranchRepo("legacy-ok", good), ts.MainBranchRepo("legacy-bad", bad)},
		MaxParallel:  2,
	})
	okID, badID := s.Trigger(t, "legacy-ok"), s.Trigger(t, "legacy-bad")

	b := ts.WaitBuildSucceeded(t, s, okID)
	log := s.Log(t, okID)
	short := ts.ShortHead(t, good)
	if len(b.Results) != 1 {
		t.Fatalf("legacy build = %+v with %d results; log:\n%s", b.Build, len(b.Results), log)
	}
	r := b.Results[0]
	if r.Kind != "legacy" || r.Attr != "default.nix" {
		t.Errorf("result = %+v, want kind legacy", r)
	}
	if out := readOutput(t, r); out != "legacy "+nonce+"\n" {
		t.Errorf("output holds %q", out)
	}
	requireGCRoot(t, filepath.Join(s.DataDir, "gcroots", "legacy-ok", "result"), r.OutPaths[0])
	ts.RequireLogInOrder(t, log,
		"Starting build for legacy-ok",
		"Cloning repository...",
		"Building commit "+short,
		"No flake.nix found, will attempt default.nix",
		"Build complete. All dependencies cached.",
		"Build finished successfully for commit "+short,
	)
	if strings.Contains(log, "Updating flake inputs...") {
		t.Errorf("legacy build updated flake inputs:\n%s", log)
	}
	if st := s.SpecStatus(t, "legacy-ok"); str(st.LastStatus) != "success" || str(st.LastCommit) != short {
		t.Errorf("status = %s at %s, want success at %s", str(st.LastStatus), str(st.LastCommit), short)
	}

	b = s.WaitFinished(t, badID)
	log = s.Log(t, badID)
	badShort := ts.ShortHead(t, bad)
	if b.Status != db.StatusFailed || b.Error != "1 of 1 attributes failed: default.nix (legacy)" || b.ShortCommit != badShort {
		t.Errorf("failing legacy build = %+v; log:\n%s", b.Build, log)
	}
	if len(b.Results) != 1 || b.Results[0].Kind != "legacy" || b.Results[0].Status != db.ResultFailed {
		t.Fatalf("results = %+v, want one failed legacy result", b.Results)
	}
	requireFailure(t, b.Results[0], "cf-legacy-fixture", "legacy build fails on purpose")
	ts.RequireLogInOrder(t, log, "No flake.nix found, will attempt default.nix")
	if !strings.Contains(log, "legacy build fails on purpose") || !strings.Contains(log, "Error: nix-build failed") || strings.Contains(log, "Build finished successfully") {
		t.Errorf("log of the failing legacy build:\n%s", log)
	}
	requireFailedStatus(t, s, "legacy-bad", badShort)
}

// requireFailure checks a failed result: its derivation (named drvName),
// Nix's error naming it, and the end of its log holding wantTail.
func requireFailure(t *testing.T, r *db.Result, drvName, wantTail string) {
	t.Helper()
	if r.Status != db.ResultFailed || !strings.HasPrefix(r.DrvPath, "/nix/store/") || !strings.HasSuffix(r.DrvPath, "-"+drvName+".drv") {
		t.Errorf("result %s = status %s, drv %q; want failed with the derivation of %s", r.Attr, r.Status, r.DrvPath, drvName)
	}
	if want := "error: builder for '" + r.DrvPath + "' failed"; !strings.HasPrefix(r.Error, want) {
		t.Errorf("error of %s = %q, want Nix's %q", r.Attr, r.Error, want)
	}
	if !strings.Contains(r.LogTail, wantTail) || !strings.Contains(r.LogTail, r.Error) {
		t.Errorf("log tail of %s = %q, want the builder's %q and Nix's error", r.Attr, r.LogTail, wantTail)
	}
}

// TestFailingCheck: a failing flake check fails the build as the
// attribute "checks", with its derivation and log; the packages still
// build and stay cached.
func TestFailingCheck(t *testing.T) {
	t.Parallel()
	eachDB(t, testFailingCheck)
}

func testFailingCheck(t *testing.T, dsn func(string) string) {
	nonce := ts.Nonce()
	src := flakeRepo(t, ts.Flake{Nonce: nonce,
		Packages: []ts.FlakePackage{ts.GoodPackage("tool", 0)},
		Checks:   []ts.FlakePackage{ts.GoodPackage("lint", 0), ts.FailingPackage("unit")},
	})
	dataDir := t.TempDir()
	s := ts.StartBuildServer(t, ts.BuildServerConfig{DataDir: dataDir, Database: dsn(dataDir), Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})
	b := s.WaitFinished(t, s.Trigger(t, "app"))
	log := s.Log(t, b.ID)
	short := ts.ShortHead(t, src)
	if b.Status != db.StatusFailed || b.Error != "1 of 2 attributes failed: checks (check)" {
		t.Fatalf("build = %+v, want failed by its check; log:\n%s", b.Build, log)
	}
	if want := (db.ResultCounts{Built: 1, Failed: 1}); b.Counts != want {
		t.Errorf("counts = %+v, want %+v", b.Counts, want)
	}
	if len(b.Results) != 2 || b.Results[0].Attr != "checks" || b.Results[0].Kind != "check" {
		t.Fatalf("results = %+v, want checks then tool", b.Results)
	}
	requireFailure(t, b.Results[0], "unit", "fixture package unit fails on purpose")
	out := readOutput(t, b.Results[1])
	if out != "tool "+nonce+"\n" {
		t.Errorf("tool holds %q", out)
	}
	requireGCRoot(t, filepath.Join(s.DataDir, "gcroots", "app", "tool"), b.Results[1].OutPaths[0])
	ts.RequireLogInOrder(t, log,
		"Checking flake...",
		"Flake check failed; building the packages anyway",
		"Successfully built package tool",
		"Build complete with failures: 1 built, 1 failed, 0 skipped; what built is cached.",
		"Build failed for commit "+short+": 1 of 2 attributes failed: checks (check)",
	)
	if strings.Contains(log, "Build finished successfully") || strings.Contains(log, "All dependencies cached") {
		t.Errorf("the log of a failed build claims success:\n%s", log)
	}
	requireFailedStatus(t, s, "app", short)
}

// TestEvaluationError: a flake that does not evaluate fails the build
// with Nix's own message, said once.
func TestEvaluationError(t *testing.T) {
	t.Parallel()
	src := ts.NewGitRepo(t, map[string]string{"flake.nix": `{
  outputs = { self }: { packages.` + config.DefaultSystem() + `.broken = undefinedFixtureVariable; };
}
`})
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})
	b := s.WaitFinished(t, s.Trigger(t, "app"))
	log := s.Log(t, b.ID)
	want := "evaluate the flake's outputs: nix flake show: error: undefined variable 'undefinedFixtureVariable'"
	if b.Status != db.StatusFailed || !strings.HasPrefix(b.Error, want) || strings.Count(b.Error, "nix flake show") != 1 {
		t.Fatalf("build error = %q, want it to start %q; log:\n%s", b.Error, want, log)
	}
	// The check evaluates the flake first and fails with the same message.
	if len(b.Results) != 1 || b.Results[0].Attr != "checks" || b.Results[0].Status != db.ResultFailed ||
		!strings.HasPrefix(b.Results[0].Error, "error: undefined variable 'undefinedFixtureVariable'") || b.Results[0].DrvPath != "" {
		t.Errorf("results = %+v, want the failed check with Nix's message and no derivation", b.Results)
	}
	if !strings.Contains(log, "Error: cannot evaluate the flake's outputs: nix flake show: error: undefined variable") || strings.Contains(log, "Build finished successfully") {
		t.Errorf("log:\n%s", log)
	}
	requireFailedStatus(t, s, "app", ts.ShortHead(t, src))
}

// TestUnreachableRepository: a clone that fails ends the build "failed"
// with git's reason in the log, and leaves nothing running or half-cloned.
func TestUnreachableRepository(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "missing")
	s := ts.StartBuildServer(t, ts.BuildServerConfig{
		Repositories: []config.Repository{
			ts.MainBranchRepo("missing-path", missing),
			ts.MainBranchRepo("missing-url", "file:///nonexistent-"+ts.Nonce()),
		},
		MaxParallel: 2,
	})
	for _, repo := range []string{"missing-path", "missing-url"} {
		id := s.Trigger(t, repo)
		b := s.WaitFinished(t, id)
		log := s.Log(t, id)
		if b.Status != db.StatusFailed || !strings.Contains(b.Error, "clone") || b.Commit != "" {
			t.Errorf("%s: build = %+v; log:\n%s", repo, b.Build, log)
		}
		ts.RequireLogInOrder(t, log, "Starting build for "+repo, "Cloning repository...")
		if !strings.Contains(log, "Error: failed to clone") || !strings.Contains(log, "fatal:") {
			t.Errorf("%s: the log does not say why the clone failed:\n%s", repo, log)
		}
		requireFailedStatus(t, s, repo, "")
		if _, err := os.Stat(filepath.Join(s.DataDir, "builds", repo)); !os.IsNotExist(err) {
			t.Errorf("%s: a clone directory is left behind (%v)", repo, err)
		}
		// Nothing is stuck: the next trigger starts a new build.
		if next := s.Trigger(t, repo); next == id {
			t.Errorf("%s: trigger after the failure returned the failed build", repo)
		} else if b := s.WaitFinished(t, next); b.Status != db.StatusFailed {
			t.Errorf("%s: second build = %+v", repo, b.Build)
		}
	}
}

// TestSilentRemote: a remote that accepts the connection and never answers
// fails the sync phase after git_timeout, not the build timeout, and says
// so in the build's error and log.
func TestSilentRemote(t *testing.T) {
	t.Parallel()
	s := ts.StartBuildServer(t, ts.BuildServerConfig{
		Repositories: []config.Repository{ts.MainBranchRepo("silent", "git://"+ts.SilentRemote(t)+"/repo.git")},
		Timeout:      time.Hour,
		GitTimeout:   time.Second,
	})
	id := s.Trigger(t, "silent")
	b := s.WaitFinished(t, id)
	log := s.Log(t, id)
	if b.Status != db.StatusFailed || !strings.Contains(b.Error, "git_timeout") {
		t.Errorf("build = %+v, want failed naming git_timeout; log:\n%s", b.Build, log)
	}
	ts.RequireLogInOrder(t, log, "Starting build for silent", "Cloning repository...")
	if !strings.Contains(log, "Error: failed to clone") || !strings.Contains(log, "nothing for 1s (git_timeout)") {
		t.Errorf("the log does not say why the clone failed:\n%s", log)
	}
	requireFailedStatus(t, s, "silent", "")
}

// TestTimeout: a build running past the timeout is stopped and failed.
func TestTimeout(t *testing.T) {
	t.Parallel()
	blocker := ts.NewBlocker(t, "block")
	src := flakeRepo(t, ts.Flake{Nonce: ts.Nonce(), Packages: []ts.FlakePackage{blocker.Package()}})
	const timeout = 3 * time.Second
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}, Timeout: timeout})
	b := s.WaitFinished(t, s.Trigger(t, "app"))
	log := s.Log(t, b.ID)
	if b.Status != db.StatusFailed || !strings.Contains(b.Error, "timed out") {
		t.Fatalf("build = %+v, want failed with timed out; log:\n%s", b.Build, log)
	}
	if !strings.Contains(log, "Build failed: timed out after "+timeout.String()) || strings.Contains(log, "Build finished successfully") {
		t.Errorf("log of the timed-out build:\n%s", log)
	}
	// On a very slow machine the timeout could hit before the commit is
	// known; normally it is, and the builder has started and is killed.
	if b.ShortCommit != "" && b.ShortCommit != ts.ShortHead(t, src) {
		t.Errorf("build of commit %s, want %s", b.ShortCommit, ts.ShortHead(t, src))
	}
	requireFailedStatus(t, s, "app", b.ShortCommit)
	if blocker.Started() {
		pid := blocker.WaitStarted(t, s, b.ID)
		ts.WaitUntil(t, "the timed-out builder to exit", func() bool { return !ts.ProcessAlive(pid) })
	}
}

func listBuilds(t *testing.T, s *ts.BuildServer, repo string) []*db.Build {
	t.Helper()
	var builds []*db.Build
	s.JSON(t, "GET", "/api/v1/repositories/"+repo+"/builds", http.StatusOK, &builds)
	return builds
}

// TestPolling: the poller builds a branch it has not built, and then each
// new commit, with reason "poll".
func TestPolling(t *testing.T) {
	t.Parallel()
	src := flakeRepo(t, ts.Flake{Nonce: ts.Nonce(), Packages: []ts.FlakePackage{ts.GoodPackage("hello", 0)}})
	head1 := ts.Head(t, src)
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}, PollInterval: time.Second})

	var builds []*db.Build
	ts.WaitUntil(t, "the first poll to build", func() bool {
		builds = listBuilds(t, s, "app")
		return len(builds) > 0
	})
	b1 := ts.WaitBuildSucceeded(t, s, builds[0].ID)
	if b1.Reason != "poll" || b1.Commit != head1 {
		t.Fatalf("first build = %+v, want a successful poll build of %s", b1.Build, head1)
	}

	head2 := ts.Commit(t, src, map[string]string{"flake.nix": ts.Flake{System: config.DefaultSystem(), Nonce: ts.Nonce(),
		Packages: []ts.FlakePackage{ts.GoodPackage("hello", 0)}}.Nix()})
	ts.WaitUntil(t, "a poll build of the new commit", func() bool {
		builds = listBuilds(t, s, "app")
		return builds[0].ID != b1.ID
	})
	b2 := ts.WaitBuildSucceeded(t, s, builds[0].ID)
	if b2.Reason != "poll" || b2.Commit != head2 {
		t.Fatalf("second build = %+v, want a successful poll build of %s", b2.Build, head2)
	}
	if builds = listBuilds(t, s, "app"); len(builds) != 2 {
		t.Errorf("%d builds, want 2 (one per commit)", len(builds))
	}
}

// TestRecovery: builds a dead server left queued or running are failed as
// "interrupted" when the next server starts, and say so in their logs.
func TestRecovery(t *testing.T) {
	t.Parallel()
	eachDB(t, testRecovery)
}

func testRecovery(t *testing.T, newDSN func(string) string) {
	dataDir := t.TempDir()
	dsn := newDSN(dataDir)
	src := flakeRepo(t, ts.Flake{Nonce: ts.Nonce(), Packages: []ts.FlakePackage{ts.GoodPackage("hello", 0)}})
	ctx := t.Context()

	// The server that dies: its database and orchestrator, a running build
	// of app with a log, and a queued build of other.
	database, err := db.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	repos := []config.Repository{ts.MainBranchRepo("app", src), ts.MainBranchRepo("other", src)}
	if _, err := build.New(build.Config{DataDir: dataDir, Repositories: repos, DB: database}); err != nil {
		t.Fatal(err)
	}
	logDir := filepath.Join(dataDir, "logs", "app")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	running, _, err := database.CreateBuild(ctx, "app", "api", logDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := database.StartBuild(ctx, running.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(running.LogPath, []byte("Starting build for app\nCloning repository...\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(running.LogPath, filepath.Join(dataDir, "logs", "app.log")); err != nil {
		t.Fatal(err)
	}
	queued, _, err := database.CreateBuild(ctx, "other", "poll", filepath.Join(dataDir, "logs", "other"))
	if err != nil {
		t.Fatal(err)
	}
	if err := database.Close(); err != nil {
		t.Fatal(err)
	}

	s := ts.StartBuildServer(t, ts.BuildServerConfig{DataDir: dataDir, Database: dsn, Repositories: repos})
	interrupted := fmt.Sprintf("Build interrupted: the server stopped while build %d was running; marked failed", running.ID)
	b := s.Build(t, running.ID)
	if b.Status != db.StatusFailed || b.Error != "interrupted" || b.FinishedAt == nil {
		t.Errorf("interrupted build = %+v", b.Build)
	}
	if log := s.Log(t, running.ID); log != "Starting build for app\nCloning repository...\n"+interrupted+"\n" {
		t.Errorf("log of the interrupted build:\n%s", log)
	}
	var logs struct{ Logs []string }
	s.JSON(t, "GET", "/build/logs/app?lines=1", http.StatusOK, &logs)
	if len(logs.Logs) != 1 || logs.Logs[0] != interrupted {
		t.Errorf("/build/logs/app?lines=1 = %q, want %q", logs.Logs, interrupted)
	}
	requireFailedStatus(t, s, "app", "")
	var file build.Status
	data, err := os.ReadFile(filepath.Join(dataDir, "status", "app.json"))
	if err == nil {
		err = json.Unmarshal(data, &file)
	}
	if err != nil || !reflect.DeepEqual(file, s.SpecStatus(t, "app")) {
		t.Errorf("status file %s (%v), want /build/status", data, err)
	}
	if q := s.Build(t, queued.ID); q.Status != db.StatusFailed || q.Error != "interrupted" {
		t.Errorf("interrupted queued build = %+v", q.Build)
	}
	requireFailedStatus(t, s, "other", "")

	// The repository builds again.
	ts.WaitBuildSucceeded(t, s, s.Trigger(t, "app"))
}

// TestParallelLimit: with MaxParallel 2, of three builds two run and the
// third waits queued until one of them ends.
func TestParallelLimit(t *testing.T) {
	t.Parallel()
	names := []string{"r1", "r2", "r3"}
	blockers := map[string]*ts.Blocker{}
	var repos []config.Repository
	for _, name := range names {
		blockers[name] = ts.NewBlocker(t, "block")
		repos = append(repos, ts.MainBranchRepo(name, flakeRepo(t, ts.Flake{Nonce: ts.Nonce(), Packages: []ts.FlakePackage{blockers[name].Package()}})))
	}
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: repos, MaxParallel: 2})

	ids := map[string]int64{}
	for _, name := range names {
		ids[name] = s.Trigger(t, name)
	}

	// Watch the recorded states for the whole test: never more than two
	// builds running.
	ctx, stop := context.WithCancel(t.Context())
	var (
		mu         sync.Mutex
		maxRunning int
		sampleErr  error
		watching   sync.WaitGroup
	)
	watching.Go(func() {
		for ctx.Err() == nil {
			n := 0
			for _, id := range ids {
				b, err := s.DB.Build(ctx, id)
				if err != nil {
					if ctx.Err() == nil {
						mu.Lock()
						sampleErr = err
						mu.Unlock()
					}
					return
				}
				if b.Status == db.StatusRunning {
					n++
				}
			}
			mu.Lock()
			maxRunning = max(maxRunning, n)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	defer func() { stop(); watching.Wait() }()

	started := func() (in, out []string) {
		for _, name := range names {
			if blockers[name].Started() {
				in = append(in, name)
			} else {
				out = append(out, name)
			}
		}
		return in, out
	}
	ts.WaitUntil(t, "two builders to start", func() bool {
		// None is released yet: a build that ended failed.
		for _, name := range names {
			if b := s.Build(t, ids[name]); !b.Active() {
				t.Fatalf("build of %s ended %s (error %q) before it was released; log:\n%s", name, b.Status, b.Error, s.Log(t, b.ID))
			}
		}
		in, _ := started()
		return len(in) >= 2
	})
	in, out := started()
	if len(in) != 2 {
		t.Fatalf("builders started: %v, want 2 of 3", in)
	}
	waiting := out[0]
	if b := s.Build(t, ids[waiting]); b.Status != db.StatusQueued || b.StartedAt != nil {
		t.Errorf("third build while two run = %+v, want queued", b.Build)
	}
	if st := s.SpecStatus(t, waiting); !st.IsRunning || st.LastStatus != nil {
		t.Errorf("spec status of the queued build: running %v, last_status %s; want running (queued counts)", st.IsRunning, str(st.LastStatus))
	}

	// One ends: the third starts.
	blockers[in[0]].Release(t)
	ts.WaitBuildSucceeded(t, s, ids[in[0]])
	blockers[waiting].WaitStarted(t, s, ids[waiting])
	if b := s.Build(t, ids[in[1]]); b.Status != db.StatusRunning {
		t.Errorf("build of %s = %s, want still running", in[1], b.Status)
	}

	for _, name := range []string{in[1], waiting} {
		blockers[name].Release(t)
	}
	for _, name := range names {
		ts.WaitBuildSucceeded(t, s, ids[name])
	}
	stop()
	watching.Wait()
	if sampleErr != nil {
		t.Fatal(sampleErr)
	}
	if maxRunning != 2 {
		t.Errorf("at most %d builds were seen running at once, want 2", maxRunning)
	}
	// The queued build started only after the first one had ended.
	first, third := s.Build(t, ids[in[0]]), s.Build(t, ids[waiting])
	if third.StartedAt.Before(*first.FinishedAt) {
		t.Errorf("build of %s started at %s, before the build of %s ended at %s", waiting, third.StartedAt, in[0], first.FinishedAt)
	}
}

// health is GET /health.
type health struct {
	Status   string   `json:"status"`
	Problems []string `json:"problems"`
}

// TestStatusFileCatchesUp: a status file that cannot be written (the
// status directory replaced by a regular file, which stops root too) is
// reported by /health and written again at the next transition once the
// disk is fixed, and at the next start.
func TestStatusFileCatchesUp(t *testing.T) {
	t.Parallel()
	src := flakeRepo(t, ts.Flake{Nonce: ts.Nonce(), Packages: []ts.FlakePackage{ts.GoodPackage("tool", 0)}})
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})
	statusDir := filepath.Join(s.DataDir, "status")
	file := filepath.Join(statusDir, "app.json")
	breakDisk := func() {
		t.Helper()
		if err := os.RemoveAll(statusDir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(statusDir, []byte("not a directory\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fixDisk := func() {
		t.Helper()
		if err := os.Remove(statusDir); err != nil {
			t.Fatal(err)
		}
	}
	healthOf := func(s *ts.BuildServer) health {
		var h health
		s.JSON(t, "GET", "/health", http.StatusOK, &h)
		return h
	}
	// fileMatches reports whether the status file says what the API says.
	fileMatches := func(s *ts.BuildServer) bool {
		b, err := os.ReadFile(file)
		if err != nil {
			return false
		}
		var got build.Status
		return json.Unmarshal(b, &got) == nil && reflect.DeepEqual(got, s.SpecStatus(t, "app"))
	}

	breakDisk()
	first := s.WaitFinished(t, s.Trigger(t, "app"))
	ts.WaitUntil(t, "/health to report the stale status file", func() bool { return healthOf(s).Status == "degraded" })
	if h := healthOf(s); len(h.Problems) != 1 || !strings.Contains(h.Problems[0], "status/app.json") || !strings.Contains(h.Problems[0], "not a directory") {
		t.Errorf("/health problems = %q, want one naming status/app.json and the error", h.Problems)
	}

	// Fixed: the next transition writes the file, /health is healthy.
	fixDisk()
	second := s.WaitFinished(t, s.Trigger(t, "app"))
	if first.Status != db.StatusSuccess || second.Status != db.StatusSuccess {
		t.Fatalf("builds = %s, %s, want success", first.Status, second.Status)
	}
	ts.WaitUntil(t, "the status file to catch up", func() bool { return fileMatches(s) && healthOf(s).Status == "healthy" })
	if h := healthOf(s); h.Problems != nil {
		t.Errorf("/health problems after the fix = %q", h.Problems)
	}

	// Broken again, fixed while no build runs: the next start catches up.
	breakDisk()
	s.WaitFinished(t, s.Trigger(t, "app"))
	ts.WaitUntil(t, "/health to report the stale status file", func() bool { return healthOf(s).Status == "degraded" })
	fixDisk()
	restarted := ts.StartBuildServer(t, ts.BuildServerConfig{
		Repositories: []config.Repository{ts.MainBranchRepo("app", src)},
		DataDir:      s.DataDir,
		DB:           s.DB,
	})
	if !fileMatches(restarted) {
		b, err := os.ReadFile(file)
		t.Errorf("status file after a start = %s (%v), want %+v", b, err, restarted.SpecStatus(t, "app"))
	}
	if h := healthOf(restarted); h.Status != "healthy" {
		t.Errorf("/health after a start = %+v, want healthy", h)
	}
}
