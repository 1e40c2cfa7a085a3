// Package tailnettest runs a Tailscale network inside a test, offline:
// tailscale.com's test control server with in-process DERP and STUN on
// 127.0.0.1, and tsnet nodes with in-memory state. It is its own package
// so that only the tests that use it link Tailscale.
package tailnettest

import (
	"context"
	"errors"
	"go/build"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"tailscale.com/ipn/ipnstate"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/net/netns"
	"tailscale.com/tailcfg"
	"tailscale.com/tsnet"
	"tailscale.com/tstest/integration"
	"tailscale.com/tstest/integration/testcontrol"
	"tailscale.com/types/logger"

	"github.com/crystal-forge/crystal-forge/internal/testsupport"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
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

// status is what a node knows of itself and its peers.
func status(t testing.TB, s *tsnet.Server) *ipnstate.Status {
	t.Helper()
	lc, err := s.LocalClient()
	if err != nil {
		t.Fatal(err)
	}
	st, err := lc.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Login is a node's user login name.
func Login(t testing.TB, s *tsnet.Server) string {
	t.Helper()
	st := status(t, s)
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
	st := status(t, s)
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

// Tailscaled is a real tailscaled process on the tailnet, in
// userspace-networking mode (no TUN device, no root), as a machine's
// system tailscaled would be.
type Tailscaled struct {
	Socket string     // its LocalAPI socket
	IP     netip.Addr // its tailnet IPv4 address
	cli    string
}

// tailscaledHint says how to get the programs.
const tailscaledHint = "`make test` installs them (GOBIN=$(go env GOPATH)/bin go install tailscale.com/cmd/tailscaled@v1.102.5 tailscale.com/cmd/tailscale@v1.102.5)"

// tailscalePrograms finds tailscaled and tailscale where `go install`
// puts them, or on PATH.
func tailscalePrograms(t testing.TB) (daemon, cli string) {
	t.Helper()
	find := func(name string) string {
		for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(build.Default.GOPATH, "bin")} {
			if dir == "" {
				continue
			}
			p := filepath.Join(dir, name)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
				return p
			}
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		testenv.Missing(t, name+" is not installed; "+tailscaledHint)
		return ""
	}
	return find("tailscaled"), find("tailscale")
}

// StartTailscaled runs tailscaled (userspace networking, its own state
// and socket in a temporary directory, logs kept local) and logs it in to
// the tailnet as hostname with `tailscale up`; it is stopped when the test
// ends.
func (tn *Tailnet) StartTailscaled(t testing.TB, hostname string) *Tailscaled {
	t.Helper()
	daemon, cli := tailscalePrograms(t)
	// A short directory: the socket's path must fit in sun_path.
	dir, err := os.MkdirTemp("", "cf-tsd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove tailscaled's directory: %v", err)
		}
	})
	ts := &Tailscaled{Socket: filepath.Join(dir, "tailscaled.sock"), cli: cli}
	var stderr testsupport.SyncBuffer
	cmd := exec.Command(daemon,
		"--tun=userspace-networking",
		"--socket="+ts.Socket,
		"--statedir="+filepath.Join(dir, "state"),
		"--port=0",
		"--socks5-server=", "--outbound-http-proxy-listen=",
		"--no-logs-no-support")
	cmd.Env = append(os.Environ(),
		"TS_LOGS_DIR="+dir,
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1", // no default route needed
		"TS_DISABLE_PORTMAPPER=1",
		"TS_NETCHECK_GENERATE_204_URL="+tn.ControlURL+"/generate_204",
	)
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start tailscaled: %v", err)
	}
	// Its exit status is of no interest: the test stops it.
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		signal := func(sig syscall.Signal) {
			if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
				t.Errorf("signal tailscaled: %v", err)
			}
		}
		signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			signal(syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("tailscaled's output:\n%s", stderr.String())
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	// tailscale up waits for the daemon's socket itself, but not for
	// long: try until it answers.
	for {
		out, err := ts.run(ctx, "up", "--login-server="+tn.ControlURL, "--hostname="+hostname, "--reset")
		if err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("tailscaled exited: %s\n%s", out, stderr.String())
		case <-ctx.Done():
			t.Fatalf("tailscale up: %v\n%s\ntailscaled:\n%s", err, out, stderr.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	out, err := ts.run(ctx, "ip", "-4")
	if err != nil {
		t.Fatalf("tailscale ip -4: %v\n%s", err, out)
	}
	if ts.IP, err = netip.ParseAddr(strings.TrimSpace(out)); err != nil {
		t.Fatalf("tailscale ip -4 = %q: %v", out, err)
	}
	return ts
}

// run runs the tailscale CLI against this daemon.
func (ts *Tailscaled) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, ts.cli, append([]string{"--socket=" + ts.Socket}, args...)...)
	cmd.Env = append(os.Environ(), "SSH_CLIENT=", "SSH_CONNECTION=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}
