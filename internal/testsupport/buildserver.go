package testsupport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
	"github.com/crystal-forge/crystal-forge/internal/nixcli"
	"github.com/crystal-forge/crystal-forge/internal/testsupport/testenv"
)

// OfflineNixEnv skips the test when Nix is not installed and otherwise
// returns the environment for the Nix commands of a server under test:
// offline (no substituters), flakes on, no sandbox, a private cache
// directory, and NIX_PATH=nixPath. Unlike RequireNix it leaves the
// process environment alone, so tests using it can run in parallel.
func OfflineNixEnv(t testing.TB, nixPath string) []string {
	t.Helper()
	for _, prog := range []string{"nix", "nix-store", "nix-build", "git"} {
		testenv.LookPath(t, "`make test` installs nix-bin and git", prog)
	}
	requireNixBuilds(t)
	return []string{
		"NIX_CONFIG=" + nixConfig,
		"NIX_PATH=" + nixPath,
		"XDG_CACHE_HOME=" + t.TempDir(),
	}
}

// BuildServerConfig configures StartBuildServer.
type BuildServerConfig struct {
	Repositories     []config.Repository
	MaxParallel      int
	Timeout          time.Duration
	GitTimeout       time.Duration
	PollInterval     time.Duration
	HomeManagerFlake string // default: a value that cannot be fetched
	NixPath          string // NIX_PATH of builds
	WebhookSecret    string
	EnableWebUI      bool
	CacheRunning     func() bool
	Info             api.Info
	// DataDir is the server's data directory; default a new temporary one.
	DataDir string
	// DB is the database to use; default the one Database names, opened
	// (and closed when the test ends; a given one is left to its owner).
	DB *db.DB
	// Database is the DSN StartBuildServer opens when DB is nil (for
	// PostgreSQL, pgtest.NewDatabase); default SQLite in DataDir.
	Database string
	// Fleet, when set, serves the fleet API (heartbeats, hosts, audit).
	Fleet *fleet.Service
	// NoLocalBuilder runs no in-process worker: build jobs wait for
	// workers the test starts.
	NoLocalBuilder bool
	// Auth is the API's access control; the zero value trusts loopback,
	// which every test client is.
	Auth api.AuthConfig
	// Logger receives the orchestrator's and the API's log; default the
	// test's log, warnings and up.
	Logger *slog.Logger
}

// BuildServer is a build orchestrator with its API on an httptest server, over
// a database (SQLite in the data directory by default) and the real nix and git.
type BuildServer struct {
	URL     string
	DataDir string
	DB      *db.DB
	Orch    *build.Orchestrator
	HTTP    *httptest.Server
}

// MainBranchRepo is a repository on branch main for a BuildServerConfig.
func MainBranchRepo(name, url string) config.Repository {
	return config.Repository{Name: name, URL: url, Branch: "main"}
}

// StartBuildServer starts the orchestrator (recovering builds a previous server
// left active) and the API. Builds run until the test ends; then they are
// interrupted and recorded before the database closes. A server without
// repositories never runs Nix, so it needs none: the fleet's tests use one
// to serve the fleet API on a machine without Nix.
func StartBuildServer(t testing.TB, cfg BuildServerConfig) *BuildServer {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.HomeManagerFlake == "" {
		cfg.HomeManagerFlake = "path:/nonexistent/home-manager"
	}
	if cfg.Info.Hostname == "" {
		cfg.Info = api.Info{Hostname: "test-host", APIPort: 8000, CachePort: 5000, PublicKey: "test-host:AAAA"}
	}
	ctx := t.Context()
	var (
		nix *nixcli.Nix
		err error
	)
	if len(cfg.Repositories) > 0 {
		if nix, err = nixcli.Detect(ctx, OfflineNixEnv(t, cfg.NixPath)); err != nil {
			t.Fatal(err)
		}
	}
	database := cfg.DB
	if database == nil {
		dsn := cfg.Database
		if dsn == "" {
			dsn = filepath.Join(cfg.DataDir, "crystal-forge.db")
		}
		database, err = db.Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		CloseAtCleanup(t, database)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	orch, err := build.New(build.Config{
		DataDir:          cfg.DataDir,
		Repositories:     cfg.Repositories,
		MaxParallel:      cfg.MaxParallel,
		Timeout:          cfg.Timeout,
		GitTimeout:       cfg.GitTimeout,
		PollInterval:     cfg.PollInterval,
		System:           config.DefaultSystem(),
		HomeManagerFlake: cfg.HomeManagerFlake,
		Nix:              nix,
		DB:               database,
		Logger:           logger,
		NoLocalBuilder:   cfg.NoLocalBuilder,
	})
	if err != nil {
		t.Fatal(err)
	}
	// t.Context ends before the cleanups run: builds are interrupted then,
	// and Wait lets them record their end before the database closes.
	if err := orch.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(orch.Wait)
	srv := httptest.NewServer(api.New(api.Config{
		Info:          cfg.Info,
		Orchestrator:  orch,
		EnableWebUI:   cfg.EnableWebUI,
		CacheRunning:  cfg.CacheRunning,
		WebhookSecret: cfg.WebhookSecret,
		Fleet:         cfg.Fleet,
		Auth:          cfg.Auth,
		Logger:        logger,
	}))
	t.Cleanup(srv.Close)
	return &BuildServer{URL: srv.URL, DataDir: cfg.DataDir, DB: database, Orch: orch, HTTP: srv}
}

// testWriter sends the server's log to the test log, until the test ends.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	if w.t.Context().Err() == nil {
		w.t.Logf("server: %s", bytes.TrimSuffix(p, []byte{'\n'}))
	}
	return len(p), nil
}

// Do sends a request and returns the status code and body.
func (s *BuildServer) Do(t testing.TB, method, path string, body []byte, header http.Header) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, s.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := s.HTTP.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, data
}

// JSON sends a request, checks the status code and decodes the JSON body
// into v (when not nil).
func (s *BuildServer) JSON(t testing.TB, method, path string, wantCode int, v any) {
	t.Helper()
	code, body := s.Do(t, method, path, nil, nil)
	if code != wantCode {
		t.Fatalf("%s %s = %d %s, want %d", method, path, code, body, wantCode)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, body, err)
		}
	}
}

// Trigger starts a build with POST /build/trigger/{repo}, checks it was
// triggered and returns its id.
func (s *BuildServer) Trigger(t testing.TB, repo string) int64 {
	t.Helper()
	var resp struct {
		Status  string `json:"status"`
		BuildID int64  `json:"build_id"`
	}
	s.JSON(t, "POST", "/build/trigger/"+repo, http.StatusOK, &resp)
	if resp.Status != "triggered" || resp.BuildID == 0 {
		t.Fatalf("POST /build/trigger/%s = %+v, want a triggered build", repo, resp)
	}
	return resp.BuildID
}

// SpecStatus returns GET /build/status/{repo}.
func (s *BuildServer) SpecStatus(t testing.TB, repo string) build.Status {
	t.Helper()
	var st build.Status
	s.JSON(t, "GET", "/build/status/"+repo, http.StatusOK, &st)
	return st
}

// Build returns GET /api/v1/builds/{id}: the build and its results.
func (s *BuildServer) Build(t testing.TB, id int64) api.Build {
	t.Helper()
	var b api.Build
	s.JSON(t, "GET", fmt.Sprintf("/api/v1/builds/%d", id), http.StatusOK, &b)
	if b.Build == nil {
		t.Fatalf("GET /api/v1/builds/%d: no build", id)
	}
	return b
}

// Log returns the whole log of a build, from GET /api/v1/builds/{id}/log.
func (s *BuildServer) Log(t testing.TB, id int64) string {
	t.Helper()
	code, body := s.Do(t, "GET", fmt.Sprintf("/api/v1/builds/%d/log", id), nil, nil)
	if code != http.StatusOK {
		t.Fatalf("GET /api/v1/builds/%d/log = %d %s", id, code, body)
	}
	return string(body)
}

// WaitFinished waits until build id is no longer queued or running and
// returns it with its results.
func (s *BuildServer) WaitFinished(t testing.TB, id int64) api.Build {
	t.Helper()
	var b api.Build
	WaitUntil(t, fmt.Sprintf("build %d to finish", id), func() bool {
		b = s.Build(t, id)
		return !b.Active()
	})
	return b
}

// RequireLogInOrder fails unless log contains every line of want, each as
// a whole line, in this order (other lines may come between).
func RequireLogInOrder(t testing.TB, log string, want ...string) {
	t.Helper()
	lines := strings.Split(log, "\n")
	i := 0
	for _, w := range want {
		for i < len(lines) && lines[i] != w {
			i++
		}
		if i == len(lines) {
			t.Fatalf("log lacks the line %q (in this order: %q); log:\n%s", w, want, log)
		}
		i++
	}
}
