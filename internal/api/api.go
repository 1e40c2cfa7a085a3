// Package api is the build server's HTTP API: the seed spec's endpoints
// (Agent 2) with their exact JSON, a versioned /api/v1, live events and
// logs over Server-Sent Events, push webhooks, and the web page.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
	"github.com/crystal-forge/crystal-forge/internal/requestid"
	"github.com/crystal-forge/crystal-forge/internal/web"
)

// Info is what /info reports about the server.
type Info struct {
	Hostname  string
	APIPort   int
	CachePort int
	// CacheURL is the cache's URL as clients reach it; empty means
	// http://<Hostname>:<CachePort>.
	CacheURL  string
	PublicKey string
}

// cacheURL is Info.CacheURL or its default.
func (i Info) cacheURL() string {
	if i.CacheURL != "" {
		return i.CacheURL
	}
	return "http://" + net.JoinHostPort(i.Hostname, strconv.Itoa(i.CachePort))
}

// Config configures the API.
type Config struct {
	Info         Info
	Orchestrator *build.Orchestrator
	EnableWebUI  bool
	// CacheRunning reports whether the binary cache is serving.
	CacheRunning func() bool
	// Fleet handles heartbeats and hosts; nil leaves the fleet API out.
	Fleet *fleet.Service
	// WebhookSecret is the default secret for push webhooks.
	WebhookSecret string
	Logger        *slog.Logger
}

// Server is the API's http.Handler.
type Server struct {
	cfg  Config
	orch *build.Orchestrator
	db   *db.DB
	log  *slog.Logger
	mux  *http.ServeMux
	// closing ends long-lived streams when the server shuts down.
	closing   chan struct{}
	closeOnce sync.Once
}

// New builds the API handler.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CacheRunning == nil {
		cfg.CacheRunning = func() bool { return false }
	}
	s := &Server{cfg: cfg, orch: cfg.Orchestrator, db: cfg.Orchestrator.DB(), log: cfg.Logger, mux: http.NewServeMux(), closing: make(chan struct{})}
	m := s.mux
	// The spec's endpoints.
	m.HandleFunc("GET /{$}", s.index)
	m.HandleFunc("GET /builds/{id}", s.buildPage)
	m.HandleFunc("GET /info", s.info)
	m.HandleFunc("POST /build/trigger/{repository}", s.specTrigger)
	m.HandleFunc("GET /build/status/{repository}", s.specStatus)
	m.HandleFunc("GET /build/logs/{repository}", s.specLogs)
	m.HandleFunc("GET /health", s.health)
	// The versioned API (docs/api.md).
	m.HandleFunc("GET /api/v1/repositories", s.listRepositories)
	m.HandleFunc("GET /api/v1/repositories/{repository}", s.getRepository)
	m.HandleFunc("GET /api/v1/repositories/{repository}/builds", s.listBuilds)
	m.HandleFunc("POST /api/v1/repositories/{repository}/builds", s.triggerBuild)
	m.HandleFunc("GET /api/v1/builds/{id}", s.getBuild)
	m.HandleFunc("GET /api/v1/builds/{id}/log", s.buildLog)
	m.HandleFunc("GET /api/v1/builds/{id}/results/{result}/log", s.resultLog)
	m.HandleFunc("POST /api/v1/builds/{id}/cancel", s.cancelBuild)
	m.HandleFunc("GET /api/v1/events", s.events)
	m.HandleFunc("POST /api/v1/webhooks/{repository}", s.webhook)
	m.Handle("GET /static/", web.Static())
	if cfg.Fleet != nil {
		s.registerFleet()
	}
	return s
}

// Close ends event and log streams, so a graceful shutdown need not wait
// for clients that would otherwise stay connected forever.
func (s *Server) Close() { s.closeOnce.Do(func() { close(s.closing) }) }

// streamContext is r's context, also ended by Close.
func (s *Server) streamContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// ServeHTTP implements http.Handler. A handler that panics (a bug) gets
// the same 500 as any internal error, logged with its stack.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		p := recover()
		if p == nil {
			return
		}
		if p == http.ErrAbortHandler {
			panic(p)
		}
		s.internalError(w, r, fmt.Errorf("panic: %v\n%s", p, debug.Stack()))
	}()
	s.mux.ServeHTTP(w, r)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only a bug can get here (every answer is one of our types);
		// ServeHTTP turns the panic into a logged 500.
		panic(fmt.Errorf("encode %T answer: %w", v, err))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// writeError answers in FastAPI's shape, {"detail": "..."}, which is what
// clients of the spec's Python server parse.
func writeError(w http.ResponseWriter, code int, detail string) {
	writeJSON(w, code, map[string]string{"detail": detail})
}

// internalError is the API's only way to answer 500. The answer says
// nothing about the cause (it could show SQL, paths, Go error text) but
// carries a request id; the log line with the whole error has the same id.
func (s *Server) internalError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return
	}
	id := requestid.New()
	s.log.Error("api request failed", "request_id", id, "method", r.Method, "path", r.URL.Path, "err", err)
	w.Header().Set(requestid.Header, id)
	writeError(w, http.StatusInternalServerError, "internal error; request id "+id)
}

// repository validates the {repository} path value: 400 when malformed,
// 404 when not configured. It returns "" after answering.
func (s *Server) repository(w http.ResponseWriter, r *http.Request) string {
	name := r.PathValue("repository")
	if !config.ValidName(name) {
		writeError(w, http.StatusBadRequest, "Invalid repository name")
		return ""
	}
	if _, ok := s.orch.Repository(name); !ok {
		writeError(w, http.StatusNotFound, "Repository not found")
		return ""
	}
	return name
}

// intParam parses an optional integer query parameter within [lo, hi].
func intParam(r *http.Request, key string, def, lo, hi int) (int, bool) {
	v := r.URL.Query().Get(key)
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return n, true
}
