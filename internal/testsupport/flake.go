package testsupport

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/api"
)

// Fixture flakes and default.nix files for build tests. Their derivations
// use /bin/sh as the builder and need neither nixpkgs nor the network; a
// nonce in every derivation makes each test build new store paths.

// FlakePackage is one package of a fixture flake: Script runs under
// `/bin/sh -e` with $out, $name and $nonce set and PATH=/usr/bin:/bin.
type FlakePackage struct {
	Name   string
	Script string
}

// GoodPackage builds: $out is a file naming the package and the nonce.
// Extra lines are echoed to the build log first.
func GoodPackage(name string, logLines int) FlakePackage {
	script := ""
	if logLines > 0 {
		script = fmt.Sprintf("i=1; while [ $i -le %d ]; do echo \"log line $i of $name\"; i=$((i+1)); done\n", logLines)
	}
	script += `echo "building $name $nonce"
echo "$name $nonce" > $out
`
	return FlakePackage{Name: name, Script: script}
}

// FailingPackage's builder fails, saying so in the build log.
func FailingPackage(name string) FlakePackage {
	return FlakePackage{Name: name, Script: `echo "fixture package $name fails on purpose"
exit 1
`}
}

// Flake describes a fixture flake.nix.
type Flake struct {
	System   string // the Nix system of the packages, e.g. x86_64-linux
	Nonce    string
	Packages []FlakePackage
	// HomeManagerModule adds homeManagerModules.default, a module that
	// returns { fixture.marker = "<nonce>"; }.
	HomeManagerModule bool
	// Checks are checks.<system>.<name>, built by `nix flake check`.
	Checks []FlakePackage
}

// Nix returns the text of the flake.nix.
func (f Flake) Nix() string {
	var b strings.Builder
	fmt.Fprintf(&b, `{
  description = "Crystal Forge test fixture";
  outputs = { self }:
    let
      system = %s;
      nonce = %s;
      mk = name: script: derivation {
        inherit name system nonce;
        builder = "/bin/sh";
        args = [ "-e" "-c" script ];
        PATH = "/usr/bin:/bin";
      };
    in {
      packages.${system} = {
`, NixString(f.System), NixString(f.Nonce))
	for _, p := range f.Packages {
		fmt.Fprintf(&b, "        %s = mk %s %s;\n", p.Name, NixString(p.Name), NixString(p.Script))
	}
	b.WriteString("      };\n")
	if len(f.Checks) > 0 {
		b.WriteString("      checks.${system} = {\n")
		for _, p := range f.Checks {
			fmt.Fprintf(&b, "        %s = mk %s %s;\n", p.Name, NixString(p.Name), NixString(p.Script))
		}
		b.WriteString("      };\n")
	}
	if f.HomeManagerModule {
		fmt.Fprintf(&b, "      homeManagerModules.default = { ... }: { fixture.marker = %s; };\n", NixString(f.Nonce))
	}
	b.WriteString("    };\n}\n")
	return b.String()
}

// LegacyDefaultNix returns a default.nix with one derivation whose builder
// runs script like a FlakePackage's.
func LegacyDefaultNix(nonce, script string) string {
	return fmt.Sprintf(`derivation {
  name = "cf-legacy-fixture";
  system = builtins.currentSystem;
  nonce = %s;
  builder = "/bin/sh";
  args = [ "-e" "-c" %s ];
  PATH = "/usr/bin:/bin";
}
`, NixString(nonce), NixString(script))
}

// NixString quotes s as a Nix string literal.
func NixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

// Blocker is a package whose builder waits until the test releases it, so
// a test can observe a build while it runs without sleeping. The builder
// writes its pid to PIDFile when it starts; it gives up when the test's
// directory is removed, so a leaked builder cannot spin forever.
type Blocker struct {
	Name string
	Dir  string
}

// NewBlocker returns a blocker for a package called name.
func NewBlocker(t testing.TB, name string) *Blocker {
	t.Helper()
	// Nix runs builders as a build user (nixbld*), who cannot enter
	// t.TempDir(): use a world-writable directory directly under /tmp.
	dir, err := os.MkdirTemp("", "cf-blocker-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	b := &Blocker{Name: name, Dir: dir}
	// Removing the directory also ends a builder still waiting when the
	// test ends (a failed test).
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the blocker's directory: %v", err)
		}
	})
	return b
}

// PIDFile is where the builder writes its process id.
func (b *Blocker) PIDFile() string { return filepath.Join(b.Dir, "pid") }

// ReleaseFile is the file whose creation lets the builder finish.
func (b *Blocker) ReleaseFile() string { return filepath.Join(b.Dir, "release") }

// Package is the blocking package, for a Flake.
func (b *Blocker) Package() FlakePackage {
	return FlakePackage{Name: b.Name, Script: b.Script()}
}

// Script is the blocking builder script.
func (b *Blocker) Script() string {
	dir := shellQuote(b.Dir)
	// The pid file is replaced by a rename: a later build of the same
	// blocker may run as another build user, who cannot overwrite the
	// file the first one wrote (but may rename over it in the
	// world-writable directory), and readers never see half a pid.
	return fmt.Sprintf(`echo $$ > %s.$$
mv -f %s.$$ %s
echo "blocker $name waiting for release"
while [ ! -e %s ]; do
  [ -d %s ] || exit 1
  sleep 0.1
done
echo "blocker $name released"
echo "$name $nonce" > $out
`, shellQuote(b.PIDFile()), shellQuote(b.PIDFile()), shellQuote(b.PIDFile()), shellQuote(b.ReleaseFile()), dir)
}

// Started reports whether the builder has started.
func (b *Blocker) Started() bool {
	_, err := b.readPID()
	return err == nil
}

func (b *Blocker) readPID() (int, error) {
	data, err := os.ReadFile(b.PIDFile())
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(data))
	if !strings.HasSuffix(string(data), "\n") {
		return 0, errors.New("pid file is being written")
	}
	return strconv.Atoi(s)
}

// WaitStarted waits until the builder runs, in build id of s, and returns
// its pid. If the build ends first, it fails at once with the build's log.
func (b *Blocker) WaitStarted(t testing.TB, s Builds, id int64) int {
	t.Helper()
	var pid int
	WaitBuild(t, s, id, "the builder of "+b.Name+" to start", func(api.Build) bool {
		p, err := b.readPID()
		pid = p
		return err == nil
	})
	return pid
}

// Release lets the builder finish.
func (b *Blocker) Release(t testing.TB) {
	t.Helper()
	if err := b.release(); err != nil {
		t.Fatal(err)
	}
}

func (b *Blocker) release() error {
	f, err := os.OpenFile(b.ReleaseFile(), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// ProcessAlive reports whether pid is a live process (not a zombie).
func ProcessAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil {
		return !errors.Is(err, syscall.ESRCH)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !os.IsNotExist(err)
	}
	// The state follows the parenthesised command name.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// WaitTimeout bounds every WaitUntil: it only guards against a hang, it is
// not a performance expectation.
const WaitTimeout = 90 * time.Second

// WaitUntil polls cond until it is true, failing the test after WaitTimeout.
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(WaitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", WaitTimeout, what)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// HomeManagerFixture writes a stand-in for the home-manager flake and for
// nixpkgs, for building homeManagerModules offline. The flake's
// lib.homeManagerConfiguration { pkgs, modules } returns an
// activationPackage whose output is "modules: <count>" followed by the
// JSON of every module applied to { config, pkgs, lib }. It returns the
// flake reference (path:...) and a NIX_PATH value (nixpkgs=...).
func HomeManagerFixture(t testing.TB, nonce string) (flakeRef, nixPath string) {
	t.Helper()
	dir := t.TempDir()
	hm := filepath.Join(dir, "home-manager")
	nixpkgs := filepath.Join(dir, "nixpkgs")
	WriteFiles(t, hm, map[string]string{"flake.nix": fmt.Sprintf(`{
  description = "home-manager stand-in for Crystal Forge tests";
  outputs = { self }: {
    lib.homeManagerConfiguration = { pkgs, modules }:
      let applied = map (m: m { config = {}; inherit pkgs; lib = {}; }) modules;
      in {
        activationPackage = derivation {
          name = "cf-home-manager-fixture";
          system = builtins.currentSystem;
          nonce = %s;
          count = toString (builtins.length modules);
          modules = builtins.toJSON applied;
          builder = "/bin/sh";
          args = [ "-e" "-c" "echo \"modules: $count\" > $out; echo \"$modules\" >> $out" ];
          PATH = "/usr/bin:/bin";
        };
      };
  };
}
`, NixString(nonce))})
	WriteFiles(t, nixpkgs, map[string]string{"default.nix": "{ ... }: { }\n"})
	return "path:" + hm, "nixpkgs=" + nixpkgs
}
