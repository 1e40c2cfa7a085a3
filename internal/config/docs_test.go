package config

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// tomlBlockRE finds fenced ```toml blocks, also indented ones (in lists).
var tomlBlockRE = regexp.MustCompile("(?ms)^([ \t]*)```toml\n(.*?)^[ \t]*```")

// TestDocExamplesLoad loads every TOML example in README.md and docs/*.md:
// what a user copies from the documentation must start a server.
func TestDocExamplesLoad(t *testing.T) {
	root := filepath.Join("..", "..")
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join(root, "README.md"))
	total := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range tomlBlockRE.FindAllStringSubmatch(string(b), -1) {
			total++
			indent, body := m[1], m[2]
			var lines []string
			for _, l := range strings.Split(body, "\n") {
				lines = append(lines, strings.TrimPrefix(l, indent))
			}
			t.Run(fmt.Sprintf("%s#%d", filepath.Base(f), i), func(t *testing.T) {
				if _, err := Load(write(t, strings.Join(lines, "\n")), env(nil)); err != nil {
					t.Errorf("example %d of %s does not load: %v\n%s", i, f, err, body)
				}
			})
		}
	}
	// The glob found the documentation, not nothing.
	if total < 2 {
		t.Errorf("found %d TOML examples in %v, want the ones in docs/configuration.md and docs/fleet.md", total, files)
	}
}
