package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/cache"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// systemsNix builds fake NixOS systems without nixpkgs: each has a
// bin/switch-to-configuration that appends "activated <itself> <action>" to
// the log file and points the current-system link at itself, both paths
// baked in at build time (the script runs as the test, so any path works).
// "base" is what the host runs at the start (newDeployEnv). The "bad" system
// records its activation and fails before switching; the "hang" one records
// it, writes its PID next to the log and never finishes; the "noop" one
// records it and exits 0 without switching. "notsystem" has no switch
// script.
const systemsNix = `{ nonce, log, current }:
let
  mk = name: mode: derivation {
    name = "nixos-system-${name}-${nonce}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    inherit nonce log current mode;
    args = [ "-e" "-c" ''
      mkdir -p $out/bin
      s=$out/bin/switch-to-configuration
      printf '#!/bin/sh\necho "activated %s $1" >> "%s"\n' "$out" "$log" > $s
      if [ "$mode" = fail ]; then printf 'echo "switch failed on purpose" >&2\nexit 1\n' >> $s; fi
      if [ "$mode" = hang ]; then printf 'echo $$ > "%s.hang-pid"\nexec sleep 3600\n' "$log" >> $s; fi
      if [ "$mode" = noop ]; then printf 'exit 0\n' >> $s; fi
      printf 'ln -sfn "%s" "%s"\n' "$out" "$current" >> $s
      chmod 0755 $s
    '' ];
  };
in [
  (mk "base" "ok")
  (mk "good" "ok")
  (mk "bad" "fail")
  (mk "hang" "hang")
  (mk "noop" "noop")
  (derivation {
    name = "notsystem-${nonce}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-e" "-c" "mkdir -p $out/share; echo hello > $out/share/hello" ];
  })
]
`

// fakeSystems are fresh system closures in the system store.
type fakeSystems struct {
	base, good, bad, hang, noop, notSystem string
	log                                    string // the activation log
}

// buildSystems builds fakeSystems whose switch scripts log to dir's
// activation.log and point current at themselves, and deletes them from
// the system store when the test ends.
func buildSystems(t *testing.T, dir, current string) fakeSystems {
	t.Helper()
	nonce := make([]byte, 12)
	rand.Read(nonce)
	file := filepath.Join(dir, "systems.nix")
	if err := os.WriteFile(file, []byte(systemsNix), 0o644); err != nil {
		t.Fatal(err)
	}
	sys := fakeSystems{log: filepath.Join(dir, "activation.log")}
	out, err := testsupport.NixOutput(t.Context(), "nix-build", "--no-out-link",
		"--argstr", "nonce", hex.EncodeToString(nonce), "--argstr", "log", sys.log, "--argstr", "current", current, file)
	if err != nil {
		t.Fatalf("build fake systems: %v", err)
	}
	paths := strings.Fields(string(out))
	for _, p := range paths {
		switch {
		case strings.Contains(p, "-nixos-system-base-"):
			sys.base = p
		case strings.Contains(p, "-nixos-system-noop-"):
			sys.noop = p
		case strings.Contains(p, "-nixos-system-good-"):
			sys.good = p
		case strings.Contains(p, "-nixos-system-bad-"):
			sys.bad = p
		case strings.Contains(p, "-nixos-system-hang-"):
			sys.hang = p
		case strings.Contains(p, "-notsystem-"):
			sys.notSystem = p
		}
	}
	if sys.base == "" || sys.good == "" || sys.bad == "" || sys.hang == "" || sys.noop == "" || sys.notSystem == "" {
		t.Fatalf("nix-build printed %q, want six systems", out)
	}
	t.Cleanup(func() {
		drvs, _ := testsupport.NixOutput(context.Background(), append([]string{"nix-store", "--query", "--deriver"}, paths...)...)
		del := append([]string{"nix-store", "--delete"}, paths...)
		if _, err := testsupport.NixCommand(context.Background(), append(del, strings.Fields(string(drvs))...)...); err != nil {
			t.Logf("delete fake systems: %v", err)
		}
	})
	return sys
}

// startCache serves the system store as a binary cache signed by a new
// key, and returns its URL and public key.
func startCache(t *testing.T) (url, publicKey string) {
	t.Helper()
	store, err := nixstore.Open(t.Context(), nixstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	testsupport.CloseAtCleanup(t, store)
	key := newCacheKey(t)
	srv, err := cache.New(cache.Config{Store: store, Keys: []*signing.SecretKey{key}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs.URL, key.Public().String()
}

func newCacheKey(t *testing.T) *signing.SecretKey {
	t.Helper()
	id := make([]byte, 4)
	rand.Read(id)
	k, err := signing.Generate("cf-agent-test-"+hex.EncodeToString(id), nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// deployEnv is a host to deploy to: a fresh chroot store, a profile and a
// current-system link in a temporary directory, and the fake systems. The
// host runs sys.base, profile generation 1, as a NixOS host always runs
// something.
type deployEnv struct {
	cfg Config
	sys fakeSystems
}

func newDeployEnv(t *testing.T) deployEnv {
	t.Helper()
	testsupport.RequireNix(t)
	dir := t.TempDir()
	current := filepath.Join(dir, "current-system")
	url, pub := startCache(t)
	env := deployEnv{
		sys: buildSystems(t, dir, current),
		cfg: Config{
			CurrentSystem:     current,
			Profile:           filepath.Join(dir, "profiles", "system"),
			Substituters:      []string{url},
			TrustedPublicKeys: []string{pub},
			StoreRoot:         testsupport.NewLocalStore(t),
			Logger:            testLogger(t),
		},
	}
	env.install(t, env.sys.base)
	if err := os.MkdirAll(filepath.Dir(env.cfg.Profile), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := testsupport.NixCommand(t.Context(), "nix-env", "--store", env.cfg.StoreRoot,
		"--profile", env.cfg.Profile, "--set", env.sys.base); err != nil {
		t.Fatalf("set the profile to the base system: %v", err)
	}
	setCurrent(t, current, env.sys.base)
	return env
}

// install copies p from the system store into the host's store, as if it
// had been deployed before.
func (e deployEnv) install(t *testing.T, p string) {
	t.Helper()
	if _, err := testsupport.NixCommand(t.Context(), "nix", "copy", "--no-check-sigs", "--to", e.cfg.StoreRoot, p); err != nil {
		t.Fatalf("copy %s into the host's store: %v", p, err)
	}
}

func newDeployer(t *testing.T, cfg Config) *Deployer {
	t.Helper()
	d, err := NewDeployer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// activations returns the lines of the activation log.
func (s fakeSystems) activations(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(s.log)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func inStore(t *testing.T, root, p string) bool {
	t.Helper()
	_, err := testsupport.NixCommand(t.Context(), "nix", "path-info", "--store", root, p)
	return err == nil
}

// checkProfile asserts that the profile points at generation gen, and that
// generation at target.
func checkProfile(t *testing.T, profile string, gen, target string) {
	t.Helper()
	link, err := os.Readlink(profile)
	if err != nil {
		t.Fatalf("profile: %v", err)
	}
	if want := filepath.Base(profile) + "-" + gen + "-link"; link != want {
		t.Errorf("profile points at %q, want %q", link, want)
	}
	got, err := os.Readlink(filepath.Join(filepath.Dir(profile), link))
	if err != nil {
		t.Fatal(err)
	}
	if got != target {
		t.Errorf("profile generation %s is %s, want %s", gen, got, target)
	}
}

func TestDeploySwitchesAndRollsBack(t *testing.T) {
	env := newDeployEnv(t)
	cfg, sys := env.cfg, env.sys
	d := newDeployer(t, cfg)

	r := d.Deploy(t.Context(), sys.good)
	if r.Status != fleetproto.DeploySuccess || r.Error != "" {
		t.Fatalf("deploy good: status %q, error %q", r.Status, r.Error)
	}
	if r.Target != sys.good || r.Previous != sys.base || r.StartedAt.IsZero() || r.DurationMS <= 0 {
		t.Errorf("report %+v", r)
	}
	if !inStore(t, cfg.StoreRoot, sys.good) {
		t.Errorf("%s is not valid in the agent's store after the deploy", sys.good)
	}
	checkProfile(t, cfg.Profile, "2", sys.good)
	if got, want := sys.activations(t), []string{"activated " + sys.good + " switch"}; !slices.Equal(got, want) {
		t.Errorf("activation log %q, want %q", got, want)
	}
	if cur := readLink(cfg.CurrentSystem); cur != sys.good {
		t.Errorf("current system %q, want %q", cur, sys.good)
	}

	// The bad system's switch fails: the profile and the running system
	// go back to the good one.
	r = d.Deploy(t.Context(), sys.bad)
	if r.Status != fleetproto.DeployRolledBack {
		t.Fatalf("deploy bad: status %q, error %q; want rolled-back", r.Status, r.Error)
	}
	if r.Previous != sys.good {
		t.Errorf("previous %q, want %q", r.Previous, sys.good)
	}
	for _, want := range []string{"activate " + sys.bad, "exit status 1", "switch failed on purpose"} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q does not mention %q", r.Error, want)
		}
	}
	checkProfile(t, cfg.Profile, "2", sys.good)
	if gen3, err := os.Readlink(cfg.Profile + "-3-link"); err != nil || gen3 != sys.bad {
		t.Errorf("generation 3 = %q, %v; want the bad system, kept for inspection", gen3, err)
	}
	want := []string{
		"activated " + sys.good + " switch",
		"activated " + sys.bad + " switch",
		"activated " + sys.good + " switch",
	}
	if got := sys.activations(t); !slices.Equal(got, want) {
		t.Errorf("activation log\n%q\nwant\n%q", got, want)
	}
	if cur := readLink(cfg.CurrentSystem); cur != sys.good {
		t.Errorf("current system %q after the rollback, want %q", cur, sys.good)
	}

	// Something that is not a system is fetched but never set or run.
	r = d.Deploy(t.Context(), sys.notSystem)
	if r.Status != fleetproto.DeployNotApplied || !strings.Contains(r.Error, "not a NixOS system") {
		t.Errorf("deploy of a non-system: status %q, error %q", r.Status, r.Error)
	}
	checkProfile(t, cfg.Profile, "2", sys.good)
	if got := sys.activations(t); len(got) != 3 {
		t.Errorf("activation log %q after refusing a non-system", got)
	}
}

// TestDeployActivationTimeout: an activation that never finishes is
// stopped (its whole process group) after ActivationTimeout and rolled back.
func TestDeployActivationTimeout(t *testing.T) {
	env := newDeployEnv(t)
	cfg, sys := env.cfg, env.sys
	cfg.ActivationTimeout = 2 * time.Second
	d := newDeployer(t, cfg)
	if r := d.Deploy(t.Context(), sys.good); r.Status != fleetproto.DeploySuccess {
		t.Fatalf("deploy good: status %q, error %q", r.Status, r.Error)
	}

	r := d.Deploy(t.Context(), sys.hang)
	if r.Status != fleetproto.DeployRolledBack {
		t.Fatalf("deploy hang: status %q, error %q; want rolled-back", r.Status, r.Error)
	}
	if want := "activate " + sys.hang + ": timed out after 2s"; !strings.Contains(r.Error, want) {
		t.Errorf("error %q does not say %q", r.Error, want)
	}
	want := []string{
		"activated " + sys.good + " switch",
		"activated " + sys.hang + " switch",
		"activated " + sys.good + " switch",
	}
	if got := sys.activations(t); !slices.Equal(got, want) {
		t.Errorf("activation log\n%q\nwant\n%q", got, want)
	}
	if cur := readLink(cfg.CurrentSystem); cur != sys.good {
		t.Errorf("current system %q after the rollback, want %q", cur, sys.good)
	}
	checkProfile(t, cfg.Profile, "2", sys.good)

	// The hung script exec'd sleep under the same PID: it must be gone.
	data, err := os.ReadFile(sys.log + ".hang-pid")
	if err != nil {
		t.Fatalf("the hang system did not record its PID: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("hang PID %q: %v", data, err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the hung activation (pid %d) still exists after the deploy: kill -0 = %v", pid, err)
	}
}

// TestDeployNoopActivation: a switch script that exits 0 but leaves the
// current system where it was did not deploy the target: the deploy is
// rolled back, not reported as a success.
func TestDeployNoopActivation(t *testing.T) {
	env := newDeployEnv(t)
	cfg, sys := env.cfg, env.sys
	r := newDeployer(t, cfg).Deploy(t.Context(), sys.noop)
	if r.Status != fleetproto.DeployRolledBack {
		t.Fatalf("status %q, error %q; want rolled-back", r.Status, r.Error)
	}
	for _, want := range []string{"activate " + sys.noop, "exited 0 but " + cfg.CurrentSystem + " points at", sys.base, "not the target"} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q does not mention %q", r.Error, want)
		}
	}
	want := []string{"activated " + sys.noop + " switch", "activated " + sys.base + " switch"}
	if got := sys.activations(t); !slices.Equal(got, want) {
		t.Errorf("activation log\n%q\nwant\n%q", got, want)
	}
	checkProfile(t, cfg.Profile, "1", sys.base)
}

// TestDeployRollbackFails: when re-activating the previous system fails
// too, the deploy is failed, and says both.
func TestDeployRollbackFails(t *testing.T) {
	env := newDeployEnv(t)
	cfg, sys := env.cfg, env.sys
	// The host runs the bad system, so going back to it fails.
	env.install(t, sys.bad)
	setCurrent(t, cfg.CurrentSystem, sys.bad)
	r := newDeployer(t, cfg).Deploy(t.Context(), sys.noop)
	if r.Status != fleetproto.DeployFailed {
		t.Fatalf("status %q, error %q; want failed", r.Status, r.Error)
	}
	for _, want := range []string{"activate " + sys.noop, "rollback failed", "re-activate " + sys.bad, "switch failed on purpose"} {
		if !strings.Contains(r.Error, want) {
			t.Errorf("error %q does not mention %q", r.Error, want)
		}
	}
	// The profile went back all the same.
	checkProfile(t, cfg.Profile, "1", sys.base)
}

// TestDeployRefusedWithoutWayBack: a deploy that could not be rolled back
// is refused before anything is fetched or changed, and says what to fix.
func TestDeployRefusedWithoutWayBack(t *testing.T) {
	env := newDeployEnv(t)
	cfg, sys := env.cfg, env.sys
	tests := []struct {
		name   string
		breakf func(t *testing.T)
		want   []string
	}{
		{"no current system", func(t *testing.T) {
			if err := os.Remove(cfg.CurrentSystem); err != nil {
				t.Fatal(err)
			}
		},
			[]string{"current system " + cfg.CurrentSystem + " does not exist", "--current-system", DefaultCurrentSystem}},
		{"current system not a link", func(t *testing.T) {
			if err := os.Remove(cfg.CurrentSystem); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(cfg.CurrentSystem, 0o755); err != nil {
				t.Fatal(err)
			}
		}, []string{cfg.CurrentSystem + " is not a symlink", "--current-system"}},
		{"running system has no switch script", func(t *testing.T) { setCurrent(t, cfg.CurrentSystem, sys.notSystem) },
			[]string{"the running system " + sys.notSystem, "no executable bin/switch-to-configuration"}},
		{"no profile", func(t *testing.T) {
			if err := os.Remove(cfg.Profile); err != nil {
				t.Fatal(err)
			}
		},
			[]string{"system profile " + cfg.Profile + " does not exist", "--profile", DefaultProfile}},
		{"profile not a generation", func(t *testing.T) { setCurrent(t, cfg.Profile, sys.base) },
			[]string{"system profile " + cfg.Profile + " points at", "not a generation", "--profile"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Cleanup(func() {
				// setCurrent removes what the case left in place.
				setCurrent(t, cfg.CurrentSystem, sys.base)
				setCurrent(t, cfg.Profile, filepath.Base(cfg.Profile)+"-1-link")
			})
			tt.breakf(t)
			r := newDeployer(t, cfg).Deploy(t.Context(), sys.good)
			if r.Status != fleetproto.DeployNotApplied {
				t.Fatalf("status %q, error %q; want not-applied", r.Status, r.Error)
			}
			for _, want := range append([]string{"refusing to deploy"}, tt.want...) {
				if !strings.Contains(r.Error, want) {
					t.Errorf("error %q does not mention %q", r.Error, want)
				}
			}
			if inStore(t, cfg.StoreRoot, sys.good) {
				t.Errorf("%s was fetched for a refused deploy", sys.good)
			}
			if got := sys.activations(t); got != nil {
				t.Errorf("something was activated: %q", got)
			}
		})
	}
}

func TestDeployUntrustedCacheKey(t *testing.T) {
	env := newDeployEnv(t)
	cfg, sys := env.cfg, env.sys
	cfg.TrustedPublicKeys = []string{newCacheKey(t).Public().String()}
	r := newDeployer(t, cfg).Deploy(t.Context(), sys.good)
	if r.Status != fleetproto.DeployNotApplied {
		t.Fatalf("status %q; want not-applied", r.Status)
	}
	if !strings.Contains(r.Error, "fetch closure") || !strings.Contains(r.Error, "lacks a valid signature") {
		t.Errorf("error %q does not say the copy failed for lack of a valid signature", r.Error)
	}
	if inStore(t, cfg.StoreRoot, sys.good) {
		t.Errorf("%s is valid in the agent's store after a refused copy", sys.good)
	}
	checkProfile(t, cfg.Profile, "1", sys.base)
	if got := sys.activations(t); got != nil {
		t.Errorf("something was activated: %q", got)
	}
}

func TestDeployWithoutSubstituters(t *testing.T) {
	env := newDeployEnv(t)
	cfg := env.cfg
	cfg.Substituters = nil
	r := newDeployer(t, cfg).Deploy(t.Context(), env.sys.good)
	if r.Status != fleetproto.DeployNotApplied || !strings.Contains(r.Error, "no substituter") {
		t.Errorf("status %q, error %q; want failed for want of a substituter", r.Status, r.Error)
	}
	// The server's cache stands in when no substituter is given.
	cfg.ServerCacheURL = env.cfg.Substituters[0]
	if r := newDeployer(t, cfg).Deploy(t.Context(), env.sys.good); r.Status != fleetproto.DeploySuccess {
		t.Errorf("deploy from the server's cache: status %q, error %q", r.Status, r.Error)
	}
}

// TestDeployRefusesBadTargets needs no Nix: nothing may run.
func TestDeployRefusesBadTargets(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{
		CurrentSystem: filepath.Join(dir, "current-system"),
		Profile:       filepath.Join(dir, "profiles", "system"),
		Substituters:  []string{"http://127.0.0.1:1"},
		StoreRoot:     filepath.Join(dir, "store"),
		Logger:        testLogger(t),
	}
	d := newDeployer(t, cfg)
	for _, target := range []string{
		"",
		"/tmp/x",
		"/nix/store/short-name",
		"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-system/bin/sh",
		"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-system; rm -rf /",
		"/nix/store/../etc/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x",
		"nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-system",
	} {
		r := d.Deploy(t.Context(), target)
		if r.Status != fleetproto.DeployNotApplied || !strings.Contains(r.Error, "refusing target") {
			t.Errorf("Deploy(%q): status %q, error %q; want refused", target, r.Status, r.Error)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("refused deploys created %v", entries)
	}
}

func TestDeployDryRun(t *testing.T) {
	dir := t.TempDir()
	current := filepath.Join(dir, "current-system")
	setCurrent(t, current, systemA)
	d := newDeployer(t, Config{CurrentSystem: current, Profile: filepath.Join(dir, "profiles", "system"), DryRun: true, Logger: testLogger(t)})
	r := d.Deploy(t.Context(), systemB)
	if r.Status != fleetproto.DeployDryRun || r.Target != systemB || r.Previous != systemA || r.Error != "" {
		t.Errorf("dry run report %+v", r)
	}
	if _, err := os.Lstat(filepath.Join(dir, "profiles")); err == nil {
		t.Error("a dry run touched the profile")
	}
}

// TestAgentDeploysWhatServerNames runs the whole loop: the server names a
// target, the agent fetches it from the cache, switches, and reports; a
// target whose switch fails is rolled back, reported, and not retried.
func TestAgentDeploysWhatServerNames(t *testing.T) {
	env := newDeployEnv(t)
	s := newFakeServer(t)
	cfg := testConfig(t, s)
	cfg.DryRun = false
	cfg.CurrentSystem, cfg.Profile = env.cfg.CurrentSystem, env.cfg.Profile
	cfg.Substituters, cfg.TrustedPublicKeys, cfg.StoreRoot = env.cfg.Substituters, env.cfg.TrustedPublicKeys, env.cfg.StoreRoot
	a := newAgent(t, cfg)
	sys := env.sys

	s.setAnswer(s.answerWith(approve(sys.good)))
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := s.take()
	if len(got) != 2 {
		t.Fatalf("server received %d heartbeats, want 2", len(got))
	}
	if got[0].hb.Current != sys.base || got[0].hb.Deployment != nil {
		t.Errorf("first heartbeat: current %q, report %+v", got[0].hb.Current, got[0].hb.Deployment)
	}
	hb := got[1].hb
	if hb.Current != sys.good {
		t.Errorf("heartbeat after the switch: current %q, want %q", hb.Current, sys.good)
	}
	if r := hb.Deployment; r == nil || r.Status != fleetproto.DeploySuccess || r.Target != sys.good {
		t.Fatalf("report %+v, want a successful switch to %s", r, sys.good)
	}
	checkProfile(t, cfg.Profile, "2", sys.good)

	// Current is the target now: nothing to do.
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := s.take(); len(got) != 1 || got[0].hb.Deployment != nil {
		t.Errorf("a settled host sent %d heartbeats", len(got))
	}

	s.setAnswer(s.answerWith(approve(sys.bad)))
	err := a.RunOnce(t.Context())
	if err == nil || !strings.Contains(err.Error(), fleetproto.DeployRolledBack) {
		t.Fatalf("RunOnce error = %v, want the rolled-back deploy", err)
	}
	got = s.take()
	if len(got) != 2 {
		t.Fatalf("server received %d heartbeats, want 2", len(got))
	}
	if r := got[1].hb.Deployment; r == nil || r.Status != fleetproto.DeployRolledBack || r.Previous != sys.good {
		t.Fatalf("report %+v, want a rollback to %s", r, sys.good)
	}
	if got[1].hb.Current != sys.good {
		t.Errorf("current %q after the rollback, want %q", got[1].hb.Current, sys.good)
	}
	n := len(sys.activations(t))
	// The server insists: the agent does not activate the broken target again.
	if err := a.RunOnce(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := s.take(); len(got) != 1 {
		t.Errorf("server received %d heartbeats, want 1", len(got))
	}
	if m := len(sys.activations(t)); m != n {
		t.Errorf("the broken target was activated again (%d activations, was %d)", m, n)
	}
}

// TestAgentNeverDeploysTwiceInARound: the server keeps naming a target the
// host does not end up running; one round deploys it once and stops.
func TestAgentNeverDeploysTwiceInARound(t *testing.T) {
	env := newDeployEnv(t)
	sys := env.sys
	tests := []struct {
		name       string
		target     string
		wantStatus string
	}{
		// Activation exits 0 and changes nothing: rolled back.
		{"no-op activation", sys.noop, fleetproto.DeployRolledBack},
		// Fetched, refused, nothing changed: nothing remembers it but
		// the round.
		{"not a system", sys.notSystem, fleetproto.DeployNotApplied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newFakeServer(t)
			cfg := testConfig(t, s)
			cfg.DryRun = false
			cfg.CurrentSystem, cfg.Profile = env.cfg.CurrentSystem, env.cfg.Profile
			cfg.Substituters, cfg.TrustedPublicKeys, cfg.StoreRoot = env.cfg.Substituters, env.cfg.TrustedPublicKeys, env.cfg.StoreRoot
			a := newAgent(t, cfg)
			before := len(sys.activations(t))

			s.setAnswer(s.answerWith(approve(tt.target)))
			err := a.RunOnce(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.wantStatus) {
				t.Fatalf("RunOnce error = %v, want the %s deploy", err, tt.wantStatus)
			}
			got := s.take()
			if len(got) != 2 {
				t.Fatalf("server received %d heartbeats, want 2: one deploy, one report", len(got))
			}
			if r := got[1].hb.Deployment; r == nil || r.Status != tt.wantStatus || r.Target != tt.target {
				t.Errorf("report %+v, want %s for %s", r, tt.wantStatus, tt.target)
			}
			if got[1].hb.Current != sys.base {
				t.Errorf("current %q after the round, want %q", got[1].hb.Current, sys.base)
			}
			var activated []string
			for _, l := range sys.activations(t)[before:] {
				if strings.Contains(l, tt.target) {
					activated = append(activated, l)
				}
			}
			if len(activated) > 1 {
				t.Errorf("%s was activated %d times in one round: %q", tt.target, len(activated), activated)
			}
			checkProfile(t, cfg.Profile, "1", sys.base)
		})
	}
}
