// Package tailnettest runs a Tailscale network inside a test, offline:
// tailscale.com's test control server with in-process DERP and STUN on
// 127.0.0.1, and tsnet nodes with in-memory state. It is its own package
// so that only the tests that use it link Tailscale.
package tailnettest

import (
	"context"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"tailscale.com/ipn/store/mem"
	"tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/logger"
)

// MagicDNSDomain is the tailnet's DNS suffix.
const MagicDNSDomain = "tail-scale.ts.net"

// Tailnet is a control server and its DERP relay.
type Tailnet struct {
	ControlURL string
	Control    *testcontrol.Server
}

// Start starts a tailnet for the test. It turns off tailscale's netns
// (socket marks) for the test process, as tsnet's own tests do.
func Start(t testing.TB) *Tailnet {
	t.Helper()
	netns.SetEnabled(false)
	t.Cleanup(func() { netns.SetEnabled(true) })
	derpMap := integration.RunDERPAndSTUN(t, logger.Discard, "127.0.0.1")
	control := &testcontrol.Server{
		DERPMap:        derpMap,
		DNSConfig:      &tailcfg.DNSConfig{Proxied: true},
		MagicDNSDomain: MagicDNSDomain,
		Logf:           logger.Discard,
	}
	control.HTTPTestServer = httptest.NewUnstartedServer(control)
	control.HTTPTestServer.Start()
	t.Cleanup(control.HTTPTestServer.Close)
	return &Tailnet{ControlURL: control.HTTPTestServer.URL, Control: control}
}

// Node brings up an ephemeral tsnet node with in-memory state; each node
// is its own user (user-N@fake-control.example.net).
func (tn *Tailnet) Node(t testing.TB, hostname string) *tsnet.Server {
	t.Helper()
	s := &tsnet.Server{
		Dir:        filepath.Join(t.TempDir(), hostname),
		ControlURL: tn.ControlURL,
		Hostname:   hostname,
		Store:      new(mem.Store),
		Ephemeral:  true,
		Logf:       logger.Discard,
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close tailnet node %s: %v", hostname, err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if _, err := s.Up(ctx); err != nil {
		t.Fatalf("tailnet node %s: %v", hostname, err)
	}
	return s
}

// Login is a node's user login name.
func Login(t testing.TB, s *tsnet.Server) string {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	u, ok := st.User[st.Self.UserID]
	if !ok || u.LoginName == "" {
		t.Fatalf("node %s has no user login in its status", st.Self.HostName)
	}
	return u.LoginName
}

// Tag gives a node ACL tags, as an admin would in the admin console; the
// control server sends the change to every peer.
func (tn *Tailnet) Tag(t testing.TB, s *tsnet.Server, tags ...string) {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := tn.Control.Node(st.Self.PublicKey)
	if n == nil {
		t.Fatalf("control server does not know node %s", st.Self.HostName)
	}
	n = n.Clone()
	n.Tags = slices.Clone(tags)
	tn.Control.UpdateNode(n)
}

// Addr returns the first tailnet address of the node with this hostname
// (another process's node, say), waiting until it has joined.
func (tn *Tailnet) Addr(t testing.TB, hostname string) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		for _, n := range tn.Control.AllNodes() {
			if n.Hostinfo.Valid() && n.Hostinfo.Hostname() == hostname && len(n.Addresses) > 0 {
				return n.Addresses[0].Addr()
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no node %s joined the tailnet within 60s", hostname)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
