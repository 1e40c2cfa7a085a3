// Package tailnet puts the server (or an agent) on a Tailscale network as
// its own node with tsnet, and identifies tailnet peers with WhoIs, from
// tsnet's own LocalAPI or from a system tailscaled's.
package tailnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"

	"tailscale.com/client/local"
	"tailscale.com/ipn"
	"tailscale.com/net/tsaddr"
	"tailscale.com/tsnet"

	"github.com/crystal-forge/crystal-forge/internal/auth"
)

// Config configures a tsnet node.
type Config struct {
	Hostname   string
	AuthKey    string // empty: use TS_AUTHKEY, or the state from a previous run
	StateDir   string
	ControlURL string // empty: Tailscale's; Headscale's, or a test control server
	// Store and Ephemeral are for tests: in-memory state, a node that
	// leaves the tailnet when it stops.
	Store     ipn.StateStore
	Ephemeral bool
	Logger    *slog.Logger
}

// ReadAuthKey returns the auth key in file, or $TS_AUTHKEY when file is
// empty (which may be empty too: a node with state needs none).
func ReadAuthKey(file string) (string, error) {
	if file == "" {
		return os.Getenv("TS_AUTHKEY"), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("tailscale auth key: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Node is this process on the tailnet.
type Node struct {
	srv *tsnet.Server
	lc  *local.Client
	// DNSName is the node's MagicDNS name, without the final dot
	// ("build-server.tail-scale.ts.net"); empty without MagicDNS.
	DNSName string
	// IPs are the node's tailnet addresses.
	IPs []netip.Addr
}

// Start joins the tailnet and waits until the node is up. A node without
// state or auth key logs the URL to log in at and waits for it.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &tsnet.Server{
		Dir:        cfg.StateDir,
		Hostname:   cfg.Hostname,
		AuthKey:    cfg.AuthKey,
		ControlURL: cfg.ControlURL,
		Store:      cfg.Store,
		Ephemeral:  cfg.Ephemeral,
		// tsnet's own chatter is debug; what a user must act on (the login
		// URL) is info.
		Logf:     func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...), "component", "tsnet") },
		UserLogf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...), "component", "tsnet") },
	}
	st, err := s.Up(ctx)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("join the tailnet as %s: %w", cfg.Hostname, err), s.Close())
	}
	lc, err := s.LocalClient()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("tailnet local client: %w", err), s.Close())
	}
	n := &Node{srv: s, lc: lc, IPs: st.TailscaleIPs}
	if st.Self != nil {
		n.DNSName = strings.TrimSuffix(st.Self.DNSName, ".")
	}
	log.Info("on the tailnet", "name", n.DNSName, "ips", n.IPs)
	return n, nil
}

// Listen listens on the tailnet only, e.g. ":8000".
func (n *Node) Listen(addr string) (net.Listener, error) { return n.srv.Listen("tcp", addr) }

// Dial connects to a tailnet address.
func (n *Node) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return n.srv.Dial(ctx, "tcp", addr)
}

// HTTPClient is an HTTP client whose connections go over the tailnet.
func (n *Node) HTTPClient() *http.Client { return n.srv.HTTPClient() }

// Close leaves the tailnet.
func (n *Node) Close() error { return n.srv.Close() }

// Resolver identifies the peers of connections accepted on this node's
// listeners (marked with MarkConn), and no others.
func (n *Node) Resolver() auth.PeerResolver { return &WhoIs{Client: n.lc, Accept: ViaNode} }

type viaNodeKey struct{}

// MarkConn is an http.Server's ConnContext for a listener of the node: it
// marks requests as arrived over the tailnet, so a WhoIs of their source
// address is meaningful (an address in 100.64.0.0/10 that arrives on
// another interface may be anyone's: carrier-grade NAT uses that range).
func MarkConn(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, viaNodeKey{}, true)
}

// ViaNode reports whether the request arrived on the node's listener.
func ViaNode(ctx context.Context) bool { v, _ := ctx.Value(viaNodeKey{}).(bool); return v }

// ViaTailscaled reports whether the request may have come through a
// system tailscaled, so that its WhoIs is asked: it arrived on one of
// tailscaled's addresses (its local address is a Tailscale IP: kernel TUN
// mode), or on loopback, where tailscaled in userspace-networking mode
// delivers every tailnet connection (its netstack dials 127.0.0.1:<port>
// and records which local connection carries which peer, so its WhoIs of
// the 127.0.0.1 source answers for the peer). A loopback connection
// tailscaled did not make is unknown to its WhoIs and stays loopback.
func ViaTailscaled(ctx context.Context) bool {
	la, ok := ctx.Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	ap, err := netip.ParseAddrPort(la.String())
	if err != nil {
		return false
	}
	a := ap.Addr().Unmap()
	return tsaddr.IsTailscaleIP(a) || a.IsLoopback()
}

// WhoIs is an auth.PeerResolver over a Tailscale LocalAPI.
type WhoIs struct {
	Client *local.Client
	// Accept says whether a request came in over the tailnet at all.
	Accept func(context.Context) bool
}

// SystemTailscaled resolves peers with a system tailscaled's LocalAPI at
// socket (empty: the platform's default), for requests that may have come
// through it (ViaTailscaled).
func SystemTailscaled(socket string) auth.PeerResolver {
	return &WhoIs{Client: &local.Client{Socket: socket, UseSocketOnly: socket != ""}, Accept: ViaTailscaled}
}

// Peer implements auth.PeerResolver.
func (w *WhoIs) Peer(ctx context.Context, remoteAddr string) (*auth.Peer, error) {
	if w.Accept != nil && !w.Accept(ctx) {
		return nil, nil
	}
	r, err := w.Client.WhoIs(ctx, remoteAddr)
	if errors.Is(err, local.ErrPeerNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("whois %s: %w", remoteAddr, err)
	}
	p := &auth.Peer{}
	if r.Node != nil {
		p.Node = r.Node.ComputedName
		if p.Node == "" {
			p.Node, _, _ = strings.Cut(r.Node.Name, ".")
		}
		p.Tags = append([]string(nil), r.Node.Tags...)
	}
	// A tagged node is its tags; its "user" is Tailscale's placeholder.
	if r.UserProfile != nil && len(p.Tags) == 0 {
		p.Login = r.UserProfile.LoginName
	}
	return p, nil
}

// First asks each resolver in turn and returns the first peer found; nil
// when given none.
func First(rs ...auth.PeerResolver) auth.PeerResolver {
	switch len(rs) {
	case 0:
		return nil
	case 1:
		return rs[0]
	}
	return firstOf(rs)
}

type firstOf []auth.PeerResolver

func (f firstOf) Peer(ctx context.Context, remoteAddr string) (*auth.Peer, error) {
	for _, r := range f {
		if p, err := r.Peer(ctx, remoteAddr); p != nil || err != nil {
			return p, err
		}
	}
	return nil, nil
}
