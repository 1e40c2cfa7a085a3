// Package objstore stores the binary cache's objects (narinfos, NARs,
// nix-cache-info) in a directory or in S3-compatible object storage, under
// slash-separated keys in the standard binary cache layout, so other tools
// can read a bucket or directory written by us.
//
// Every backend makes a Put visible only once it is complete: a reader sees
// the old object or the new one, never half of it, and a Put that fails or
// is cancelled leaves nothing behind.
package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"
)

// ErrNotFound means there is no object under the key.
var ErrNotFound = errors.New("object not found")

// Info describes a stored object.
type Info struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Store is an object store.
type Store interface {
	// Stat returns the object's size and modification time, or ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// Get reads length bytes of the object from offset (length < 0: to the
	// end), or returns ErrNotFound. The reader streams: memory does not grow
	// with the object.
	Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	// Put stores r under key, replacing what was there, visible only once r
	// has been read to its end without error. size is r's length, or -1
	// when unknown.
	Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error
	// Delete removes the object; a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// List calls fn for every object whose key starts with prefix, in no
	// particular order, until fn returns an error (which List returns).
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// String names the store for logs and messages, without secrets.
	String() string
}

// Object is one object for PutObjects: its bytes are Data, or the local
// file File, which is gone from its path once stored.
type Object struct {
	Key         string
	ContentType string
	Data        []byte
	File        string
}

// ObjectsPutter is a Store that stores several objects together more
// cheaply than one Put after another: see PutObjects.
type ObjectsPutter interface {
	PutObjects(ctx context.Context, objs []Object) error
}

// PutObjects stores objs in order, each visible only once it is complete
// and every earlier one is visible: a narinfo can follow its NAR. On error,
// the objects before the failed one may be stored, the rest are not, and a
// File not stored is still at its path.
func PutObjects(ctx context.Context, s Store, objs []Object) error {
	if op, ok := s.(ObjectsPutter); ok {
		return op.PutObjects(ctx, objs)
	}
	for _, o := range objs {
		if o.File == "" {
			if err := s.Put(ctx, o.Key, bytes.NewReader(o.Data), int64(len(o.Data)), o.ContentType); err != nil {
				return err
			}
			continue
		}
		if err := putFile(ctx, s, o); err != nil {
			return err
		}
	}
	return nil
}

// putFile stores a File object with Put, then removes the file.
func putFile(ctx context.Context, s Store, o Object) error {
	f, err := os.Open(o.File)
	if err != nil {
		return fmt.Errorf("store %s: %w", o.Key, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store %s: %w", o.Key, err)
	}
	if err := s.Put(ctx, o.Key, f, fi.Size(), o.ContentType); err != nil {
		return err
	}
	if err := os.Remove(o.File); err != nil {
		return fmt.Errorf("store %s: remove %s: %w", o.Key, o.File, err)
	}
	return nil
}

// Options are what a URL cannot carry.
type Options struct {
	// Getenv reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
	// AWS_SESSION_TOKEN, AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE;
	// nil means os.Getenv.
	Getenv func(string) string
}

// Open opens the store a URL names:
//
//	dir:///srv/cache                       a directory (created if missing)
//	s3://bucket[/prefix]?endpoint=http://127.0.0.1:9000&region=us-east-1
//
// S3 credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or
// from the shared credentials file (AWS_SHARED_CREDENTIALS_FILE, default
// ~/.aws/credentials, profile AWS_PROFILE or "default").
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("storage URL %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "dir", "file":
		if u.Host != "" || u.Path == "" {
			return nil, fmt.Errorf("storage URL %q: want dir:///absolute/path", rawURL)
		}
		return OpenDir(u.Path)
	case "s3":
		return openS3(ctx, u, opts)
	default:
		return nil, fmt.Errorf("storage URL %q: unknown scheme %q (want dir:///path or s3://bucket?endpoint=...)", rawURL, u.Scheme)
	}
}

// ValidKey reports whether key can name an object: non-empty, relative,
// slash-separated, without empty, "." or ".." segments, and not in the
// directory backend's staging area.
func ValidKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") {
		return fmt.Errorf("invalid object key %q", key)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, "\x00\\") {
			return fmt.Errorf("invalid object key %q", key)
		}
	}
	if key == stagingDir || strings.HasPrefix(key, stagingDir+"/") {
		return fmt.Errorf("invalid object key %q: %s/ is reserved", key, stagingDir)
	}
	return nil
}

// ReadAll reads a whole (small) object.
func ReadAll(ctx context.Context, s Store, key string) ([]byte, error) {
	rc, err := s.Get(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", key, s, err)
	}
	return b, nil
}
