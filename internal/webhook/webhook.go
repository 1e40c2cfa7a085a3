// Package webhook verifies and reads push webhooks from GitHub,
// Gitea/Forgejo and GitLab.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Errors the caller maps to status codes.
var (
	ErrUnknownProvider = errors.New("not a GitHub, Gitea, Forgejo or GitLab webhook")
	ErrBadSignature    = errors.New("signature or token does not match the webhook secret")
)

// Event is a verified webhook.
type Event struct {
	Provider string // github, gitea, forgejo, gitlab
	Kind     string // push, ping, or the provider's event name
	Ref      string // refs/heads/<branch> for pushes
	After    string // the pushed commit
	// Delivery is the provider's id of this delivery (X-GitHub-Delivery,
	// X-Gitea-Delivery, X-Forgejo-Delivery, X-Gitlab-Event-UUID); a
	// redelivery or a replay carries the same one. "" when not sent.
	Delivery string
}

// IsPush reports whether the event is a push.
func (e *Event) IsPush() bool { return e.Kind == "push" }

// Branch returns the pushed branch, or "" when the push is not to a branch
// or deletes it.
func (e *Event) Branch() string {
	b, ok := strings.CutPrefix(e.Ref, "refs/heads/")
	if !ok || strings.Trim(e.After, "0") == "" {
		return ""
	}
	return b
}

// Verify authenticates a webhook request against secret and parses it.
// body is the request body already read (the signature covers it).
func Verify(h http.Header, body []byte, secret string) (*Event, error) {
	if secret == "" {
		return nil, errors.New("no webhook secret configured")
	}
	var e Event
	switch {
	case h.Get("X-Gitlab-Event") != "":
		// GitLab sends the secret itself as a token.
		if subtle.ConstantTimeCompare([]byte(h.Get("X-Gitlab-Token")), []byte(secret)) != 1 {
			return nil, ErrBadSignature
		}
		e.Provider = "gitlab"
		e.Kind = h.Get("X-Gitlab-Event")
		e.Delivery = h.Get("X-Gitlab-Event-UUID")
		if e.Kind == "Push Hook" {
			e.Kind = "push"
		}
	case h.Get("X-Forgejo-Event") != "" || h.Get("X-Gitea-Event") != "":
		e.Provider, e.Kind = "gitea", h.Get("X-Gitea-Event")
		e.Delivery = h.Get("X-Gitea-Delivery")
		sig := h.Get("X-Gitea-Signature")
		if h.Get("X-Forgejo-Event") != "" {
			e.Provider, e.Kind = "forgejo", h.Get("X-Forgejo-Event")
			if d := h.Get("X-Forgejo-Delivery"); d != "" {
				e.Delivery = d
			}
			if s := h.Get("X-Forgejo-Signature"); s != "" {
				sig = s
			}
		}
		if !validHMAC(body, secret, sig) {
			return nil, ErrBadSignature
		}
	case h.Get("X-GitHub-Event") != "":
		e.Provider, e.Kind = "github", h.Get("X-GitHub-Event")
		e.Delivery = h.Get("X-GitHub-Delivery")
		sig, ok := strings.CutPrefix(h.Get("X-Hub-Signature-256"), "sha256=")
		if !ok || !validHMAC(body, secret, sig) {
			return nil, ErrBadSignature
		}
	default:
		return nil, ErrUnknownProvider
	}
	if e.Kind == "push" {
		var p struct {
			Ref   string `json:"ref"`
			After string `json:"after"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, fmt.Errorf("parse push payload: %w", err)
		}
		e.Ref, e.After = p.Ref, p.After
	}
	return &e, nil
}

// validHMAC checks a hex HMAC-SHA256 of body, in constant time.
func validHMAC(body []byte, secret, sigHex string) bool {
	sig, err := hex.DecodeString(strings.TrimSpace(sigHex))
	if err != nil || len(sig) != sha256.Size {
		return false
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hmac.Equal(sig, m.Sum(nil))
}

// Sign returns the hex HMAC-SHA256 of body, as GitHub and Gitea send it.
func Sign(body []byte, secret string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}
