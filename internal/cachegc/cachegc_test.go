package cachegc_test

import (
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/cachegc"
	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// fixture is a backend with narinfos and NARs whose fate is known.
type fixture struct {
	s     objstore.Store
	paths map[string]string // by short name
}

// put stores a narinfo for name referring to refs, with the NAR nar (its
// own when empty).
func (f *fixture) put(t *testing.T, name, nar string, refs ...string) {
	t.Helper()
	p := testsupport.RandomStorePath(name)
	f.paths[name] = p
	if nar == "" {
		nar = "nar/" + name + ".nar.zst"
		if err := f.s.Put(t.Context(), nar, strings.NewReader(name), int64(len(name)), "application/zstd"); err != nil {
			t.Fatal(err)
		}
	}
	ni := &narinfo.NarInfo{StorePath: p, URL: nar, Compression: "zstd", NarHash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", NarSize: 1}
	for _, r := range refs {
		ni.References = append(ni.References, f.paths[r])
	}
	text := ni.String()
	if err := f.s.Put(t.Context(), path.Base(p)[:32]+".narinfo", strings.NewReader(text), int64(len(text)), narinfo.ContentType); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) has(t *testing.T, key string) bool {
	t.Helper()
	_, err := f.s.Stat(t.Context(), key)
	if err != nil && !errors.Is(err, objstore.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func (f *fixture) narinfoKey(name string) string { return path.Base(f.paths[name])[:32] + ".narinfo" }

// build writes the common fixture: root → mid → leaf, a pinned path, an
// unreachable path sharing root's NAR, an unreachable path alone and an
// orphan NAR.
func build(t *testing.T, s objstore.Store) *fixture {
	f := &fixture{s: s, paths: map[string]string{}}
	f.put(t, "leaf", "")
	f.put(t, "mid", "", "leaf")
	f.put(t, "root", "", "mid", "root")
	f.put(t, "pinned", "")
	f.put(t, "shares-nar", "nar/root.nar.zst")
	f.put(t, "garbage", "", "leaf")
	if err := s.Put(t.Context(), "nar/orphan.nar.zst", strings.NewReader("x"), 1, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(t.Context(), "nix-cache-info", strings.NewReader("StoreDir: /nix/store\n"), 21, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := cachegc.Pin(t.Context(), s, f.paths["pinned"], "keep-me"); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestCollect(t *testing.T) {
	for name, open := range testsupport.StorageBackends() {
		t.Run(name, func(t *testing.T) {
			s := open(t)
			f := build(t, s)
			// Every object is older than the retention period.
			opts := cachegc.Options{Roots: []string{f.paths["root"]}, Retention: time.Hour, Now: time.Now().Add(2 * time.Hour)}

			var would []string
			dry := opts
			dry.DryRun = true
			dry.Deleted = func(i objstore.Info) { would = append(would, i.Key) }
			rep, err := cachegc.Collect(t.Context(), s, dry)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(would)
			want := []string{f.narinfoKey("garbage"), f.narinfoKey("shares-nar"), "nar/garbage.nar.zst", "nar/orphan.nar.zst"}
			slices.Sort(want)
			if !slices.Equal(would, want) {
				t.Fatalf("dry run would delete %v, want %v", would, want)
			}
			if rep.DeletedNarinfos != 2 || rep.DeletedNars != 2 || rep.Narinfos != 6 || rep.RootsInBackend != 2 {
				t.Errorf("dry run report %+v", rep)
			}
			for _, k := range want {
				if !f.has(t, k) {
					t.Fatalf("dry run deleted %s", k)
				}
			}

			var deleted []string
			opts.Deleted = func(i objstore.Info) { deleted = append(deleted, i.Key) }
			if _, err := cachegc.Collect(t.Context(), s, opts); err != nil {
				t.Fatal(err)
			}
			slices.Sort(deleted)
			if !slices.Equal(deleted, want) {
				t.Errorf("deleted %v, want %v", deleted, want)
			}
			for _, k := range want {
				if f.has(t, k) {
					t.Errorf("%s survived", k)
				}
			}
			// The closure of the root, the pin, the NAR still named by a kept
			// narinfo, and what is not a narinfo or NAR remain.
			for _, k := range []string{f.narinfoKey("root"), f.narinfoKey("mid"), f.narinfoKey("leaf"), f.narinfoKey("pinned"),
				"nar/root.nar.zst", "nar/mid.nar.zst", "nar/leaf.nar.zst", "nar/pinned.nar.zst", "nix-cache-info", "pins/keep-me"} {
				if !f.has(t, k) {
					t.Errorf("%s was deleted", k)
				}
			}

			// Unpinned, the pinned path goes at the next collection.
			if n, err := cachegc.Unpin(t.Context(), s, f.paths["pinned"]); err != nil || n != 1 {
				t.Fatalf("Unpin = %d, %v", n, err)
			}
			opts.Deleted = nil
			if _, err := cachegc.Collect(t.Context(), s, opts); err != nil {
				t.Fatal(err)
			}
			if f.has(t, f.narinfoKey("pinned")) || f.has(t, "nar/pinned.nar.zst") {
				t.Errorf("unpinned path survived")
			}
			if !f.has(t, f.narinfoKey("root")) {
				t.Errorf("root deleted")
			}
		})
	}
}

// TestRetention: objects younger than the retention period stay, and so do
// the closures of recent narinfos.
func TestRetention(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	s, err := objstore.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{s: s, paths: map[string]string{}}
	f.put(t, "old-dep", "")
	f.put(t, "old-alone", "")
	f.put(t, "recent", "", "old-dep")
	if err := s.Put(t.Context(), "nar/recent-orphan.nar.zst", strings.NewReader("x"), 1, ""); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	for _, k := range []string{f.narinfoKey("old-dep"), f.narinfoKey("old-alone"), "nar/old-dep.nar.zst", "nar/old-alone.nar.zst"} {
		if err := os.Chtimes(filepath.Join(dir, k), old, old); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cachegc.Collect(context.Background(), s, cachegc.Options{Retention: 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]bool{
		f.narinfoKey("recent"): true, "nar/recent.nar.zst": true, "nar/recent-orphan.nar.zst": true,
		f.narinfoKey("old-dep"): true, "nar/old-dep.nar.zst": true, // referenced by a recent path
		f.narinfoKey("old-alone"): false, "nar/old-alone.nar.zst": false,
	} {
		if got := f.has(t, k); got != want {
			t.Errorf("%s present = %v, want %v", k, got, want)
		}
	}
}

func TestPinErrors(t *testing.T) {
	s, err := objstore.OpenDir(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	p := testsupport.RandomStorePath("x")
	for _, tt := range []struct{ path, name string }{{"/etc/passwd", ""}, {"x", ""}, {p, "a/b"}, {p, "../x"}, {p, ".hidden"}} {
		if _, err := cachegc.Pin(t.Context(), s, tt.path, tt.name); err == nil {
			t.Errorf("Pin(%q, %q) succeeded", tt.path, tt.name)
		}
	}
	name, err := cachegc.Pin(t.Context(), s, p, "")
	if err != nil || name != path.Base(p) {
		t.Fatalf("Pin = %q, %v", name, err)
	}
	pins, err := cachegc.Pins(t.Context(), s)
	if err != nil || pins[name] != p {
		t.Fatalf("Pins = %v, %v", pins, err)
	}
	if n, err := cachegc.Unpin(t.Context(), s, "nope"); err != nil || n != 0 {
		t.Errorf("Unpin of an unknown pin = %d, %v", n, err)
	}
}
