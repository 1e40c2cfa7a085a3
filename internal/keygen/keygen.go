// Package keygen creates the binary cache's signing key once and never
// touches it again (the seed spec's "Agent 1", cache key manager).
package keygen

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// DefaultKeyFile is where the spec keeps the key.
const DefaultKeyFile = "/var/lib/harmonia/cache-key"

// Options say where the key lives and what it is called.
type Options struct {
	KeyFile string
	Name    string // key name, usually the hostname
	Owner   string // optional "user:group" to chown the key (and a new directory) to
	Logger  *slog.Logger
}

// Result is the key in use.
type Result struct {
	Key     *signing.SecretKey
	Created bool
}

// Ensure returns the existing key, or creates one when the file is absent.
// An existing file is never rewritten, even when it is corrupt: replacing a
// key breaks every client's trust, so that is left to a person.
func Ensure(opts Options) (*Result, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.KeyFile == "" {
		opts.KeyFile = DefaultKeyFile
	}
	_, err := os.Lstat(opts.KeyFile)
	if err == nil {
		k, err := signing.LoadSecretKeyFile(opts.KeyFile)
		if err != nil {
			return nil, err
		}
		log.Info("Using existing cache key", "file", opts.KeyFile, "public_key", k.Public().String())
		return &Result{Key: k}, nil
	}
	// ENOTDIR: a parent is a file; MkdirAll below reports that clearly.
	if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return nil, fmt.Errorf("check key file %s: %w", opts.KeyFile, err)
	}

	k, err := signing.Generate(opts.Name, nil)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(opts.KeyFile)
	newDir := false
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		newDir = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key directory %s: %w (run as a user that may create it, or choose another --key-file)", dir, err)
	}
	created, err := writeNew(opts.KeyFile, []byte(k.String()+"\n"))
	if err != nil {
		return nil, err
	}
	if !created {
		// Another keygen won the race; use its key.
		return Ensure(opts)
	}
	log.Info("Generated new cache key", "file", opts.KeyFile, "public_key", k.Public().String())
	if opts.Owner != "" {
		targets := []string{opts.KeyFile}
		if newDir {
			targets = append(targets, dir)
		}
		if err := chown(opts.Owner, targets...); err != nil {
			// As the spec says: warn and go on; the cache will fail later
			// with a clear "not readable" error if it matters.
			log.Warn("could not set key ownership", "owner", opts.Owner, "err", err)
		}
	}
	return &Result{Key: k, Created: true}, nil
}

// writeNew writes data to path with mode 0600 atomically and only if path
// does not exist yet: the bytes go to a temporary file that is then hard
// linked into place, which fails rather than replaces. It reports false when
// someone else created path first.
func writeNew(path string, data []byte) (created bool, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".cache-key-*")
	if err != nil {
		return false, fmt.Errorf("create key file in %s: %w (make the directory writable, or choose another --key-file)", dir, err)
	}
	defer func() {
		// After the link, the temporary name is a second copy of the secret key.
		if rerr := os.Remove(tmp.Name()); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove temporary key file: %w (delete %s by hand)", rerr, tmp.Name()))
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return false, fmt.Errorf("chmod key file: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return false, fmt.Errorf("sync key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("write key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}
		return false, fmt.Errorf("install key file %s: %w", path, err)
	}
	// The new name must reach the disk too, or a crash can lose the key
	// after its public half was handed out.
	d, err := os.Open(dir)
	if err != nil {
		return false, fmt.Errorf("open %s to sync the new key file: %w", dir, err)
	}
	if err := errors.Join(d.Sync(), d.Close()); err != nil {
		return false, fmt.Errorf("sync directory %s after writing the key file %s: %w (the file is in place; check the disk, then run again)", dir, path, err)
	}
	return true, nil
}

func chown(owner string, paths ...string) error {
	uname, gname, _ := strings.Cut(owner, ":")
	u, err := user.Lookup(uname)
	if err != nil {
		return fmt.Errorf("look up user %q: %w", uname, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if gname != "" {
		g, err := user.LookupGroup(gname)
		if err != nil {
			return fmt.Errorf("look up group %q: %w", gname, err)
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	for _, p := range paths {
		if err := os.Lchown(p, uid, gid); err != nil {
			return err
		}
	}
	return nil
}
