package fleetproto

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

func TestHeartbeatSignature(t *testing.T) {
	agent, _ := signing.Generate("chesty", nil)
	other, _ := signing.Generate("chesty", nil)
	body := []byte(`{"host":"chesty","current":"/nix/store/x"}`)
	h := http.Header{}
	SignHeartbeat(h, body, agent)

	pk, err := HeartbeatKey(h)
	if err != nil || pk.String() != agent.Public().String() {
		t.Fatalf("HeartbeatKey = %v, %v", pk, err)
	}
	if err := VerifyHeartbeat(h, body, agent.Public()); err != nil {
		t.Errorf("valid heartbeat rejected: %v", err)
	}
	tampered := []byte(`{"host":"chesty","current":"/nix/store/y"}`)
	if err := VerifyHeartbeat(h, tampered, agent.Public()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered body: %v", err)
	}
	if err := VerifyHeartbeat(h, body, other.Public()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("other key: %v", err)
	}
	if _, err := HeartbeatKey(http.Header{}); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned: %v", err)
	}
}

// A reply signature must not verify as a heartbeat signature, and vice
// versa, even with the same key and bytes.
func TestDomainSeparation(t *testing.T) {
	k, _ := signing.Generate("server", nil)
	body := []byte(`{}`)
	h := http.Header{}
	SignReply(h, body, k)
	if err := VerifyReply(h, body, []*signing.PublicKey{k.Public()}); err != nil {
		t.Fatalf("reply rejected: %v", err)
	}
	if err := VerifyHeartbeat(h, body, k.Public()); err == nil {
		t.Error("a reply signature verified as a heartbeat")
	}
	wrong, _ := signing.Generate("server", nil)
	if err := VerifyReply(h, body, []*signing.PublicKey{wrong.Public()}); err == nil {
		t.Error("reply verified under an untrusted key")
	}
}

func TestCheckFresh(t *testing.T) {
	now := time.Now()
	for d, ok := range map[time.Duration]bool{0: true, time.Minute: true, -4 * time.Minute: true, 6 * time.Minute: false, -time.Hour: false} {
		if err := CheckFresh(now.Add(d), now); (err == nil) != ok {
			t.Errorf("CheckFresh(now%+v) = %v", d, err)
		}
	}
}

func TestValidStorePath(t *testing.T) {
	for p, want := range map[string]bool{
		"/nix/store/cf01aaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-chesty-25.05": true,
		"/nix/store/cf01aaaaaaaaaaaaaaaaaaaaaaaaaaaa-x/bin/sh":                  false,
		"/nix/store/short-x":                                                      false,
		"/nix/store/cf01aaaaaaaaaaaaaaaaaaaaaaaaaaae-x":                           false, // e is not nix32
		"/nix/store/cf01aaaaaaaaaaaaaaaaaaaaaaaaaaaa-.hidden":                     false,
		"/nix/store/cf01aaaaaaaaaaaaaaaaaaaaaaaaaaaa-" + strings.Repeat("a", 212): false,
		"/etc/passwd": false,
		"/nix/store/cf01aaaaaaaaaaaaaaaaaaaaaaaaaaaa-a;rm -rf": false,
		"": false,
	} {
		if got := ValidStorePath(p, "/nix/store"); got != want {
			t.Errorf("ValidStorePath(%q) = %v", p, got)
		}
	}
}
