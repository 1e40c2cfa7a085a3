package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/pgtest"
)

// runningOn returns the worker running build id's job for attr, or "".
func runningOn(t *testing.T, s *testsupport.Server, id int64, attr string) string {
	t.Helper()
	var q api.Queue
	s.GetJSON(t, "/api/v1/queue", &q)
	for _, j := range q.Jobs {
		if j.BuildID == id && j.Attr == attr && j.State == db.JobRunning {
			return j.Worker
		}
	}
	return ""
}

func triggerProcess(t *testing.T, s *testsupport.Server, repo string) int64 {
	t.Helper()
	code, body := s.Post(t, "/build/trigger/"+repo)
	var resp struct {
		Status  string `json:"status"`
		BuildID int64  `json:"build_id"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || code != http.StatusOK || resp.Status != "triggered" {
		t.Fatalf("trigger %s = %d %s", repo, code, body)
	}
	return resp.BuildID
}

// builderDatabases are the databases the builders' end-to-end test runs
// on, each giving the server's extra arguments and the DSN builders use:
// the server's own SQLite file (builders on the server's machine), and a
// PostgreSQL database (builders anywhere).
var builderDatabases = map[string]func(t *testing.T) (serverArgs []string, dsn func(*testsupport.Server) string){
	"sqlite": func(t *testing.T) ([]string, func(*testsupport.Server) string) {
		return nil, func(s *testsupport.Server) string { return filepath.Join(s.Config.DataDir, "crystal-forge.db") }
	},
	"postgres": func(t *testing.T) ([]string, func(*testsupport.Server) string) {
		dsn := pgtest.NewDatabase(t)
		return []string{"--db", dsn}, func(*testsupport.Server) string { return dsn }
	},
}

// TestBuildersEndToEnd: a server without its own worker and two
// `crystal-forge builder` processes sharing its database build a flake of
// six attributes (one failing, one that does not evaluate). The builder
// running one attribute is SIGKILLed mid-job: its lease expires and the
// other builder builds the attribute again; every attribute ends with the
// right outcome, recorded once, on the page's API and the spec's. Then a
// SIGTERMed builder drains: its running job finishes, and it exits 0; and
// a cancelled build's job stops on the builder running it.
//
// The builders share this machine's Nix store; builders on other machines
// have their own and push their outputs to the cache (docs/scaling.md).
func TestBuildersEndToEnd(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	for name, database := range builderDatabases {
		t.Run(name, func(t *testing.T) {
			args, dsnOf := database(t)
			testBuildersEndToEnd(t, args, dsnOf)
		})
	}
}

func testBuildersEndToEnd(t *testing.T, serverArgs []string, dsnOf func(*testsupport.Server) string) {
	nonce := testsupport.Nonce()
	blocker := testsupport.NewBlocker(t, "block")
	flake := testsupport.Flake{System: config.DefaultSystem(), Nonce: nonce,
		Packages: []testsupport.FlakePackage{
			testsupport.GoodPackage("alpha", 0), testsupport.FailingPackage("bad"), blocker.Package(), testsupport.GoodPackage("zeta", 0),
		},
		EvalErrors: []string{"broken"},
	}
	src := testsupport.NewGitRepo(t, map[string]string{"flake.nix": flake.Nix()})
	s := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "app", URL: src}},
		Args:         append([]string{"--no-local-builder"}, serverArgs...),
	})
	dsn := dsnOf(s)
	const lease = 3 * time.Second
	builders := map[string]*testsupport.Builder{
		"b1": testsupport.StartBuilder(t, testsupport.BuilderOptions{DB: dsn, Name: "b1", Lease: lease}),
		"b2": testsupport.StartBuilder(t, testsupport.BuilderOptions{DB: dsn, Name: "b2", Lease: lease}),
	}
	testsupport.WaitUntil(t, "both builders to register", func() bool {
		var ws []api.Worker
		s.GetJSON(t, "/api/v1/workers", &ws)
		return len(ws) == 2 && ws[0].Name == "b1" && ws[1].Name == "b2" && ws[0].Alive && ws[1].Alive && !ws[0].Draining
	})

	id := triggerProcess(t, s, "app")
	pid := blocker.WaitStarted(t, s, id)
	var victim string
	testsupport.WaitUntil(t, "the queue to show who builds block", func() bool {
		victim = runningOn(t, s, id, "block")
		return victim != ""
	})
	survivor := map[string]string{"b1": "b2", "b2": "b1"}[victim]
	builders[victim].Signal(t, syscall.SIGKILL)
	builders[victim].Wait(t)
	// Its nix got SIGTERM from the kernel and stopped the builder.
	testsupport.WaitUntil(t, "the killed builder's build to stop", func() bool { return !testsupport.ProcessAlive(pid) })
	blocker.Release(t)

	b := testsupport.WaitBuildEnded(t, s, id, db.StatusFailed)
	log := s.Log(t, id)
	want := map[string]string{"checks": db.ResultFailed, "alpha": db.ResultSuccess, "bad": db.ResultFailed,
		"block": db.ResultSuccess, "broken": db.ResultFailed, "zeta": db.ResultSuccess}
	checkResultsOnce(t, b, want)
	if want := "3 of 6 attributes failed: checks (check), broken (package), bad (package)"; b.Error != want {
		t.Errorf("build error = %q, want %q", b.Error, want)
	}
	if n := strings.Count(log, "Successfully built package block"); n != 1 {
		t.Errorf("the log says block was built %d times, want 1:\n%s", n, log)
	}
	var st map[string]any
	s.GetJSON(t, "/build/status/app", &st)
	if st["last_status"] != "failed" || st["is_running"] != false || st["last_commit"] != b.ShortCommit {
		t.Errorf("/build/status/app = %v", st)
	}

	// The jobs: block was lost with the killed builder and built by the
	// other, on its second attempt, and recorded once.
	checkJobsAfterKill(t, dsn, id, survivor, 4)

	// SIGTERM drains: the running job finishes, then the builder exits 0.
	drainer := testsupport.NewBlocker(t, "drain")
	flake.Packages = []testsupport.FlakePackage{drainer.Package()}
	flake.EvalErrors = nil
	testsupport.Commit(t, src, map[string]string{"flake.nix": flake.Nix()})
	id = triggerProcess(t, s, "app")
	drainer.WaitStarted(t, s, id)
	builders[survivor].Signal(t, syscall.SIGTERM)
	testsupport.WaitUntil(t, survivor+" to say it drains", func() bool {
		var ws []api.Worker
		s.GetJSON(t, "/api/v1/workers", &ws)
		for _, w := range ws {
			if w.Name == survivor {
				return w.Draining && w.Running == 1
			}
		}
		return false
	})
	if !builders[survivor].Running() {
		t.Fatal("the draining builder exited with its job running")
	}
	drainer.Release(t)
	testsupport.WaitBuildSucceeded(t, s, id)
	if code := builders[survivor].Wait(t); code != 0 {
		t.Errorf("drained builder exited %d, want 0", code)
	}
	if !builders[survivor].Logged("draining: no new jobs") {
		t.Errorf("the builder did not say it drains:\n%s", builders[survivor].Stderr())
	}

	// Cancel reaches a job on a builder: at its next lease renewal it
	// stops the job's nix, and the job stays cancelled.
	testsupport.StartBuilder(t, testsupport.BuilderOptions{DB: dsn, Name: "b3", Lease: lease})
	stuck := testsupport.NewBlocker(t, "stuck")
	flake.Packages = []testsupport.FlakePackage{stuck.Package()}
	testsupport.Commit(t, src, map[string]string{"flake.nix": flake.Nix()})
	id = triggerProcess(t, s, "app")
	pid = stuck.WaitStarted(t, s, id)
	if code, body := s.Post(t, fmt.Sprintf("/api/v1/builds/%d/cancel", id)); code != http.StatusAccepted {
		t.Fatalf("cancel = %d %s", code, body)
	}
	testsupport.WaitBuildEnded(t, s, id, db.StatusCancelled)
	testsupport.WaitUntil(t, "the builder to stop the cancelled job's build", func() bool { return !testsupport.ProcessAlive(pid) })
	for _, j := range buildJobs(t, dsn, id) {
		if j.Attr == "stuck" && (j.State != db.JobCancelled || j.Worker != "b3") {
			t.Errorf("cancelled job = %+v, want cancelled on b3", j)
		}
	}
}

// TestWebPageWorkersQueue drives the page's workers and queue tables in
// headless Chromium: a builder process shows up with its systems and what
// it runs, the queue shows its job running on it, a SIGTERM shows it
// draining, and the queue empties when the build ends.
func TestWebPageWorkersQueue(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	blocker := testsupport.NewBlocker(t, "block")
	src := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{System: config.DefaultSystem(), Nonce: testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{blocker.Package()}}.Nix()})
	s := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "app", URL: src}},
		Args:         []string{"--no-local-builder"},
	})
	builder := testsupport.StartBuilder(t, testsupport.BuilderOptions{DB: filepath.Join(s.Config.DataDir, "crystal-forge.db"), Name: "pagebuilder", Lease: 3 * time.Second})
	id := triggerProcess(t, s, "app")
	blocker.WaitStarted(t, s, id)

	b := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 90*time.Second)
	defer cancel()
	waitJS := func(what, expr string) {
		t.Helper()
		pollPage(t, ctx, what, expr, "workers section", `document.querySelector("#workers-section").innerText`)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(s.URL+"/"), chromedp.WaitVisible(chromedp.ID("worker-pagebuilder"))); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	row := `document.querySelector("#worker-pagebuilder")`
	waitJS("the worker to show its running job", row+`.querySelector("td.running").textContent === "1 of 1"
		&& `+row+`.querySelector("td.systems").textContent === "`+config.DefaultSystem()+`"
		&& `+row+`.querySelector("td.state").textContent === "online"`)
	waitJS("the queue to show block running on the builder", `[...document.querySelectorAll("#queue tr")].some((r) =>
		r.querySelector("td.attr")?.textContent === "block (package)" && r.querySelector("td.state")?.textContent === "running"
		&& r.querySelector("td.worker")?.textContent === "pagebuilder")`)
	waitJS("the summary", `document.querySelector("#queue-summary").textContent === "1 online · 1 job running · 0 queued"`)

	builder.Signal(t, syscall.SIGTERM)
	waitJS("the worker to show it drains", row+`.querySelector("td.state").textContent === "draining"`)
	blocker.Release(t)
	testsupport.WaitBuildSucceeded(t, s, id)
	waitJS("the queue to empty", `document.querySelector("#queue").textContent === "No jobs queued or running."`)
	if code := builder.Wait(t); code != 0 {
		t.Errorf("builder exited %d, want 0", code)
	}
	if ex := b.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}
}

// TestBuildersOwnStores is the end-to-end scenario: a server on
// PostgreSQL and two builders, each with a Nix store of its own as on
// separate machines (Debian's Nix builds into a chroot store: `store =
// DIR`, with the sandbox and `sandbox-paths`), build a flake of six
// attributes (one failing, one that does not evaluate) and push what they
// built to the server's cache with its upload token. The builder running
// one attribute is SIGKILLed mid-job and the other builds it again. Every
// attribute ends with the right outcome exactly once on the spec's API, on
// the page and in the database; no output is in this machine's store, and
// a Nix client with a fresh store of its own copies every output that
// built from the server's cache, trusting only the server's key.
func TestBuildersOwnStores(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	nonce := testsupport.Nonce()
	blocker := testsupport.NewBlocker(t, "block")
	flake := testsupport.Flake{System: config.DefaultSystem(), Nonce: nonce,
		Packages: []testsupport.FlakePackage{
			testsupport.GoodPackage("alpha", 0), testsupport.FailingPackage("bad"), blocker.Package(), testsupport.GoodPackage("zeta", 0),
		},
		Checks:     []testsupport.FlakePackage{testsupport.GoodPackage("lint", 0)},
		EvalErrors: []string{"broken"},
	}
	src := testsupport.NewGitRepo(t, map[string]string{"flake.nix": flake.Nix()})
	dir := t.TempDir()
	tokens, netrc := filepath.Join(dir, "tokens"), filepath.Join(dir, "netrc")
	writeFile(t, tokens, "builders:s3cret-upload-token\n")
	dsn := pgtest.NewDatabase(t)
	s := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "app", URL: src}},
		Args:         []string{"--no-local-builder", "--db", dsn},
		ExtraTOML:    "upload_token_file = " + strconv.Quote(tokens),
	})
	writeFile(t, netrc, "machine 127.0.0.1\nlogin builder\npassword s3cret-upload-token\n")
	// A chroot store is built in with the sandbox: the builders' /bin/sh
	// comes from sandbox-paths, and the blocker's directory is let in.
	storeOf := func(name string) string { return filepath.Join(dir, "store-"+name) }
	builders := map[string]*testsupport.Builder{}
	for _, name := range []string{"b1", "b2"} {
		builders[name] = testsupport.StartBuilder(t, testsupport.BuilderOptions{DB: dsn, Name: name, Lease: 3 * time.Second,
			PushTo: s.CacheURL, PushNetrc: netrc, Env: []string{"NIX_CONFIG=experimental-features = nix-command flakes\nsubstituters =\nstore = " +
				storeOf(name) + "\nsandbox = true\nsandbox-paths = /bin /usr /lib /lib64 " + blocker.Dir}})
	}

	id := triggerProcess(t, s, "app")
	blocker.WaitStarted(t, s, id)
	var victim string
	testsupport.WaitUntil(t, "the queue to show who builds block", func() bool {
		victim = runningOn(t, s, id, "block")
		return victim != ""
	})
	survivor := map[string]string{"b1": "b2", "b2": "b1"}[victim]
	// The blocker's pid is the sandbox's own: follow the killed builder's
	// processes from outside instead.
	procs := builders[victim].Descendants()
	if len(procs) == 0 {
		t.Fatalf("builder %s runs block but has no processes below it", victim)
	}
	builders[victim].Signal(t, syscall.SIGKILL)
	builders[victim].Wait(t)
	testsupport.WaitUntil(t, "the killed builder's build to stop", func() bool {
		for _, p := range procs {
			if testsupport.ProcessAlive(p) {
				return false
			}
		}
		return true
	})
	blocker.Release(t)

	b := testsupport.WaitBuildEnded(t, s, id, db.StatusFailed)
	log := s.Log(t, id)
	want := map[string]string{"checks": db.ResultFailed, "checks.lint": db.ResultSuccess, "alpha": db.ResultSuccess,
		"bad": db.ResultFailed, "block": db.ResultSuccess, "broken": db.ResultFailed, "zeta": db.ResultSuccess}
	checkResultsOnce(t, b, want)
	if want := "3 of 7 attributes failed: checks (check), broken (package), bad (package)"; b.Error != want {
		t.Errorf("build error = %q, want %q; log:\n%s", b.Error, want, log)
	}
	// Each output that built was pushed once, by the builder that
	// recorded it.
	for attr, status := range want {
		n := strings.Count(log, "Pushing 1 outputs of "+attr+" to "+s.CacheURL)
		if wantN := map[bool]int{true: 1, false: 0}[status == db.ResultSuccess]; n != wantN {
			t.Errorf("the log says %s was pushed %d times, want %d:\n%s", attr, n, wantN, log)
		}
	}
	if n := strings.Count(log, "Successfully built package block"); n != 1 {
		t.Errorf("the log says block was built %d times, want 1:\n%s", n, log)
	}

	// The spec's API.
	var st map[string]any
	s.GetJSON(t, "/build/status/app", &st)
	if st["last_status"] != "failed" || st["is_running"] != false || st["last_commit"] != b.ShortCommit {
		t.Errorf("/build/status/app = %v, want failed at %s and not running", st, b.ShortCommit)
	}
	lines := strings.Join(logLines(t, s, "app"), "\n")
	for _, w := range []string{"Successfully built package block", "fixture package broken does not evaluate",
		"bad> fixture package bad fails on purpose", "Pushing 1 outputs of block to " + s.CacheURL} {
		if !strings.Contains(lines, w) {
			t.Errorf("/build/logs/app does not say %q:\n%s", w, lines)
		}
	}

	// The jobs: block was lost with the killed builder and built by the
	// other, on its second attempt, and recorded once.
	checkJobsAfterKill(t, dsn, id, survivor, 5)

	// The outputs: in the builders' stores, not this machine's, and in the
	// server's cache only because the builders pushed them.
	var info struct {
		PublicKey string `json:"public_key"`
	}
	s.GetJSON(t, "/info", &info)
	client := filepath.Join(dir, "client-store")
	copied := 0
	for _, r := range b.Results {
		if r.Status != db.ResultSuccess || len(r.OutPaths) == 0 {
			continue
		}
		out := r.OutPaths[0]
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%s: %s is in this machine's store (%v): the builders were to build in stores of their own", r.Attr, out, err)
		}
		if r.Attr == "block" {
			if _, err := os.Stat(filepath.Join(storeOf(survivor), out)); err != nil {
				t.Errorf("block's output is not in the store of %s, which built it: %v", survivor, err)
			}
		}
		cmd := exec.CommandContext(t.Context(), "nix", "copy", "--from", s.CacheURL, out)
		cmd.Env = append(os.Environ(), "NIX_CONFIG=experimental-features = nix-command flakes\nsubstituters =\nstore = "+client+
			"\ntrusted-public-keys = "+info.PublicKey+"\nrequire-sigs = true")
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: nix copy --from the server's cache of %s: %v\n%s", r.Attr, out, err, msg)
			continue
		}
		data, err := os.ReadFile(filepath.Join(client, out))
		name := strings.TrimPrefix(r.Attr, "checks.")
		if err != nil || string(data) != name+" "+nonce+"\n" {
			t.Errorf("%s copied from the cache holds %q (%v), want %q", r.Attr, data, err, name+" "+nonce+"\n")
		}
		copied++
	}
	if copied != 4 {
		t.Errorf("%d outputs came from the cache, want alpha, block, zeta and checks.lint; results %+v", copied, b.Results)
	}

	// The page: the build's results, each attribute once with its outcome.
	br := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(br.Ctx, 90*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s/builds/%d", s.URL, id)), chromedp.WaitVisible(chromedp.ID("build-detail"))); err != nil {
		t.Fatalf("load the build's page: %v", err)
	}
	expr := fmt.Sprintf(`document.querySelector("#build-title")?.textContent.endsWith("build #%d")
		&& document.querySelector("#build-status")?.textContent === "failed"`, id)
	for attr, status := range want {
		expr += fmt.Sprintf(`
		&& document.querySelectorAll('#results tr[data-attr="%s"]').length === 1
		&& document.querySelector('#results tr[data-attr="%s"] td:nth-child(3)')?.textContent === %q`, attr, attr, status)
	}
	pollPage(t, ctx, "the page to show every attribute's outcome once", expr, "build", `document.querySelector("#build-detail").innerText`)
	if ex := br.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}
}

// TestBuilderRemoteBuilders: a builder whose Nix has remote builders of
// its own (`builders = …` in its NIX_CONFIG) builds through them. The
// remote machine is a chroot store on this machine (`local?root=DIR`,
// which Nix's build hook opens like any store URI, as it would
// `ssh-ng://host`), and `max-jobs = 0` forbids local builds, so an
// attribute can only build by going through it: its outputs are in the
// remote store and Nix's log says where it built.
func TestBuilderRemoteBuilders(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	nonce := testsupport.Nonce()
	src := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{System: config.DefaultSystem(), Nonce: nonce,
		Packages: []testsupport.FlakePackage{testsupport.GoodPackage("alpha", 0), testsupport.GoodPackage("zeta", 0)}}.Nix()})
	s := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "app", URL: src}},
		Args:         []string{"--no-local-builder"},
	})
	remote := filepath.Join(t.TempDir(), "remote")
	machine := "local?root=" + remote
	// Nix always builds in the sandbox of a chroot store, even with
	// `sandbox = false`: /bin/sh comes from sandbox-paths.
	testsupport.StartBuilder(t, testsupport.BuilderOptions{DB: filepath.Join(s.Config.DataDir, "crystal-forge.db"), Name: "remotes", Lease: 3 * time.Second,
		Env: []string{"NIX_CONFIG=experimental-features = nix-command flakes\nsubstituters =\nsandbox = false\nmax-jobs = 0\nbuilders = " +
			machine + " " + config.DefaultSystem() + " - 1\nsandbox-paths = /bin /usr /lib /lib64"}})

	id := triggerProcess(t, s, "app")
	b := testsupport.WaitBuildSucceeded(t, s, id)
	log := s.Log(t, id)
	built := 0
	for _, r := range b.Results {
		if r.Kind != "package" {
			continue
		}
		if r.Status != db.ResultSuccess || len(r.OutPaths) != 1 {
			t.Errorf("result %s = %s %v, want success with one output", r.Attr, r.Status, r.OutPaths)
			continue
		}
		out := r.OutPaths[0]
		data, err := os.ReadFile(filepath.Join(remote, out))
		if err != nil || string(data) != r.Attr+" "+nonce+"\n" {
			t.Errorf("%s: %s in the remote builder's store holds %q (%v), want %q", r.Attr, out, data, err, r.Attr+" "+nonce+"\n")
		}
		// Nix copied the output back to the builder's own store.
		if _, err := os.Stat(out); err != nil {
			t.Errorf("%s: the output is not in the builder's store: %v", r.Attr, err)
		}
		if want := "building '" + r.DrvPath + "' on '" + machine + "'"; !strings.Contains(log, want) {
			t.Errorf("the log does not say %q:\n%s", want, log)
		}
		built++
	}
	if built != 2 {
		t.Errorf("%d packages built, want alpha and zeta: %+v", built, b.Results)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkJobsAfterKill checks the jobs of build id after the builder running
// "block" was killed: every job ended, block succeeded on survivor at its
// second attempt, every other job took one attempt, and there is one job for
// the evaluation and one per evaluated attribute (attrs).
func checkJobsAfterKill(t *testing.T, dsn string, id int64, survivor string, attrs int) {
	t.Helper()
	jobs := buildJobs(t, dsn, id)
	for _, j := range jobs {
		switch {
		case !j.State.Done():
			t.Errorf("job %d (%s) is %s after the build ended", j.ID, j.Attr, j.State)
		case j.Attr == "block" && (j.State != db.JobSucceeded || j.Worker != survivor || j.Attempts != 2):
			t.Errorf("job block = %+v, want succeeded on %s at attempt 2", j, survivor)
		case j.Attr != "block" && j.Attempts != 1:
			t.Errorf("job %d (%s %s) took %d attempts, want 1", j.ID, j.Kind, j.Attr, j.Attempts)
		}
	}
	if len(jobs) != attrs+1 {
		t.Errorf("%d jobs, want the evaluation and %d attributes (broken does not evaluate): %+v", len(jobs), attrs, jobs)
	}
}

// buildJobs reads build id's jobs from the shared database.
func buildJobs(t *testing.T, dsn string, id int64) []*db.Job {
	t.Helper()
	database, err := db.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := database.Close(); err != nil {
			t.Error(err)
		}
	}()
	jobs, err := database.BuildJobs(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return jobs
}

// checkResultsOnce checks that build b has exactly one result per attribute
// of want, each with the status want gives it, and no other result.
func checkResultsOnce(t *testing.T, b api.Build, want map[string]string) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range b.Results {
		seen[r.Attr]++
		if r.Status != want[r.Attr] {
			t.Errorf("result %s = %s (%s), want %s", r.Attr, r.Status, r.Error, want[r.Attr])
		}
	}
	for attr := range want {
		if seen[attr] != 1 {
			t.Errorf("attribute %s has %d results, want exactly 1; results %+v", attr, seen[attr], b.Results)
		}
	}
	if len(b.Results) != len(want) {
		t.Errorf("%d results, want %d: %+v", len(b.Results), len(want), b.Results)
	}
}
