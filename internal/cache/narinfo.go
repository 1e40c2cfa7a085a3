package cache

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/nar"
	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
)

// pathEntry is a store path as the cache serves it, with its narinfo
// rendered and signed once.
type pathEntry struct {
	info    *nixstore.PathInfo
	real    string // location on disk
	narHash string // nix32 digest, without "sha256:"
	narinfo []byte
	id      fileID
	checked atomic.Int64 // unix nanoseconds of the last lstat that matched id

	nar         atomic.Pointer[[]byte] // the whole NAR, for small paths
	narReleased atomic.Bool
	evicted     atomic.Bool
}

// recheckEvery is how long a cached path is trusted without an lstat.
const recheckEvery = 2 * time.Second

// fileID tells whether the file at a path is still the one we described: a
// garbage-collected and rebuilt path gets a new inode and ctime.
type fileID struct {
	ino   uint64
	ctime syscall.Timespec
}

func statID(p string) (fileID, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return fileID{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, errors.New("no stat_t")
	}
	return fileID{ino: st.Ino, ctime: st.Ctim}, nil
}

// narinfoCache keeps rendered narinfos so a hit costs one lstat, not a
// database query and a signature. It is bounded; eviction is random
// (map iteration order), which is cheap and good enough for a working set.
type narinfoCache struct {
	mu      sync.RWMutex
	max     int
	m       map[string]*pathEntry
	onEvict func(*pathEntry)
}

func newNarinfoCache(max int, onEvict func(*pathEntry)) *narinfoCache {
	return &narinfoCache{max: max, m: make(map[string]*pathEntry), onEvict: onEvict}
}

func (c *narinfoCache) evict(e *pathEntry) {
	e.evicted.Store(true)
	if c.onEvict != nil {
		c.onEvict(e)
	}
}

func (c *narinfoCache) get(hash string) *pathEntry {
	c.mu.RLock()
	e := c.m[hash]
	c.mu.RUnlock()
	return e
}

func (c *narinfoCache) put(hash string, e *pathEntry) {
	c.mu.Lock()
	if old := c.m[hash]; old != nil {
		c.evict(old)
	} else if len(c.m) >= c.max {
		for k, old := range c.m {
			delete(c.m, k)
			c.evict(old)
			break
		}
	}
	c.m[hash] = e
	c.mu.Unlock()
}

func (c *narinfoCache) drop(hash string) {
	c.mu.Lock()
	if old := c.m[hash]; old != nil {
		delete(c.m, hash)
		c.evict(old)
	}
	c.mu.Unlock()
}

// lookup returns the valid store path with this hash part, or
// nixstore.ErrNotFound. hash must be validated by the caller.
func (s *Server) lookup(ctx context.Context, hash string) (*pathEntry, error) {
	if e := s.narinfos.get(hash); e != nil {
		// Revalidate at most every recheckEvery: an lstat per hit was a
		// tenth of a narinfo's cost. A path garbage-collected meanwhile is
		// described for at most that long; its NAR download then fails.
		now := time.Now().UnixNano()
		if now-e.checked.Load() < int64(recheckEvery) {
			return e, nil
		}
		if id, err := statID(e.real); err == nil && id == e.id {
			e.checked.Store(now)
			return e, nil
		}
		s.narinfos.drop(hash)
	}
	info, err := s.store.QueryByHash(ctx, hash)
	if err != nil {
		return nil, err
	}
	real := s.store.RealPath(info.Path)
	id, err := statID(real)
	if errors.Is(err, fs.ErrNotExist) {
		// Registered but not on disk (being deleted): nothing to serve.
		return nil, nixstore.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	e := &pathEntry{info: info, real: real, narHash: strings.TrimPrefix(info.NarHash, "sha256:"), id: id}
	e.checked.Store(time.Now().UnixNano())
	e.narinfo = []byte(s.render(e).String())
	s.narinfos.put(hash, e)
	return e, nil
}

// render builds the signed narinfo. NARs are served uncompressed (and
// compressed on the wire when the client accepts it), so the file is the NAR.
func (s *Server) render(e *pathEntry) *narinfo.NarInfo {
	hash := strings.TrimPrefix(e.info.Path, s.store.StoreDir()+"/")[:32]
	ni := &narinfo.NarInfo{
		StorePath:   e.info.Path,
		URL:         "nar/" + e.narHash + ".nar?hash=" + hash,
		Compression: "none",
		FileHash:    e.info.NarHash,
		FileSize:    e.info.NarSize,
		NarHash:     e.info.NarHash,
		NarSize:     e.info.NarSize,
		References:  e.info.References,
		Deriver:     e.info.Deriver,
		CA:          e.info.CA,
	}
	// Keep signatures the path already carries (from the cache it was
	// substituted from) unless they are by a key we sign with ourselves.
	ours := make(map[string]bool, len(s.keys))
	for _, k := range s.keys {
		ours[k.Name] = true
	}
	for _, sig := range e.info.Sigs {
		if name, _, _ := strings.Cut(sig, ":"); !ours[name] {
			ni.Sigs = append(ni.Sigs, sig)
		}
	}
	ni.Sign(s.keys...)
	return ni
}

// lookupFile resolves "<hash>" from a top-level request, answering 404 itself.
func (s *Server) lookupFile(w http.ResponseWriter, r *http.Request, hash string) *pathEntry {
	if s.store == nil || !nixbase32.ValidHash(hash) {
		notFound(w)
		return nil
	}
	e, err := s.lookup(r.Context(), hash)
	if errors.Is(err, nixstore.ErrNotFound) {
		notFound(w)
		return nil
	}
	if err != nil {
		s.internalError(w, r, err)
		return nil
	}
	return e
}

func (s *Server) serveNarinfo(w http.ResponseWriter, r *http.Request, hash string) {
	if !nixbase32.ValidHash(hash) {
		notFound(w)
		return
	}
	body, err := s.narinfoBytes(r.Context(), hash)
	if errors.Is(err, nixstore.ErrNotFound) {
		notFound(w)
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", narinfo.ContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "public, max-age=86400")
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// narinfoBytes returns the signed narinfo of hash from the local store
// first, then from the backend, or nixstore.ErrNotFound.
func (s *Server) narinfoBytes(ctx context.Context, hash string) ([]byte, error) {
	if s.store != nil {
		e, err := s.lookup(ctx, hash)
		if err == nil {
			return e.narinfo, nil
		}
		if !errors.Is(err, nixstore.ErrNotFound) || s.backend == nil {
			return nil, err
		}
	}
	e, err := s.backendNarinfo(ctx, hash)
	if err != nil {
		return nil, err
	}
	return e.narinfo, nil
}

func (s *Server) serveListing(w http.ResponseWriter, r *http.Request, hash string) {
	e := s.lookupFile(w, r, hash)
	if e == nil {
		return
	}
	l, err := nar.List(e.real)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	body, err := json.Marshal(l)
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "public, max-age=86400")
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}
