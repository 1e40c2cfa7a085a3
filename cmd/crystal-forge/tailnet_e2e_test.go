package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tailscale.com/tsnet"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/tailnet"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/tailnettest"
)

// tailnetConfig is the [tailscale] section and ACL of a server named
// hostname on tn: every peer reads, adminLogin is admin, tag:ci triggers.
func tailnetConfig(tn *tailnettest.Tailnet, hostname, adminLogin string, tailnetOnly bool) string {
	return fmt.Sprintf(`trust_loopback = false

[tailscale]
enable = true
hostname = %q
control_url = %q
tailnet_only = %v

[[acl]]
match = "*"
role = "read"

[[acl]]
match = %q
role = "admin"

[[acl]]
match = "tag:ci"
role = "trigger"
`, hostname, tn.ControlURL, tailnetOnly, adminLogin)
}

// call sends a request from a tailnet node and returns the status and body.
func call(t *testing.T, node *tsnet.Server, method, url, body string) (int, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := node.HTTPClient().Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

type whoamiAnswer struct {
	Identity string   `json:"identity"`
	Kind     string   `json:"kind"`
	Role     string   `json:"role"`
	Tags     []string `json:"tags"`
}

// waitWhoami waits until node reaches the server and is known as want
// (tags reach the server a moment after the control server sets them).
func waitWhoami(t *testing.T, node *tsnet.Server, base, want string) whoamiAnswer {
	t.Helper()
	var w whoamiAnswer
	var last string
	deadline := time.Now().Add(90 * time.Second)
	for {
		code, body, err := call(t, node, "GET", base+"/api/v1/whoami", "")
		if err == nil && code == 200 && json.Unmarshal(body, &w) == nil && w.Identity == want {
			return w
		}
		last = fmt.Sprintf("%d %s %v", code, body, err)
		if time.Now().After(deadline) {
			t.Fatalf("whoami from the tailnet: want %q, last answer %s", want, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTailnet runs the server on an in-process tailnet (test control
// server, DERP and STUN on 127.0.0.1, nothing online) with an admin
// user's node, a plain member's node and a tag:ci node: the member reads
// but cannot set a target, the admin can, CI triggers, the audit log names
// each login; nix copies from the cache through a local forwarder over
// the tailnet; and with tailnet_only nothing answers on loopback.
func TestTailnet(t *testing.T) {
	testsupport.RequireNix(t)
	requireGit(t)
	tn := tailnettest.Start(t)
	admin := tn.Node(t, "admin-laptop")
	member := tn.Node(t, "member-laptop")
	ci := tn.Node(t, "ci-runner")
	tn.Tag(t, ci, "tag:ci")
	adminLogin, memberLogin := tailnettest.Login(t, admin), tailnettest.Login(t, member)

	repoDir := testsupport.NewGitRepo(t, map[string]string{"flake.nix": testsupport.Flake{
		System: config.DefaultSystem(), Nonce: testsupport.Nonce(),
		Packages: []testsupport.FlakePackage{testsupport.GoodPackage("hello", 0)},
	}.Nix()})
	closure := testsupport.BuildClosure(t)
	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "app", URL: repoDir}},
		ExtraTOML:    tailnetConfig(tn, "forge", adminLogin, false),
	})
	name := "forge." + tailnettest.MagicDNSDomain
	api := fmt.Sprintf("http://%s:%d", name, srv.Config.APIPort)

	w := waitWhoami(t, member, api, fmt.Sprintf("tailnet:%s (node member-laptop)", memberLogin))
	if w.Kind != "tailnet" || w.Role != "read" {
		t.Fatalf("member whoami = %+v, want tailnet, read", w)
	}
	if w := waitWhoami(t, admin, api, fmt.Sprintf("tailnet:%s (node admin-laptop)", adminLogin)); w.Role != "admin" {
		t.Fatalf("admin whoami = %+v", w)
	}
	if w := waitWhoami(t, ci, api, "tailnet:tag:ci (node ci-runner)"); w.Role != "trigger" {
		t.Fatalf("ci whoami = %+v", w)
	}

	// /info names the cache by its MagicDNS name.
	code, body, err := call(t, member, "GET", api+"/info", "")
	var info struct {
		CacheURL  string `json:"cache_url"`
		PublicKey string `json:"public_key"`
	}
	if err != nil || code != 200 || json.Unmarshal(body, &info) != nil || info.CacheURL != fmt.Sprintf("http://%s:%d", name, srv.Config.CachePort) {
		t.Fatalf("/info over the tailnet = %d %s %v, want cache_url on %s", code, body, err, name)
	}

	d, err := db.Open(t.Context(), filepath.Join(srv.Config.DataDir, "crystal-forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	testsupport.CloseAtCleanup(t, d)
	mustCall := func(node *tsnet.Server, who, method, path, body string, want int) {
		t.Helper()
		code, out, err := call(t, node, method, api+path, body)
		if err != nil || code != want {
			t.Fatalf("%s %s %s = %d %s %v, want %d", who, method, path, code, out, err, want)
		}
	}
	agentKey := newFleetTestAgent(t, "h1").pub()
	mustCall(member, "member", "POST", "/api/v1/hosts", `{"name": "h1", "public_key": "`+agentKey+`"}`, 403)
	if _, err := d.Host(t.Context(), "h1"); err == nil {
		t.Fatal("the member's refused host add created h1")
	}
	mustCall(admin, "admin", "POST", "/api/v1/hosts", `{"name": "h1", "public_key": "`+agentKey+`"}`, 201)
	mustCall(member, "member", "POST", "/api/v1/hosts/h1/target", `{"target": "`+closure.Top+`"}`, 403)
	if h, err := d.Host(t.Context(), "h1"); err != nil || h.Target != "" {
		t.Fatalf("after the member's refused set-target: %+v %v", h, err)
	}
	mustCall(admin, "admin", "POST", "/api/v1/hosts/h1/target", `{"target": "`+closure.Top+`"}`, 200)
	if h, err := d.Host(t.Context(), "h1"); err != nil || h.Target != closure.Top {
		t.Fatalf("after the admin's set-target: %+v %v", h, err)
	}
	mustCall(member, "member", "POST", "/build/trigger/app", "", 403)
	mustCall(ci, "ci", "POST", "/build/trigger/app", "", 200)
	if bs, err := d.ListBuilds(t.Context(), "app", 10, 0); err != nil || len(bs) != 1 {
		t.Fatalf("builds after CI's trigger: %d %v", len(bs), err)
	}

	audit, err := d.AuditLog(t.Context(), "h1", 10)
	if err != nil {
		t.Fatal(err)
	}
	wantActor := fmt.Sprintf("tailnet:%s (node admin-laptop)", adminLogin)
	adminIP, _ := admin.TailscaleIPs()
	if len(audit) != 2 || audit[0].Action != "set-target" || audit[1].Action != "add-host" {
		t.Fatalf("audit of h1 = %+v", audit)
	}
	for _, e := range audit {
		if e.Actor != wantActor || !strings.HasPrefix(e.Remote, adminIP.String()+":") {
			t.Errorf("audit entry %+v: want actor %q from %s", e, wantActor, adminIP)
		}
	}
	if !strings.Contains(srv.Stderr(), "tailnet:tag:ci (node ci-runner)") {
		t.Errorf("the server log does not name CI's identity for its trigger")
	}

	// Loopback is not trusted here and is nobody in particular.
	code, out := srv.Get(t, "/api/v1/whoami")
	if code != 200 || !strings.Contains(string(out), `"identity":"anonymous"`) {
		t.Fatalf("whoami on loopback = %d %s", code, out)
	}

	// nix copy, which cannot use tsnet, reaches the cache through a local
	// forwarder over the member's node.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fwdCtx, stopFwd := context.WithCancel(t.Context())
	defer stopFwd()
	fwdDone := make(chan error, 1)
	go func() {
		fwdDone <- tailnet.Forward(fwdCtx, ln, func(ctx context.Context) (net.Conn, error) {
			return member.Dial(ctx, "tcp", fmt.Sprintf("%s:%d", name, srv.Config.CachePort))
		}, nil)
	}()
	dest := testsupport.NewLocalStore(t)
	out2, err := testsupport.NixCommandEnv(t.Context(), []string{"XDG_CACHE_HOME=" + t.TempDir()},
		"nix", "copy", "--from", "http://"+ln.Addr().String(), "--to", dest,
		"--option", "trusted-public-keys", info.PublicKey, closure.Top)
	if err != nil {
		t.Fatalf("nix copy --from the cache over the tailnet: %v\n%s", err, out2)
	}
	for _, p := range closure.All {
		if _, err := os.Stat(filepath.Join(dest, p)); err != nil {
			t.Errorf("%s not copied: %v", p, err)
		}
	}
	stopFwd()
	if err := <-fwdDone; err != nil {
		t.Errorf("forwarder: %v", err)
	}

	// An agent without a system tailscaled joins with --tailscale and
	// heartbeats over the tailnet: its first contact enrols it, from its
	// node's tailnet address.
	dir := t.TempDir()
	current := filepath.Join(dir, "current-system")
	if err := os.Symlink(closure.Top, current); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	run(t.Context(), []string{"agent", "--once", "--dry-run",
		"--server", api, "--server-key", info.PublicKey, "--host", "h9",
		"--key-file", filepath.Join(dir, "agent-key"), "--current-system", current,
		"--profile", filepath.Join(dir, "profiles", "system"), "--sys-root", dir,
		"--substituter", fmt.Sprintf("http://%s:%d", name, srv.Config.CachePort), "--trusted-public-key", info.PublicKey,
		"--tailscale", "--tailscale-control-url", tn.ControlURL, "--tailscale-state-dir", filepath.Join(dir, "ts"),
	}, &stdout, &stderr)
	h9, err := d.Host(t.Context(), "h9")
	if err != nil || h9.Status != db.HostPending {
		t.Fatalf("host h9 after the agent's heartbeat over the tailnet: %+v %v\nagent:\n%s", h9, err, &stderr)
	}
	agentIP := tn.Addr(t, "h9-agent")
	if !strings.HasPrefix(h9.Remote, agentIP.String()+":") {
		t.Errorf("h9 called from %s, want its tailnet node %s", h9.Remote, agentIP)
	}
	if !strings.Contains(stderr.String(), "substituter reached over the tailnet") {
		t.Errorf("the agent did not set up its substituter forwarder:\n%s", &stderr)
	}

	// With tailnet_only the server listens on the tailnet alone.
	name2 := "forge2." + tailnettest.MagicDNSDomain
	var api2 string
	srv2 := testsupport.StartServer(t, testsupport.ServerOptions{
		ExtraTOML: tailnetConfig(tn, "forge2", adminLogin, true),
		Ready: func(s *testsupport.Server) bool {
			api2 = fmt.Sprintf("http://%s:%d", name2, s.Config.APIPort)
			code, _, err := call(t, admin, "GET", api2+"/health", "")
			return err == nil && code == 200
		},
	})
	waitWhoami(t, admin, api2, wantActor)
	for _, port := range []int{srv2.Config.APIPort, srv2.Config.CachePort} {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			t.Errorf("with tailnet_only, 127.0.0.1:%d accepts connections", port)
		}
	}
	code, body, err = call(t, member, "GET", fmt.Sprintf("http://%s:%d/nix-cache-info", name2, srv2.Config.CachePort), "")
	if err != nil || code != 200 || !bytes.Contains(body, []byte("StoreDir:")) {
		t.Fatalf("cache over the tailnet with tailnet_only = %d %s %v", code, body, err)
	}
}
