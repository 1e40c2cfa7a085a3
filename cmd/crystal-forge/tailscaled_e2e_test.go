package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/tailnet"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/tailnettest"
)

// TestTailscaled runs the server beside a real system tailscaled (built
// from tailscale.com at go.mod's version) in userspace-networking mode on
// the in-process tailnet: tailnet peers reach the server through
// tailscaled's netstack, which delivers their connections from
// 127.0.0.1, and tailscaled's LocalAPI WhoIs names them. Loopback stays
// trusted here (the default), so a peer mistaken for loopback would be
// admin: the member must read and be refused a host add, the admin adds
// one, the audit log names the admin's login, and a connection tailscaled
// did not make is still loopback.
func TestTailscaled(t *testing.T) {
	testsupport.RequireNix(t)
	tn := tailnettest.Start(t)
	tsd := tn.StartTailscaled(t, "forge-host")
	admin := tn.Node(t, "admin-laptop")
	member := tn.Node(t, "member-laptop")
	adminLogin, memberLogin := tailnettest.Login(t, admin), tailnettest.Login(t, member)

	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		ExtraTOML: fmt.Sprintf(`[tailscale]
use_tailscaled = true
tailscaled_socket = %q

[[acl]]
match = %q
role = "read"

[[acl]]
match = %q
role = "admin"
`, tsd.Socket, memberLogin, adminLogin),
	})
	api := fmt.Sprintf("http://%s:%d", tsd.IP, srv.Config.APIPort)

	if w := waitWhoami(t, member, api, fmt.Sprintf("tailnet:%s (node member-laptop)", memberLogin)); w.Kind != "tailnet" || w.Role != "read" {
		t.Fatalf("member whoami through tailscaled = %+v, want tailnet, read", w)
	}
	if w := waitWhoami(t, admin, api, fmt.Sprintf("tailnet:%s (node admin-laptop)", adminLogin)); w.Role != "admin" {
		t.Fatalf("admin whoami through tailscaled = %+v, want admin", w)
	}

	d, err := db.Open(t.Context(), filepath.Join(srv.Config.DataDir, "crystal-forge.db"))
	if err != nil {
		t.Fatal(err)
	}
	testsupport.CloseAtCleanup(t, d)
	agentKey := newFleetTestAgent(t, "h1").pub()
	hostBody := `{"name": "h1", "public_key": "` + agentKey + `"}`
	if code, out, err := call(t, member, "POST", api+"/api/v1/hosts", hostBody); err != nil || code != http.StatusForbidden {
		t.Fatalf("member's host add through tailscaled = %d %s %v, want 403", code, out, err)
	}
	if _, err := d.Host(t.Context(), "h1"); err == nil {
		t.Fatal("the member's refused host add created h1")
	}
	if code, out, err := call(t, admin, "POST", api+"/api/v1/hosts", hostBody); err != nil || code != http.StatusCreated {
		t.Fatalf("admin's host add through tailscaled = %d %s %v, want 201", code, out, err)
	}
	audit, err := d.AuditLog(t.Context(), "h1", 10)
	if err != nil {
		t.Fatal(err)
	}
	// The socket's source is tailscaled's proxy on loopback; the identity
	// is the peer's.
	wantActor := fmt.Sprintf("tailnet:%s (node admin-laptop)", adminLogin)
	if len(audit) != 1 || audit[0].Action != "add-host" || audit[0].Actor != wantActor || !strings.HasPrefix(audit[0].Remote, "127.0.0.1:") {
		t.Fatalf("audit of h1 = %+v, want one add-host by %s", audit, wantActor)
	}

	// A connection tailscaled did not make: its WhoIs does not know it.
	code, out := srv.Get(t, "/api/v1/whoami")
	if code != http.StatusOK || !strings.Contains(string(out), `"identity":"loopback"`) {
		t.Fatalf("whoami on loopback = %d %s, want loopback", code, out)
	}

	// The kernel-mode lookup (a connection on tailscaled's own address,
	// WhoIs by the peer's tailnet address) against the same LocalAPI.
	adminIP, _ := admin.TailscaleIPs()
	ctx := context.WithValue(t.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: tsd.IP.AsSlice(), Port: srv.Config.APIPort})
	peer, err := tailnet.SystemTailscaled(tsd.Socket).Peer(ctx, net.JoinHostPort(adminIP.String(), "41000"))
	if err != nil || peer == nil || peer.Login != adminLogin || peer.Node != "admin-laptop" {
		t.Fatalf("WhoIs %s from tailscaled = %+v, %v; want %s on admin-laptop", adminIP, peer, err, adminLogin)
	}
}
