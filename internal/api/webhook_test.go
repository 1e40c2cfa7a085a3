package api_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	ts "github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// providerHook is a webhook as a provider sends it. It signs with
// crypto/hmac itself, not webhook.Sign, so that a signer and verifier that
// agree on a wrong HMAC cannot pass.
type providerHook struct {
	provider string
	push     string // the provider's push event name
	other    string // an event that must not build
}

var providerHooks = []providerHook{
	{"github", "push", "ping"},
	{"gitea", "push", "create"},
	{"forgejo", "push", "create"},
	{"gitlab", "Push Hook", "Tag Push Hook"},
}

// request returns the body and headers of an event pushing ref to after,
// signed (or, for GitLab, authenticated) with secret.
func (p providerHook) request(t *testing.T, event, secret, ref, after string) ([]byte, http.Header) {
	t.Helper()
	payload := map[string]any{"ref": ref, "before": "0000000000000000000000000000000000000000", "after": after}
	if p.provider == "gitlab" {
		payload["object_kind"] = "push"
		payload["project"] = map[string]any{"path_with_namespace": "owner/app"}
	} else {
		payload["repository"] = map[string]any{"full_name": "owner/app"}
	}
	body, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	sig := hex.EncodeToString(m.Sum(nil))
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	switch p.provider {
	case "github":
		h.Set("X-GitHub-Event", event)
		h.Set("X-Hub-Signature-256", "sha256="+sig)
	case "gitea", "forgejo":
		// Gitea sends its own, Gogs' and GitHub's headers; Forgejo adds its own.
		h.Set("X-Gitea-Event", event)
		h.Set("X-Gitea-Signature", sig)
		h.Set("X-Gogs-Event", event)
		h.Set("X-Gogs-Signature", sig)
		h.Set("X-GitHub-Event", event)
		h.Set("X-Hub-Signature-256", "sha256="+sig)
		if p.provider == "forgejo" {
			h.Set("X-Forgejo-Event", event)
			h.Set("X-Forgejo-Signature", sig)
		}
	case "gitlab":
		h.Set("X-Gitlab-Event", event)
		h.Set("X-Gitlab-Token", secret)
	}
	return body, h
}

func (p providerHook) send(t *testing.T, s *ts.BuildServer, repo, event, secret, ref, after string) (int, map[string]any) {
	t.Helper()
	body, h := p.request(t, event, secret, ref, after)
	code, resp := s.Do(t, "POST", "/api/v1/webhooks/"+repo, body, h)
	var m map[string]any
	if err := json.Unmarshal(resp, &m); err != nil {
		t.Fatalf("%s webhook answer %d %q: %v", p.provider, code, resp, err)
	}
	return code, m
}

// TestWebhookProviders sends each provider's webhooks over HTTP to the real
// API and orchestrator: a bad signature is 401, another event is ignored,
// and neither builds; a signed push builds the repository it names, at the
// pushed commit, with the provider as the reason.
func TestWebhookProviders(t *testing.T) {
	t.Parallel()
	const secret = "s3cret"
	var repos []config.Repository
	heads := map[string]string{}
	for _, p := range providerHooks {
		src := flakeRepo(t, ts.Nonce(), ts.GoodPackage("hello", 0))
		repos = append(repos, ts.MainBranchRepo("app-"+p.provider, src))
		heads[p.provider] = ts.Head(t, src)
	}
	// GitLab's repository has a secret of its own, which overrides the server's.
	const gitlabSecret = "gitlab-only"
	repos[3].WebhookSecret = gitlabSecret
	s := ts.StartBuildServer(t, ts.BuildServerConfig{Repositories: repos, WebhookSecret: secret, MaxParallel: len(repos)})
	secretOf := func(p providerHook) string {
		if p.provider == "gitlab" {
			return gitlabSecret
		}
		return secret
	}

	for _, p := range providerHooks {
		repo, head := "app-"+p.provider, heads[p.provider]
		if code, m := p.send(t, s, repo, p.push, "wrong-secret", "refs/heads/main", head); code != http.StatusUnauthorized || m["detail"] == nil {
			t.Errorf("%s push with a bad signature = %d %v, want 401 with a detail", p.provider, code, m)
		}
		if code, m := p.send(t, s, repo, p.other, secretOf(p), "refs/heads/main", head); code != http.StatusOK || m["status"] != "ignored" {
			t.Errorf("%s %q event = %d %v, want 200 ignored", p.provider, p.other, code, m)
		}
		if code, m := p.send(t, s, repo, p.push, secretOf(p), "refs/heads/feature", head); code != http.StatusOK || m["status"] != "ignored" {
			t.Errorf("%s push to another branch = %d %v, want 200 ignored", p.provider, code, m)
		}
	}
	// The server's secret is not GitLab's repository's.
	gitlab := providerHooks[3]
	if code, m := gitlab.send(t, s, "app-gitlab", gitlab.push, secret, "refs/heads/main", heads["gitlab"]); code != http.StatusUnauthorized {
		t.Errorf("gitlab push with the server's secret instead of the repository's = %d %v, want 401", code, m)
	}
	for _, r := range repos {
		if n := buildCount(t, s, r.Name); n != 0 {
			t.Fatalf("%s: %d builds after webhooks that should not build", r.Name, n)
		}
	}

	ids := map[string]int64{}
	for _, p := range providerHooks {
		repo := "app-" + p.provider
		code, m := p.send(t, s, repo, p.push, secretOf(p), "refs/heads/main", heads[p.provider])
		if code != http.StatusOK || m["status"] != "triggered" || m["repository"] != repo {
			t.Fatalf("%s signed push = %d %v, want triggered for %s", p.provider, code, m, repo)
		}
		id, _ := m["build_id"].(float64)
		ids[p.provider] = int64(id)
	}
	for _, p := range providerHooks {
		repo := "app-" + p.provider
		b := s.WaitFinished(t, ids[p.provider])
		if b.Repository != repo || b.Status != db.StatusSuccess || b.Reason != "webhook:"+p.provider || b.Commit != heads[p.provider] {
			t.Errorf("%s webhook build = %+v, want success of %s at %s with reason webhook:%s", p.provider, b.Build, repo, heads[p.provider], p.provider)
		}
		if n := buildCount(t, s, repo); n != 1 {
			t.Errorf("%s: %d builds, want 1", repo, n)
		}
	}
}
