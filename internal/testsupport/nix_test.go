package testsupport

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// TestBuildClosure checks that the fixture is what the integration tests
// rely on: fresh paths, the expected references and files, and build logs.
func TestBuildClosure(t *testing.T) {
	RequireNix(t)
	c := BuildClosure(t)
	again := BuildClosure(t)
	if c.Top == again.Top || c.Leaf == again.Leaf {
		t.Errorf("two builds gave the same paths %s, %s: the nonce does not make them unique", c.Top, c.Leaf)
	}

	refs := map[string][]string{
		c.Leaf:   nil,
		c.Middle: {c.Leaf},
		c.Top:    {c.Leaf, c.Middle, c.Top},
	}
	for p, want := range refs {
		out, err := NixOutput(t.Context(), "nix-store", "--query", "--references", p)
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Fields(string(out))
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("references of %s = %v, want %v", p, got, want)
		}
	}

	leaf := func(rel string) os.FileInfo {
		t.Helper()
		fi, err := os.Lstat(filepath.Join(c.Leaf, rel))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	if fi := leaf(LeafExecutable); !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		t.Errorf("%s has mode %v, want an executable file", LeafExecutable, fi.Mode())
	}
	if fi := leaf(LeafTextFile); fi.Mode()&0o111 != 0 {
		t.Errorf("%s has mode %v, want a non-executable file", LeafTextFile, fi.Mode())
	}
	if target, err := os.Readlink(filepath.Join(c.Leaf, LeafSymlink)); err != nil || target != LeafSymlinkTarget {
		t.Errorf("%s -> %q (%v), want %q", LeafSymlink, target, err, LeafSymlinkTarget)
	}
	if fi := leaf(LeafEmptyFile); !fi.Mode().IsRegular() || fi.Size() != 0 {
		t.Errorf("%s: mode %v size %d, want an empty file", LeafEmptyFile, fi.Mode(), fi.Size())
	}
	if fi := leaf(LeafLargeFile); fi.Size() < 2<<20 {
		t.Errorf("%s is %d bytes, want a few MiB", LeafLargeFile, fi.Size())
	}

	for _, p := range c.All {
		if !strings.HasSuffix(c.Derivers[p], ".drv") {
			t.Errorf("deriver of %s = %q", p, c.Derivers[p])
		}
		log, err := NixCommand(t.Context(), "nix-store", "--read-log", p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(log, c.LogLine(p)) {
			t.Errorf("build log of %s = %q, want it to contain %q", p, log, c.LogLine(p))
		}
	}
}

func TestNewCacheKey(t *testing.T) {
	file, pub := NewCacheKey(t)
	k, err := signing.LoadSecretKeyFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if got := k.Public().String(); got != pub {
		t.Errorf("public key %q, want %q", got, pub)
	}
	if _, other := NewCacheKey(t); other == pub {
		t.Error("two keys are the same")
	}
}

func TestNixCommandError(t *testing.T) {
	RequireNix(t)
	_, err := NixCommand(t.Context(), "nix-store", "--no-such-option")
	if err == nil || !strings.Contains(err.Error(), "nix-store --no-such-option") || !strings.Contains(err.Error(), "no-such-option") {
		t.Errorf("error = %v, want the command line and Nix's message", err)
	}
}
