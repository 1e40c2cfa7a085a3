// Package nixstore reads a local Nix store's metadata straight from Nix's
// SQLite database (opened read-only) and locates its files and build logs.
package nixstore

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/nixbase32"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// ErrNotFound means the store has no valid path for the request.
var ErrNotFound = errors.New("not in store")

// Config locates a store. Empty fields take Nix's defaults.
type Config struct {
	StoreDir string // logical store directory, as in store paths (/nix/store)
	// RealStoreDir is where the files are on disk, for a store under a chroot
	// (nix --store /some/root). Defaults to StoreDir.
	RealStoreDir string
	DBPath       string // Nix's db.sqlite (/nix/var/nix/db/db.sqlite)
	LogDir       string // Nix's build-log directory (/nix/var/log/nix)
}

// Store answers metadata queries about a Nix store.
type Store struct {
	cfg    Config
	db     *sql.DB
	byHash *sql.Stmt
	refs   *sql.Stmt
}

// PathInfo is a valid store path's registration.
type PathInfo struct {
	ID         int64
	Path       string // full store path
	NarHash    string // "sha256:<nix32>"
	NarSize    uint64
	Deriver    string
	Sigs       []string
	CA         string
	References []string // full store paths, as registered
}

// Open opens the store database read-only. Nix keeps writing to it; SQLite's
// WAL lets us read concurrently without taking Nix's locks.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.StoreDir == "" {
		cfg.StoreDir = "/nix/store"
	}
	cfg.StoreDir = filepath.Clean(cfg.StoreDir)
	if cfg.RealStoreDir == "" {
		cfg.RealStoreDir = cfg.StoreDir
	}
	if cfg.DBPath == "" {
		cfg.DBPath = "/nix/var/nix/db/db.sqlite"
	}
	if cfg.LogDir == "" {
		cfg.LogDir = "/nix/var/log/nix"
	}
	// SQLite's own message for a missing file ("unable to open database
	// file (14)") says nothing about why or what to do.
	if _, err := os.Stat(cfg.DBPath); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("nix database %s does not exist: Nix is not set up on this machine; "+
			"run scripts/install-deps.sh (or `nix-store --verify` once as root, which creates it), or point --nix-db at your store's database", cfg.DBPath)
	} else if err != nil {
		return nil, fmt.Errorf("nix database: %w", err)
	}
	dsn := (&url.URL{Scheme: "file", Path: cfg.DBPath, RawQuery: "mode=ro&_pragma=busy_timeout(10000)&_pragma=query_only(1)"}).String()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open nix database %s: %w", cfg.DBPath, err)
	}
	if err := db.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("open nix database %s: %w", cfg.DBPath, err), db.Close())
	}
	s := &Store{cfg: cfg, db: db}
	// The unique index on path makes this range scan O(log n): a store path
	// is <dir>/<hash>-<name>, and '.' is the byte after '-'.
	if s.byHash, err = db.PrepareContext(ctx,
		`SELECT id, path, hash, deriver, narSize, sigs, ca FROM ValidPaths WHERE path >= ? AND path < ? LIMIT 1`); err != nil {
		return nil, errors.Join(fmt.Errorf("nix database %s: %w", cfg.DBPath, err), db.Close())
	}
	if s.refs, err = db.PrepareContext(ctx,
		`SELECT p.path FROM Refs r JOIN ValidPaths p ON p.id = r.reference WHERE r.referrer = ? ORDER BY p.path`); err != nil {
		return nil, errors.Join(fmt.Errorf("nix database %s: %w", cfg.DBPath, err), db.Close())
	}
	return s, nil
}

// Close releases the database.
func (s *Store) Close() error { return s.db.Close() }

// StoreDir returns the logical store directory.
func (s *Store) StoreDir() string { return s.cfg.StoreDir }

// RealPath maps a store path to its location on disk.
func (s *Store) RealPath(storePath string) string {
	return filepath.Join(s.cfg.RealStoreDir, strings.TrimPrefix(storePath, s.cfg.StoreDir+"/"))
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// QueryByHash returns the valid path whose hash part is hash, with its
// references. hash must already be validated with nixbase32.ValidHash.
func (s *Store) QueryByHash(ctx context.Context, hash string) (*PathInfo, error) {
	prefix := s.cfg.StoreDir + "/" + hash
	var (
		info              PathInfo
		rawHash           string
		deriver, sigs, ca sql.NullString
		narSize           sql.NullInt64
	)
	err := s.byHash.QueryRowContext(ctx, prefix+"-", prefix+".").Scan(&info.ID, &info.Path, &rawHash, &deriver, &narSize, &sigs, &ca)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", prefix, err)
	}
	if info.NarHash, err = NormaliseHash(rawHash); err != nil {
		return nil, fmt.Errorf("query %s: %w", info.Path, err)
	}
	info.NarSize = uint64(narSize.Int64)
	info.Deriver = deriver.String
	info.CA = ca.String
	if sigs.String != "" {
		info.Sigs = strings.Fields(sigs.String)
	}
	rows, err := s.refs.QueryContext(ctx, info.ID)
	if err != nil {
		return nil, fmt.Errorf("references of %s: %w", info.Path, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			return nil, fmt.Errorf("references of %s: %w", info.Path, err)
		}
		info.References = append(info.References, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("references of %s: %w", info.Path, err)
	}
	return &info, nil
}

// NormaliseHash turns a registered hash ("sha256:" + base16, base32 or
// base64, as different Nix versions wrote them) into "sha256:<nix32>".
func NormaliseHash(h string) (string, error) {
	algo, digest, ok := strings.Cut(h, ":")
	if !ok || algo != "sha256" {
		return "", fmt.Errorf("unsupported hash %q", h)
	}
	var raw []byte
	var err error
	switch len(digest) {
	case 64:
		raw, err = hex.DecodeString(digest)
	case 52:
		raw, err = nixbase32.Decode(digest)
	case 44:
		raw, err = base64.StdEncoding.DecodeString(digest)
	default:
		err = errors.New("bad length")
	}
	if err != nil || len(raw) != 32 {
		return "", fmt.Errorf("malformed hash %q", h)
	}
	return "sha256:" + nixbase32.Encode(raw), nil
}

// ParseHashPart checks that name is <hash>-<name> and returns the hash.
func ParseHashPart(name string) (string, bool) {
	hash, rest, ok := strings.Cut(name, "-")
	if !ok || rest == "" || !nixbase32.ValidHash(hash) || !validName(rest) {
		return "", false
	}
	return hash, true
}

// validName follows Nix's rules for the name part of a store path.
func validName(s string) bool {
	// Nix 2.8 rejects names that start with a dot.
	if s == "" || len(s) > 211 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("+-._?=", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// LogPath returns where Nix keeps the build log of drv (a .drv base name),
// plain or bzip2-compressed, or ErrNotFound.
func (s *Store) LogPath(drv string) (file string, bzipped bool, err error) {
	if _, ok := ParseHashPart(drv); !ok || path.Ext(drv) != ".drv" {
		return "", false, ErrNotFound
	}
	base := filepath.Join(s.cfg.LogDir, "drvs", drv[:2], drv[2:])
	for _, c := range []struct {
		file string
		bz   bool
	}{{base, false}, {base + ".bz2", true}} {
		if ok, err := exists(c.file); err != nil {
			return "", false, err
		} else if ok {
			return c.file, c.bz, nil
		}
	}
	return "", false, ErrNotFound
}

func exists(p string) (bool, error) {
	_, err := os.Stat(p)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, err
}
