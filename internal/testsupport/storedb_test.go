package testsupport

import (
	"database/sql"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/nar"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
)

// TestWriteStoreDB checks that nixstore reads back everything registered,
// and that created files are where the Config says, with their NAR's size.
func TestWriteStoreDB(t *testing.T) {
	leaf, top, ghost := RandomStorePath("leaf"), RandomStorePath("top"), RandomStorePath("ghost")
	drv := RandomStorePath("top.drv")
	const hash = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
	cfg := WriteStoreDB(t, StoreDB{CreateFiles: true, Paths: []StorePath{
		{Path: leaf, Files: map[string]string{"share/hello.txt": "hello\n"}},
		{Path: top, NarHash: hash, NarSize: 4242, References: []string{leaf, top}, Deriver: drv,
			Sigs: []string{"k1:c2ln", "k2:c2ln"}, CA: "fixed:r:sha256:abc"},
	}})
	st, err := nixstore.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	CloseAtCleanup(t, st)

	hashOf := func(p string) string {
		h, ok := nixstore.ParseHashPart(filepath.Base(p))
		if !ok {
			t.Fatalf("bad path %s", p)
		}
		return h
	}
	info, err := st.QueryByHash(t.Context(), hashOf(top))
	if err != nil {
		t.Fatal(err)
	}
	wantRefs := []string{leaf, top}
	slices.Sort(wantRefs)
	if info.Path != top || info.NarHash != hash || info.NarSize != 4242 || info.Deriver != drv || info.CA != "fixed:r:sha256:abc" ||
		!slices.Equal(info.Sigs, []string{"k1:c2ln", "k2:c2ln"}) || !slices.Equal(info.References, wantRefs) {
		t.Errorf("top = %+v", info)
	}

	info, err = st.QueryByHash(t.Context(), hashOf(leaf))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(st.RealPath(leaf), "share/hello.txt"))
	if err != nil || string(data) != "hello\n" {
		t.Fatalf("leaf's file = %q, %v", data, err)
	}
	size, err := nar.Size(st.RealPath(leaf))
	if err != nil {
		t.Fatal(err)
	}
	if info.NarSize != uint64(size) || info.References != nil || !strings.HasPrefix(info.NarHash, "sha256:") || len(info.NarHash) != len(hash) {
		t.Errorf("leaf = %+v, want no references and the NAR's size %d", info, size)
	}

	if _, err := st.QueryByHash(t.Context(), hashOf(ghost)); !errors.Is(err, nixstore.ErrNotFound) {
		t.Errorf("unregistered path: %v, want ErrNotFound", err)
	}
}

func TestWriteStoreDBErrors(t *testing.T) {
	p := RandomStorePath("p")
	for _, tc := range []struct {
		what string
		db   StoreDB
		want string
	}{
		{"unregistered reference", StoreDB{Paths: []StorePath{{Path: p, References: []string{RandomStorePath("q")}}}}, "not registered"},
		{"path outside the store", StoreDB{Paths: []StorePath{{Path: "/tmp/x"}}}, "not a store path"},
		{"path in another store", StoreDB{StoreDir: "/other/store", Paths: []StorePath{{Path: p}}}, "not a store path"},
		{"malformed hash", StoreDB{Paths: []StorePath{{Path: p, NarHash: "md5:abc"}}}, "unsupported hash"},
		{"registered twice", StoreDB{Paths: []StorePath{{Path: p}, {Path: p}}}, "UNIQUE"},
		{"file outside the path", StoreDB{CreateFiles: true, Paths: []StorePath{{Path: p, Files: map[string]string{"../x": ""}}}}, "outside"},
	} {
		dir := t.TempDir()
		cfg := nixstore.Config{StoreDir: tc.db.StoreDir, RealStoreDir: dir, DBPath: filepath.Join(dir, "db.sqlite")}
		if cfg.StoreDir == "" {
			cfg.StoreDir = "/nix/store"
		}
		if err := writeStoreDB(cfg, tc.db); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.what, err, tc.want)
		}
	}
}

// TestStoreDBSchema checks that nixschema.sql is the schema of the system
// store's database, which Nix created.
func TestStoreDBSchema(t *testing.T) {
	const system = "/nix/var/nix/db/db.sqlite"
	if _, err := os.Stat(system); err != nil {
		t.Skipf("no system Nix store database to compare with: %v", err)
	}
	cfg := WriteStoreDB(t, StoreDB{})
	want, got := schemaOf(t, system), schemaOf(t, cfg.DBPath)
	if !slices.Equal(got, want) {
		t.Errorf("nixschema.sql creates\n%s\n\nNix created\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func schemaOf(t *testing.T, file string) []string {
	t.Helper()
	dsn := (&url.URL{Scheme: "file", Path: file, RawQuery: "mode=ro&_pragma=busy_timeout(10000)"}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			t.Errorf("close %s: %v", file, err)
		}
	}()
	rows, err := db.QueryContext(t.Context(), `SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name != 'sqlite_sequence' ORDER BY name`)
	if err != nil {
		t.Fatalf("schema of %s: %v", file, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
