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
	"time"

	"github.com/crystal-forge/crystal-forge/internal/auth"
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
	// Auth says who may do what; the zero value is the spec's open reading
	// with loopback as admin.
	Auth   AuthConfig
	Logger *slog.Logger
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
	tokens    *auth.Tokens
	failures  *auth.Limiter
}

// New builds the API handler.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.CacheRunning == nil {
		cfg.CacheRunning = func() bool { return false }
	}
	if cfg.Auth.FailLimit <= 0 {
		cfg.Auth.FailLimit = 10
	}
	if cfg.Auth.FailWindow <= 0 {
		cfg.Auth.FailWindow = time.Minute
	}
	s := &Server{cfg: cfg, orch: cfg.Orchestrator, db: cfg.Orchestrator.DB(), log: cfg.Logger, mux: http.NewServeMux(), closing: make(chan struct{}),
		failures: auth.NewLimiter(cfg.Auth.FailLimit, cfg.Auth.FailWindow)}
	s.tokens = &auth.Tokens{DB: s.db}
	// Every route says what it needs (docs/security.md).
	// The spec's endpoints.
	s.handle("GET /{$}", accessPublic, s.index)
	s.handle("GET /builds/{id}", accessPublic, s.buildPage)
	s.handle("GET /info", accessRead, s.info)
	s.handle("POST /build/trigger/{repository}", accessTrigger, s.specTrigger)
	s.handle("GET /build/status/{repository}", accessRead, s.specStatus)
	s.handle("GET /build/logs/{repository}", accessRead, s.specLogs)
	s.handle("GET /health", accessPublic, s.health)
	// The versioned API (docs/api.md).
	s.handle("GET /api/v1/repositories", accessRead, s.listRepositories)
	s.handle("GET /api/v1/repositories/{repository}", accessRead, s.getRepository)
	s.handle("GET /api/v1/repositories/{repository}/builds", accessRead, s.listBuilds)
	s.handle("POST /api/v1/repositories/{repository}/builds", accessTrigger, s.triggerBuild)
	s.handle("GET /api/v1/builds/{id}", accessRead, s.getBuild)
	s.handle("GET /api/v1/builds/{id}/log", accessRead, s.buildLog)
	s.handle("GET /api/v1/builds/{id}/results/{result}/log", accessRead, s.resultLog)
	s.handle("POST /api/v1/builds/{id}/cancel", accessTrigger, s.cancelBuild)
	s.handle("GET /api/v1/workers", accessRead, s.listWorkers)
	s.handle("GET /api/v1/queue", accessRead, s.queue)
	s.handle("GET /api/v1/events", accessRead, s.events)
	s.handle("POST /api/v1/webhooks/{repository}", accessSigned, s.webhook)
	s.handle("GET /api/v1/whoami", accessPublic, s.whoami)
	s.handle("GET /api/v1/tokens", accessAdmin, s.listTokens)
	s.handle("POST /api/v1/tokens", accessAdmin, s.createToken)
	s.handle("DELETE /api/v1/tokens/{name}", accessAdmin, s.revokeToken)
	s.mux.Handle("GET /static/", s.guard(accessPublic, web.Static()))
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
