package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
)

// How long the backend's answers are trusted without asking it again. A
// narinfo only disappears through `cache gc`, which spares recent paths; a
// negative answer is short-lived because another writer (a second server on
// the same bucket) may upload the path any moment. Our own uploads update
// the cache directly.
const (
	backendHitTTL  = 10 * time.Minute
	backendMissTTL = 10 * time.Second
)

// remoteEntry is a backend narinfo as served (signed by our keys), or a
// remembered absence (narinfo nil).
type remoteEntry struct {
	narinfo []byte
	info    *narinfo.NarInfo
	expires time.Time
}

// remoteCache is a bounded map of backend lookups, positive and negative,
// so a narinfo request costs the backend at most one request per TTL.
// Eviction is random (map order), as for the local cache.
type remoteCache struct {
	mu  sync.RWMutex
	max int
	m   map[string]*remoteEntry
}

func (c *remoteCache) get(hash string, now time.Time) *remoteEntry {
	c.mu.RLock()
	e := c.m[hash]
	c.mu.RUnlock()
	if e == nil || now.After(e.expires) {
		return nil
	}
	return e
}

func (c *remoteCache) put(hash string, e *remoteEntry) {
	c.mu.Lock()
	if _, ok := c.m[hash]; !ok && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[hash] = e
	c.mu.Unlock()
}

// narinfoKey is the backend key of a store path's narinfo.
func narinfoKey(hash string) string { return hash + ".narinfo" }

// backendNarinfo returns the backend's narinfo for hash, rendered with our
// signatures, or nixstore.ErrNotFound.
func (s *Server) backendNarinfo(ctx context.Context, hash string) (*remoteEntry, error) {
	now := time.Now()
	if e := s.remote.get(hash, now); e != nil {
		if e.narinfo == nil {
			return nil, nixstore.ErrNotFound
		}
		return e, nil
	}
	b, err := objstore.ReadAll(ctx, s.backend, narinfoKey(hash))
	if errors.Is(err, objstore.ErrNotFound) {
		s.remote.put(hash, &remoteEntry{expires: now.Add(backendMissTTL)})
		return nil, nixstore.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	ni, err := narinfo.Parse(string(b))
	if err != nil {
		return nil, fmt.Errorf("backend narinfo %s: %w", narinfoKey(hash), err)
	}
	e := s.remoteEntry(ni, now)
	s.remote.put(hash, e)
	return e, nil
}

// remoteEntry renders ni for serving: signatures by our keys replaced by
// fresh ones (the object may have been written under another key), the
// others kept.
func (s *Server) remoteEntry(ni *narinfo.NarInfo, now time.Time) *remoteEntry {
	s.resign(ni)
	return &remoteEntry{narinfo: []byte(ni.String()), info: ni, expires: now.Add(backendHitTTL)}
}

// resign drops ni's signatures by key names we sign with and signs it.
func (s *Server) resign(ni *narinfo.NarInfo) {
	ours := make(map[string]bool, len(s.keys))
	for _, k := range s.keys {
		ours[k.Name] = true
	}
	kept := ni.Sigs[:0]
	for _, sig := range ni.Sigs {
		if name, _, _ := strings.Cut(sig, ":"); !ours[name] {
			kept = append(kept, sig)
		}
	}
	ni.Sigs = kept
	ni.Sign(s.keys...)
}

// hasPath reports whether the local store (when served) or the backend
// holds the store path with this hash part.
func (s *Server) hasPath(ctx context.Context, hash string) (bool, error) {
	if s.store != nil {
		_, err := s.lookup(ctx, hash)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, nixstore.ErrNotFound) {
			return false, err
		}
	}
	if s.backend != nil {
		_, err := s.backendNarinfo(ctx, hash)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, nixstore.ErrNotFound) {
			return false, err
		}
	}
	return false, nil
}

// narContentTypes are the Content-Types of stored NAR files.
var narContentTypes = map[string]string{
	"none":  narContentType,
	"xz":    "application/x-xz",
	"zstd":  "application/zstd",
	"bzip2": "application/x-bzip2",
}

// serveBackendNar streams nar/<file> from the backend, with Range support
// (the file is served as stored, so byte ranges are the file's), in
// constant memory. It reports false, having written nothing, when the
// backend has no such file.
func (s *Server) serveBackendNar(w http.ResponseWriter, r *http.Request, file, compression string) bool {
	key := "nar/" + file
	st, err := s.backend.Stat(r.Context(), key)
	if errors.Is(err, objstore.ErrNotFound) {
		return false
	}
	if err != nil {
		s.internalError(w, r, err)
		return true
	}
	h := w.Header()
	h.Set("Content-Type", narContentTypes[compression])
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	h.Set("Accept-Ranges", "bytes")
	off, length, status := int64(0), st.Size, http.StatusOK
	if rng := r.Header.Get("Range"); rng != "" {
		o, l, err := parseRange(rng, st.Size)
		if err == errUnsatisfiable {
			h.Set("Content-Range", fmt.Sprintf("bytes */%d", st.Size))
			h.Del("Cache-Control")
			http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
			return true
		}
		if err == nil {
			off, length, status = o, l, http.StatusPartialContent
			h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+length-1, st.Size))
		}
	}
	h.Set("Content-Length", strconv.FormatInt(length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return true
	}
	body, err := s.backend.Get(r.Context(), key, off, length)
	if errors.Is(err, objstore.ErrNotFound) {
		// Deleted between Stat and Get (cache gc).
		h.Del("Content-Length")
		notFound(w)
		return true
	}
	if err != nil {
		h.Del("Content-Length")
		s.internalError(w, r, err)
		return true
	}
	defer body.Close()
	w.WriteHeader(status)
	n, err := io.Copy(w, body)
	if err == nil && n != length {
		err = fmt.Errorf("backend sent %d of %d bytes", n, length)
	}
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Error("NAR stream from backend failed", "key", key, "backend", s.backend.String(), "err", err)
		}
		panic(http.ErrAbortHandler) // a short body must not pass for a whole one
	}
	return true
}
