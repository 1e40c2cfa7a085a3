package narinfo

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParse: whatever Parse accepts has the required fields, renders to a
// text that parses to the same value, and renders identically again.
func FuzzParse(f *testing.F) {
	f.Add(sample)
	f.Add(strings.ReplaceAll(sample, "\n", "\r\n"))
	f.Add("StorePath: /nix/store/a-b\nURL: nar/x.nar\nNarHash: sha256:x\nNarSize: 1\nReferences:\n")
	f.Add("StorePath: /nix/store/a-b\nURL: u\nNarHash: h\nDeriver: unknown-deriver\nFileSize: 0\nSig: \n")
	f.Add("StorePath: /nix/store/a-b\nURL: u\nNarHash: h\nNarSize: -1\n")
	f.Add("StorePath: /nix/store/a-b\nURL: u\nNarHash: h\nReferences: ../x a/b\n")
	f.Add("StorePath:x\nURL:y\nNarHash:z\nCA: \n")
	f.Add("no colon\n")
	f.Fuzz(func(t *testing.T, text string) {
		n, err := Parse(text)
		if err != nil {
			return
		}
		if n.StorePath == "" || n.URL == "" || n.NarHash == "" || n.Compression == "" {
			t.Fatalf("Parse accepted %q without a required field: %+v", text, n)
		}
		out := n.String()
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(%q) = %v; it came from String() of Parse(%q)", out, err, text)
		}
		if !reflect.DeepEqual(n, again) {
			t.Fatalf("round trip of %q:\n%#v\nbecame\n%#v", text, n, again)
		}
		if out2 := again.String(); out2 != out {
			t.Fatalf("String() not stable: %q then %q", out, out2)
		}
	})
}

// TestLongReferences: a References line longer than 64 KiB (a path with
// thousands of references) is read whole, and what follows it too.
func TestLongReferences(t *testing.T) {
	n := &NarInfo{StorePath: "/nix/store/npp6cg2pc803y1wjir09w53gzksfrjxq-hello", URL: "nar/x.nar", Compression: "none", NarHash: "sha256:x", NarSize: 1}
	for range 2000 {
		n.References = append(n.References, "/nix/store/0000000000000000000000000000000a-some-package-1.0")
	}
	n.Sigs = []string{"k:abc"}
	got, err := Parse(n.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.References) != 2000 || !reflect.DeepEqual(got.Sigs, n.Sigs) {
		t.Errorf("parsed %d references and signatures %q, want 2000 and %q", len(got.References), got.Sigs, n.Sigs)
	}
}

func TestParseRejectsNonBaseNames(t *testing.T) {
	for _, line := range []string{"References: a/b", "References: ..", "Deriver: ../x.drv", "Deriver: ."} {
		text := "StorePath: /nix/store/a-b\nURL: u\nNarHash: h\n" + line + "\n"
		if n, err := Parse(text); err == nil {
			t.Errorf("Parse accepted %q: %+v", line, n)
		}
	}
}
