package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

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
	d, err := db.Open(t.Context(), filepath.Join(srv.Config.DataDir, "crystal-forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	testsupport.CloseAtCleanup(t, d)
	tokens := &auth.Tokens{DB: d}
	ci, err := tokens.Create(t.Context(), "ci", auth.RoleTrigger, 0, "test")
	if err != nil {
		t.Fatal(err)
	}
	ops, err := tokens.Create(t.Context(), "ops", auth.RoleAdmin, 0, "test")
	if err != nil {
		t.Fatal(err)
	}

	b := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 90*time.Second)
	defer cancel()
	waitJS := func(what, expr string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
			chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(0))); err != nil {
			t.Fatalf("waiting for %s (%s): %v\npage: %q", what, expr, err, jsString(ctx, `document.body.innerText`))
		}
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
	log, err := d.AuditLog(t.Context(), "newbie", 10)
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
