// Package testsupport starts real external components, such as Nix, for integration tests.
package testsupport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

// nixConfig keeps Nix off the network: no substituters, so nothing ever
// waits on cache.nixos.org.
const nixConfig = "experimental-features = nix-command flakes\nsubstituters =\nsandbox = false"

// RequireNix skips the test when the Nix tools are not installed, and
// otherwise points Nix at an offline configuration and a private cache
// directory (so Nix's narinfo disk cache cannot answer for the server under
// test). It uses t.Setenv, so the test must not be parallel.
func RequireNix(t testing.TB) {
	t.Helper()
	for _, prog := range []string{"nix", "nix-store", "nix-build"} {
		testenv.LookPath(t, "`make test` installs nix-bin", prog)
	}
	requireNixBuilds(t)
	t.Setenv("NIX_CONFIG", nixConfig)
	t.Setenv("NIX_PATH", "")
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
}

// nixPreflight builds one trivial derivation with the tests' Nix settings,
// once per test binary. When Nix cannot build (no build users, no store,
// no database), every test that needs it fails at once with Nix's own
// words instead of each waiting for a build that will never happen.
var nixPreflight = sync.OnceValue(func() (err error) {
	dir, err := os.MkdirTemp("", "cf-nix-preflight-")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove the preflight's directory: %w", rerr))
		}
	}()
	file := filepath.Join(dir, "preflight.nix")
	expr := `derivation { name = "cf-preflight"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; }`
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("nix-build", "--no-out-link", file)
	cmd.Env = append(os.Environ(), "NIX_CONFIG="+nixConfig, "NIX_PATH=", "XDG_CACHE_HOME="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("nix-build of a trivial derivation failed (%v); Nix cannot build here. "+
			"On Debian, scripts/setup-nix.sh (run by `make test`) creates the build users and the store. Nix said:\n%s", err, stderr.Bytes())
	}
	if p := strings.TrimSpace(string(out)); !strings.HasPrefix(p, "/") {
		return fmt.Errorf("nix-build of a trivial derivation printed %q, not a store path", p)
	}
	return nil
})

// requireNixBuilds fails the test when the preflight build failed.
func requireNixBuilds(t testing.TB) {
	t.Helper()
	if err := nixPreflight(); err != nil {
		t.Fatal(err)
	}
}

// NixCommand runs a Nix program (args[0] is "nix", "nix-store", ...) and
// returns its combined stdout and stderr. On failure the error carries the
// command line, the exit status and the output.
func NixCommand(ctx context.Context, args ...string) (string, error) {
	return NixCommandEnv(ctx, nil, args...)
}

// NixCommandEnv is NixCommand with env ("KEY=value") added to the
// environment, e.g. a private XDG_CACHE_HOME: Nix 2.8 processes that share
// a narinfo disk cache can fail with "constraint failed" when they run at
// the same time.
func NixCommandEnv(ctx context.Context, env []string, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("NixCommand: no program")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// NixOutput runs a Nix program like NixCommand but returns only its
// stdout, for commands whose output is parsed (JSON, NARs, path lists).
// Stderr goes into the error.
func NixOutput(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, errors.New("NixOutput: no program")
	}
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// DumpNar returns the NAR serialisation of a store path as Nix writes it
// (nix-store --dump).
func DumpNar(t testing.TB, storePath string) []byte {
	t.Helper()
	out, err := NixOutput(t.Context(), "nix-store", "--dump", storePath)
	if err != nil {
		t.Fatalf("dump NAR: %v", err)
	}
	return out
}

// Files of the leaf path of a Closure, relative to the path.
const (
	LeafTextFile      = "share/hello.txt"
	LeafExecutable    = "bin/hello" // mode 0555 in the store
	LeafSymlink       = "lib/hello-link"
	LeafSymlinkTarget = "../share/hello.txt"
	LeafEmptyFile     = "share/empty"
	LeafLargeFile     = "share/large.txt" // `seq 1 500000`, about 3.4 MB
)

// closureNix builds three paths without nixpkgs or the network: leaf (files
// of every kind), middle (refers to leaf) and top (refers to both and to
// itself). nonce makes every derivation, and so every output, new.
const closureNix = `{ nonce }:
let
  mk = name: script: extra: derivation ({
    inherit name nonce;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-e" "-c" script ];
    PATH = "/usr/bin:/bin";
  } // extra);
  leaf = mk "cf-fixture-leaf" ''
    echo "crystal-forge-testsupport: built $name $nonce"
    mkdir -p $out/bin $out/share $out/lib
    echo "hello from the leaf $nonce" > $out/share/hello.txt
    printf '#!/bin/sh\necho hello\n' > $out/bin/hello
    chmod 0755 $out/bin/hello
    ln -s ../share/hello.txt $out/lib/hello-link
    : > $out/share/empty
    seq 1 500000 > $out/share/large.txt
  '' {};
  middle = mk "cf-fixture-middle" ''
    echo "crystal-forge-testsupport: built $name $nonce"
    mkdir -p $out/bin
    echo "$leaf" > $out/leaf-path
    ln -s $leaf/bin/hello $out/bin/hello
  '' { inherit leaf; };
  top = mk "cf-fixture-top" ''
    echo "crystal-forge-testsupport: built $name $nonce"
    mkdir -p $out
    printf '%s\n%s\n%s\n' "$leaf" "$middle" "$out" > $out/paths
  '' { inherit leaf middle; };
in [ leaf middle top ]
`

// Closure is a freshly built set of store paths that refer to each other.
type Closure struct {
	Leaf   string   // no references; see the Leaf* constants for its files
	Middle string   // refers to Leaf
	Top    string   // refers to Leaf, Middle and itself
	All    []string // Leaf, Middle, Top: dependencies first
	// Nonce is the random string that makes this closure unique.
	Nonce string
	// Derivers maps each path to the .drv that built it.
	Derivers map[string]string
}

// LogLine returns the line the builder of storePath (one of c.All) printed
// to stdout, which Nix keeps in the path's build log. It is unique to c.
func (c Closure) LogLine(storePath string) string {
	_, name, _ := strings.Cut(path.Base(storePath), "-")
	return "crystal-forge-testsupport: built " + name + " " + c.Nonce
}

// BuildClosure builds a new Closure in the system store with nix-build, and
// deletes it from the store when the test ends. Call RequireNix first.
func BuildClosure(t testing.TB) Closure {
	t.Helper()
	c, err := buildClosure(t.Context(), t.TempDir())
	if err != nil {
		t.Fatalf("build fixture closure: %v", err)
	}
	t.Cleanup(func() {
		// Each closure is a few MiB that nothing else refers to.
		paths := slices.Concat(c.All, slices.Collect(maps.Values(c.Derivers)))
		if _, err := NixCommand(context.Background(), append([]string{"nix-store", "--delete"}, paths...)...); err != nil {
			t.Logf("delete fixture closure: %v", err)
		}
	})
	return c
}

func buildClosure(ctx context.Context, dir string) (Closure, error) {
	nonce := make([]byte, 12)
	rand.Read(nonce)
	c := Closure{Nonce: hex.EncodeToString(nonce), Derivers: make(map[string]string)}
	file := filepath.Join(dir, "closure.nix")
	if err := os.WriteFile(file, []byte(closureNix), 0o644); err != nil {
		return c, fmt.Errorf("write %s: %w", file, err)
	}
	out, err := NixOutput(ctx, "nix-build", "--no-out-link", "--argstr", "nonce", c.Nonce, file)
	if err != nil {
		return c, err
	}
	for _, p := range strings.Fields(string(out)) {
		switch {
		case strings.HasSuffix(p, "-cf-fixture-leaf"):
			c.Leaf = p
		case strings.HasSuffix(p, "-cf-fixture-middle"):
			c.Middle = p
		case strings.HasSuffix(p, "-cf-fixture-top"):
			c.Top = p
		}
	}
	if c.Leaf == "" || c.Middle == "" || c.Top == "" {
		return c, fmt.Errorf("nix-build printed %q, want the leaf, middle and top paths", out)
	}
	c.All = []string{c.Leaf, c.Middle, c.Top}
	out, err = NixOutput(ctx, append([]string{"nix-store", "--query", "--deriver"}, c.All...)...)
	if err != nil {
		return c, err
	}
	drvs := strings.Fields(string(out))
	if len(drvs) != len(c.All) {
		return c, fmt.Errorf("nix-store --query --deriver printed %q, want %d derivations", out, len(c.All))
	}
	for i, p := range c.All {
		c.Derivers[p] = drvs[i]
	}
	return c, nil
}

// NewCacheKey writes a new signing key with a unique name into a temporary
// file and returns the file and the public key ("name:base64").
func NewCacheKey(t testing.TB) (secretKeyFile, publicKey string) {
	t.Helper()
	id := make([]byte, 4)
	rand.Read(id)
	k, err := signing.Generate("cf-test-"+hex.EncodeToString(id), nil)
	if err != nil {
		t.Fatalf("generate cache key: %v", err)
	}
	secretKeyFile = filepath.Join(t.TempDir(), "cache-key")
	if err := os.WriteFile(secretKeyFile, []byte(k.String()+"\n"), 0o600); err != nil {
		t.Fatalf("write cache key: %v", err)
	}
	return secretKeyFile, k.Public().String()
}

// NewLocalStore returns the root of a fresh, empty local Nix store under
// t.TempDir(), for `nix copy --to <root>` and `nix ... --store <root>`; its
// paths end up under <root>/nix/store. Nix makes store files read-only, so
// the directory is made writable again before the test's cleanup removes it.
func NewLocalStore(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "store")
	t.Cleanup(func() {
		err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return os.Chmod(p, 0o755)
			}
			return nil
		})
		// A test that never used the store leaves no root.
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("make %s writable for removal: %v", root, err)
		}
	})
	return root
}
