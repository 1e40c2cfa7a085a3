package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/agent"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
	"github.com/crystal-forge/crystal-forge/internal/keygen"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// nixosFlake is a flake whose nixosConfigurations.chesty toplevel is a tiny
// "system": its bin/switch-to-configuration records each activation in
// logFile and points currentLink at itself, then exits with exitCode.
func nixosFlake(system, nonce, logFile, currentLink string, exitCode int) string {
	return fmt.Sprintf(`{
  outputs = { self }: {
    nixosConfigurations.chesty.config.system.build.toplevel = derivation {
      name = "nixos-system-chesty-25.05";
      system = %q;
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      nonce = %q;
      args = [ "-c" ''
        mkdir -p $out/bin
        cat > $out/bin/switch-to-configuration <<EOS
        #!/bin/sh
        echo "activated $out \$1" >> %s
        [ %d -eq 0 ] && ln -sfn $out %s
        exit %d
        EOS
        chmod +x $out/bin/switch-to-configuration
        echo "system $nonce" > $out/nixos-version
      '' ];
    };
  };
}
`, system, nonce, logFile, exitCode, currentLink, exitCode)
}

// TestFleetEndToEnd: the server builds a host's configuration, the agent
// fetches its closure from our cache into a fresh store with signature
// checks, switches, and reports; a configuration whose activation fails is
// rolled back, reported, and not sent again.
func TestFleetEndToEnd(t *testing.T) {
	testsupport.RequireNix(t)
	ctx := t.Context()
	dir := t.TempDir()
	var (
		logFile     = filepath.Join(dir, "activations.log")
		currentLink = filepath.Join(dir, "current-system")
		storeRoot   = filepath.Join(dir, "agent-store")
		profile     = filepath.Join(dir, "profiles", "system")
		agentKey    = filepath.Join(dir, "agent-key")
	)
	base := installBaseSystem(t, storeRoot, profile, currentLink, logFile)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	key, err := keygen.Ensure(keygen.Options{KeyFile: agentKey, Name: "chesty", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	system := config.DefaultSystem()
	repo := testsupport.NewGitRepo(t, map[string]string{"flake.nix": nixosFlake(system, testsupport.Nonce(), logFile, currentLink, 0)})

	srv := testsupport.StartServer(t, testsupport.ServerOptions{
		Repositories: []testsupport.ServerRepository{{Name: "nixos-configs", URL: repo}},
		ExtraTOML: fmt.Sprintf(`
[[hosts]]
name = "chesty"
public_key = %q
policy = "auto"
repository = "nixos-configs"
`, key.Key.Public().String()),
	})
	var info struct {
		PublicKey string `json:"public_key"`
	}
	srv.GetJSON(t, "/info", &info)
	serverKey, err := signing.ParsePublicKey(info.PublicKey)
	if err != nil {
		t.Fatal(err)
	}

	// The server builds the configuration: evaluated, then built.
	good := buildNixos(t, srv)

	newAgent := func(trusted *signing.PublicKey) *agent.Agent {
		a, err := agent.New(agent.Config{
			ServerURL:         srv.URL,
			Host:              "chesty",
			KeyFile:           agentKey,
			ServerKeys:        []*signing.PublicKey{trusted},
			CurrentSystem:     currentLink,
			Profile:           profile,
			ServerCacheURL:    srv.CacheURL,
			TrustedPublicKeys: []string{info.PublicKey},
			StoreRoot:         storeRoot,
			SysRoot:           dir, // no DMI or /proc facts here: a stable, empty fingerprint
			Logger:            quiet,
		})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	// An agent that trusts another server key refuses the reply: nothing moves.
	impostor, _ := signing.Generate(serverKey.Name, nil)
	if err := newAgent(impostor.Public()).RunOnce(ctx); err == nil {
		t.Error("agent accepted a reply it cannot verify")
	}
	if got, _ := os.Readlink(currentLink); got != base {
		t.Fatalf("agent switched on an unverified reply: current = %q", got)
	}

	// The real agent: heartbeat, target, fetch, switch, report.
	a := newAgent(serverKey)
	if err := a.RunOnce(ctx); err != nil {
		t.Fatalf("agent round: %v", err)
	}
	if got, _ := os.Readlink(currentLink); got != good {
		t.Fatalf("current system = %q, want the built target %q", got, good)
	}
	if out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--store", storeRoot, good).CombinedOutput(); err != nil {
		t.Fatalf("target not in the agent's store: %v\n%s", err, out)
	}
	if log, _ := os.ReadFile(logFile); !strings.Contains(string(log), "activated "+good+" switch") {
		t.Errorf("activation log lacks the switch:\n%s", log)
	}
	h := hostView(t, srv)
	if h.Current != good || h.Desired != good || h.Drift != "" {
		t.Errorf("after the switch the server sees current %q desired %q drift %q", h.Current, h.Desired, h.Drift)
	}
	if h.LastDeployment == nil || h.LastDeployment.Status != "success" || h.LastDeployment.Target != good {
		t.Errorf("last deployment = %+v", h.LastDeployment)
	}

	// A configuration whose activation fails: rolled back to the good one.
	testsupport.Commit(t, repo, map[string]string{"flake.nix": nixosFlake(system, testsupport.Nonce(), logFile, currentLink, 1)})
	bad := buildNixos(t, srv)
	if bad == good {
		t.Fatal("the new commit built the same system")
	}
	if err := a.RunOnce(ctx); err == nil || !strings.Contains(err.Error(), "rolled-back") {
		t.Fatalf("deploying the failing system: err = %v, want a rolled-back report", err)
	}
	if got, _ := os.Readlink(currentLink); got != good {
		t.Errorf("after the rollback current = %q, want %q", got, good)
	}
	log, _ := os.ReadFile(logFile)
	if !strings.HasSuffix(string(log), "activated "+bad+" switch\nactivated "+good+" switch\n") {
		t.Errorf("activation log does not show the failed switch then the previous one again:\n%s", log)
	}
	h = hostView(t, srv)
	if h.LastDeployment == nil || h.LastDeployment.Status != "rolled-back" || h.LastDeployment.Target != bad {
		t.Errorf("last deployment = %+v, want rolled-back of %s", h.LastDeployment, bad)
	}
	if !hasAlert(h, "deployment-failed") {
		t.Errorf("no deployment-failed alert: %+v", h.Alerts)
	}
	// The server does not send the failed target again.
	if err := newAgent(serverKey).RunOnce(ctx); err != nil {
		t.Fatalf("agent round after the failure: %v", err)
	}
	if h = hostView(t, srv); h.DesiredReason != "deployment-failed" || h.TargetError == "" {
		t.Errorf("failed target: reason %q, target_error %q", h.DesiredReason, h.TargetError)
	}
	if got, _ := os.Readlink(currentLink); got != good {
		t.Errorf("the failed target was deployed again: current = %q", got)
	}
}

// installBaseSystem makes the agent's host run a tiny system first, as a
// NixOS host always runs one: it is copied into storeRoot, is the profile's
// generation 1, and currentLink points at it. Its switch script records
// activations in logFile and points currentLink back at it.
func installBaseSystem(t *testing.T, storeRoot, profile, currentLink, logFile string) string {
	t.Helper()
	expr := fmt.Sprintf(`derivation {
  name = "nixos-system-chesty-base";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  nonce = %q;
  args = [ "-c" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\necho "activated %%s $1" >> %%s\nln -sfn %%s %%s\n' $out %s $out %s > $out/bin/switch-to-configuration
    chmod +x $out/bin/switch-to-configuration
  '' ];
}`, testsupport.Nonce(), logFile, currentLink)
	out, err := testsupport.NixOutput(t.Context(), "nix-build", "--no-out-link", "-E", expr)
	if err != nil {
		t.Fatalf("build the base system: %v", err)
	}
	base := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		// Tidying the shared store only; a path still in use stays.
		if _, err := testsupport.NixCommand(context.Background(), "nix-store", "--delete", base); err != nil {
			t.Logf("delete the base system: %v", err)
		}
	})
	if _, err := testsupport.NixCommand(t.Context(), "nix", "copy", "--no-check-sigs", "--to", storeRoot, base); err != nil {
		t.Fatalf("copy the base system into the agent's store: %v", err)
	}
	if err := os.MkdirAll(filepath.Dir(profile), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := testsupport.NixCommand(t.Context(), "nix-env", "--store", storeRoot, "--profile", profile, "--set", base); err != nil {
		t.Fatalf("set the profile to the base system: %v", err)
	}
	if err := os.Symlink(base, currentLink); err != nil {
		t.Fatal(err)
	}
	return base
}

// buildNixos triggers a build of the repository, waits for it, and returns
// the output of nixosConfigurations.chesty, checking it was evaluated first.
func buildNixos(t *testing.T, srv *testsupport.Server) string {
	t.Helper()
	id := trigger(t, srv, "nixos-configs")
	b := testsupport.WaitBuildSucceeded(t, srv, id)
	log := srv.Log(t, id)
	// The flake check, then the configuration.
	if len(b.Results) != 2 || b.Results[0].Attr != "checks" || b.Results[1].Kind != "nixos" || len(b.Results[1].OutPaths) != 1 {
		t.Fatalf("nixos build: %+v\n%s", b.Results, log)
	}
	nixos := b.Results[1]
	if !strings.Contains(log, "Evaluated nixosConfigurations.chesty: "+nixos.DrvPath) {
		t.Errorf("log does not record the evaluated derivation %s:\n%s", nixos.DrvPath, log)
	}
	return nixos.OutPaths[0]
}

func hostView(t *testing.T, srv *testsupport.Server) *fleet.HostView {
	t.Helper()
	var v fleet.HostView
	srv.GetJSON(t, "/api/v1/hosts/chesty", &v)
	return &v
}

func hasAlert(v *fleet.HostView, kind string) bool {
	for _, a := range v.Alerts {
		if a.Kind == kind {
			return true
		}
	}
	return false
}
