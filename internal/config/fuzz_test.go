package config

import (
	"net/url"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidName: a valid repository name is one URL path segment as is, and
// one plain file name under the data directory (builds/<name>,
// gcroots/<name>, logs/<name>.log): nothing it could escape.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"nix-terminal", "a", "A.b_c-1", "", "-x", ".x", "a/b", "a..b", "..", ".", "a.", "a b", "a\x00", "ä", "a%2fb", "a\\b", strings.Repeat("a", 64), strings.Repeat("a", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidName(s) {
			return
		}
		if len(s) == 0 || len(s) > 64 || s == "." || s == ".." || s[0] == '.' || s[0] == '-' || strings.Contains(s, "..") {
			t.Fatalf("ValidName(%q) accepted a name that is empty, too long or dot-led", s)
		}
		if esc := url.PathEscape(s); esc != s {
			t.Fatalf("ValidName(%q): it is escaped in a URL as %q", s, esc)
		}
		const dir = "/var/lib/crystal-forge/builds"
		for _, file := range []string{s, s + ".log", "test-home-" + s + ".nix"} {
			p := filepath.Join(dir, file)
			if filepath.Dir(p) != dir || filepath.Base(p) != file {
				t.Fatalf("ValidName(%q): %q is not a file directly in %s", s, p, dir)
			}
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x21 || c > 0x7e || strings.IndexByte(`/\%?#"'$:;`, c) >= 0 {
				t.Fatalf("ValidName(%q) accepted byte %q", s, c)
			}
		}
	})
}
