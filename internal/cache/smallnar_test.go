package cache

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/nar"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
)

func smallEntry(t *testing.T, content string) *pathEntry {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "p")
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "x"), []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	n, err := nar.Size(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &pathEntry{info: &nixstore.PathInfo{Path: "/nix/store/x", NarSize: uint64(n)}, real: dir}
}

func TestSmallNarBudget(t *testing.T) {
	e := smallEntry(t, "hello")
	size := int64(e.info.NarSize)
	var want bytes.Buffer
	if _, err := nar.Dump(&want, e.real); err != nil {
		t.Fatal(err)
	}

	s := &Server{smallNars: &smallNars{budget: size}}
	got := s.smallNar(e)
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("kept NAR differs from the serialised one")
	}
	if s.smallNars.used.Load() != size {
		t.Errorf("used = %d, want %d", s.smallNars.used.Load(), size)
	}
	if again := s.smallNar(e); &again[0] != &got[0] || s.smallNars.used.Load() != size {
		t.Error("second use serialised again or counted twice")
	}

	// The budget is spent: another path streams instead.
	other := smallEntry(t, "world")
	if s.smallNar(other) != nil || s.smallNars.used.Load() != size {
		t.Error("kept a NAR beyond the budget")
	}

	// Eviction gives the memory back, once.
	s.smallNars.release(e)
	s.smallNars.release(e)
	if s.smallNars.used.Load() != 0 {
		t.Errorf("after release used = %d, want 0", s.smallNars.used.Load())
	}

	// An entry evicted before its NAR was kept releases it at once.
	other.evicted.Store(true)
	if s.smallNar(other) == nil || s.smallNars.used.Load() != 0 {
		t.Errorf("evicted entry: used = %d, want 0", s.smallNars.used.Load())
	}

	// A path whose size changed on disk is not kept (and not counted).
	changed := smallEntry(t, "abc")
	if err := os.WriteFile(filepath.Join(changed.real, "bin", "x"), []byte("a longer content"), 0o755); err != nil {
		t.Fatal(err)
	}
	if s.smallNar(changed) != nil || s.smallNars.used.Load() != 0 {
		t.Error("kept a NAR whose size disagrees with the database")
	}

	// Too big for memory.
	big := &pathEntry{info: &nixstore.PathInfo{NarSize: smallNarMax + 1}}
	if s.smallNar(big) != nil {
		t.Error("kept a NAR over smallNarMax")
	}
}

func TestNarinfoCacheEvictionReleases(t *testing.T) {
	var released []*pathEntry
	c := newNarinfoCache(2, func(e *pathEntry) { released = append(released, e) })
	a, b, d := &pathEntry{}, &pathEntry{}, &pathEntry{}
	c.put("a", a)
	c.put("b", b)
	c.put("d", d) // evicts a or b
	c.drop("d")
	if len(released) != 2 || !released[1].evicted.Load() || released[1] != d {
		t.Fatalf("released %d entries, want the evicted one and the dropped one", len(released))
	}
	present := "a"
	if c.get("a") == nil {
		present = "b"
	}
	c.put(present, &pathEntry{}) // replacing an entry releases the old one
	if len(released) != 3 {
		t.Errorf("replacing an entry did not release the old one")
	}
}
