// Package fleetproto is the agent↔server heartbeat protocol: message
// shapes, and the signatures that make each side trust the other.
//
// A heartbeat is JSON POSTed to /api/heartbeat. The agent signs the exact
// body bytes with its ed25519 key and sends the signature and its public
// key in headers. The server answers with JSON signed by its key, echoing
// the heartbeat's nonce, so an agent can tell a fresh answer to its own
// question from a replayed or forged one.
package fleetproto

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// Path is where agents send heartbeats (the seed's endpoint).
const Path = "/api/heartbeat"

// Headers carrying the signature and the signer's public key.
const (
	HeaderSignature = "X-Crystal-Forge-Signature"
	HeaderKey       = "X-Crystal-Forge-Key"
)

// MaxSkew is how far a heartbeat's timestamp may be from the server's clock.
const MaxSkew = 5 * time.Minute

// Domain-separation prefixes: a signature over one kind of message can
// never be taken for another, nor for a narinfo fingerprint ("1;…") made
// with the same key.
const (
	heartbeatDomain = "crystal-forge/heartbeat/v1\n"
	replyDomain     = "crystal-forge/heartbeat-reply/v1\n"
)

// Heartbeat is what an agent reports. Host, Current and Fingerprint are the
// seed's fields; the rest make it verifiable and useful.
type Heartbeat struct {
	Host        string         `json:"host"`
	Current     string         `json:"current"`
	Fingerprint string         `json:"fingerprint"`
	Facts       map[string]any `json:"facts,omitempty"`
	// Timestamp must be strictly newer, at millisecond resolution, than
	// the host's last accepted heartbeat: that is the replay guard. An agent
	// sending twice within a millisecond must step its clock forward.
	Timestamp  time.Time         `json:"timestamp"`
	Nonce      string            `json:"nonce"`
	Agent      string            `json:"agent,omitempty"` // agent version
	DryRun     bool              `json:"dry_run,omitempty"`
	Deployment *DeploymentReport `json:"deployment,omitempty"`
}

// DeploymentReport is the outcome of a switch the agent attempted, sent
// with the next heartbeat.
type DeploymentReport struct {
	Target     string    `json:"target"`
	Previous   string    `json:"previous"`
	Status     string    `json:"status"` // success, failed, rolled-back, dry-run
	Error      string    `json:"error,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	DurationMS int64     `json:"duration_ms"`
}

// Deployment statuses.
const (
	DeploySuccess    = "success"
	DeployFailed     = "failed"      // the switch failed, and so did the rollback: look at the host
	DeployRolledBack = "rolled-back" // the switch failed; the previous generation is restored
	DeployNotApplied = "not-applied" // refused or not fetched: nothing on the host changed
	DeployDryRun     = "dry-run"     // would have switched
)

// Reply is the server's answer. Target, Reason and Deploy are the seed's.
type Reply struct {
	Target    string    `json:"target"`
	Reason    string    `json:"reason"`
	Deploy    bool      `json:"deploy"`
	Host      string    `json:"host"`
	Nonce     string    `json:"nonce"` // the heartbeat's, echoed
	Timestamp time.Time `json:"timestamp"`
	// Status is "approved", or "pending" while an admin has not approved
	// a host that enrolled on first contact.
	Status string `json:"status"`
}

// NewNonce returns 16 random bytes, base64.
func NewNonce() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// SignHeartbeat signs a heartbeat body and sets the headers on h.
func SignHeartbeat(h http.Header, body []byte, key *signing.SecretKey) {
	h.Set(HeaderKey, key.Public().String())
	h.Set(HeaderSignature, key.Sign(append([]byte(heartbeatDomain), body...)))
}

// SignReply signs a reply body and sets the signature header.
func SignReply(h http.Header, body []byte, key *signing.SecretKey) {
	h.Set(HeaderKey, key.Public().String())
	h.Set(HeaderSignature, key.Sign(append([]byte(replyDomain), body...)))
}

// Errors of verification, for mapping to status codes and messages.
var (
	ErrUnsigned     = errors.New("message is not signed")
	ErrBadSignature = errors.New("signature does not verify")
	ErrStale        = errors.New("timestamp too far from the server's clock")
)

// HeartbeatKey returns the public key a heartbeat claims to be signed by.
func HeartbeatKey(h http.Header) (*signing.PublicKey, error) {
	k := h.Get(HeaderKey)
	if k == "" || h.Get(HeaderSignature) == "" {
		return nil, ErrUnsigned
	}
	pk, err := signing.ParsePublicKey(k)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsigned, err)
	}
	return pk, nil
}

// VerifyHeartbeat checks body's signature by key.
func VerifyHeartbeat(h http.Header, body []byte, key *signing.PublicKey) error {
	return verify(h, heartbeatDomain, body, key)
}

// VerifyReply checks a reply's signature against the server keys the agent
// trusts.
func VerifyReply(h http.Header, body []byte, trusted []*signing.PublicKey) error {
	var err error = ErrBadSignature
	for _, k := range trusted {
		if err = verify(h, replyDomain, body, k); err == nil {
			return nil
		}
	}
	return err
}

func verify(h http.Header, domain string, body []byte, key *signing.PublicKey) error {
	sig := h.Get(HeaderSignature)
	if sig == "" {
		return ErrUnsigned
	}
	if !key.Verify(append([]byte(domain), body...), sig) {
		return ErrBadSignature
	}
	return nil
}

// CheckFresh rejects a timestamp outside MaxSkew of now.
func CheckFresh(ts, now time.Time) error {
	if d := now.Sub(ts); d > MaxSkew || d < -MaxSkew {
		return fmt.Errorf("%w: %s off", ErrStale, d.Round(time.Second))
	}
	return nil
}

// hostRE: host names as NixOS allows them (networking.hostName).
var hostRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,62}$`)

// ValidHostName reports whether s can name a host (and a
// nixosConfigurations attribute a host follows).
func ValidHostName(s string) bool { return hostRE.MatchString(s) }

// ValidStorePath reports whether p is a top-level store path under
// storeDir: <storeDir>/<32 nix32 characters>-<name>, with Nix's rules for
// the name. It is the only thing an agent will ever switch to.
func ValidStorePath(p, storeDir string) bool {
	rest, ok := strings.CutPrefix(p, storeDir+"/")
	if !ok || len(rest) < 34 || rest[32] != '-' || !nixbase32.ValidHash(rest[:32]) {
		return false
	}
	name := rest[33:]
	if len(name) > 211 || name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("+-._?=", c) >= 0) {
			return false
		}
	}
	return true
}

// MaxNonce is the longest nonce a heartbeat may carry.
const MaxNonce = 128

// DecodeHeartbeat parses a heartbeat body and checks what the server relies
// on: a valid host name, a top-level store path under storeDir (or none) as
// the current system, and a nonce. Freshness needs the clock: CheckFresh.
func DecodeHeartbeat(body []byte, storeDir string) (Heartbeat, error) {
	var hb Heartbeat
	if err := json.Unmarshal(body, &hb); err != nil {
		return Heartbeat{}, fmt.Errorf("malformed heartbeat: %w", err)
	}
	if !ValidHostName(hb.Host) {
		return Heartbeat{}, fmt.Errorf("invalid host name %q", hb.Host)
	}
	if hb.Current != "" && !ValidStorePath(hb.Current, storeDir) {
		return Heartbeat{}, fmt.Errorf("current system %q is not a store path", hb.Current)
	}
	if hb.Nonce == "" || len(hb.Nonce) > MaxNonce {
		return Heartbeat{}, errors.New("missing or oversized nonce")
	}
	return hb, nil
}
