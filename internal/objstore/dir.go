package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// stagingDir holds the directory backend's objects being written: on the
// same filesystem as the objects, so the final rename is atomic.
const stagingDir = ".staging"

// Dir stores objects as files under a root directory.
type Dir struct {
	root string
}

// StagingLitterAge is how old a file in the staging area must be before
// OpenDir takes it for litter of a crash and removes it. Younger files may
// be another process's work in progress: the server's uploads (which wait
// up to an hour for their narinfo) while `cache gc` or a push opens the
// same directory.
const StagingLitterAge = 24 * time.Hour

// OpenDir opens (creating it if needed) a directory store at root. Files
// left in its staging area by a crash are removed once StagingLitterAge
// old.
func OpenDir(root string) (*Dir, error) {
	root = filepath.Clean(root)
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("storage directory %q must be an absolute path", root)
	}
	staging := filepath.Join(root, stagingDir)
	if err := os.MkdirAll(staging, 0o755); err != nil {
		return nil, fmt.Errorf("create storage directory: %w", err)
	}
	// Partial uploads of a run that crashed: never visible, now garbage.
	entries, err := os.ReadDir(staging)
	if err != nil {
		return nil, fmt.Errorf("read storage staging directory: %w", err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // its writer renamed or removed it meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read storage staging directory: %w", err)
		}
		if time.Since(fi.ModTime()) < StagingLitterAge {
			continue
		}
		if err := os.Remove(filepath.Join(staging, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("clear storage staging directory: %w (make %s writable by this user)", err, staging)
		}
	}
	return &Dir{root: root}, nil
}

func (d *Dir) String() string { return "dir://" + d.root }

// StagingDir is the directory the store writes its temporary files in,
// which others may use for theirs: it is on the objects' filesystem, and
// emptied when the store is opened.
func (d *Dir) StagingDir() string { return filepath.Join(d.root, stagingDir) }

func (d *Dir) path(key string) (string, error) {
	if err := ValidKey(key); err != nil {
		return "", err
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// Stat implements Store.
func (d *Dir) Stat(_ context.Context, key string) (Info, error) {
	p, err := d.path(key)
	if err != nil {
		return Info{}, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) || err == nil && !fi.Mode().IsRegular() {
		return Info{}, ErrNotFound
	}
	if err != nil {
		return Info{}, fmt.Errorf("stat %s: %w", key, err)
	}
	return Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Get implements Store.
func (d *Dir) Get(_ context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", key, err)
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("seek %s: %w", key, err)
		}
	}
	if length < 0 {
		return f, nil // keeps *os.File's WriteTo/sendfile paths
	}
	return &limitedFile{LimitedReader: io.LimitedReader{R: f, N: length}, f: f}, nil
}

type limitedFile struct {
	io.LimitedReader
	f *os.File
}

func (l *limitedFile) Close() error { return l.f.Close() }

// Put implements Store: a temporary file in the staging area, synced, then
// renamed into place.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader, size int64, _ string) (err error) {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	tmp, err := os.CreateTemp(filepath.Join(d.root, stagingDir), "put-*")
	if err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			if rerr := os.Remove(tmp.Name()); rerr != nil {
				err = errors.Join(err, fmt.Errorf("remove partial %s: %w", tmp.Name(), rerr))
			}
		}
	}()
	n, err := io.Copy(tmp, ctxReader{ctx, r})
	if err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("store %s: got %d bytes, expected %d", key, n, size)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("store %s: %w", key, err)
	}
	done = true
	return nil
}

// PutObjects implements ObjectsPutter. Every object is first written to the
// staging area (a File on this filesystem is taken where it is) and its
// write-back started; then, in order, each is synced and renamed into
// place. The syncs then share the filesystem's journal commits: two small
// objects cost about one sync instead of two (0.33-0.41 ms against
// 0.48-0.63 ms here, measured on ext4).
func (d *Dir) PutObjects(ctx context.Context, objs []Object) (err error) {
	type staged struct {
		Object
		f       *os.File
		path    string // the object's file
		tmp     bool   // f is ours, in the staging area
		renamed bool
	}
	st := make([]*staged, 0, len(objs))
	defer func() {
		for _, s := range st {
			s.f.Close()
			if s.tmp && !s.renamed {
				if rerr := os.Remove(s.f.Name()); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
					err = errors.Join(err, fmt.Errorf("remove partial %s: %w", s.f.Name(), rerr))
				}
			}
		}
	}()
	for _, o := range objs {
		p, err := d.path(o.Key)
		if err != nil {
			return err
		}
		s := &staged{Object: o, path: p}
		if o.File != "" {
			s.f, err = os.Open(o.File)
		} else {
			s.f, err = os.CreateTemp(filepath.Join(d.root, stagingDir), "put-*")
			s.tmp = err == nil
		}
		if err != nil {
			return fmt.Errorf("store %s: %w", o.Key, err)
		}
		st = append(st, s)
		if s.tmp {
			if _, err := s.f.Write(o.Data); err != nil {
				return fmt.Errorf("store %s: %w", o.Key, err)
			}
		}
		// Every change to the inodes before the first sync, so that one
		// journal commit holds them all and the later syncs find it done.
		if err := s.f.Chmod(0o644); err != nil {
			return fmt.Errorf("store %s: %w", s.Key, err)
		}
		startWriteback(s.f)
	}
	for _, s := range st {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("store %s: %w", s.Key, err)
		}
		if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
			return fmt.Errorf("store %s: %w", s.Key, err)
		}
		err := os.Rename(s.f.Name(), s.path)
		if errors.Is(err, syscall.EXDEV) { // a File on another filesystem
			err = putFile(ctx, d, s.Object)
		} else if err != nil {
			err = fmt.Errorf("store %s: %w", s.Key, err)
		}
		if err != nil {
			return err
		}
		s.renamed = true
	}
	return nil
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Delete implements Store.
func (d *Dir) Delete(_ context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List implements Store.
func (d *Dir) List(ctx context.Context, prefix string, fn func(Info) error) error {
	// Walk only the directory the prefix is in.
	start := d.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		start = filepath.Join(d.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.root, p)
		key := filepath.ToSlash(rel)
		if e.IsDir() {
			if key == stagingDir {
				return filepath.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() || !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		return fn(Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("list %s: %w", d, err)
	}
	return nil
}
