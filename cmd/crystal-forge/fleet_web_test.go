package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestWebPageFleet drives the page's fleet table in headless Chromium
// against a real server: a registered host whose manual target is not in
// the store shows what it runs, what it should run and why that was not
// sent; a host that enrolled on first contact shows an Approve button, and
// a click approves it (in the audit log) without reloading the page.
func TestWebPageFleet(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	testsupport.RequireChromium(t)
	srv := testsupport.StartServer(t, testsupport.ServerOptions{})

	chesty, newbie := newFleetTestAgent(t, "chesty"), newFleetTestAgent(t, "newbie")
	current := unbuiltPath("nixos-system-chesty-25.05")
	target := unbuiltPath("nixos-system-chesty-25.11")
	body, _ := json.Marshal(map[string]string{"name": "chesty", "public_key": chesty.pub(), "policy": "manual", "target": target})
	resp, err := http.Post(srv.URL+"/api/v1/hosts", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/v1/hosts = %d %s", resp.StatusCode, out)
	}
	code, out := chesty.beat(t, srv.URL, current, nil)
	var reply fleetproto.Reply
	if code != http.StatusOK || json.Unmarshal(out, &reply) != nil || reply.Deploy || reply.Target != current || reply.Reason != "verification-failed" {
		t.Fatalf("heartbeat = %d %s, want 200, stay on %s: verification-failed", code, out, current)
	}
	if code, out := newbie.beat(t, srv.URL, current, nil); code != http.StatusForbidden {
		t.Fatalf("heartbeat of an unknown host = %d %s, want 403", code, out)
	}

	b := testsupport.NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 90*time.Second)
	defer cancel()
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[*string](fmt.Sprintf(`document.querySelector(%q)?.textContent ?? null`, sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		if s == nil {
			t.Fatalf("no element %s on the page; fleet table: %q", sel, jsString(ctx, `document.querySelector("#fleet").innerText`))
		}
		return strings.TrimSpace(*s)
	}
	waitJS := func(what, expr string) {
		t.Helper()
		pollPage(t, ctx, what, expr, "fleet table", `document.querySelector("#fleet").innerText`)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(chromedp.ID("host-chesty"))); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	row := "#host-chesty"
	if got, want := text(row+" td.current"), shortStorePath(current); got != want {
		t.Errorf("current system on the page = %q, want %q", got, want)
	}
	if got := text(row + " td.desired code"); got != shortStorePath(target) {
		t.Errorf("desired target on the page = %q, want %q", got, shortStorePath(target))
	}
	if got := text(row + " .target-error"); !strings.HasPrefix(got, "not sent: ") || !strings.Contains(got, "not in this server's store") || !strings.Contains(got, target) {
		t.Errorf("target error on the page = %q, want why %s was not sent", got, target)
	}
	for _, c := range []struct{ sel, want string }{
		{row + " td.name", "chesty"}, {row + " td.status", "approved"}, {row + " td.policy", "manual"},
		{row + " td.last-deploy", "—"}, {row + " td.alerts", "—"},
	} {
		if got := text(c.sel); got != c.want {
			t.Errorf("%s = %q, want %q", c.sel, got, c.want)
		}
	}
	if got := text(row + " td.drift"); !strings.HasSuffix(got, " behind") {
		t.Errorf("drift = %q, want how long the host has been behind", got)
	}
	if got := text(row + " td.last-seen"); got == "never" || got == "" {
		t.Errorf("last seen = %q", got)
	}
	if title, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#host-chesty td.desired").title`)); err != nil || title != target {
		t.Errorf("the desired cell's title = %q (%v), want the whole path %s", title, err, target)
	}

	pending := "#host-newbie"
	if got := text(pending + " td.status span.status"); got != db.HostPending {
		t.Errorf("status of the enrolled host = %q, want pending", got)
	}
	if got := text(pending + " td.alerts"); !strings.Contains(got, "pending enrolment") {
		t.Errorf("alerts of the enrolled host = %q, want pending enrolment", got)
	}
	if err := chromedp.Do(ctx,
		chromedp.Evaluate[chromedp.Void](`window.__marker = 1`),
		chromedp.Click(chromedp.CSS(pending+" button.approve")),
	); err != nil {
		t.Fatalf("click Approve: %v", err)
	}
	waitJS("the row to show the host approved", `document.querySelector("#host-newbie td.status span.status")?.textContent === "approved"
		&& !document.querySelector("#host-newbie button.approve")
		&& !document.querySelector("#host-newbie td.alerts").textContent.includes("pending")`)
	if marker, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__marker || 0`)); err != nil || marker != 1 {
		t.Errorf("window.__marker = %d (%v) after approving: the page reloaded", marker, err)
	}

	var audit []db.AuditEntry
	srv.GetJSON(t, "/api/v1/audit", &audit)
	found := false
	for _, e := range audit {
		if e.Action == "approve" && e.Host == "newbie" {
			found = true
			if e.Actor != "loopback" || !strings.HasPrefix(e.Remote, "127.0.0.1:") {
				t.Errorf("approve entry = %+v, want actor loopback and the browser's address", e)
			}
		}
	}
	if !found {
		t.Fatalf("audit log %+v has no approval of newbie", audit)
	}
	// The approved host is served from its next heartbeat on.
	if code, out := newbie.beat(t, srv.URL, current, nil); code != http.StatusOK {
		t.Fatalf("heartbeat after approval = %d %s", code, out)
	}
	if ex := b.Exceptions(); len(ex) > 0 {
		t.Errorf("the page threw: %q", ex)
	}
	if dir := os.Getenv("CF_SCREENSHOT_DIR"); dir != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "web-page-fleet.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
