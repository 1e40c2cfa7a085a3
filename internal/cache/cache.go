// Package cache serves a local Nix store as a signed HTTP binary cache,
// compatible with Harmonia's URLs and Nix's binary-cache protocol.
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
	Store    *nixstore.Store
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
	store       *nixstore.Store
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
	if cfg.Store == nil {
		return nil, errors.New("cache: no store")
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
	s := &Server{
		store:       cfg.Store,
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
	pubs := make([]string, len(cfg.Keys))
	for i, k := range cfg.Keys {
		pubs[i] = k.Public().String()
	}
	s.cacheInfo = []byte(fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\nPublicKeys: %s\n",
		cfg.Store.StoreDir(), cfg.Priority, strings.Join(pubs, " ")))

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
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rt := &s.routes
	p := r.URL.Path
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
