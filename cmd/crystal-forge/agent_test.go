package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// TestAgentFlagErrors checks that `crystal-forge agent` names the missing
// or bad flag, exits 1, and creates no key.
func TestAgentFlagErrors(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "agent-key")
	k, err := signing.Generate("forge", nil)
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public().String()
	base := []string{"agent", "--key-file", keyFile}
	current := filepath.Join(dir, "current-system")
	if err := os.Symlink("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web1-25.05", current); err != nil {
		t.Fatal(err)
	}
	serverArgs := slices.Clip(append(base, "--server", "http://127.0.0.1:1", "--server-key", pub))
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string
	}{
		{"no server", append(base, "--server-key", pub), 1, []string{"--server is required"}},
		{"no server key", append(base, "--server", "http://127.0.0.1:1"), 1, []string{"--server-key is required"}},
		{"bad server key", append(base, "--server", "http://127.0.0.1:1", "--server-key", "forge:AAAA"), 1,
			[]string{"--server-key", "has 3 bytes"}},
		{"bad trusted key", append(base, "--server", "http://127.0.0.1:1", "--server-key", pub, "--trusted-public-key", "nonsense"), 1,
			[]string{"--trusted-public-key", "nonsense"}},
		{"server without scheme", append(base, "--server", "forge.example.com", "--server-key", pub), 1,
			[]string{"forge.example.com", "not an http(s) URL"}},
		{"jitter too large", append(base, "--server", "http://127.0.0.1:1", "--server-key", pub, "--interval", "1m", "--jitter", "2m"), 1,
			[]string{"jitter"}},
		{"bad interval", append(base, "--interval", "soon"), 2, []string{"invalid value"}},
		{"no current system", append(serverArgs, "--current-system", filepath.Join(dir, "nothing")), 1,
			[]string{"current system " + filepath.Join(dir, "nothing") + " does not exist", "pass --current-system", "/run/current-system"}},
		{"no profile", append(serverArgs, "--current-system", current, "--profile", filepath.Join(dir, "nothing")), 1,
			[]string{"system profile " + filepath.Join(dir, "nothing") + " does not exist", "pass --profile", "/nix/var/nix/profiles/system"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(t.Context(), tt.args, &stdout, &stderr); code != tt.wantCode {
				t.Errorf("run(%q) = %d, want %d\nstderr:\n%s", tt.args, code, tt.wantCode, &stderr)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr does not contain %q:\n%s", want, &stderr)
				}
			}
		})
	}
	if _, err := os.Stat(keyFile); err == nil {
		t.Error("a failed start created the agent key")
	}
}

// TestAgentOnce runs `crystal-forge agent --once --dry-run` against a
// stand-in server that names a new target: the agent sends a signed
// heartbeat, dry-runs the deploy, reports it in a second heartbeat, exits 0.
func TestAgentOnce(t *testing.T) {
	serverKey, err := signing.Generate("forge", nil)
	if err != nil {
		t.Fatal(err)
	}
	const target = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-web1-25.05"
	var (
		mu    sync.Mutex
		beats []fleetproto.Heartbeat
	)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		key, err := fleetproto.HeartbeatKey(r.Header)
		if err == nil {
			err = fleetproto.VerifyHeartbeat(r.Header, body, key)
		}
		if err != nil || r.URL.Path != fleetproto.Path {
			http.Error(w, `{"detail":"bad heartbeat"}`, http.StatusUnauthorized)
			return
		}
		var hb fleetproto.Heartbeat
		if err := json.Unmarshal(body, &hb); err != nil {
			t.Errorf("heartbeat body: %v", err)
			http.Error(w, `{"detail":"malformed heartbeat"}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		beats = append(beats, hb)
		mu.Unlock()
		reply, _ := json.Marshal(fleetproto.Reply{Target: target, Deploy: true, Reason: "policy:update",
			Host: hb.Host, Nonce: hb.Nonce, Status: "approved"})
		fleetproto.SignReply(w.Header(), reply, serverKey)
		w.Write(reply)
	}))
	defer hs.Close()

	dir := t.TempDir()
	current := filepath.Join(dir, "current-system")
	if err := os.Symlink("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-web1-25.05", current); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run(t.Context(), []string{"agent", "--once", "--dry-run",
		"--server", hs.URL + "/",
		"--server-key", serverKey.Public().String(),
		"--host", "web1",
		"--key-file", filepath.Join(dir, "agent-key"),
		"--current-system", current,
		"--profile", filepath.Join(dir, "profiles", "system"),
		"--sys-root", dir,
	}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("agent --once exited %d:\n%s", code, &stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(beats) != 2 {
		t.Fatalf("server received %d heartbeats, want 2:\n%s", len(beats), &stderr)
	}
	if beats[0].Host != "web1" || beats[0].Agent != version || !beats[0].DryRun {
		t.Errorf("heartbeat %+v", beats[0])
	}
	if r := beats[1].Deployment; r == nil || r.Status != fleetproto.DeployDryRun || r.Target != target {
		t.Errorf("second heartbeat's report %+v, want a dry run to %s", r, target)
	}
	if _, err := os.Stat(filepath.Join(dir, "agent-key")); err != nil {
		t.Errorf("agent key: %v", err)
	}
}
