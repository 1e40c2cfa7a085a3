package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestWebPageRoles drives the page in Chromium against a server that does
// not trust loopback: an anonymous visitor reads but is offered no trigger
// or approve button; with a trigger token (kept in localStorage) the page
// offers Trigger and nothing of admin's; with an admin token it offers
// Approve, and the approval is audited under that token.
func TestWebPageRoles(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	repoDir := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System: config.DefaultSystem(), Nonce: testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{testsupport.GoodPackage("hello", 0)},
	}.Nix()})
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "app", URL: repoDir}},
		ExtraTOML:    "trust_loopback = false\n",
	})
	// A host waiting for approval, so an admin would see Approve.
	if code, out := newFleetTestAgent(t, "newbie").beat(t, srv.URL, unbuiltPath("nixos-system-newbie"), nil); code != http.StatusForbidden {
		t.Fatalf("enrolment heartbeat = %d %s", code, out)
	}
	// Tokens go straight into the server's database: nobody here is admin.
	tokens := serverTokens(t, srv)
	ci := createToken(t, tokens, "ci", auth.RoleTrigger)
	ops := createToken(t, tokens, "ops", auth.RoleAdmin)

	b := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 90*time.Second)
	defer cancel()
	waitJS := func(what, expr string) {
		t.Helper()
		pollPage(t, ctx, what, expr, "page", `document.body.innerText`)
	}
	count := func(sel string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	useToken := func(tok string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.ID("token-input"), tok), chromedp.Click(chromedp.ID("token-save"))); err != nil {
			t.Fatalf("enter a token: %v", err)
		}
	}

	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.ID("repo-app")), chromedp.WaitVisible(chromedp.ID("host-newbie"))); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	waitJS("who I am", `document.querySelector("#whoami").textContent === "anonymous"`)
	if n, m := count("button.trigger"), count("button.approve"); n != 0 || m != 0 {
		t.Fatalf("an anonymous visitor is offered %d trigger and %d approve buttons, want none", n, m)
	}

	useToken("cft_000000000000_" + strings.Repeat("A", 43))
	waitJS("the refused token reported", `!document.querySelector("#token-error").hidden && document.querySelector("#token-error").textContent.includes("unknown or revoked")`)
	if n := count("button.trigger"); n != 0 {
		t.Fatalf("a refused token shows %d trigger buttons", n)
	}

	useToken(ci.Token)
	waitJS("the trigger token in use", `document.querySelector("#whoami").textContent === "token:ci" && document.querySelectorAll("#repo-app button.trigger").length === 1`)
	if n := count("button.approve"); n != 0 {
		t.Fatalf("a trigger token is offered %d approve buttons", n)
	}
	stored, err := chromedp.Run(ctx, chromedp.Evaluate[string](`localStorage.getItem("crystal-forge-token") || ""`))
	if err != nil || stored != ci.Token {
		t.Fatalf("token in localStorage = %q (%v)", stored, err)
	}
	// The token survives a reload, and the button works with it.
	if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#repo-app button.trigger")), chromedp.Click(chromedp.CSS("#repo-app button.trigger"))); err != nil {
		t.Fatalf("reload and trigger: %v", err)
	}
	waitJS("the triggered build's log", `document.querySelector("#log").textContent.includes("Starting build for app")`)

	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("token-forget"))); err != nil {
		t.Fatal(err)
	}
	waitJS("the token forgotten", `document.querySelector("#whoami").textContent === "anonymous" && document.querySelectorAll("button.trigger").length === 0`)
	useToken(ops.Token)
	waitJS("the admin's Approve button", `document.querySelectorAll("#host-newbie button.approve").length === 1`)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#host-newbie button.approve"))); err != nil {
		t.Fatal(err)
	}
	waitJS("the host approved", `document.querySelector("#host-newbie td.status span.status")?.textContent === "approved"`)
	log, err := tokens.DB.AuditLog(t.Context(), "newbie", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) != 1 || log[0].Action != "approve" || log[0].Actor != "token:ops" || !strings.HasPrefix(log[0].Remote, "127.0.0.1:") {
		t.Fatalf("audit log of newbie = %+v, want one approve by token:ops", log)
	}
	if ex := b.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}
}

// TestWebPageReadNeedsToken drives the page in Chromium against a server
// where reading needs a token (require_auth_for_read, loopback not
// trusted): with a read token, a build's own URL /builds/{id} opens the
// build, and an attribute's log link shows that attribute's part of the log
// in the page, fetched with the token, where a new tab (no token) would get
// 401.
func TestWebPageReadNeedsToken(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	const name = "private"
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: name, URL: brokenFlake(t), Branch: "main"}},
		ExtraTOML:    "trust_loopback = false\nrequire_auth_for_read = true\n",
	})
	tokens := serverTokens(t, srv)
	reader := createToken(t, tokens, "reader", auth.RoleRead)
	ci := createToken(t, tokens, "ci", auth.RoleTrigger)
	var trig struct {
		BuildID int64 `json:"build_id"`
	}
	if code, body := bearerDo(t, http.MethodPost, srv.URL+"/build/trigger/"+name, ci.Token); code != http.StatusOK || json.Unmarshal(body, &trig) != nil || trig.BuildID == 0 {
		t.Fatalf("trigger with the ci token = %d %s", code, body)
	}
	var b api.Build
	testsupport.WaitUntil(t, "the build to end", func() bool {
		code, body := bearerDo(t, http.MethodGet, fmt.Sprintf("%s/api/v1/builds/%d", srv.URL, trig.BuildID), reader.Token)
		if code != http.StatusOK {
			t.Fatalf("GET build %d with the read token = %d %s", trig.BuildID, code, body)
		}
		if err := json.Unmarshal(body, &b); err != nil {
			t.Fatal(err)
		}
		return b.FinishedAt != nil
	})
	var bad *db.Result
	for _, r := range b.Results {
		if r.Attr == "bad" {
			bad = r
		}
	}
	if bad == nil || bad.Status != "failed" {
		t.Fatalf("results of build %d = %+v, want bad failed", trig.BuildID, b.Results)
	}
	// What a new tab would do: no token, so refused.
	logPath := fmt.Sprintf("/api/v1/builds/%d/results/%d/log", trig.BuildID, bad.ID)
	if code, body := srv.Get(t, logPath); code != http.StatusUnauthorized {
		t.Fatalf("GET %s without a token = %d %s, want 401", logPath, code, body)
	}

	br := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(br.Ctx, 90*time.Second)
	defer cancel()
	waitJS := func(what, expr string) {
		t.Helper()
		pollPage(t, ctx, what, expr, "page", `document.body.innerText`)
	}
	buildURL := fmt.Sprintf("%s/builds/%d", srv.URL, trig.BuildID)
	if err := chromedp.Do(ctx, chromedp.Navigate(buildURL)); err != nil {
		t.Fatal(err)
	}
	waitJS("the page to ask for a token", `document.querySelector("#repositories").textContent.includes("Reading needs a token")`)
	if err := chromedp.Do(ctx, chromedp.SetValue(chromedp.ID("token-input"), reader.Token), chromedp.Click(chromedp.ID("token-save"))); err != nil {
		t.Fatalf("enter the read token: %v", err)
	}
	waitJS("the build opened from its URL with the token", fmt.Sprintf(`document.querySelector("#whoami").textContent === "token:reader"
		&& document.querySelector("#build-title")?.textContent.endsWith("build #%d")
		&& document.querySelector('#results tr[data-attr="bad"] td:nth-child(3)')?.textContent === "failed"`, trig.BuildID))
	// Opening /builds/{id} afresh (the token now in localStorage) works too.
	if err := chromedp.Do(ctx, chromedp.Navigate(buildURL)); err != nil {
		t.Fatal(err)
	}
	waitJS("the build opened again from its URL", fmt.Sprintf(`document.querySelector("#build-title")?.textContent.endsWith("build #%d")
		&& document.querySelector("#log").textContent.includes("Starting build for %s")
		&& !!document.querySelector('#results tr[data-attr="bad"] a.attr-log')`, trig.BuildID, name))
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(`#results tr[data-attr="bad"] a.attr-log`))); err != nil {
		t.Fatalf("click bad's log link: %v", err)
	}
	waitJS("bad's log shown in the page", `document.querySelector("#result-log").open
		&& document.querySelector("#result-log-text").textContent.includes("bad> fixture package bad fails on purpose")`)
	if got := jsString(ctx, `document.querySelector("#result-log-text").textContent`); strings.Contains(got, "alpha>") {
		t.Errorf("bad's log dialog shows another attribute's lines: %q", got)
	}
	if got := jsString(ctx, `document.querySelector("#result-log-title").textContent`); got != fmt.Sprintf("bad · build #%d", trig.BuildID) {
		t.Errorf("log dialog title = %q", got)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.ID("result-log-close"))); err != nil {
		t.Fatal(err)
	}
	waitJS("the log dialog closed", `!document.querySelector("#result-log").open`)
	if ex := br.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}
}

// bearerDo sends method to url with the token as Bearer and returns the
// status and body.
func bearerDo(t *testing.T, method, url, token string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, body
}

// serverTokens is the token store in the database of srv, a server process
// on SQLite, for tests in which nobody is admin over the API.
func serverTokens(t *testing.T, srv *testsupport.Server) *auth.Tokens {
	t.Helper()
	d, err := db.Open(t.Context(), filepath.Join(srv.Config.DataDir, "crystal-forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	testsupport.CloseAtCleanup(t, d)
	return &auth.Tokens{DB: d}
}

// createToken makes a token that never expires.
func createToken(t *testing.T, tokens *auth.Tokens, name string, role auth.Role) *auth.Created {
	t.Helper()
	c, err := tokens.Create(t.Context(), name, role, 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	return c
}
