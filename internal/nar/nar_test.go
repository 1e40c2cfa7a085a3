package nar

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

// makeTree builds a tree with every node type NAR knows, including a file
// large enough to take the sendfile path and names that sort byte-wise.
func makeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(root, "empty"), 0o755))
	must(os.WriteFile(filepath.Join(root, "bin", "tool"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(root, "Zeta"), []byte("capital sorts first"), 0o644))
	must(os.WriteFile(filepath.Join(root, "exactly8"), []byte("12345678"), 0o644))
	must(os.WriteFile(filepath.Join(root, "zero"), nil, 0o644))
	big := make([]byte, 3*sendfileMin+13)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	must(os.WriteFile(filepath.Join(root, "big.bin"), big, 0o644))
	must(os.Symlink("bin/tool", filepath.Join(root, "link")))
	return root
}

func dump(t *testing.T, path string) []byte {
	t.Helper()
	var b bytes.Buffer
	n, err := Dump(&b, path)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(b.Len()) {
		t.Fatalf("Dump reported %d bytes, wrote %d", n, b.Len())
	}
	return b.Bytes()
}

func TestDumpMatchesNix(t *testing.T) {
	nixStore := testenv.LookPath(t, "`make test` installs nix-bin; without it there is no NAR of Nix's own to compare with", "nix-store")
	for _, sub := range []string{"", "bin/tool", "link", "zero", "empty"} {
		root := makeTree(t)
		p := filepath.Join(root, sub)
		want, err := exec.Command(nixStore, "--dump", p).Output()
		if err != nil {
			t.Fatalf("nix-store --dump %s: %v", p, err)
		}
		if got := dump(t, p); !bytes.Equal(got, want) {
			t.Errorf("%s: NAR differs from nix-store --dump (%d vs %d bytes)", sub, len(got), len(want))
		}
	}
}

func TestSize(t *testing.T) {
	root := makeTree(t)
	n, err := Size(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(len(dump(t, root))); n != want {
		t.Errorf("Size = %d, want %d", n, want)
	}
}

func TestDumpRange(t *testing.T) {
	root := makeTree(t)
	full := dump(t, root)
	size := int64(len(full))
	big := int64(bytes.Index(full, []byte("big.bin")))
	tests := []struct{ off, length int64 }{
		{0, -1}, {0, 0}, {0, 1}, {1, 7}, {7, 9}, {size - 1, -1}, {size - 1, 1},
		{size, -1}, {100, 1000}, {big, sendfileMin * 2}, {big + 200, -1},
		{big + sendfileMin, 5}, {size - 300, 299},
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 50 {
		off := r.Int64N(size)
		tests = append(tests, struct{ off, length int64 }{off, r.Int64N(size - off + 1)})
	}
	for _, tt := range tests {
		var b bytes.Buffer
		n, err := DumpRange(&b, root, tt.off, tt.length)
		if err != nil {
			t.Fatalf("DumpRange(%d, %d): %v", tt.off, tt.length, err)
		}
		end := size
		if tt.length >= 0 {
			end = tt.off + tt.length
		}
		want := full[tt.off:end]
		if !bytes.Equal(b.Bytes(), want) || n != int64(len(want)) {
			t.Errorf("DumpRange(%d, %d) = %d bytes (reported %d), want %d", tt.off, tt.length, b.Len(), n, len(want))
		}
	}
}

func TestListing(t *testing.T) {
	root := makeTree(t)
	full := dump(t, root)
	l, err := List(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"big.bin", "Zeta", "exactly8", "zero"} {
		e := l.Root.Entries[name]
		if e == nil || e.Type != "regular" || e.NarOffset == nil {
			t.Fatalf("%s: bad entry %+v", name, e)
		}
		content, _ := os.ReadFile(filepath.Join(root, name))
		if got := full[*e.NarOffset : *e.NarOffset+*e.Size]; !bytes.Equal(got, content) {
			t.Errorf("%s: narOffset %d does not point at the file's contents", name, *e.NarOffset)
		}
	}
	tool := l.Root.Entries["bin"].Entries["tool"]
	if !tool.Executable {
		t.Error("bin/tool not marked executable")
	}
	js, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"version":1`, `"link":{"type":"symlink","target":"bin/tool"}`, `"empty":{"type":"directory","entries":{}}`, `"executable":true`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("listing JSON lacks %s:\n%s", want, js)
		}
	}
}

func TestUnsupportedType(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "fifo")
	if err := exec.Command("mkfifo", sock).Run(); err != nil {
		t.Skip("mkfifo unavailable")
	}
	if _, err := Dump(&bytes.Buffer{}, dir); err == nil || !strings.Contains(err.Error(), "unsupported file type") {
		t.Errorf("Dump of a fifo: err = %v", err)
	}
}
