package auth

import (
	"context"
	"fmt"
	"strings"
)

// Kind is how an identity was established.
type Kind string

const (
	KindAnonymous Kind = "anonymous" // no credentials
	KindToken     Kind = "token"     // an API token (Authorization: Bearer)
	KindTailnet   Kind = "tailnet"   // a Tailscale WhoIs answer
	KindLoopback  Kind = "loopback"  // a connection from 127.0.0.1 or ::1
)

// Identity is who a request comes from, as the server established it
// (never as the client claims it).
type Identity struct {
	Kind Kind `json:"kind"`
	// Name is the token's name, the tailnet user's login, or "loopback".
	Name string `json:"name,omitempty"`
	// Node and Tags describe a tailnet peer.
	Node string   `json:"node,omitempty"`
	Tags []string `json:"tags,omitempty"`
	Role Role     `json:"role"`
	// Remote is the connection's source address.
	Remote string `json:"remote"`
}

// Anonymous reports whether no identity was established.
func (id *Identity) Anonymous() bool { return id == nil || id.Kind == KindAnonymous || id.Kind == "" }

// String names the identity for the audit log: "token:ci",
// "tailnet:alice@example.com (node laptop)", "tailnet:tag:ci (node ci-1)",
// "loopback" or "anonymous".
func (id *Identity) String() string {
	if id.Anonymous() {
		return string(KindAnonymous)
	}
	switch id.Kind {
	case KindLoopback:
		return string(KindLoopback)
	case KindTailnet:
		who := id.Name
		if who == "" && len(id.Tags) > 0 {
			who = strings.Join(id.Tags, ",")
		}
		if id.Node != "" {
			return fmt.Sprintf("tailnet:%s (node %s)", who, id.Node)
		}
		return "tailnet:" + who
	}
	return string(id.Kind) + ":" + id.Name
}

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity the middleware stored, or an anonymous
// one.
func FromContext(ctx context.Context) *Identity {
	if id, ok := ctx.Value(ctxKey{}).(*Identity); ok && id != nil {
		return id
	}
	return &Identity{Kind: KindAnonymous}
}

// Peer is a tailnet peer as Tailscale's WhoIs describes it.
type Peer struct {
	Login string   // the user's login name; for a tagged node, Tailscale's placeholder
	Node  string   // the node's name
	Tags  []string // the node's ACL tags, "tag:ci"
}

// PeerResolver identifies connections that arrive over the tailnet.
type PeerResolver interface {
	// Peer returns the peer at remoteAddr, or nil (and no error) when
	// remoteAddr is not a tailnet address.
	Peer(ctx context.Context, remoteAddr string) (*Peer, error)
}
