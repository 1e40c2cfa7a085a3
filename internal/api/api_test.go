package api_test

// Integration tests of the HTTP API over a real orchestrator: git
// repositories created by the test, real nix builds, SQLite in a temporary
// data directory. See internal/testsupport for the fixtures.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/webhook"
)

// flakeRepo creates a git repository holding a fixture flake with pkgs.
func flakeRepo(t *testing.T, nonce string, pkgs ...ts.FlakePackage) string {
	t.Helper()
	f := ts.Flake{System: config.DefaultSystem(), Nonce: nonce, Packages: pkgs}
	return ts.NewGitRepo(t, map[string]string{"flake.nix": f.Nix()})
}

// startBlocked starts a server for one repository "app" whose flake has a
// single blocking package, triggers a build and waits for the builder.
func startBlocked(t *testing.T) (*ts.BuildServer, *ts.Blocker, int64, int) {
	t.Helper()
	blocker := ts.NewBlocker(t, "block")
	src := flakeRepo(t, ts.Nonce(), blocker.Package())
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})
	id := s.Trigger(t, "app")
	pid := blocker.WaitStarted(t, s, id)
	return s, blocker, id, pid
}

func resultsByAttr(b api.Build) map[string]*db.Result {
	m := map[string]*db.Result{}
	for _, r := range b.Results {
		m[r.Attr] = r
	}
	return m
}

// requireBuilt checks a successful result: one output in the store, with
// content containing want, and the GC root link pointing at it.
func requireBuilt(t *testing.T, r *db.Result, want, gcroot string) {
	t.Helper()
	if r == nil {
		t.Fatal("result missing")
	}
	if r.Status != db.ResultSuccess || len(r.OutPaths) != 1 || r.FinishedAt == nil {
		t.Fatalf("result %s = %+v, want success with one output", r.Attr, r)
	}
	out := r.OutPaths[0]
	if !strings.HasPrefix(out, "/nix/store/") {
		t.Fatalf("result %s: out path %q is not in /nix/store", r.Attr, out)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("result %s: %v", r.Attr, err)
	}
	if !strings.Contains(string(data), want) {
		t.Errorf("result %s: %s holds %q, want it to contain %q", r.Attr, out, data, want)
	}
	if target, err := os.Readlink(gcroot); err != nil || target != out {
		t.Errorf("GC root %s -> %q (%v), want %s", gcroot, target, err, out)
	}
}

func specStatusJSON(t *testing.T, s *ts.BuildServer, repo string) map[string]any {
	t.Helper()
	var m map[string]any
	s.JSON(t, "GET", "/build/status/"+repo, http.StatusOK, &m)
	return m
}

func statusFile(t *testing.T, s *ts.BuildServer, repo string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.DataDir, "status", repo+".json"))
	if err != nil {
		t.Fatalf("status file: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("status file %s: %v", data, err)
	}
	return m
}

func specLogs(t *testing.T, s *ts.BuildServer, repo, query string) []string {
	t.Helper()
	var resp struct {
		Logs []string `json:"logs"`
	}
	s.JSON(t, "GET", "/build/logs/"+repo+query, http.StatusOK, &resp)
	return resp.Logs
}

func logLines(log string) []string {
	return strings.Split(strings.TrimSuffix(log, "\n"), "\n")
}

// tailLog is the end of a long log, for a failure message.
func tailLog(log string) string {
	if len(log) > 2000 {
		return "…" + log[len(log)-2000:]
	}
	return log
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// TestFlakeBuild is the spec's flake build end to end: two packages build,
// one fails in between and the build goes on, keeps what built, and ends
// "failed"; status, status file, /api/v1, results (with the failure's
// derivation, error and log), GC roots and log all agree; a second build
// after a new commit updates the clone, builds that commit and succeeds.
func TestFlakeBuild(t *testing.T) {
	t.Parallel()
	nonce := ts.Nonce()
	// Packages build in name order: the failure is between two good ones.
	src := flakeRepo(t, nonce, ts.GoodPackage("alpha", 150), ts.FailingPackage("bad"), ts.GoodPackage("zeta", 0))
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})

	never := map[string]any{"is_running": false, "last_start": nil, "last_finish": nil, "last_status": nil, "last_commit": nil, "repository": "app"}
	if got := specStatusJSON(t, s, "app"); !reflect.DeepEqual(got, never) {
		t.Errorf("status before any build = %v, want %v", got, never)
	}

	id := s.Trigger(t, "app")
	b := s.WaitFinished(t, id)
	full, short := ts.Head(t, src), ts.ShortHead(t, src)
	log := s.Log(t, id)
	if b.Status != db.StatusFailed || b.Error != "1 of 4 attributes failed: bad (package)" || b.Reason != "api" || b.Commit != full || b.ShortCommit != short {
		t.Fatalf("build = %+v, want failed (bad) of %s (%s) by api; log:\n%s", b.Build, full, short, log)
	}
	if want := (db.ResultCounts{Built: 3, Failed: 1}); b.Counts != want {
		t.Errorf("counts = %+v, want %+v", b.Counts, want)
	}

	st := s.SpecStatus(t, "app")
	if st.IsRunning || str(st.LastStatus) != "failed" || str(st.LastCommit) != short || st.Repository != "app" {
		t.Errorf("status = running %v, last_status %s, last_commit %s, repository %q; want failed at %s",
			st.IsRunning, str(st.LastStatus), str(st.LastCommit), st.Repository, short)
	}
	var repo api.Repository
	s.JSON(t, "GET", "/api/v1/repositories/app", http.StatusOK, &repo)
	if repo.LatestBuild == nil || repo.LatestBuild.Status != db.StatusFailed || str(repo.Status.LastStatus) != "failed" || repo.LatestBuild.Counts != b.Counts {
		t.Errorf("/api/v1/repositories/app = %+v, want the failed build with its counts", repo)
	}
	start, err1 := time.Parse(time.RFC3339, str(st.LastStart))
	finish, err2 := time.Parse(time.RFC3339, str(st.LastFinish))
	if err1 != nil || err2 != nil || finish.Before(start) {
		t.Errorf("last_start %s, last_finish %s: want RFC 3339 times, start ≤ finish", str(st.LastStart), str(st.LastFinish))
	}
	if api, file := specStatusJSON(t, s, "app"), statusFile(t, s, "app"); !reflect.DeepEqual(api, file) {
		t.Errorf("status file %v differs from /build/status %v", file, api)
	}

	res := resultsByAttr(b)
	if len(b.Results) != 4 || res["checks"] == nil || res["checks"].Status != db.ResultSuccess {
		t.Fatalf("results = %d, want checks, alpha, bad, zeta: %+v", len(b.Results), b.Results)
	}
	gcroots := filepath.Join(s.DataDir, "gcroots", "app")
	for _, name := range []string{"alpha", "zeta"} {
		if res[name] == nil || res[name].Kind != "package" {
			t.Fatalf("no package result %s: %+v", name, b.Results)
		}
		requireBuilt(t, res[name], name+" "+nonce, filepath.Join(gcroots, name))
	}
	bad := res["bad"]
	if bad == nil || bad.Kind != "package" || bad.Status != db.ResultFailed || len(bad.OutPaths) != 0 ||
		!strings.HasSuffix(bad.DrvPath, "-bad.drv") || bad.Error != "error: builder for '"+bad.DrvPath+"' failed with exit code 1" ||
		!strings.Contains(bad.LogTail, "fixture package bad fails on purpose") {
		t.Fatalf("result bad = %+v, want a failed package with its derivation, Nix's error and the end of its log", bad)
	}
	// Each attribute's own part of the log.
	code, body := s.Do(t, "GET", fmt.Sprintf("/api/v1/builds/%d/results/%d/log", id, bad.ID), nil, nil)
	if code != http.StatusOK || !strings.Contains(string(body), "bad> fixture package bad fails on purpose") ||
		!strings.Contains(string(body), bad.Error) || strings.Contains(string(body), "of alpha") {
		t.Errorf("log of bad = %d %q, want only bad's part of the build log", code, body)
	}
	code, body = s.Do(t, "GET", fmt.Sprintf("/api/v1/builds/%d/results/%d/log", id, res["alpha"].ID), nil, nil)
	if code != http.StatusOK || !strings.Contains(string(body), "alpha> log line 150 of alpha") || strings.Contains(string(body), "of bad") {
		t.Errorf("log of alpha = %d %q, want alpha's part of the build log", code, tailLog(string(body)))
	}
	for _, tc := range []struct {
		path string
		code int
	}{
		{fmt.Sprintf("/api/v1/builds/%d/results/x/log", id), http.StatusBadRequest},
		{fmt.Sprintf("/api/v1/builds/%d/results/999999/log", id), http.StatusNotFound},
		{fmt.Sprintf("/api/v1/builds/999999/results/%d/log", bad.ID), http.StatusNotFound},
	} {
		if code, body := s.Do(t, "GET", tc.path, nil, nil); code != tc.code {
			t.Errorf("GET %s = %d %s, want %d", tc.path, code, body, tc.code)
		}
	}
	if _, err := os.Lstat(filepath.Join(gcroots, "bad")); err == nil {
		t.Errorf("a GC root exists for the failed package")
	}

	ts.RequireLogInOrder(t, log,
		"Starting build for app",
		"Cloning repository...",
		"Building commit "+short,
		"Updating flake inputs...",
		"Checking flake...",
		"Building package alpha...",
		"Successfully built package alpha",
		"Building package bad...",
		"Failed to build package bad",
		"Building package zeta...",
		"Successfully built package zeta",
		"Build complete with failures: 3 built, 1 failed, 0 skipped; what built is cached.",
		"Build failed for commit "+short+": 1 of 4 attributes failed: bad (package)",
	)
	if strings.Contains(log, "Build finished successfully") || strings.Contains(log, "All dependencies cached") {
		t.Errorf("the log of a failed build claims success:\n%s", log)
	}
	// nix's own output is in the log too: the failing builder's message.
	if !strings.Contains(log, "fixture package bad fails on purpose") || !strings.Contains(log, "log line 150 of alpha") {
		t.Errorf("the log lacks the builders' output:\n%s", log)
	}

	// /build/logs: the last lines of that log; 100 by default.
	lines := logLines(log)
	if len(lines) <= 100 {
		t.Fatalf("the log has %d lines; the fixture should make more than 100", len(lines))
	}
	if got := specLogs(t, s, "app", ""); !slices.Equal(got, lines[len(lines)-100:]) {
		t.Errorf("/build/logs default = %d lines ending %q, want the last 100 of the log", len(got), got[len(got)-1])
	}
	if got := specLogs(t, s, "app", "?lines=3"); !slices.Equal(got, lines[len(lines)-3:]) {
		t.Errorf("/build/logs?lines=3 = %q, want %q", got, lines[len(lines)-3:])
	}
	if got := specLogs(t, s, "app", "?lines=10000"); !slices.Equal(got, lines) {
		t.Errorf("/build/logs?lines=10000 = %d lines, want the whole log (%d)", len(got), len(lines))
	}

	// A new commit: the next build updates the clone and builds it.
	nonce2 := ts.Nonce()
	f2 := ts.Flake{System: config.DefaultSystem(), Nonce: nonce2, Packages: []ts.FlakePackage{ts.GoodPackage("alpha", 0)}}
	full2 := ts.Commit(t, src, map[string]string{"flake.nix": f2.Nix()})
	short2 := ts.ShortHead(t, src)
	id2 := s.Trigger(t, "app")
	b2 := ts.WaitBuildSucceeded(t, s, id2)
	log2 := s.Log(t, id2)
	if b2.Commit != full2 || len(b2.Results) != 2 || b2.Counts != (db.ResultCounts{Built: 2}) {
		t.Fatalf("second build = %+v with %d results, want success of %s; log:\n%s", b2.Build, len(b2.Results), full2, log2)
	}
	requireBuilt(t, resultsByAttr(b2)["alpha"], "alpha "+nonce2, filepath.Join(gcroots, "alpha"))
	ts.RequireLogInOrder(t, log2, "Starting build for app", "Updating repository...", "Building commit "+short2,
		"Successfully built package alpha", "Build finished successfully for commit "+short2)
	if strings.Contains(log2, "Cloning repository...") {
		t.Errorf("second build cloned again:\n%s", log2)
	}
	if st := s.SpecStatus(t, "app"); str(st.LastCommit) != short2 || str(st.LastStatus) != "success" {
		t.Errorf("status after the second build: last_commit %s, last_status %s; want %s, success", str(st.LastCommit), str(st.LastStatus), short2)
	}
	if got := specLogs(t, s, "app", "?lines=1"); !slices.Equal(got, []string{"Build finished successfully for commit " + short2}) {
		t.Errorf("/build/logs?lines=1 after the second build = %q", got)
	}
	var builds []*db.Build
	s.JSON(t, "GET", "/api/v1/repositories/app/builds", http.StatusOK, &builds)
	if len(builds) != 2 || builds[0].ID != id2 || builds[1].ID != id {
		t.Errorf("builds = %+v, want %d then %d", builds, id2, id)
	}
}

// TestTriggerWhileRunning: a second trigger while a build runs returns
// that build, and the status shows it running until it ends.
func TestTriggerWhileRunning(t *testing.T) {
	t.Parallel()
	blocker := ts.NewBlocker(t, "block")
	src := flakeRepo(t, ts.Nonce(), blocker.Package())
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})

	// Trigger through /api/v1 this time: 201 with the queued build.
	var queued db.Build
	s.JSON(t, "POST", "/api/v1/repositories/app/builds", http.StatusCreated, &queued)
	if queued.ID == 0 || queued.Repository != "app" || queued.Reason != "api" {
		t.Fatalf("POST /api/v1/repositories/app/builds = %+v", queued)
	}
	blocker.WaitStarted(t, s, queued.ID)

	var again struct {
		Status     string `json:"status"`
		Repository string `json:"repository"`
		BuildID    int64  `json:"build_id"`
	}
	s.JSON(t, "POST", "/build/trigger/app", http.StatusOK, &again)
	if again.Status != "already_running" || again.BuildID != queued.ID || again.Repository != "app" {
		t.Errorf("second trigger = %+v, want already_running of build %d", again, queued.ID)
	}
	var conflict db.Build
	s.JSON(t, "POST", "/api/v1/repositories/app/builds", http.StatusConflict, &conflict)
	if conflict.ID != queued.ID || conflict.Status != db.StatusRunning {
		t.Errorf("v1 trigger while running = %+v, want 409 with running build %d", conflict, queued.ID)
	}

	st := specStatusJSON(t, s, "app")
	if st["is_running"] != true || st["last_status"] != nil || st["last_finish"] != nil || st["last_commit"] != nil || st["last_start"] == nil {
		t.Errorf("status while running = %v, want is_running, last_start set and the rest null", st)
	}
	if file := statusFile(t, s, "app"); !reflect.DeepEqual(file, st) {
		t.Errorf("status file while running = %v, want %v", file, st)
	}
	var repo api.Repository
	s.JSON(t, "GET", "/api/v1/repositories/app", http.StatusOK, &repo)
	if repo.LatestBuild == nil || repo.LatestBuild.ID != queued.ID || repo.LatestBuild.Status != db.StatusRunning || !repo.Status.IsRunning {
		t.Errorf("repository while running = %+v", repo)
	}

	blocker.Release(t)
	ts.WaitBuildSucceeded(t, s, queued.ID)
	st = specStatusJSON(t, s, "app")
	if st["is_running"] != false || st["last_status"] != "success" || st["last_commit"] != ts.ShortHead(t, src) {
		t.Errorf("status after release = %v", st)
	}
	if file := statusFile(t, s, "app"); !reflect.DeepEqual(file, st) {
		t.Errorf("status file after the build = %v, want %v", file, st)
	}
}

// TestCancel: cancelling a running build kills its builder and ends it
// "cancelled" ("failed" for the spec); the repository builds again after.
func TestCancel(t *testing.T) {
	t.Parallel()
	s, blocker, id, pid := startBlocked(t)
	if !ts.ProcessAlive(pid) {
		t.Fatalf("builder %d is not running", pid)
	}

	var resp map[string]any
	s.JSON(t, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), http.StatusAccepted, &resp)
	if resp["status"] != "cancelling" || resp["build_id"] != float64(id) {
		t.Errorf("cancel = %v", resp)
	}
	b := s.WaitFinished(t, id)
	log := s.Log(t, id)
	if b.Status != db.StatusCancelled || b.Error != "cancelled" || b.FinishedAt == nil {
		t.Errorf("cancelled build = %+v; log:\n%s", b.Build, log)
	}
	ts.RequireLogInOrder(t, log, "Building package block...", "Build cancelled")
	if strings.Contains(log, "Build finished successfully") {
		t.Errorf("cancelled build says it finished:\n%s", log)
	}
	st := s.SpecStatus(t, "app")
	if st.IsRunning || str(st.LastStatus) != "failed" || st.LastFinish == nil {
		t.Errorf("status after cancel: running %v, last_status %s", st.IsRunning, str(st.LastStatus))
	}
	ts.WaitUntil(t, fmt.Sprintf("the cancelled builder (pid %d) to exit", pid), func() bool { return !ts.ProcessAlive(pid) })
	for _, r := range b.Results {
		if r.Status == db.ResultRunning {
			t.Errorf("result %s still running after cancel", r.Attr)
		}
	}

	code, body := s.Do(t, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), nil, nil)
	if code != http.StatusConflict || !strings.Contains(string(body), "Build is not running") {
		t.Errorf("cancel of a finished build = %d %s, want 409", code, body)
	}

	// Nothing is left stuck: the next build of the repository succeeds.
	// (Its builder may run as another build user: Blocker replaces the
	// first builder's pid file by a rename, which that user may do.)
	blocker.Release(t)
	ts.WaitBuildSucceeded(t, s, s.Trigger(t, "app"))
}

type sseEvent struct{ name, data string }

// readSSE sends the events of an event stream to the returned channel,
// closing it at the end of the stream.
func readSSE(t *testing.T, s *ts.BuildServer, ctx context.Context, path string) <-chan sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", s.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.HTTP.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		t.Fatalf("GET %s = %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan sseEvent, 1024)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" {
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return ch
}

// TestFollowLog: the SSE log of a running build delivers lines as they are
// written, then "end" with the final status, and together the lines are
// exactly the log.
func TestFollowLog(t *testing.T) {
	t.Parallel()
	s, blocker, id, _ := startBlocked(t)
	ctx, cancel := context.WithTimeout(t.Context(), ts.WaitTimeout)
	defer cancel()
	events := readSSE(t, s, ctx, fmt.Sprintf("/api/v1/builds/%d/log?follow=1", id))

	var got []string
	next := func() sseEvent {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the event stream ended early; lines so far:\n%s", strings.Join(got, "\n"))
			}
			return ev
		case <-ctx.Done():
			t.Fatalf("no event in time; lines so far:\n%s", strings.Join(got, "\n"))
		}
		return sseEvent{}
	}
	// The builder is blocked: these lines can only have come while the
	// build runs.
	for !slices.Contains(got, "block> blocker block waiting for release") {
		ev := next()
		if ev.name != "line" {
			t.Fatalf("event %q %q before the build ended", ev.name, ev.data)
		}
		got = append(got, ev.data)
	}
	if !slices.Contains(got, "Building package block...") {
		t.Errorf("lines before the release lack the package's start: %q", got)
	}
	if b := s.Build(t, id); b.Status != db.StatusRunning {
		t.Fatalf("build is %s while its builder is blocked", b.Status)
	}

	blocker.Release(t)
	var end sseEvent
	for {
		ev := next()
		if ev.name == "end" {
			end = ev
			break
		}
		if ev.name != "line" {
			t.Fatalf("unexpected event %q", ev.name)
		}
		got = append(got, ev.data)
	}
	if end.data != db.StatusSuccess {
		t.Errorf("end event = %q, want success", end.data)
	}
	ts.RequireBuildSucceeded(t, s, s.Build(t, id))
	if ev, ok := <-events; ok {
		t.Errorf("event %+v after end", ev)
	}
	log := s.Log(t, id)
	if want := logLines(log); !slices.Equal(got, want) {
		t.Errorf("streamed lines:\n%s\n\nwant the log:\n%s", strings.Join(got, "\n"), log)
	}
	ts.RequireLogInOrder(t, strings.Join(got, "\n"), "Successfully built package block", "Build finished successfully for commit "+s.Build(t, id).ShortCommit)

	// Following a finished build sends its log and "end" at once.
	var again []sseEvent
	for ev := range readSSE(t, s, ctx, fmt.Sprintf("/api/v1/builds/%d/log?follow=1", id)) {
		again = append(again, ev)
	}
	if len(again) != len(got)+1 || again[len(again)-1] != (sseEvent{"end", "success"}) {
		t.Errorf("follow of a finished build: %d events, last %+v; want %d lines and end", len(again), again[len(again)-1], len(got))
	}
}

func githubPush(t *testing.T, s *ts.BuildServer, repo, secret, event, ref, after string) (int, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"ref": ref, "after": after, "repository": map[string]any{"full_name": "owner/" + repo}})
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-GitHub-Event", event)
	h.Set("X-Hub-Signature-256", "sha256="+webhook.Sign(body, secret))
	code, resp := s.Do(t, "POST", "/api/v1/webhooks/"+repo, body, h)
	var m map[string]any
	if err := json.Unmarshal(resp, &m); err != nil {
		t.Fatalf("webhook answer %d %q: %v", code, resp, err)
	}
	return code, m
}

func buildCount(t *testing.T, s *ts.BuildServer, repo string) int {
	t.Helper()
	var builds []*db.Build
	s.JSON(t, "GET", "/api/v1/repositories/"+repo+"/builds", http.StatusOK, &builds)
	return len(builds)
}

// TestWebhook: a signed GitHub push to the branch builds; a bad signature,
// another branch and other events do not; without a secret, 403.
func TestWebhook(t *testing.T) {
	t.Parallel()
	const secret = "s3cret"
	src := flakeRepo(t, ts.Nonce(), ts.GoodPackage("hello", 0))
	head := ts.Head(t, src)
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}, WebhookSecret: secret})

	if code, m := githubPush(t, s, "app", "wrong-secret", "push", "refs/heads/main", head); code != http.StatusUnauthorized || m["detail"] == nil {
		t.Errorf("push with a bad signature = %d %v, want 401", code, m)
	}
	if code, m := githubPush(t, s, "app", secret, "push", "refs/heads/feature", head); code != http.StatusOK || m["status"] != "ignored" {
		t.Errorf("push to another branch = %d %v, want 200 ignored", code, m)
	}
	if code, m := githubPush(t, s, "app", secret, "ping", "", ""); code != http.StatusOK || m["status"] != "ignored" {
		t.Errorf("ping = %d %v, want 200 ignored", code, m)
	}
	if code, m := githubPush(t, s, "app", secret, "push", "refs/heads/main", strings.Repeat("0", 40)); code != http.StatusOK || m["status"] != "ignored" {
		t.Errorf("deletion of the branch = %d %v, want 200 ignored", code, m)
	}
	if code, _ := s.Do(t, "POST", "/api/v1/webhooks/app", []byte(`{}`), nil); code != http.StatusBadRequest {
		t.Errorf("webhook without provider headers = %d, want 400", code)
	}
	if code, m := githubPush(t, s, "nope", secret, "push", "refs/heads/main", head); code != http.StatusNotFound {
		t.Errorf("webhook for an unknown repository = %d %v, want 404", code, m)
	}
	if n := buildCount(t, s, "app"); n != 0 {
		t.Fatalf("%d builds after webhooks that should not build", n)
	}

	code, m := githubPush(t, s, "app", secret, "push", "refs/heads/main", head)
	if code != http.StatusOK || m["status"] != "triggered" || m["repository"] != "app" {
		t.Fatalf("signed push = %d %v, want triggered", code, m)
	}
	id, _ := m["build_id"].(float64)
	b := ts.WaitBuildSucceeded(t, s, int64(id))
	if b.Reason != "webhook:github" || b.Commit != head {
		t.Errorf("webhook build = %+v, want success of %s with reason webhook:github", b.Build, head)
	}
	if n := buildCount(t, s, "app"); n != 1 {
		t.Errorf("%d builds, want 1", n)
	}

	// Without any secret configured, webhooks are refused.
	open := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})
	if code, m := githubPush(t, open, "app", "", "push", "refs/heads/main", head); code != http.StatusForbidden {
		t.Errorf("webhook without a configured secret = %d %v, want 403", code, m)
	}
	if n := buildCount(t, open, "app"); n != 0 {
		t.Errorf("a webhook without a secret built %d times", n)
	}
}

// TestValidation covers the answers that need no build: unknown and
// malformed names, bad parameters, /info, /health and the disabled page.
func TestValidation(t *testing.T) {
	t.Parallel()
	src := ts.NewGitRepo(t, map[string]string{"README": "not built in this test\n"})
	s := ts.StartBuildServer(t, ts.BuildServerConfig{
		Repositories: []config.Repository{ts.MainBranchRepo("app", src), ts.MainBranchRepo("other.repo_2", src)},
		Info:         api.Info{Hostname: "forge.example", APIPort: 8123, CachePort: 5123, PublicKey: "forge.example:cHVibGlj"},
		CacheRunning: func() bool { return true },
	})

	endpoints := []struct{ method, prefix, suffix string }{
		{"POST", "/build/trigger/", ""},
		{"GET", "/build/status/", ""},
		{"GET", "/build/logs/", ""},
		{"GET", "/api/v1/repositories/", ""},
		{"GET", "/api/v1/repositories/", "/builds"},
		{"POST", "/api/v1/repositories/", "/builds"},
	}
	for _, e := range endpoints {
		code, body := s.Do(t, e.method, e.prefix+"nope"+e.suffix, nil, nil)
		if code != http.StatusNotFound || strings.TrimSpace(string(body)) != `{"detail":"Repository not found"}` {
			t.Errorf("%s %snope%s = %d %s, want 404 Repository not found", e.method, e.prefix, e.suffix, code, body)
		}
		for _, name := range []string{"a..b", "a%2Fb", "-x", ".hidden", "a%20b", "%2E%2E", strings.Repeat("a", 100)} {
			code, body := s.Do(t, e.method, e.prefix+name+e.suffix, nil, nil)
			if code != http.StatusBadRequest || strings.TrimSpace(string(body)) != `{"detail":"Invalid repository name"}` {
				t.Errorf("%s %s%s%s = %d %s, want 400 Invalid repository name", e.method, e.prefix, name, e.suffix, code, body)
			}
		}
	}
	// ".." itself never reaches a handler: the router cleans the path
	// and redirects away from it.
	for _, e := range endpoints[:3] {
		if code, _ := s.Do(t, e.method, e.prefix+"..", nil, nil); code == http.StatusOK {
			t.Errorf("%s %s.. = 200", e.method, e.prefix)
		}
	}
	if n := buildCount(t, s, "app"); n != 0 {
		t.Errorf("validation failures started %d builds", n)
	}

	// A repository never built: status all null, no log lines.
	code, body := s.Do(t, "GET", "/build/status/other.repo_2", nil, nil)
	if want := `{"is_running":false,"last_start":null,"last_finish":null,"last_status":null,"last_commit":null,"repository":"other.repo_2"}`; code != http.StatusOK || strings.TrimSpace(string(body)) != want {
		t.Errorf("status of a repository never built = %d %s, want %s", code, body, want)
	}
	code, body = s.Do(t, "GET", "/build/logs/app", nil, nil)
	if code != http.StatusOK || strings.TrimSpace(string(body)) != `{"logs":[]}` {
		t.Errorf("logs of a repository never built = %d %s", code, body)
	}
	for _, q := range []string{"0", "-1", "abc", "100000", "10001", "1.5"} {
		code, body := s.Do(t, "GET", "/build/logs/app?lines="+q, nil, nil)
		if code != http.StatusBadRequest || !strings.Contains(string(body), `"detail"`) {
			t.Errorf("/build/logs/app?lines=%s = %d %s, want 400", q, code, body)
		}
	}
	for _, q := range []string{"1", "10000"} {
		if code, body := s.Do(t, "GET", "/build/logs/app?lines="+q, nil, nil); code != http.StatusOK {
			t.Errorf("/build/logs/app?lines=%s = %d %s, want 200", q, code, body)
		}
	}

	var info map[string]any
	s.JSON(t, "GET", "/info", http.StatusOK, &info)
	wantInfo := map[string]any{
		"hostname":     "forge.example",
		"api_port":     float64(8123),
		"cache_port":   float64(5123),
		"cache_url":    "http://forge.example:5123",
		"public_key":   "forge.example:cHVibGlj",
		"repositories": []any{"app", "other.repo_2"},
	}
	if !reflect.DeepEqual(info, wantInfo) {
		t.Errorf("/info = %v, want %v", info, wantInfo)
	}
	var health map[string]any
	s.JSON(t, "GET", "/health", http.StatusOK, &health)
	wantHealth := map[string]any{"status": "healthy", "cache_running": true, "repositories": []any{"app", "other.repo_2"}}
	if !reflect.DeepEqual(health, wantHealth) {
		t.Errorf("/health = %v, want %v", health, wantHealth)
	}

	code, body = s.Do(t, "GET", "/", nil, nil)
	if code != http.StatusOK || strings.TrimSpace(string(body)) != "Web UI disabled" {
		t.Errorf("GET / with the web UI disabled = %d %q", code, body)
	}

	for path, want := range map[string]int{
		"/api/v1/builds/abc":       http.StatusBadRequest,
		"/api/v1/builds/0":         http.StatusBadRequest,
		"/api/v1/builds/-3":        http.StatusBadRequest,
		"/api/v1/builds/99999":     http.StatusNotFound,
		"/api/v1/builds/99999/log": http.StatusNotFound,
	} {
		code, body := s.Do(t, "GET", path, nil, nil)
		if code != want || !bytes.Contains(body, []byte(`"detail"`)) {
			t.Errorf("GET %s = %d %s, want %d", path, code, body, want)
		}
	}
	if code, _ := s.Do(t, "POST", "/api/v1/builds/99999/cancel", nil, nil); code != http.StatusNotFound {
		t.Errorf("cancel of an unknown build = %d, want 404", code)
	}
	for _, q := range []string{"limit=0", "limit=501", "limit=x", "before=-1"} {
		if code, _ := s.Do(t, "GET", "/api/v1/repositories/app/builds?"+q, nil, nil); code != http.StatusBadRequest {
			t.Errorf("builds?%s = %d, want 400", q, code)
		}
	}
	var repos []api.Repository
	s.JSON(t, "GET", "/api/v1/repositories", http.StatusOK, &repos)
	if len(repos) != 2 || repos[0].Name != "app" || repos[0].URL != src || repos[0].Branch != "main" || repos[0].LatestBuild != nil || repos[0].Status != (build.Status{Repository: "app"}) {
		t.Errorf("/api/v1/repositories = %+v", repos)
	}
}
