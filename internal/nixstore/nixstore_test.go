package nixstore

import (
	"context"
	"crypto/sha256"
	"database/sql"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
)

//go:embed testdata/schema.sql
var schema string

// fakeHash returns a deterministic valid store hash.
func fakeHash(i int) string {
	sum := sha256.Sum256([]byte(fmt.Sprint(i)))
	return nixbase32.Encode(sum[:20])
}

// makeDB writes a database with Nix's schema and n paths; path i refers to
// path i-1 and to itself.
func makeDB(t testing.TB, n int) (dbPath string, paths []string) {
	t.Helper()
	dbPath = filepath.Join(t.TempDir(), "db.sqlite")
	db, err := sql.Open("sqlite", dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	if _, err := db.Exec(schema + "PRAGMA journal_mode=WAL;"); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		p := "/nix/store/" + fakeHash(i) + "-pkg-" + fmt.Sprint(i)
		paths = append(paths, p)
		if _, err := tx.Exec(`INSERT INTO ValidPaths (id, path, hash, registrationTime, deriver, narSize, sigs) VALUES (?, ?, ?, 1, ?, ?, ?)`,
			i+1, p, "sha256:10551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f6", "/nix/store/"+fakeHash(-i)+"-pkg.drv", 120+i, "a:x b:y"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO Refs VALUES (?, ?)`, i+1, i+1); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			if _, err := tx.Exec(`INSERT INTO Refs VALUES (?, ?)`, i+1, i); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return dbPath, paths
}

func openTest(t testing.TB, dbPath string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{DBPath: dbPath, LogDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func TestQueryByHash(t *testing.T) {
	dbPath, paths := makeDB(t, 5)
	s := openTest(t, dbPath)
	ctx := context.Background()

	info, err := s.QueryByHash(ctx, fakeHash(3))
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != paths[3] {
		t.Errorf("Path = %q, want %q", info.Path, paths[3])
	}
	if info.NarHash != "sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h" {
		t.Errorf("NarHash = %q, want it in nix32", info.NarHash)
	}
	if info.NarSize != 123 || len(info.Sigs) != 2 || info.Deriver == "" {
		t.Errorf("unexpected info %+v", info)
	}
	want := []string{paths[2], paths[3]}
	if paths[2] > paths[3] {
		want = []string{paths[3], paths[2]}
	}
	if fmt.Sprint(info.References) != fmt.Sprint(want) {
		t.Errorf("References = %v, want %v", info.References, want)
	}

	if _, err := s.QueryByHash(ctx, fakeHash(99)); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown hash: err = %v, want ErrNotFound", err)
	}
}

func TestOpenMissingDB(t *testing.T) {
	_, err := Open(context.Background(), Config{DBPath: filepath.Join(t.TempDir(), "nope", "db.sqlite")})
	if err == nil {
		t.Fatal("Open of a missing database succeeded")
	}
	// One line that says what to do, not SQLite's "unable to open database file".
	for _, want := range []string{"does not exist", "install-deps.sh", "--nix-db"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "(14)") {
		t.Errorf("error %q is not one plain line", err)
	}
}

func TestNormaliseHash(t *testing.T) {
	const want = "sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h"
	tests := []struct {
		in      string
		wantErr bool
	}{
		{"sha256:10551daed7fa467d0b58826e7eb9a0f2af7d693de319f2ef775fffcda244b9f6", false},
		{"sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h", false},
		{"sha256:EFUdrtf6Rn0LWIJufrmg8q99aT3jGfLvd1//zaJEufY=", false},
		{"md5:abc", true},
		{"sha256:zz", true},
		{"nonsense", true},
	}
	for _, tt := range tests {
		got, err := NormaliseHash(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("NormaliseHash(%q) = %q, want error", tt.in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("NormaliseHash(%q) = %q, %v; want %q", tt.in, got, err, want)
		}
	}
}

func TestParseHashPart(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"npp6cg2pc803y1wjir09w53gzksfrjxq-hello-cf", true},
		{"npp6cg2pc803y1wjir09w53gzksfrjxq-hello_1.0+x?=", true},
		{"npp6cg2pc803y1wjir09w53gzksfrjxq-", false},
		{"npp6cg2pc803y1wjir09w53gzksfrjxq", false},
		{"npp6cg2pc803y1wjir09w53gzksfrjxq-.hidden", false},
		{"npp6cg2pc803y1wjir09w53gzksfrjxq-a/b", false},
		{"npp6cg2pc803y1wjir09w53gzksfrjxq-..", false},
		{"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x", false},
	}
	for _, tt := range tests {
		if _, got := ParseHashPart(tt.in); got != tt.want {
			t.Errorf("ParseHashPart(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestLogPath(t *testing.T) {
	logDir := t.TempDir()
	s, err := Open(context.Background(), Config{DBPath: mustDB(t), LogDir: logDir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	drv := "y6g3xzs7g0pbnxn5z180zq8c8dzfk5z4-hello-cf.drv"
	if _, _, err := s.LogPath(drv); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing log: err = %v", err)
	}
	dir := filepath.Join(logDir, "drvs", "y6")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, drv[2:]+".bz2"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	file, bz, err := s.LogPath(drv)
	if err != nil || !bz || file != filepath.Join(dir, drv[2:]+".bz2") {
		t.Errorf("LogPath = %q, %v, %v", file, bz, err)
	}
	for _, bad := range []string{"../../etc/passwd", "y6g3xzs7g0pbnxn5z180zq8c8dzfk5z4-hello-cf", "y6/../../x.drv"} {
		if _, _, err := s.LogPath(bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("LogPath(%q): err = %v, want ErrNotFound", bad, err)
		}
	}
}

func mustDB(t *testing.T) string {
	p, _ := makeDB(t, 1)
	return p
}

// BenchmarkQueryByHash shows that a lookup costs the same in a small and a
// large store: compare ns/op across the sub-benchmarks.
func BenchmarkQueryByHash(b *testing.B) {
	for _, n := range []int{100, 100_000} {
		b.Run(fmt.Sprintf("paths=%d", n), func(b *testing.B) {
			dbPath, _ := makeDB(b, n)
			s := openTest(b, dbPath)
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if _, err := s.QueryByHash(ctx, fakeHash(i%n)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
