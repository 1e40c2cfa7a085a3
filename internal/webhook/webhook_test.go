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
