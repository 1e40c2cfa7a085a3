package tailnet

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/auth"
)

func TestViaTailscaled(t *testing.T) {
	for _, tc := range []struct {
		local string
		want  bool
	}{
		{"100.101.102.103:8000", true},
		{"[fd7a:115c:a1e0::1]:8000", true},
		{"192.168.1.2:8000", false},
		{"127.0.0.1:8000", true}, // tailscaled's userspace netstack forwards to loopback
		{"[::1]:8000", true},
		{"", false},
	} {
		ctx := context.Background()
		if tc.local != "" {
			addr, err := net.ResolveTCPAddr("tcp", tc.local)
			if err != nil {
				t.Fatal(err)
			}
			ctx = context.WithValue(ctx, http.LocalAddrContextKey, addr)
		}
		if got := ViaTailscaled(ctx); got != tc.want {
			t.Errorf("ViaTailscaled(local %q) = %v, want %v", tc.local, got, tc.want)
		}
	}
	if ViaNode(context.Background()) || !ViaNode(MarkConn(context.Background(), nil)) {
		t.Error("MarkConn/ViaNode disagree")
	}
}

type fixed struct {
	p   *auth.Peer
	err error
}

func (f fixed) Peer(context.Context, string) (*auth.Peer, error) { return f.p, f.err }

func TestFirst(t *testing.T) {
	alice := &auth.Peer{Login: "alice@example.com"}
	bob := &auth.Peer{Login: "bob@example.com"}
	boom := errors.New("boom")
	if First() != nil {
		t.Fatal("First() of nothing is not nil")
	}
	for _, tc := range []struct {
		rs   []auth.PeerResolver
		want *auth.Peer
		err  error
	}{
		{[]auth.PeerResolver{fixed{}, fixed{p: alice}}, alice, nil},
		{[]auth.PeerResolver{fixed{p: bob}, fixed{p: alice}}, bob, nil},
		{[]auth.PeerResolver{fixed{err: boom}, fixed{p: alice}}, nil, boom},
		{[]auth.PeerResolver{fixed{}, fixed{}}, nil, nil},
	} {
		p, err := First(tc.rs...).Peer(context.Background(), "100.64.0.1:1")
		if p != tc.want || !errors.Is(err, tc.err) {
			t.Errorf("First(%v) = %v, %v; want %v, %v", tc.rs, p, err, tc.want, tc.err)
		}
	}
}

// TestSystemTailscaledUnreachable: when the LocalAPI cannot be asked, a
// request tailscaled may have relayed (loopback, or on a Tailscale IP) is
// an error, never taken for loopback; one on another address is not asked.
func TestSystemTailscaledUnreachable(t *testing.T) {
	r := SystemTailscaled(filepath.Join(t.TempDir(), "no-tailscaled.sock"))
	for _, tc := range []struct {
		local   string
		wantErr bool
	}{
		{"127.0.0.1:8000", true},
		{"100.101.102.103:8000", true},
		{"192.168.1.2:8000", false},
	} {
		addr, err := net.ResolveTCPAddr("tcp", tc.local)
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.WithValue(t.Context(), http.LocalAddrContextKey, addr)
		p, err := r.Peer(ctx, "127.0.0.1:40000")
		if p != nil || (err != nil) != tc.wantErr {
			t.Errorf("Peer on %s = %+v, %v; want error %v", tc.local, p, err, tc.wantErr)
		}
	}
}

func TestReadAuthKey(t *testing.T) {
	t.Setenv("TS_AUTHKEY", "tskey-from-env")
	file := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(file, []byte("  tskey-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file, want string
		fails      bool
	}{
		{"", "tskey-from-env", false},
		{file, "tskey-from-file", false},
		{filepath.Join(t.TempDir(), "missing"), "", true},
	} {
		got, err := ReadAuthKey(tc.file)
		if got != tc.want || (err != nil) != tc.fails {
			t.Errorf("ReadAuthKey(%q) = %q, %v; want %q, error %v", tc.file, got, err, tc.want, tc.fails)
		}
	}
}
