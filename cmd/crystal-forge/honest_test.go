package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// brokenFlake is a flake of three packages, the middle one failing.
func brokenFlake(t *testing.T) string {
	t.Helper()
	return testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System: config.DefaultSystem(),
		Nonce:  testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{
			testsupport.GoodPackage("alpha", 2),
			testsupport.FailingPackage("bad"),
			testsupport.GoodPackage("zeta", 0),
		},
	}.Nix()})
}

// runCLI runs the real crystal-forge binary and returns its output and
// exit code.
func runCLI(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), testsupport.CrystalForgeBinary(t), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &exit):
		return out.String(), exit.ExitCode()
	default:
		t.Fatalf("crystal-forge %s: %v\n%s", strings.Join(args, " "), err, out.String())
		return "", 0
	}
}

// TestTriggerFollowExitCode is what a CI job does: `crystal-forge trigger
// -f` against a real server building a real flake. A flake with a failing
// package exits 1 and says what failed; a good one exits 0; `status`
// shows both as they ended.
func TestTriggerFollowExitCode(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	good := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System:   config.DefaultSystem(),
		Nonce:    testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{testsupport.GoodPackage("hello", 0)},
	}.Nix()})
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{
			{Name: "broken", URL: brokenFlake(t), Branch: "main"},
			{Name: "fine", URL: good, Branch: "main"},
		},
	})

	out, code := runCLI(t, "trigger", "--server", srv.URL, "-f", "broken")
	if code != 1 {
		t.Errorf("trigger -f of the broken flake exited %d, want 1:\n%s", code, out)
	}
	id := regexp.MustCompile(`build (\d+): failed\n`).FindStringSubmatch(out)
	drv := regexp.MustCompile(`failed: bad \(package\) (/nix/store/[0-9a-z]{32}-bad\.drv)\n`).FindStringSubmatch(out)
	if id == nil || drv == nil {
		t.Fatalf("trigger -f output lacks \"build N: failed\" or the failed package and its derivation:\n%s", out)
	}
	for _, want := range []string{
		"Successfully built package alpha",
		"Failed to build package bad",
		"Successfully built package zeta",
		"Build failed for commit",
		"error: builder for '" + drv[1] + "' failed with exit code 1",
		fmt.Sprintf("log: %s/api/v1/builds/%s/results/", srv.URL, id[1]),
		"1 of 4 attributes failed: bad (package)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("trigger -f output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "Build finished successfully") || strings.Contains(out, "All dependencies cached") {
		t.Errorf("trigger -f output of a failed build claims success:\n%s", out)
	}
	var st buildStatus
	srv.GetJSON(t, "/build/status/broken", &st)
	if st.IsRunning || str(st.LastStatus) != "failed" {
		t.Errorf("/build/status/broken: running %v, last_status %s; want failed", st.IsRunning, str(st.LastStatus))
	}

	out, code = runCLI(t, "trigger", "--server", srv.URL, "-f", "fine")
	if code != 0 || !regexp.MustCompile(`build \d+: success\n`).MatchString(out) || !strings.Contains(out, "Build finished successfully") {
		t.Errorf("trigger -f of the good flake exited %d, want 0 and success:\n%s", code, out)
	}

	out, code = runCLI(t, "status", "--server", srv.URL)
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines[f[0]] = l
		}
	}
	if code != 0 || !regexp.MustCompile(`\bfailed\b.*3 built, 1 failed, 0 skipped`).MatchString(lines["broken"]) ||
		!regexp.MustCompile(`\bsuccess\b.*2 built, 0 failed, 0 skipped`).MatchString(lines["fine"]) {
		t.Errorf("status exited %d, want broken failed (3 built, 1 failed) and fine success (2 built):\n%s", code, out)
	}
}

// TestWebPageFailedBuild opens a failed build by its own URL in headless
// Chromium: the card and history show it failed with its counts, and the
// build shows the failed attribute's error, derivation, the end of its log
// and a link to its own log.
func TestWebPageFailedBuild(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	const name = "brokenweb"
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: name, URL: brokenFlake(t), Branch: "main"}},
	})
	id := trigger(t, srv, name)
	var st buildStatus
	testsupport.WaitUntil(t, "the build to end", func() bool {
		srv.GetJSON(t, "/build/status/"+name, &st)
		return !st.IsRunning && st.LastStatus != nil
	})
	if str(st.LastStatus) != "failed" {
		t.Fatalf("last_status = %s, want failed", str(st.LastStatus))
	}
	for path, want := range map[string]int{
		fmt.Sprintf("/builds/%d", id): http.StatusOK,
		"/builds/abc":                 http.StatusBadRequest,
		"/builds/999999":              http.StatusNotFound,
	} {
		if code, body := srv.Get(t, path); code != want {
			t.Errorf("GET %s = %d %.200s, want %d", path, code, body, want)
		}
	}

	b := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 90*time.Second)
	defer cancel()
	card := "#repo-" + name
	waitJS := func(what, expr string) {
		t.Helper()
		pollPage(t, ctx, what, expr,
			"card", fmt.Sprintf(`document.querySelector(%q)?.innerText`, card),
			"build", `document.querySelector("#build-detail").innerText`)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s/builds/%d", srv.URL, id)), chromedp.WaitVisible(chromedp.CSS(card))); err != nil {
		t.Fatal(err)
	}
	counts := "3 built · 1 failed · 0 skipped"
	waitJS("the card to show the failure and its counts", fmt.Sprintf(`document.querySelector("%s span.status")?.textContent === "failed"
		&& document.querySelector("%s dd.attributes")?.textContent === %q
		&& document.querySelector("%s .build-error")?.textContent.includes("1 of 4 attributes failed: bad (package)")`, card, card, counts, card))
	waitJS("the history to show the counts", fmt.Sprintf(`(() => { const li = document.querySelector('%s ul.history li[data-build="%d"]');
		return li && li.querySelector(".s").textContent === "failed" && li.querySelector(".counts").textContent === %q; })()`, card, id, counts))
	waitJS("the build opened from its URL to show the failed attribute", fmt.Sprintf(`document.querySelector("#build-title")?.textContent.endsWith("build #%d")
		&& document.querySelector("#build-status")?.textContent === "failed"
		&& document.querySelector('#results tr[data-attr="bad"] td:nth-child(3)')?.textContent === "failed"
		&& /builder for '\/nix\/store\/[0-9a-z]{32}-bad\.drv' failed/.test(document.querySelector('#results tr[data-failure="bad"] pre.error')?.textContent ?? "")
		&& (document.querySelector('#results tr[data-failure="bad"] pre.log-tail')?.textContent ?? "").includes("bad> fixture package bad fails on purpose")
		&& /-bad\.drv$/.test(document.querySelector('#results tr[data-attr="bad"] .drv')?.textContent ?? "")`, id))
	if got := jsString(ctx, `document.querySelector('#results tr[data-failure="alpha"]') ? "yes" : "no"`); got != "no" {
		t.Errorf("a built attribute shows a failure row")
	}
	// The attribute's log link serves that attribute's part of the log.
	href := jsString(ctx, `document.querySelector('#results tr[data-attr="bad"] a.attr-log').getAttribute("href")`)
	if !strings.HasPrefix(href, fmt.Sprintf("/api/v1/builds/%d/results/", id)) {
		t.Fatalf("log link of bad = %q", href)
	}
	code, body := srv.Get(t, href)
	if code != http.StatusOK || !strings.Contains(string(body), "bad> fixture package bad fails on purpose") || strings.Contains(string(body), "alpha>") {
		t.Errorf("GET %s = %d %q, want bad's part of the log only", href, code, body)
	}
	if ex := b.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}
}
