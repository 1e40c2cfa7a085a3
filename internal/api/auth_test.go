package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/config"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/webhook"
)

// authServer is a server with one repository "app" whose clients are not
// trusted for being on loopback (every test client is), so only tokens
// count.
func authServer(t *testing.T, cfg api.AuthConfig) *ts.BuildServer {
	t.Helper()
	src := flakeRepo(t, ts.Nonce(), ts.GoodPackage("hello", 0))
	cfg.DistrustLoopback = true
	return ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}, Auth: cfg})
}

// mkToken stores a token directly; now fixes its creation time.
func mkToken(t *testing.T, s *ts.BuildServer, name string, role auth.Role, ttl time.Duration, now time.Time) string {
	t.Helper()
	c, err := (&auth.Tokens{DB: s.DB, Now: func() time.Time { return now }}).Create(t.Context(), name, role, ttl, "test")
	if err != nil {
		t.Fatal(err)
	}
	return c.Token
}

func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}, "Content-Type": {"application/json"}}
}

func dbBuildCount(t *testing.T, s *ts.BuildServer) int {
	t.Helper()
	bs, err := s.DB.ListBuilds(t.Context(), "app", 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(bs)
}

func detail(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Detail == "" {
		t.Fatalf("error body %q has no JSON detail (%v)", body, err)
	}
	return e.Detail
}

func TestTokensGuardTrigger(t *testing.T) {
	s := authServer(t, api.AuthConfig{FailLimit: 100})
	now := time.Now()
	reader := mkToken(t, s, "reader", auth.RoleRead, 0, now)
	ci := mkToken(t, s, "ci", auth.RoleTrigger, 0, now)
	expired := mkToken(t, s, "old", auth.RoleTrigger, time.Hour, now.Add(-2*time.Hour))
	revoked := mkToken(t, s, "gone", auth.RoleAdmin, 0, now)
	if err := (&auth.Tokens{DB: s.DB}).Revoke(t.Context(), "gone"); err != nil {
		t.Fatal(err)
	}
	wrong := ci[:len(ci)-1] + map[bool]string{true: "B", false: "A"}[strings.HasSuffix(ci, "A")]

	for _, tc := range []struct {
		name   string
		header http.Header
		code   int
		want   string
	}{
		{"no identity", http.Header{"Content-Type": {"application/json"}}, 401, "needs the trigger role"},
		{"wrong token", bearer(wrong), 401, "unknown or revoked token"},
		{"not a token", bearer("hunter2"), 401, "unknown or revoked token"},
		{"basic auth", http.Header{"Authorization": {"Basic YTpi"}}, 401, "Bearer"},
		{"expired", bearer(expired), 401, "token expired"},
		{"revoked", bearer(revoked), 401, "unknown or revoked token"},
		{"wrong role", bearer(reader), 403, "token:reader has role read; this needs trigger"},
	} {
		for _, path := range []string{"/build/trigger/app", "/api/v1/repositories/app/builds"} {
			code, body := s.Do(t, "POST", path, nil, tc.header)
			if code != tc.code || !strings.Contains(detail(t, body), tc.want) {
				t.Errorf("%s: POST %s = %d %s, want %d with %q", tc.name, path, code, body, tc.code, tc.want)
			}
		}
	}
	if n := dbBuildCount(t, s); n != 0 {
		t.Fatalf("refused triggers created %d builds", n)
	}
	// Reading stays open without an identity.
	s.JSON(t, "GET", "/build/status/app", 200, nil)

	code, body := s.Do(t, "POST", "/build/trigger/app", nil, bearer(ci))
	if code != 200 || !strings.Contains(string(body), `"triggered"`) {
		t.Fatalf("trigger with the ci token = %d %s", code, body)
	}
	if n := dbBuildCount(t, s); n != 1 {
		t.Fatalf("%d builds after one trigger", n)
	}
	// Uses are recorded for tokens that authenticated (the expired one did not).
	list, err := (&auth.Tokens{DB: s.DB}).List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range list {
		if (tok.Name == "ci" || tok.Name == "reader") != (tok.LastUsedAt != nil) {
			t.Errorf("token %s last used %v", tok.Name, tok.LastUsedAt)
		}
	}
}

func TestTokenAPI(t *testing.T) {
	s := authServer(t, api.AuthConfig{FailLimit: 100})
	admin := mkToken(t, s, "root", auth.RoleAdmin, 0, time.Now())
	ci := mkToken(t, s, "ci", auth.RoleTrigger, 0, time.Now())

	req := func(method, path, body string, h http.Header) (int, []byte) {
		return s.Do(t, method, path, []byte(body), h)
	}
	// Only admin manages tokens.
	for _, h := range []http.Header{{"Content-Type": {"application/json"}}, bearer(ci)} {
		if code, body := req("POST", "/api/v1/tokens", `{"name":"x","role":"admin"}`, h); code != 401 && code != 403 {
			t.Errorf("create token without admin = %d %s", code, body)
		}
		if code, _ := req("GET", "/api/v1/tokens", "", h); code != 401 && code != 403 {
			t.Errorf("list tokens without admin = %d", code)
		}
		if code, _ := req("DELETE", "/api/v1/tokens/ci", "", h); code != 401 && code != 403 {
			t.Errorf("revoke without admin = %d", code)
		}
	}
	code, body := req("POST", "/api/v1/tokens", `{"name":"deploy","role":"trigger","expires":"90d"}`, bearer(admin))
	if code != 201 {
		t.Fatalf("create = %d %s", code, body)
	}
	var created struct {
		Token     string     `json:"token"`
		Name      string     `json:"name"`
		Role      string     `json:"role"`
		ExpiresAt *time.Time `json:"expires_at"`
		CreatedBy string     `json:"created_by"`
	}
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Token, auth.TokenPrefix) || created.Role != "trigger" || created.CreatedBy != "token:root" ||
		created.ExpiresAt == nil || time.Until(*created.ExpiresAt) < 89*24*time.Hour {
		t.Fatalf("created = %+v", created)
	}
	for _, bad := range []struct {
		body string
		code int
	}{
		{`{"name":"deploy","role":"read"}`, 409},
		{`{"name":"x","role":"root"}`, 400},
		{`{"name":"x y","role":"read"}`, 400},
		{`{"name":"x","role":"read","expires":"soon"}`, 400},
		{`{"name":"x","role":"read","extra":1}`, 400},
	} {
		if code, body := req("POST", "/api/v1/tokens", bad.body, bearer(admin)); code != bad.code {
			t.Errorf("create %s = %d %s, want %d", bad.body, code, body, bad.code)
		}
	}
	code, body = req("GET", "/api/v1/tokens", "", bearer(admin))
	if code != 200 || strings.Contains(string(body), created.Token) || strings.Contains(string(body), "hash") {
		t.Fatalf("list = %d %s: want no secrets", code, body)
	}
	if code, body := req("POST", "/build/trigger/app", "", bearer(created.Token)); code != 200 {
		t.Fatalf("trigger with the new token = %d %s", code, body)
	}
	if code, body := req("DELETE", "/api/v1/tokens/deploy", "", bearer(admin)); code != 200 {
		t.Fatalf("revoke = %d %s", code, body)
	}
	if code, _ := req("DELETE", "/api/v1/tokens/deploy", "", bearer(admin)); code != 404 {
		t.Fatalf("revoke twice = %d, want 404", code)
	}
	if code, _ := req("POST", "/api/v1/repositories/app/builds", "", bearer(created.Token)); code != 401 {
		t.Fatalf("revoked token still works: %d", code)
	}
	var audit []struct{ Actor, Action, Detail string }
	entries, err := s.DB.AuditLog(t.Context(), "", 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		audit = append(audit, struct{ Actor, Action, Detail string }{e.Actor, e.Action, e.Detail})
	}
	if len(audit) != 2 || audit[0].Action != "token-revoke" || audit[1].Action != "token-create" || audit[0].Actor != "token:root" {
		t.Fatalf("audit = %+v", audit)
	}
}

func TestLoopbackTrust(t *testing.T) {
	src := flakeRepo(t, ts.Nonce(), ts.GoodPackage("hello", 0))
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}})
	var who map[string]any
	s.JSON(t, "GET", "/api/v1/whoami", 200, &who)
	if who["identity"] != "loopback" || who["role"] != "admin" {
		t.Fatalf("whoami from loopback = %v", who)
	}
	// A request relayed by a proxy on this machine is not the operator.
	for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-Ip"} {
		code, body := s.Do(t, "POST", "/api/v1/tokens", []byte(`{"name":"p","role":"admin"}`), http.Header{h: {"203.0.113.9"}, "Content-Type": {"application/json"}})
		if code != 401 {
			t.Errorf("token create through a proxy (%s) = %d %s, want 401", h, code, body)
		}
	}
	// The spec's `curl -X POST` on the server itself still triggers.
	code, body := s.Do(t, "POST", "/build/trigger/app", nil, nil)
	if code != 200 {
		t.Fatalf("curl -X POST from loopback = %d %s", code, body)
	}
}

func TestRequireAuthForRead(t *testing.T) {
	s := authServer(t, api.AuthConfig{RequireAuthForRead: true, FailLimit: 100})
	reader := mkToken(t, s, "reader", auth.RoleRead, 0, time.Now())
	for _, path := range []string{"/api/v1/repositories", "/build/status/app", "/build/logs/app", "/info", "/api/v1/events", "/api/v1/workers", "/api/v1/queue"} {
		code, body := s.Do(t, "GET", path, nil, nil)
		if code != 401 {
			t.Errorf("GET %s anonymous = %d %s, want 401", path, code, body)
		}
	}
	for _, path := range []string{"/api/v1/workers", "/api/v1/queue"} {
		if code, body := s.Do(t, "GET", path, nil, bearer(reader)); code != 200 {
			t.Errorf("GET %s with a read token = %d %s, want 200", path, code, body)
		}
	}
	s.JSON(t, "GET", "/health", 200, nil)
	code, body := s.Do(t, "GET", "/api/v1/repositories", nil, bearer(reader))
	if code != 200 {
		t.Fatalf("read with a read token = %d %s", code, body)
	}
	var who struct {
		Identity string          `json:"identity"`
		Can      map[string]bool `json:"can"`
	}
	s.JSON(t, "GET", "/api/v1/whoami", 200, &who)
	if who.Identity != "anonymous" || who.Can["read"] || who.Can["trigger"] {
		t.Fatalf("anonymous whoami = %+v", who)
	}
}

func TestFailedAttemptsLimited(t *testing.T) {
	s := authServer(t, api.AuthConfig{FailLimit: 3, FailWindow: time.Hour})
	good := mkToken(t, s, "good", auth.RoleTrigger, 0, time.Now())
	for i := range 3 {
		if code, _ := s.Do(t, "GET", "/api/v1/whoami", nil, bearer(fmt.Sprintf("guess-%d", i))); code != 401 {
			t.Fatalf("guess %d = %d, want 401", i, code)
		}
	}
	code, body := s.Do(t, "POST", "/build/trigger/app", nil, bearer(good))
	if code != http.StatusTooManyRequests || !strings.Contains(detail(t, body), "too many failed attempts") {
		t.Fatalf("after 3 failures a good token = %d %s, want 429", code, body)
	}
	if n := dbBuildCount(t, s); n != 0 {
		t.Fatalf("%d builds", n)
	}
	// Requests without a token are not blocked: reading stays open.
	s.JSON(t, "GET", "/build/status/app", 200, nil)
}

func TestBrowserProtections(t *testing.T) {
	src := flakeRepo(t, ts.Nonce(), ts.GoodPackage("hello", 0))
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)},
		Auth: api.AuthConfig{AllowedHosts: []string{"forge.example.com"}}})
	host := strings.TrimPrefix(s.URL, "http://")
	for _, tc := range []struct {
		name   string
		method string
		header http.Header
		host   string
		code   int
		want   string
	}{
		{"text/plain cross-site form", "POST", http.Header{"Content-Type": {"text/plain"}}, "", 403, "Content-Type: application/json"},
		{"form from a browser", "POST", http.Header{"Content-Type": {"application/x-www-form-urlencoded"}, "Origin": {"http://" + host}}, "", 403, "Content-Type"},
		{"bodiless fetch from a browser", "POST", http.Header{"Sec-Fetch-Site": {"same-origin"}}, "", 403, "Content-Type"},
		{"cross-origin JSON", "POST", http.Header{"Content-Type": {"application/json"}, "Origin": {"http://evil.example"}}, "", 403, "cross-origin"},
		{"opaque origin", "POST", http.Header{"Content-Type": {"application/json"}, "Origin": {"null"}}, "", 403, "cross-origin"},
		{"DNS rebinding", "POST", http.Header{"Content-Type": {"application/json"}}, "evil.example:8000", 421, "not one of this server's names"},
		{"DNS rebinding read", "GET", nil, "evil.example", 421, "allowed_hosts"},
	} {
		req, err := http.NewRequestWithContext(t.Context(), tc.method, s.URL+"/build/trigger/app", nil)
		if tc.method == "GET" {
			req, err = http.NewRequestWithContext(t.Context(), tc.method, s.URL+"/api/v1/repositories", nil)
		}
		if err != nil {
			t.Fatal(err)
		}
		req.Header = tc.header
		if req.Header == nil {
			req.Header = http.Header{}
		}
		if tc.name == "text/plain cross-site form" {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		if tc.host != "" {
			req.Host = tc.host
		}
		resp, err := s.HTTP.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Detail string }
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("%s: decode the answer: %v", tc.name, err)
		}
		if resp.StatusCode != tc.code || !strings.Contains(e.Detail, tc.want) {
			t.Errorf("%s: %d %q, want %d with %q", tc.name, resp.StatusCode, e.Detail, tc.code, tc.want)
		}
	}
	if n := dbBuildCount(t, s); n != 0 {
		t.Fatalf("refused requests created %d builds", n)
	}
	// The same-origin page, a configured name, and localhost pass.
	for _, h := range []struct{ host, origin string }{{host, "http://" + host}, {"forge.example.com:8000", "http://forge.example.com:8000"}, {"localhost", ""}} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", s.URL+"/api/v1/whoami", nil)
		req.Host = h.host
		resp, err := s.HTTP.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET with Host %s = %d", h.host, resp.StatusCode)
		}
	}
	code, body := s.Do(t, "POST", "/api/v1/repositories/app/builds", nil, http.Header{"Content-Type": {"application/json"}, "Origin": {"http://" + host}})
	if code != 201 {
		t.Fatalf("same-origin JSON trigger = %d %s", code, body)
	}
}

// A signed delivery sent twice builds once; webhooks need no identity and
// no particular Host (their signature is their proof).
func TestWebhookRedelivery(t *testing.T) {
	const secret = "s3cret"
	src := flakeRepo(t, ts.Nonce(), ts.GoodPackage("hello", 0))
	head := ts.Head(t, src)
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: []config.Repository{ts.MainBranchRepo("app", src)}, WebhookSecret: secret,
		Auth: api.AuthConfig{DistrustLoopback: true}})
	body, _ := json.Marshal(map[string]any{"ref": "refs/heads/main", "after": head})
	send := func(h http.Header) map[string]any {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), "POST", s.URL+"/api/v1/webhooks/app", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h
		req.Host = "hooks.example.net"
		resp, err := s.HTTP.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
			t.Fatalf("webhook = %d %v (%v)", resp.StatusCode, m, err)
		}
		return m
	}
	github := http.Header{"X-Github-Event": {"push"}, "X-Hub-Signature-256": {"sha256=" + webhook.Sign(body, secret)},
		"X-Github-Delivery": {"72d3162e-cc78-11e3-81ab-4c9367dc0958"}, "Content-Type": {"application/json"}}
	m := send(github)
	if m["status"] != "triggered" {
		t.Fatalf("first delivery = %v", m)
	}
	s.WaitFinished(t, int64(m["build_id"].(float64)))
	m = send(github)
	if m["status"] != "ignored" || !strings.Contains(m["reason"].(string), "already processed") {
		t.Fatalf("the same delivery again = %v, want ignored", m)
	}
	if n := dbBuildCount(t, s); n != 1 {
		t.Fatalf("%d builds after a delivery sent twice, want 1", n)
	}
	// Another provider's id space is its own; a new delivery builds.
	gitea := http.Header{"X-Gitea-Event": {"push"}, "X-Gitea-Signature": {webhook.Sign(body, secret)},
		"X-Gitea-Delivery": {"72d3162e-cc78-11e3-81ab-4c9367dc0958"}, "Content-Type": {"application/json"}}
	if m := send(gitea); m["status"] != "triggered" {
		t.Fatalf("gitea delivery with the same id = %v, want triggered", m)
	}
}
