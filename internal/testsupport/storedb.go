package testsupport

// A Nix store database written by the test, for tests of code that only
// asks "is this path valid, with what metadata" (nixstore.Store): they run
// without Nix installed. Tests of what Nix itself does (building, nix copy)
// keep using the real store (RequireNix, BuildClosure).

import (
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/nar"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

//go:embed nixschema.sql
var nixSchema string

// StorePath is a valid path for WriteStoreDB to register.
type StorePath struct {
	Path string // full store path, under the database's store directory
	// NarHash is "sha256:<nix32>". Empty: the hash of the NAR of Files when
	// the files are created, else a well-formed hash of Path.
	NarHash string
	// NarSize is the NAR's size; 0 with created files: the real NAR's size.
	NarSize uint64
	// References are full store paths; each must be registered in the same
	// database (as Nix requires), and a path may refer to itself.
	References []string
	Deriver    string
	Sigs       []string
	CA         string
	// Files are the path's files when the database's files are created:
	// relative name → contents. None makes the path an empty directory.
	Files map[string]string
}

// StoreDB configures WriteStoreDB.
type StoreDB struct {
	// StoreDir is the logical store directory of the paths; default /nix/store.
	StoreDir string
	Paths    []StorePath
	// CreateFiles creates every path, with its Files, under a new temporary
	// real store directory (nixstore.Config.RealStoreDir).
	CreateFiles bool
}

// WriteStoreDB writes a db.sqlite with Nix 2.8's schema into a temporary
// directory, registers the paths in it the way Nix does (ValidPaths and
// Refs), and returns a nixstore.Config for it. The log directory is a new,
// empty temporary one. Without CreateFiles, RealStoreDir is a temporary
// directory too, so nothing reads the system store by mistake.
func WriteStoreDB(t testing.TB, s StoreDB) nixstore.Config {
	t.Helper()
	dir := t.TempDir()
	cfg := nixstore.Config{
		StoreDir:     s.StoreDir,
		RealStoreDir: filepath.Join(dir, "store"),
		DBPath:       filepath.Join(dir, "db", "db.sqlite"),
		LogDir:       filepath.Join(dir, "log"),
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = "/nix/store"
	}
	for _, d := range []string{cfg.RealStoreDir, filepath.Dir(cfg.DBPath), cfg.LogDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("write store database: %v", err)
		}
	}
	if err := writeStoreDB(cfg, s); err != nil {
		t.Fatalf("write store database %s: %v", cfg.DBPath, err)
	}
	return cfg
}

func writeStoreDB(cfg nixstore.Config, s StoreDB) (err error) {
	paths := make([]StorePath, len(s.Paths))
	copy(paths, s.Paths)
	for i := range paths {
		p := &paths[i]
		name, ok := strings.CutPrefix(p.Path, cfg.StoreDir+"/")
		if _, valid := nixstore.ParseHashPart(name); !ok || !valid {
			return fmt.Errorf("%q is not a store path under %s", p.Path, cfg.StoreDir)
		}
		if s.CreateFiles {
			if err := createStoreFiles(filepath.Join(cfg.RealStoreDir, name), p); err != nil {
				return err
			}
		}
		if p.NarHash == "" {
			sum := sha256.Sum256([]byte(p.Path))
			p.NarHash = "sha256:" + nixbase32.Encode(sum[:])
		}
		if _, err := nixstore.NormaliseHash(p.NarHash); err != nil {
			return fmt.Errorf("%s: %w", p.Path, err)
		}
	}

	db, err := sql.Open("sqlite", cfg.DBPath)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := db.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("close %s: %w", cfg.DBPath, cerr))
		}
	}()
	// Nix keeps its database in WAL mode; readers rely on that.
	if _, err := db.Exec(nixSchema + "PRAGMA journal_mode=WAL;"); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer func() {
		// After Commit, Rollback only reports that the transaction is done.
		if rerr := tx.Rollback(); !errors.Is(rerr, sql.ErrTxDone) {
			err = errors.Join(err, rerr)
		}
	}()
	ids := make(map[string]int64, len(paths))
	now := time.Now().Unix()
	for _, p := range paths {
		var deriver, ca, sigs any
		if p.Deriver != "" {
			deriver = p.Deriver
		}
		if p.CA != "" {
			ca = p.CA
		}
		if len(p.Sigs) > 0 {
			sigs = strings.Join(p.Sigs, " ")
		}
		res, err := tx.Exec(`INSERT INTO ValidPaths (path, hash, registrationTime, deriver, narSize, sigs, ca) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			p.Path, p.NarHash, now, deriver, int64(p.NarSize), sigs, ca)
		if err != nil {
			return fmt.Errorf("register %s: %w", p.Path, err)
		}
		if ids[p.Path], err = res.LastInsertId(); err != nil {
			return fmt.Errorf("register %s: %w", p.Path, err)
		}
	}
	for _, p := range paths {
		for _, r := range p.References {
			ref, ok := ids[r]
			if !ok {
				return fmt.Errorf("%s refers to %s, which is not registered", p.Path, r)
			}
			if _, err := tx.Exec(`INSERT INTO Refs (referrer, reference) VALUES (?, ?)`, ids[p.Path], ref); err != nil {
				return fmt.Errorf("reference %s → %s: %w", p.Path, r, err)
			}
		}
	}
	return tx.Commit()
}

// createStoreFiles writes p's files at real and, unless given, sets p's NAR
// hash and size from what was written.
func createStoreFiles(real string, p *StorePath) error {
	if err := os.Mkdir(real, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", p.Path, err)
	}
	for rel, data := range p.Files {
		f := filepath.Join(real, rel)
		if !strings.HasPrefix(f, real+"/") {
			return fmt.Errorf("%s: file %q is outside the path", p.Path, rel)
		}
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", p.Path, err)
		}
		if err := os.WriteFile(f, []byte(data), 0o644); err != nil {
			return fmt.Errorf("create %s: %w", p.Path, err)
		}
	}
	h := sha256.New()
	size, err := nar.Dump(h, real)
	if err != nil {
		return fmt.Errorf("NAR of %s: %w", p.Path, err)
	}
	if p.NarHash == "" {
		p.NarHash = "sha256:" + nixbase32.Encode(h.Sum(nil))
	}
	if p.NarSize == 0 {
		p.NarSize = uint64(size)
	}
	return nil
}

// RandomStorePath returns a well-formed path under /nix/store that no store
// has: a random hash and the given name.
func RandomStorePath(name string) string {
	b := make([]byte, 20)
	rand.Read(b)
	return "/nix/store/" + nixbase32.Encode(b) + "-" + name
}

// StoreDBClosure registers a closure shaped like BuildClosure's (Leaf,
// Middle referring to Leaf, Top referring to both and itself, each with a
// deriver) in a new store database, with random hashes, and returns it
// with the database's Config. Nothing is built and no files exist: it is
// for code that only checks validity and metadata.
func StoreDBClosure(t testing.TB) (Closure, nixstore.Config) {
	t.Helper()
	nonce := make([]byte, 12)
	rand.Read(nonce)
	c := Closure{
		Leaf:     RandomStorePath("cf-fixture-leaf"),
		Middle:   RandomStorePath("cf-fixture-middle"),
		Top:      RandomStorePath("cf-fixture-top"),
		Nonce:    hex.EncodeToString(nonce),
		Derivers: make(map[string]string),
	}
	c.All = []string{c.Leaf, c.Middle, c.Top}
	refs := map[string][]string{c.Leaf: nil, c.Middle: {c.Leaf}, c.Top: {c.Leaf, c.Middle, c.Top}}
	var paths []StorePath
	for _, p := range c.All {
		_, name, _ := strings.Cut(filepath.Base(p), "-")
		drv := RandomStorePath(name + ".drv")
		c.Derivers[p] = drv
		// Nix registers the derivations too.
		paths = append(paths, StorePath{Path: drv, NarSize: 512},
			StorePath{Path: p, NarSize: 1024, References: refs[p], Deriver: drv})
	}
	return c, WriteStoreDB(t, StoreDB{Paths: paths})
}
