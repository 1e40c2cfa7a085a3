package webhook

import (
	"errors"
	"net/http"
	"testing"
)

func TestVerify(t *testing.T) {
	const secret = "s3cret"
	body := []byte(`{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}`)
	good := Sign(body, secret)
	bad := Sign(body, "other")
	hdr := func(kv ...string) http.Header {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	tests := []struct {
		name     string
		h        http.Header
		secret   string
		wantErr  error
		provider string
		kind     string
	}{
		{"github push", hdr("X-GitHub-Event", "push", "X-Hub-Signature-256", "sha256="+good), secret, nil, "github", "push"},
		{"github ping", hdr("X-GitHub-Event", "ping", "X-Hub-Signature-256", "sha256="+good), secret, nil, "github", "ping"},
		{"github bad sig", hdr("X-GitHub-Event", "push", "X-Hub-Signature-256", "sha256="+bad), secret, ErrBadSignature, "", ""},
		{"github no prefix", hdr("X-GitHub-Event", "push", "X-Hub-Signature-256", good), secret, ErrBadSignature, "", ""},
		{"github unsigned", hdr("X-GitHub-Event", "push"), secret, ErrBadSignature, "", ""},
		{"gitea", hdr("X-Gitea-Event", "push", "X-Gitea-Signature", good), secret, nil, "gitea", "push"},
		{"gitea bad", hdr("X-Gitea-Event", "push", "X-Gitea-Signature", "zz"), secret, ErrBadSignature, "", ""},
		{"forgejo", hdr("X-Forgejo-Event", "push", "X-Forgejo-Signature", good), secret, nil, "forgejo", "push"},
		{"gitlab", hdr("X-Gitlab-Event", "Push Hook", "X-Gitlab-Token", secret), secret, nil, "gitlab", "push"},
		{"gitlab bad token", hdr("X-Gitlab-Event", "Push Hook", "X-Gitlab-Token", "nope"), secret, ErrBadSignature, "", ""},
		{"unknown", hdr("X-Other", "push"), secret, ErrUnknownProvider, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Verify(tt.h, body, tt.secret)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.Provider != tt.provider || e.Kind != tt.kind {
				t.Errorf("event = %+v", e)
			}
			if e.IsPush() && e.Branch() != "main" {
				t.Errorf("Branch() = %q", e.Branch())
			}
		})
	}
	if _, err := Verify(hdr("X-GitHub-Event", "push", "X-Hub-Signature-256", "sha256="+good), body, ""); err == nil {
		t.Error("accepted a webhook with no secret configured")
	}
}

func TestBranch(t *testing.T) {
	for _, tt := range []struct{ ref, after, want string }{
		{"refs/heads/dev", "abc", "dev"},
		{"refs/heads/feature/x", "abc", "feature/x"},
		{"refs/tags/v1", "abc", ""},
		{"refs/heads/dev", "0000000000000000000000000000000000000000", ""},
	} {
		e := Event{Kind: "push", Ref: tt.ref, After: tt.after}
		if got := e.Branch(); got != tt.want {
			t.Errorf("Branch(%q, %q) = %q, want %q", tt.ref, tt.after, got, tt.want)
		}
	}
}

// Header sets as each provider sends them (GitHub's documentation; Gitea's
// services/webhook/deliver.go, which Forgejo extends with X-Forgejo-*):
// Gitea and Forgejo also send GitHub's headers, so the order in which
// Verify recognises providers matters.
func githubHeaders(event, sig string) http.Header {
	h := http.Header{}
	h.Set("X-GitHub-Event", event)
	h.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
	h.Set("X-Hub-Signature-256", "sha256="+sig)
	return h
}

func giteaHeaders(event, sig string) http.Header {
	h := http.Header{}
	for _, p := range []string{"X-Gitea-", "X-Gogs-"} {
		h.Set(p+"Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473")
		h.Set(p+"Event", event)
		h.Set(p+"Event-Type", event)
		h.Set(p+"Signature", sig)
	}
	h.Set("X-GitHub-Event", event)
	h.Set("X-Hub-Signature-256", "sha256="+sig)
	return h
}

func forgejoHeaders(event, sig string) http.Header {
	h := giteaHeaders(event, sig)
	h.Set("X-Forgejo-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473")
	h.Set("X-Forgejo-Event", event)
	h.Set("X-Forgejo-Event-Type", event)
	h.Set("X-Forgejo-Signature", sig)
	return h
}

// TestKnownAnswers checks signatures against published examples, not
// against Sign: a signer and verifier that agree with each other but key
// the HMAC with the body (or hash anything but the raw body) fail here.
func TestKnownAnswers(t *testing.T) {
	vectors := []struct{ name, secret, body, sig string }{
		// GitHub's "Validating webhook deliveries" example.
		{"github docs", "It's a Secret to Everybody", "Hello, World!",
			"757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"},
		// RFC 4231 test case 2: HMAC-SHA256 in hex is all Gitea and
		// Forgejo send; they publish no vector of their own.
		{"rfc4231 case 2", "Jefe", "what do ya want for nothing?",
			"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
	}
	providers := []struct {
		provider string
		headers  func(event, sig string) http.Header
	}{
		{"github", githubHeaders},
		{"gitea", giteaHeaders},
		{"forgejo", forgejoHeaders},
	}
	for _, v := range vectors {
		if got := Sign([]byte(v.body), v.secret); got != v.sig {
			t.Errorf("%s: Sign = %s, want %s", v.name, got, v.sig)
		}
		for _, p := range providers {
			// A non-push event: these bodies are not JSON.
			e, err := Verify(p.headers("ping", v.sig), []byte(v.body), v.secret)
			if err != nil || e.Provider != p.provider || e.Kind != "ping" {
				t.Errorf("%s, %s: Verify = %+v, %v; want a %s ping", v.name, p.provider, e, err, p.provider)
			}
			if _, err := Verify(p.headers("ping", v.sig), []byte(v.secret), v.body); !errors.Is(err, ErrBadSignature) {
				t.Errorf("%s, %s: key and body swapped: err = %v, want %v", v.name, p.provider, err, ErrBadSignature)
			}
		}
	}
}

// TestForgejoSignatureWins: when Forgejo's own signature is present it is
// the one checked; a good X-Gitea-Signature does not rescue a bad one.
func TestForgejoSignatureWins(t *testing.T) {
	const secret = "s3cret"
	body := []byte(`{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}`)
	h := forgejoHeaders("push", Sign(body, secret))
	h.Set("X-Forgejo-Signature", Sign(body, "other"))
	if _, err := Verify(h, body, secret); !errors.Is(err, ErrBadSignature) {
		t.Errorf("bad X-Forgejo-Signature beside a good X-Gitea-Signature: err = %v, want %v", err, ErrBadSignature)
	}
}
