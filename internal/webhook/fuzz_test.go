package webhook

import (
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"testing"
)

// FuzzVerify: whatever Verify accepts was signed with the secret (for
// GitLab: carried the secret), names its provider, and a push's branch is
// the one in its ref. With the right signature, only a push body that is
// not JSON is refused.
func FuzzVerify(f *testing.F) {
	push := `{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}`
	for p := range 4 {
		for _, ev := range []string{"push", "ping", "Push Hook", "create", ""} {
			f.Add(uint8(p), ev, []byte(push), "", "s3cret", true)
		}
		f.Add(uint8(p), "push", []byte(`{"ref":"refs/tags/v1","after":"0000000000000000000000000000000000000000"}`), "", "s3cret", true)
		f.Add(uint8(p), "push", []byte(`not json`), "", "s3cret", true)
		f.Add(uint8(p), "push", []byte(push), "00", "s3cret", false)
		f.Add(uint8(p), "push", []byte(push), " "+strings.ToUpper(Sign([]byte(push), "s3cret"))+" ", "s3cret", false)
	}
	f.Add(uint8(0), "ping", []byte("Hello, World!"), "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", "It's a Secret to Everybody", false)
	f.Fuzz(func(t *testing.T, provider uint8, event string, body []byte, sig, secret string, signRight bool) {
		if signRight {
			sig = Sign(body, secret)
			if provider%4 == 3 {
				sig = secret
			}
		}
		h := http.Header{}
		switch provider % 4 {
		case 0:
			h.Set("X-GitHub-Event", event)
			h.Set("X-Hub-Signature-256", "sha256="+sig)
		case 1:
			h.Set("X-Gitea-Event", event)
			h.Set("X-Gitea-Signature", sig)
		case 2:
			h.Set("X-Forgejo-Event", event)
			h.Set("X-Forgejo-Signature", sig)
		case 3:
			h.Set("X-Gitlab-Event", event)
			h.Set("X-Gitlab-Token", sig)
		}
		e, err := Verify(h, body, secret)
		if err != nil {
			// A correct signature may only fail for a missing secret, an
			// unrecognised request, or a push that is not JSON.
			if signRight && secret != "" && h.Get("X-GitHub-Event")+h.Get("X-Gitea-Event")+h.Get("X-Forgejo-Event")+h.Get("X-Gitlab-Event") != "" &&
				(errors.Is(err, ErrBadSignature) || errors.Is(err, ErrUnknownProvider)) {
				t.Fatalf("correctly signed %q event refused: %v", event, err)
			}
			return
		}
		if secret == "" {
			t.Fatal("accepted a webhook with no secret configured")
		}
		switch e.Provider {
		case "github", "gitea", "forgejo":
			mac, _ := hex.DecodeString(strings.TrimSpace(sig))
			want, _ := hex.DecodeString(Sign(body, secret))
			if subtle.ConstantTimeCompare(mac, want) != 1 {
				t.Fatalf("accepted signature %q for %s, want %x", sig, e.Provider, want)
			}
		case "gitlab":
			if sig != secret {
				t.Fatalf("accepted GitLab token %q", sig)
			}
		default:
			t.Fatalf("accepted provider %q", e.Provider)
		}
		if e.Provider != []string{"github", "gitea", "forgejo", "gitlab"}[provider%4] {
			t.Fatalf("provider %q, sent as %d", e.Provider, provider%4)
		}
		if b := e.Branch(); b != "" && (!e.IsPush() || e.Ref != "refs/heads/"+b || strings.Trim(e.After, "0") == "") {
			t.Fatalf("Branch() = %q for %+v", b, e)
		}
		if !e.IsPush() && (e.Ref != "" || e.After != "") {
			t.Fatalf("a %q event carries push fields: %+v", e.Kind, e)
		}
	})
}
