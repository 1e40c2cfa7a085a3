// Package cache serves a local Nix store and a storage backend (a directory
// or S3) as one signed HTTP binary cache, compatible with Harmonia's URLs and
// Nix's binary-cache protocol, and takes uploads into the backend the way
// `nix copy --to http://...` sends them.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/requestid"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// Compression choices for on-the-fly NAR compression.
const (
	CompressionZstd = "zstd" // when the client's Accept-Encoding allows it
	CompressionNone = "none"
)

// Config configures a Server.
type Config struct {
	// Store is the local Nix store served, first; nil serves only Backend.
	Store *nixstore.Store
	// Backend holds uploaded paths in the binary cache layout; nil serves
	// only Store.
	Backend objstore.Store
	// StoreDir is the store directory of Backend's paths when there is no
	// Store (default /nix/store).
	StoreDir string
	// Uploads, when set, accepts PUTs into Backend.
	Uploads  *UploadConfig
	Keys     []*signing.SecretKey // every narinfo is signed by each key
	Priority int                  // 0 means the default, 40
	// Compression is CompressionZstd (default) or CompressionNone.
	Compression string
	// NarinfoCacheSize bounds the number of rendered narinfos kept in memory.
	NarinfoCacheSize int
	// SmallNarCacheBytes bounds the memory of NARs of up to 64 KiB kept in
	// memory; 0 means 64 MiB, negative turns it off.
	SmallNarCacheBytes int64
	Logger             *slog.Logger
	// Registry receives the cache's metrics; nil makes a private one.
	Registry *prometheus.Registry
}

// Server is the binary cache's HTTP handler.
type Server struct {
	store       *nixstore.Store // nil: backend only
	backend     objstore.Store  // nil: local store only
	storeDir    string
	remote      *remoteCache
	uploads     *uploads // nil: read-only
	keys        []*signing.SecretKey
	cacheInfo   []byte
	compression string
	log         *slog.Logger
	narinfos    *narinfoCache
	metrics     *metrics
	registry    *prometheus.Registry
	routes      routes
	zstdPool    sync.Pool
	smallNars   *smallNars // nil when off
}

// New builds a Server. It fails when there is no signing key: an unsigned
// cache is useless to clients that check signatures, i.e. all of them.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil && cfg.Backend == nil {
		return nil, errors.New("cache: nothing to serve (no store and no backend)")
	}
	if cfg.Uploads != nil && cfg.Backend == nil {
		return nil, errors.New("cache: uploads need a storage backend")
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("cache: no signing key")
	}
	switch cfg.Compression {
	case "":
		cfg.Compression = CompressionZstd
	case CompressionZstd, CompressionNone:
	default:
		return nil, fmt.Errorf("cache: unknown compression %q (want zstd or none)", cfg.Compression)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NarinfoCacheSize <= 0 {
		cfg.NarinfoCacheSize = 100_000
	}
	if cfg.Priority == 0 {
		cfg.Priority = 40 // Harmonia's and the spec's default
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	storeDir := cfg.StoreDir
	if cfg.Store != nil {
		storeDir = cfg.Store.StoreDir()
	} else if storeDir == "" {
		storeDir = "/nix/store"
	}
	s := &Server{
		store:       cfg.Store,
		backend:     cfg.Backend,
		storeDir:    storeDir,
		remote:      &remoteCache{max: cfg.NarinfoCacheSize, m: make(map[string]*remoteEntry)},
		keys:        cfg.Keys,
		compression: cfg.Compression,
		log:         cfg.Logger,
		metrics:     newMetrics(cfg.Registry),
		registry:    cfg.Registry,
	}
	switch {
	case cfg.SmallNarCacheBytes == 0:
		s.smallNars = &smallNars{budget: 64 << 20}
	case cfg.SmallNarCacheBytes > 0:
		s.smallNars = &smallNars{budget: cfg.SmallNarCacheBytes}
	}
	var onEvict func(*pathEntry)
	if s.smallNars != nil {
		onEvict = s.smallNars.release
	}
	s.narinfos = newNarinfoCache(cfg.NarinfoCacheSize, onEvict)
	if cfg.Uploads != nil {
		u, err := newUploads(*cfg.Uploads)
		if err != nil {
			return nil, err
		}
		s.uploads = u
	}
	pubs := make([]string, len(cfg.Keys))
	for i, k := range cfg.Keys {
		pubs[i] = k.Public().String()
	}
	s.cacheInfo = []byte(fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\nPublicKeys: %s\n",
		storeDir, cfg.Priority, strings.Join(pubs, " ")))

	s.routes = routes{
		cacheInfo: s.instrument("nix-cache-info", s.serveCacheInfo),
		narinfo:   s.instrument("narinfo", s.serveNarinfo),
		listing:   s.instrument("ls", s.serveListing),
		nar:       s.instrument("nar", s.serveNar),
		log:       s.instrument("log", s.serveLog),
		health:    s.instrument("health", s.serveHealth),
		other:     s.instrument("other", func(w http.ResponseWriter, r *http.Request, _ string) { notFound(w) }),
		metrics:   promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}),
	}
	return s, nil
}

// routes are the cache's endpoints, each with its own metrics. Each handler
// gets the name its route matched: "<hash>" for /<hash>.narinfo, the file
// for /nar/<file> and the derivation for /log/<drv>.
type routes struct {
	cacheInfo, narinfo, listing, nar, log, health, other handlerFunc
	metrics                                              http.Handler
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, name string)

// ServeHTTP implements http.Handler. The routes are matched by hand: the
// standard mux cannot match "/{hash}.narinfo", and the cache's few fixed
// shapes are cheaper to cut than to look up.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := &s.routes
	p := r.URL.Path
	if r.Method == http.MethodPut && s.uploads != nil {
		s.servePut(w, r, p)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		allow := "GET, HEAD"
		if s.uploads != nil {
			allow += ", PUT"
		}
		w.Header().Set("Allow", allow)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch {
	case p == "/nix-cache-info":
		rt.cacheInfo(w, r, "")
	case p == "/health":
		rt.health(w, r, "")
	case p == "/metrics":
		rt.metrics.ServeHTTP(w, r)
	case strings.HasPrefix(p, "/nar/"):
		routeFile(w, r, p[len("/nar/"):], "", rt.nar, rt.other)
	case strings.HasPrefix(p, "/log/"):
		routeFile(w, r, p[len("/log/"):], "", rt.log, rt.other)
	case strings.HasSuffix(p, ".narinfo"):
		routeFile(w, r, p[1:], ".narinfo", rt.narinfo, rt.other)
	case strings.HasSuffix(p, ".ls"):
		routeFile(w, r, p[1:], ".ls", rt.listing, rt.other)
	default:
		rt.other(w, r, "")
	}
}

// routeFile calls h with name minus suffix when name is one non-empty path
// segment, and other when it is not.
func routeFile(w http.ResponseWriter, r *http.Request, name, suffix string, h, other handlerFunc) {
	name = strings.TrimSuffix(name, suffix)
	if name == "" || strings.Contains(name, "/") {
		other(w, r, "")
		return
	}
	h(w, r, name)
}

func (s *Server) serveCacheInfo(w http.ResponseWriter, r *http.Request, _ string) {
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	w.Header().Set("Content-Length", strconv.Itoa(len(s.cacheInfo)))
	if r.Method != http.MethodHead {
		w.Write(s.cacheInfo)
	}
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request, _ string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	if s.store == nil {
		fmt.Fprint(w, `{"status":"healthy"}`+"\n")
		return
	}
	if err := s.store.Ping(ctx); err != nil {
		// The cause (a path, SQLite's words) is for the log, not the network.
		id := requestid.New()
		s.log.Error("health: store database unavailable", "request_id", id, "err", err)
		w.Header().Set(requestid.Header, id)
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, `{"status":"unhealthy","error":"store database unavailable; request id %s"}`+"\n", id)
		return
	}
	fmt.Fprint(w, `{"status":"healthy"}`+"\n")
}

// notFound answers 404 and tells caches not to keep it: the path may be
// built a minute from now.
func notFound(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, "not found", http.StatusNotFound)
}

// internalError answers 500 with a request id and logs the error under it;
// the answer says nothing of the cause.
func (s *Server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	id := requestid.New()
	s.log.Error("cache request failed", "request_id", id, "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set(requestid.Header, id)
	http.Error(w, "internal error; request id "+id, http.StatusInternalServerError)
}

// servePut routes uploads: nar/<file> and <hash>.narinfo. Nix also PUTs
// nix-cache-info when a cache has none; ours always has one, so that and
// anything else is refused.
func (s *Server) servePut(w http.ResponseWriter, r *http.Request, p string) {
	switch {
	case strings.HasPrefix(p, "/nar/"):
		s.putNar(w, r, p[len("/nar/"):])
	case strings.HasSuffix(p, ".narinfo") && !strings.Contains(p[1:], "/"):
		s.putNarinfo(w, r, strings.TrimSuffix(p[1:], ".narinfo"))
	default:
		if _, ok := s.authorize(w, r); !ok {
			return
		}
		badUpload(w, http.StatusNotFound, "%s cannot be uploaded: PUT nar/<file> and <hash>.narinfo only", p)
	}
}

// WriteCacheInfo stores nix-cache-info in the backend, so the directory or
// bucket is a binary cache that other tools can read as it is.
func (s *Server) WriteCacheInfo(ctx context.Context) error {
	if s.backend == nil {
		return nil
	}
	info := fmt.Sprintf("StoreDir: %s\n", s.storeDir)
	if err := s.backend.Put(ctx, "nix-cache-info", strings.NewReader(info), int64(len(info)), "text/x-nix-cache-info"); err != nil {
		return fmt.Errorf("write nix-cache-info: %w", err)
	}
	return nil
}
