package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestWebPageLiveBuild drives the page of a real server in headless
// Chromium: it shows the server's facts and key, a click on a repository's
// "Trigger build" starts a build, and the card, the streamed log and the
// results table follow the build to its end without a reload.
func TestWebPageLiveBuild(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	const (
		name     = "webrepo"
		hostname = "forge-e2e"
	)
	blocker := testsupport.NewBlocker(t, "slow")
	repoDir := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System: config.DefaultSystem(),
		Nonce:  testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{
			testsupport.GoodPackage("quick", 3),
			blocker.Package(),
		},
	}.Nix()})
	shortCommit := testsupport.ShortHead(t, repoDir)
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: name, URL: repoDir, Branch: "main"}},
		// The hostname comes from the environment, as the seed spec has it.
		Env: []string{"BUILD_SERVER_HOSTNAME=" + hostname},
	})
	var info struct {
		Hostname  string `json:"hostname"`
		APIPort   int    `json:"api_port"`
		CachePort int    `json:"cache_port"`
		CacheURL  string `json:"cache_url"`
		PublicKey string `json:"public_key"`
	}
	srv.GetJSON(t, "/info", &info)
	if info.Hostname != hostname || info.APIPort != srv.Config.APIPort || info.CachePort != srv.Config.CachePort || !strings.HasPrefix(info.PublicKey, hostname+":") {
		t.Fatalf("/info = %+v, want hostname %s, ports %d and %d and a key named after the host",
			info, hostname, srv.Config.APIPort, srv.Config.CachePort)
	}

	t0 := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(t0).Seconds(), what) }
	step("server up")
	b := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 90*time.Second)
	defer cancel()
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// text reads an element's text in one step in the page: the script
	// replaces a card on every event, so a DOM node found first could be
	// gone by the time it is read.
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[*string](fmt.Sprintf(`document.querySelector(%q)?.textContent ?? null`, sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		if s == nil {
			t.Fatalf("no element %s on the page", sel)
		}
		return strings.TrimSpace(*s)
	}
	// waitJS waits until the JavaScript expression is true; the deadline is
	// the test's, so no step can hang. The build can only end in success:
	// if it ends otherwise, the wait fails at once with its log.
	waitJS := func(what, expr string) {
		t.Helper()
		waitPage(t, ctx, srv, name, db.StatusSuccess, what, expr, func() string {
			return fmt.Sprintf("repository card: %q\nlog: %q",
				jsString(ctx, fmt.Sprintf(`document.querySelector("#repo-%s")?.innerText`, name)),
				jsString(ctx, `document.querySelector("#log").textContent`))
		})
	}
	card := "#repo-" + name

	step("browser up")
	do("load the page", chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.CSS(card)))
	if got := text("h1 .host"); got != hostname {
		t.Errorf("hostname on the page = %q, want %q", got, hostname)
	}
	if got := text("#api-port"); got != strconv.Itoa(srv.Config.APIPort) {
		t.Errorf("API port on the page = %q, want %d", got, srv.Config.APIPort)
	}
	if got := text("#cache-port"); got != strconv.Itoa(srv.Config.CachePort) {
		t.Errorf("cache port on the page = %q, want %d", got, srv.Config.CachePort)
	}
	key, err := chromedp.Run(ctx, chromedp.Value(chromedp.ID("public-key")))
	if err != nil || key != info.PublicKey {
		t.Errorf("public key on the page = %q (%v), want /info's %q", key, err, info.PublicKey)
	}
	do("find the copy button", chromedp.WaitVisible(chromedp.ID("copy-key")))
	if got, want := text("#nix-conf"), "extra-substituters = "+info.CacheURL+"\nextra-trusted-public-keys = "+info.PublicKey; got != want {
		t.Errorf("nix.conf snippet on the page = %q, want %q", got, want)
	}
	waitJS("the live connection", `document.querySelector("#live-text").textContent === "live"`)
	if got := text(card + " span.status"); got != "idle" {
		t.Errorf("status before any build = %q, want idle", got)
	}

	step("page loaded")
	// From here on the page must update itself: a reload or navigation
	// would lose the marker.
	do("mark the page", chromedp.Evaluate[chromedp.Void](`window.__marker = 1`))
	do("click Trigger build", chromedp.Click(chromedp.CSS(card+" button.trigger")))
	waitJS("the card to show the build running", fmt.Sprintf(`document.querySelector("%s span.status")?.textContent === "running"`, card))
	if disabled, err := chromedp.Run(ctx, chromedp.Evaluate[bool](fmt.Sprintf(`document.querySelector("%s button.trigger").disabled`, card))); err != nil || !disabled {
		t.Errorf("trigger button disabled while running = %v (%v), want true", disabled, err)
	}
	// The log streams while the build runs: the slow package is still
	// blocked, so these lines cannot come from a finished log.
	waitJS("the log to stream", fmt.Sprintf(`(() => { const l = document.querySelector("#log").textContent;
		return l.includes("Starting build for %s") && l.includes("Building package slow") && l.includes("blocker slow waiting for release"); })()`, name))
	waitJS("the quick package's result while the build runs",
		`document.querySelector('#results tr[data-attr="quick"] td:nth-child(3)')?.textContent === "success"`)
	if st := text(card + " span.status"); st != "running" {
		t.Fatalf("status while the slow package builds = %q, want running", st)
	}

	step("build running, log streamed; releasing the slow package")
	blocker.Release(t)
	waitJS("the card to show success", fmt.Sprintf(`document.querySelector("%s span.status")?.textContent === "success"`, card))
	if got := text(card + " dd.commit"); got != shortCommit {
		t.Errorf("commit on the card = %q, want git's %q", got, shortCommit)
	}
	waitJS("the results table to show both packages built", `["quick", "slow"].every((a) =>
		document.querySelector('#results tr[data-attr="' + a + '"] td:nth-child(3)')?.textContent === "success")`)
	waitJS("the log to end", `document.querySelector("#log").textContent.includes("Build finished successfully")`)
	waitJS("the history to list the build", fmt.Sprintf(`document.querySelector("%s ul.history li .s")?.textContent === "success"`, card))
	if got := text("#build-status"); got != "success" {
		t.Errorf("build detail status = %q, want success", got)
	}
	testsupport.RequireBuildSucceeded(t, srv, srv.Build(t, latestBuild(t, srv, name).ID))
	if marker, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__marker || 0`)); err != nil || marker != 1 {
		t.Errorf("window.__marker = %d (%v) after the build: the page reloaded or navigated instead of updating live", marker, err)
	}
	if ex := b.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}

	step("build finished")
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	shot := filepath.Join(t.TempDir(), "web-page.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	if dir := os.Getenv("CF_SCREENSHOT_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "web-page.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", filepath.Join(dir, "web-page.png"))
	}
}

// waitPage waits until the JavaScript expression expr is true on the
// page. It fails at once, with the build's log, when the latest build of
// repo has ended in another state than wantEnd ("" when no end is right
// yet), and with diag() when the page fails or the deadline of ctx passes.
func waitPage(t *testing.T, ctx context.Context, srv *testsupport.Server, repo, wantEnd, what, expr string, diag func() string) {
	t.Helper()
	testsupport.WaitUntil(t, what, func() bool {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err != nil {
			t.Fatalf("waiting for %s (%s): %v\n%s", what, expr, err, diag())
		}
		if ok {
			return true
		}
		if b := latestBuild(t, srv, repo); b != nil && !b.Active() && b.Status != wantEnd {
			t.Fatalf("build %d ended %s (error %q) while waiting for %s; page:\n%s\nlog of the build:\n%s",
				b.ID, b.Status, b.Error, what, diag(), srv.Log(t, b.ID))
		}
		return false
	})
}

// latestBuild returns the newest build of repo, or nil.
func latestBuild(t *testing.T, srv *testsupport.Server, repo string) *db.Build {
	t.Helper()
	var r api.Repository
	srv.GetJSON(t, "/api/v1/repositories/"+repo, &r)
	return r.LatestBuild
}

// jsString evaluates expr for a failure message.
// pollPage waits until the JavaScript expression expr is true on the page
// of ctx (until ctx ends). On failure it fails the test naming what it
// waited for and showing parts of the page: show holds pairs of a label and
// a JavaScript expression for that part's text.
func pollPage(t *testing.T, ctx context.Context, what, expr string, show ...string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(0))); err != nil {
		var parts strings.Builder
		for i := 0; i+1 < len(show); i += 2 {
			fmt.Fprintf(&parts, "\n%s: %q", show[i], jsString(ctx, show[i+1]))
		}
		t.Fatalf("waiting for %s (%s): %v%s", what, expr, err, parts.String())
	}
}

func jsString(ctx context.Context, expr string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return s
}

// TestWebPageServerRestart kills the server under an open page in the
// middle of a build and starts it again: the page reconnects by itself,
// follows the resumed build to its success, and its log pane holds the log
// once, not twice.
func TestWebPageServerRestart(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	const name = "restartrepo"
	blocker, srv, _ := startBlockedServer(t, name)

	b := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 90*time.Second)
	defer cancel()
	// The build must not end until the server is killed; after the
	// restart it is resumed and succeeds.
	wantEnd := ""
	waitJS := func(what, expr string) {
		t.Helper()
		waitPage(t, ctx, srv, name, wantEnd, what, expr, func() string {
			return fmt.Sprintf("repository card: %q\nbuild: %q\nlog: %q",
				jsString(ctx, fmt.Sprintf(`document.querySelector("#repo-%s")?.innerText`, name)),
				jsString(ctx, `document.querySelector("#build-meta").innerText`),
				jsString(ctx, `document.querySelector("#log").textContent`))
		})
	}
	card := "#repo-" + name
	if err := chromedp.Do(ctx,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(card)),
		chromedp.Evaluate[chromedp.Void](`window.__marker = 1`),
		chromedp.Click(chromedp.CSS(card+" button.trigger")),
	); err != nil {
		t.Fatal(err)
	}
	waitJS("the build to run", fmt.Sprintf(`document.querySelector("%s span.status")?.textContent === "running"
		&& document.querySelector("#log").textContent.includes("blocker slow waiting for release")`, card))

	var builds []apiBuild
	srv.GetJSON(t, "/api/v1/repositories/"+name+"/builds", &builds)
	if len(builds) != 1 {
		t.Fatalf("builds = %+v, want one", builds)
	}
	srv.Kill(t)
	if err := os.Remove(blocker.PIDFile()); err != nil {
		t.Fatal(err)
	}
	srv = testsupport.StartServerWithConfig(t, srv.Config) // same ports: the open page reconnects
	blocker.WaitStarted(t, srv, builds[0].ID)
	blocker.Release(t)
	wantEnd = db.StatusSuccess

	waitJS("the card to show the build succeeded", fmt.Sprintf(`document.querySelector("%s span.status")?.textContent === "success"`, card))
	waitJS("the build detail to show it succeeded", `document.querySelector("#build-status")?.textContent === "success"
		&& document.querySelector("#cancel-build").hidden`)
	waitJS("the log to say the build finished", `document.querySelector("#log").textContent.includes("Build finished successfully")`)
	logText := jsString(ctx, `document.querySelector("#log").textContent`)
	if n := strings.Count(logText, "Starting build for "+name); n != 1 {
		t.Errorf("the log pane holds %q %d times after the reconnect, want once:\n%s", "Starting build for "+name, n, logText)
	}
	if marker, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__marker || 0`)); err != nil || marker != 1 {
		t.Errorf("window.__marker = %d (%v): the page reloaded instead of reconnecting", marker, err)
	}
	if ex := b.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}
}
