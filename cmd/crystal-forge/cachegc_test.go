package main

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/testsupport"
)

// TestCacheGCCommand runs `crystal-forge cache gc|pin|unpin|pins` on a
// directory backend with the roots from a server database.
func TestCacheGCCommand(t *testing.T) {
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "cache")
	storage := "dir://" + storeDir
	built := testsupport.RandomStorePath("built")
	garbage := testsupport.RandomStorePath("garbage")
	old := time.Now().Add(-1000 * time.Hour)
	if err := os.MkdirAll(filepath.Join(storeDir, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{built, garbage} {
		h := path.Base(p)[:32]
		ni := &narinfo.NarInfo{StorePath: p, URL: "nar/" + h + ".nar", Compression: "none", NarHash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", NarSize: 1}
		for key, body := range map[string]string{h + ".narinfo": ni.String(), "nar/" + h + ".nar": "x"} {
			f := filepath.Join(storeDir, key)
			if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(f, old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The server's database: built is the newest output of a package.
	dbFile := filepath.Join(dir, "crystal-forge.db")
	d, err := db.Open(t.Context(), dbFile)
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := d.CreateBuild(t.Context(), "repo", "api", dir)
	rid, _ := d.StartResult(t.Context(), b.ID, "built", "package", time.Now())
	if err := d.FinishResult(t.Context(), rid, db.ResultSuccess, "", []string{built}, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	cf := func(wantCode int, args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), args, &stdout, &stderr); code != wantCode {
			t.Fatalf("crystal-forge %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, wantCode, stdout.String(), stderr.String())
		}
		return stdout.String() + stderr.String()
	}
	exists := func(p string) bool {
		_, err := os.Stat(filepath.Join(storeDir, path.Base(p)[:32]+".narinfo"))
		return err == nil
	}
	if out := cf(1, "cache", "gc", "--storage", storage, "--db", filepath.Join(dir, "nope.db")); !strings.Contains(out, "does not exist: pass --db") {
		t.Errorf("gc without a database: %s", out)
	}
	if out := cf(1, "cache", "gc", "--db", dbFile); !strings.Contains(out, "--storage is required") {
		t.Errorf("gc without storage: %s", out)
	}
	out := cf(0, "cache", "gc", "--storage", storage, "--db", dbFile, "--dry-run")
	if !strings.Contains(out, "would delete "+path.Base(garbage)[:32]+".narinfo") || strings.Contains(out, path.Base(built)[:32]) || !exists(garbage) {
		t.Errorf("dry run:\n%s", out)
	}
	if out := cf(0, "cache", "pin", "--storage", storage, "--name", "keep", garbage); !strings.Contains(out, "pinned "+garbage+" as keep") {
		t.Errorf("pin: %s", out)
	}
	if out := cf(0, "cache", "pins", "--storage", storage); !strings.Contains(out, "keep\t"+garbage) {
		t.Errorf("pins: %s", out)
	}
	cf(0, "cache", "gc", "--storage", storage, "--db", dbFile)
	if !exists(garbage) || !exists(built) {
		t.Fatalf("gc deleted a pinned or built path")
	}
	cf(0, "cache", "unpin", "--storage", storage, "keep")
	if out := cf(1, "cache", "unpin", "--storage", storage, "keep"); !strings.Contains(out, "no pin named keep") {
		t.Errorf("second unpin: %s", out)
	}
	out = cf(0, "cache", "gc", "--storage", storage, "--db", dbFile)
	if exists(garbage) || !exists(built) || !strings.Contains(out, "deleted 1 narinfos and 1 NARs") {
		t.Errorf("gc after unpin: garbage present %v, built present %v\n%s", exists(garbage), exists(built), out)
	}
	// --no-db: only pins and recent paths are kept; built is old.
	cf(0, "cache", "gc", "--storage", storage, "--no-db")
	if exists(built) {
		t.Errorf("gc --no-db kept an old, unpinned path")
	}
}
