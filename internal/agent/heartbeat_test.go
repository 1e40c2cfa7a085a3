package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

const (
	systemA = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-chesty-25.05"
	systemB = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-chesty-25.05"
)

func TestHeartbeatIsSignedAndDescribesHost(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	setCurrent(t, cfg.CurrentSystem, systemA)
	a := newAgent(t, cfg)

	before := time.Now()
	reply, err := a.HeartbeatOnce(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := s.take()
	if len(got) != 1 {
		t.Fatalf("server received %d heartbeats, want 1", len(got))
	}
	rec := got[0]

	// Signed by the key in the key file, which was created 0600 and named
	// after the host.
	fi, err := os.Stat(cfg.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	key, err := signing.LoadSecretKeyFile(cfg.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if key.Name != "chesty" {
		t.Errorf("key name %q, want the host name", key.Name)
	}
	if rec.verified != nil {
		t.Errorf("heartbeat signature: %v", rec.verified)
	}
	if err := fleetproto.VerifyHeartbeat(rec.header, rec.body, key.Public()); err != nil {
		t.Errorf("heartbeat does not verify with the agent's key: %v", err)
	}
	if got := rec.header.Get(fleetproto.HeaderKey); got != key.Public().String() || got != a.PublicKey().String() {
		t.Errorf("key header %q, want %q", got, key.Public())
	}
	tampered := []byte(strings.Replace(string(rec.body), "chesty", "chestx", 1))
	if fleetproto.VerifyHeartbeat(rec.header, tampered, key.Public()) == nil {
		t.Error("signature verifies for a changed body")
	}

	for _, field := range []string{"host", "current", "fingerprint", "timestamp", "nonce", "facts", "agent", "dry_run"} {
		if _, ok := rec.raw[field]; !ok {
			t.Errorf("heartbeat JSON lacks %q: %s", field, rec.body)
		}
	}
	hb := rec.hb
	if hb.Host != "chesty" || hb.Current != systemA || hb.Agent != "test" || !hb.DryRun {
		t.Errorf("heartbeat host %q current %q agent %q dry_run %v", hb.Host, hb.Current, hb.Agent, hb.DryRun)
	}
	wantFP, _ := Fingerprint(Facts(cfg.SysRoot))
	if hb.Fingerprint != wantFP {
		t.Errorf("fingerprint %q, want %q", hb.Fingerprint, wantFP)
	}
	if hb.Facts["dmi_product_uuid"] != "4c4c4544-0042-3510-8057-b4c04f4d3632" {
		t.Errorf("facts %v lack the DMI product UUID", hb.Facts)
	}
	if hb.Timestamp.Before(before.Add(-time.Second)) || hb.Timestamp.After(time.Now().Add(time.Second)) {
		t.Errorf("timestamp %v is not now", hb.Timestamp)
	}
	if err := fleetproto.CheckFresh(hb.Timestamp, time.Now()); err != nil {
		t.Error(err)
	}
	if hb.Timestamp.Location() != time.UTC || !strings.Contains(rec.raw["timestamp"].(string), "Z") {
		t.Errorf("timestamp %v is not UTC", rec.raw["timestamp"])
	}
	if hb.Nonce == "" || reply.Nonce != hb.Nonce {
		t.Errorf("nonce %q, reply nonce %q", hb.Nonce, reply.Nonce)
	}
	if hb.Deployment != nil {
		t.Errorf("first heartbeat carries a deployment report: %+v", hb.Deployment)
	}

	// The next heartbeat has a new nonce; with no current system,
	// current is empty.
	if err := os.Remove(cfg.CurrentSystem); err != nil {
		t.Fatal(err)
	}
	if _, err := a.HeartbeatOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	next := s.take()[0].hb
	if next.Nonce == hb.Nonce {
		t.Error("two heartbeats share a nonce")
	}
	if next.Current != "" {
		t.Errorf("current %q with no current-system link, want \"\"", next.Current)
	}

	// The key is created once: a second agent uses the same one.
	setCurrent(t, cfg.CurrentSystem, systemA)
	if b := newAgent(t, cfg); b.PublicKey().String() != key.Public().String() {
		t.Error("a restarted agent has a new key")
	}
}

func TestReplyRefused(t *testing.T) {
	other, err := signing.Generate("forge-test", nil) // same name, other key
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		edit   func(*fleetproto.Reply)
		sign   func(s *fakeServer) func(h http.Header, body []byte)
		wantIn string
		// wantKeyHint: the error tells to check --server-key against /info.
		wantKeyHint bool
	}{
		{
			name:        "signed by another key",
			sign:        func(*fakeServer) func(http.Header, []byte) { return signReplyWith(other) },
			wantIn:      "signature does not verify",
			wantKeyHint: true,
		},
		{
			name: "unsigned",
			sign: func(*fakeServer) func(http.Header, []byte) {
				return func(http.Header, []byte) {}
			},
			wantIn: "not signed",
		},
		{
			name: "signed as a heartbeat, not a reply",
			sign: func(s *fakeServer) func(http.Header, []byte) {
				return func(h http.Header, body []byte) { fleetproto.SignHeartbeat(h, body, s.key) }
			},
			wantIn:      "signature does not verify",
			wantKeyHint: true,
		},
		{
			name: "signature over other bytes",
			sign: func(s *fakeServer) func(http.Header, []byte) {
				return func(h http.Header, body []byte) {
					fleetproto.SignReply(h, []byte(strings.Replace(string(body), "bbbb", "cccc", 1)), s.key)
				}
			},
			wantIn:      "signature does not verify",
			wantKeyHint: true,
		},
		{
			name:   "another heartbeat's nonce",
			edit:   func(r *fleetproto.Reply) { r.Nonce = fleetproto.NewNonce() },
			wantIn: "nonce",
		},
		{
			name:   "no nonce",
			edit:   func(r *fleetproto.Reply) { r.Nonce = "" },
			wantIn: "nonce",
		},
		{
			name:   "another host",
			edit:   func(r *fleetproto.Reply) { r.Host = "other-host" },
			wantIn: "for host \"other-host\"",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeServer(t)
			cfg := testConfig(t, s)
			setCurrent(t, cfg.CurrentSystem, systemA)
			a := newAgent(t, cfg)
			sign := func(h http.Header, body []byte) { fleetproto.SignReply(h, body, s.key) }
			if tt.sign != nil {
				sign = tt.sign(s)
			}
			s.setAnswer(s.answerSigned(approve(systemB), tt.edit, sign))

			err := a.RunOnce(t.Context())
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tt.wantIn) {
				t.Fatalf("RunOnce error = %v, want a refused reply mentioning %q", err, tt.wantIn)
			}
			hint := `(--server-key) is not the one this server signs with; use the "public_key" of GET ` + s.url + "/info"
			if got := strings.Contains(err.Error(), hint); got != tt.wantKeyHint {
				t.Errorf("error %q: contains the hint %q = %v, want %v", err, hint, got, tt.wantKeyHint)
			}
			if !strings.HasPrefix(err.Error(), "refusing reply: ") {
				t.Errorf("error %q does not start with \"refusing reply: \"", err)
			}
			// A deploy, even a dry run, would have been reported at once in
			// a second heartbeat.
			if got := s.take(); len(got) != 1 {
				t.Errorf("server received %d heartbeats, want 1: no deploy", len(got))
			}
			if _, err := a.HeartbeatOnce(t.Context()); !errors.Is(err, ErrRefused) {
				t.Fatalf("second heartbeat: %v", err)
			}
			if hb := s.take()[0].hb; hb.Deployment != nil {
				t.Errorf("a refused reply led to a deploy: %+v", hb.Deployment)
			}
		})
	}
}

func signReplyWith(k *signing.SecretKey) func(http.Header, []byte) {
	return func(h http.Header, body []byte) { fleetproto.SignReply(h, body, k) }
}

func TestDryRunDeployIsReported(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	setCurrent(t, cfg.CurrentSystem, systemA)
	a := newAgent(t, cfg)
	s.setAnswer(s.answerWith(approve(systemB)))

	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := s.take()
	if len(got) != 2 {
		t.Fatalf("server received %d heartbeats, want 2 (the second with the report)", len(got))
	}
	if got[0].hb.Deployment != nil {
		t.Errorf("first heartbeat carries a report: %+v", got[0].hb.Deployment)
	}
	r := got[1].hb.Deployment
	if r == nil {
		t.Fatal("second heartbeat carries no report")
	}
	if r.Status != fleetproto.DeployDryRun || r.Target != systemB || r.Previous != systemA || r.StartedAt.IsZero() {
		t.Errorf("report %+v, want a dry run from A to B", r)
	}
	if cur := readLink(cfg.CurrentSystem); cur != systemA {
		t.Errorf("a dry run changed the current system to %s", cur)
	}
	if _, err := os.Lstat(cfg.Profile); err == nil {
		t.Error("a dry run created the profile")
	}

	// The report was accepted: it is not sent again, and the same target
	// is not dry-run again.
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	got = s.take()
	if len(got) != 1 || got[0].hb.Deployment != nil {
		t.Errorf("after the report: %d heartbeats, first report %+v; want 1 without a report", len(got), got[0].hb.Deployment)
	}
}

func TestReportKeptUntilAccepted(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	setCurrent(t, cfg.CurrentSystem, systemA)
	a := newAgent(t, cfg)
	// The first heartbeat names B; the one carrying the report fails.
	first := true
	s.setAnswer(func(w http.ResponseWriter, hb fleetproto.Heartbeat) {
		if first {
			first = false
			s.answerWith(approve(systemB))(w, hb)
			return
		}
		answerStatus(http.StatusInternalServerError, `{"detail":"database is down"}`)(w, hb)
	})
	err := a.RunOnce(t.Context())
	if err == nil || !strings.Contains(err.Error(), "500") || !strings.Contains(err.Error(), "database is down") {
		t.Fatalf("RunOnce error = %v, want the 500 and its detail", err)
	}
	if got := s.take(); len(got) != 2 || got[1].hb.Deployment == nil {
		t.Fatalf("got %d heartbeats, want 2, the second with the report", len(got))
	}

	s.setAnswer(s.answerWith(approve(systemB)))
	if _, err := a.HeartbeatOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r := s.take()[0].hb.Deployment; r == nil || r.Target != systemB {
		t.Fatalf("report after a failed delivery: %+v, want it sent again", r)
	}
	if _, err := a.HeartbeatOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r := s.take()[0].hb.Deployment; r != nil {
		t.Errorf("report sent again after the server accepted it: %+v", r)
	}
}

func TestNon200Answers(t *testing.T) {
	tests := []struct {
		name        string
		code        int
		body        string
		wantPending bool
		wantIn      string
	}{
		{"pending approval", http.StatusForbidden, `{"detail":"host chesty awaits approval","status":"pending"}`, true, "awaits approval"},
		{"forbidden", http.StatusForbidden, `{"detail":"host is retired"}`, false, "host is retired"},
		{"stale", http.StatusUnauthorized, `{"detail":"timestamp too far from the server's clock"}`, false, "401"},
		{"replay", http.StatusConflict, `{"detail":"nonce already seen"}`, false, "nonce already seen"},
		{"not JSON", http.StatusBadGateway, "<html>bad gateway</html>", false, "bad gateway"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeServer(t)
			a := newAgent(t, testConfig(t, s))
			s.setAnswer(answerStatus(tt.code, tt.body))
			_, err := a.HeartbeatOnce(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.wantIn) {
				t.Fatalf("HeartbeatOnce error = %v, want it to mention %q", err, tt.wantIn)
			}
			if errors.Is(err, ErrPending) != tt.wantPending {
				t.Errorf("errors.Is(%v, ErrPending) = %v, want %v", err, !tt.wantPending, tt.wantPending)
			}
			// Waiting for approval is not a failure of the round.
			if err := a.RunOnce(t.Context()); (err == nil) != tt.wantPending {
				t.Errorf("RunOnce error = %v", err)
			}
		})
	}
}

func TestOversizedReplyRefused(t *testing.T) {
	s := newFakeServer(t)
	a := newAgent(t, testConfig(t, s))
	s.setAnswer(s.answerSigned(fleetproto.Reply{Reason: strings.Repeat("x", maxReplySize)}, nil,
		func(h http.Header, body []byte) { fleetproto.SignReply(h, body, s.key) }))
	if _, err := a.HeartbeatOnce(t.Context()); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("HeartbeatOnce error = %v, want the answer refused as too large", err)
	}
}

func TestNewRequiresServerAndKeys(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	cfg.ServerKeys = nil
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "server keys") {
		t.Errorf("New without server keys: %v", err)
	}
	cfg = testConfig(t, s)
	cfg.ServerURL = ""
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "server URL") {
		t.Errorf("New without a server URL: %v", err)
	}
	cfg = testConfig(t, s)
	cfg.ServerURL = "forge.example.com"
	if _, err := New(cfg); err == nil {
		t.Error("New accepted a server URL without a scheme")
	}
	cfg = testConfig(t, s)
	cfg.TrustedPublicKeys = []string{"not-a-key"}
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "trusted public key") {
		t.Errorf("New with a bad trusted key: %v", err)
	}
}

func TestNextWait(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	cfg.Interval, cfg.Jitter = 10*time.Minute, time.Minute
	a := newAgent(t, cfg)
	var low, high bool
	for range 1000 {
		w := a.nextWait()
		if w < 9*time.Minute || w > 11*time.Minute {
			t.Fatalf("wait %v outside 10m ± 1m", w)
		}
		low = low || w < 10*time.Minute-30*time.Second
		high = high || w > 10*time.Minute+30*time.Second
	}
	if !low || !high {
		t.Errorf("1000 waits do not spread over ±1m (low %v, high %v)", low, high)
	}
	cfg.Jitter = -1
	if w := newAgent(t, cfg).nextWait(); w != 10*time.Minute {
		t.Errorf("wait without jitter = %v, want 10m", w)
	}
	cfg.Jitter = 0
	if d := newAgent(t, cfg).cfg.Jitter; d != DefaultJitter {
		t.Errorf("zero jitter became %v, want the default %v", d, DefaultJitter)
	}
}

func TestRunHeartbeatsOnStartAndOnChange(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	cfg.Interval = time.Hour
	setCurrent(t, cfg.CurrentSystem, systemA)
	a := newAgent(t, cfg)
	beats := make(chan fleetproto.Heartbeat, 10)
	s.setAnswer(func(w http.ResponseWriter, hb fleetproto.Heartbeat) {
		s.answerWith(approve(""))(w, hb)
		beats <- hb
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	next := func(what string) fleetproto.Heartbeat {
		t.Helper()
		select {
		case hb := <-beats:
			return hb
		case <-time.After(10 * time.Second):
			t.Fatalf("no heartbeat within 10s %s", what)
			return fleetproto.Heartbeat{}
		}
	}
	if hb := next("at start"); hb.Current != systemA {
		t.Errorf("first heartbeat current %q, want %q", hb.Current, systemA)
	}
	// Run starts the watcher before the first heartbeat: it is in place.
	swapLink(t, systemB, cfg.CurrentSystem)
	if hb := next("after the current system changed"); hb.Current != systemB {
		t.Errorf("heartbeat after the change: current %q, want %q", hb.Current, systemB)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	select {
	case hb := <-beats:
		t.Errorf("unexpected heartbeat %+v", hb)
	default:
	}
}

// The server refuses a heartbeat whose timestamp is not newer, in
// milliseconds, than the last one (replays); a deploy's report follows its
// heartbeat within the same millisecond when the deploy is quick.
func TestTimestampsIncrease(t *testing.T) {
	s := newFakeServer(t)
	a := newAgent(t, testConfig(t, s))
	var last int64
	for i := range 100 {
		hb, err := a.newHeartbeat()
		if err != nil {
			t.Fatal(err)
		}
		ms := hb.Timestamp.UnixMilli()
		if ms <= last {
			t.Fatalf("heartbeat %d: timestamp %d ms is not after %d ms", i, ms, last)
		}
		if hb.Timestamp.Location() != time.UTC {
			t.Fatalf("timestamp %v is not UTC", hb.Timestamp)
		}
		last = ms
	}
	if d := time.Since(time.UnixMilli(last)); d < -time.Second {
		t.Errorf("timestamps ran %v ahead of the clock", -d)
	}
}

// TestPendingLogNamesApproveCommand: a pending host's agent says what the
// admin runs to approve it.
func TestPendingLogNamesApproveCommand(t *testing.T) {
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	var logs strings.Builder
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	a := newAgent(t, cfg)
	s.setAnswer(answerStatus(http.StatusForbidden, `{"detail":"host is waiting for approval","status":"pending"}`))
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatalf("RunOnce error = %v; waiting for approval is not one", err)
	}
	if want := `approve_with="crystal-forge host approve chesty"`; !strings.Contains(logs.String(), want) {
		t.Errorf("log does not contain %s:\n%s", want, logs.String())
	}
}

// TestNewRefusesMissingLinks: without a current-system link or (to deploy)
// a profile generation, the agent cannot roll back, so it does not start,
// and says which flag to pass; it creates no key.
func TestNewRefusesMissingLinks(t *testing.T) {
	s := newFakeServer(t)
	tests := []struct {
		name   string
		dryRun bool
		setup  func(t *testing.T, cfg Config)
		want   []string // substrings of the error; none: New succeeds
	}{
		{"no current system", true, func(t *testing.T, cfg Config) {
			if err := os.Remove(cfg.CurrentSystem); err != nil {
				t.Fatal(err)
			}
		},
			[]string{"current system", "does not exist", "pass --current-system", "/run/current-system"}},
		{"current system is a file", true, func(t *testing.T, cfg Config) {
			if err := os.Remove(cfg.CurrentSystem); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cfg.CurrentSystem, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, []string{"is not a symlink", "pass --current-system"}},
		{"no profile", false, func(t *testing.T, cfg Config) {},
			[]string{"system profile", "does not exist", "pass --profile", "/nix/var/nix/profiles/system"}},
		{"profile is a directory", false, func(t *testing.T, cfg Config) {
			if err := os.MkdirAll(cfg.Profile, 0o755); err != nil {
				t.Fatal(err)
			}
		}, []string{"is not a symlink", "pass --profile"}},
		{"profile points at a store path", false, func(t *testing.T, cfg Config) {
			if err := os.MkdirAll(filepath.Dir(cfg.Profile), 0o755); err != nil {
				t.Fatal(err)
			}
			setCurrent(t, cfg.Profile, systemA)
		}, []string{"not a generation (system-<N>-link)", "pass --profile"}},
		{"profile generation", false, func(t *testing.T, cfg Config) {
			if err := os.MkdirAll(filepath.Dir(cfg.Profile), 0o755); err != nil {
				t.Fatal(err)
			}
			setCurrent(t, cfg.Profile, "system-7-link")
		}, nil},
		{"dry run needs no profile", true, func(t *testing.T, cfg Config) {}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, s)
			cfg.DryRun = tt.dryRun
			tt.setup(t, cfg)
			_, err := New(cfg)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if _, err := os.Stat(cfg.KeyFile); err == nil {
				t.Error("a refused start created the agent key")
			}
		})
	}
}
