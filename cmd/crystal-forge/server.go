package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/crystal-forge/crystal-forge/internal/api"
	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/demo"
	"github.com/crystal-forge/crystal-forge/internal/fleet"
	"github.com/crystal-forge/crystal-forge/internal/hostname"
	"github.com/crystal-forge/crystal-forge/internal/keygen"
	"github.com/crystal-forge/crystal-forge/internal/nixcli"
	"github.com/crystal-forge/crystal-forge/internal/push"
	"github.com/crystal-forge/crystal-forge/internal/signing"
	"github.com/crystal-forge/crystal-forge/internal/tailnet"
)

// runServer is the all-in-one server: key init, binary cache, build
// orchestrator, API and web page, in one process.
func runServer(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "TOML configuration file (see docs/configuration.md)")
	dataDir := fs.String("data-dir", "", "override data_dir (and BUILD_SERVER_DATA_DIR)")
	keyFile := fs.String("key-file", "", "override key_file")
	dbFlag := fs.String("db", "", "override database: a SQLite file, sqlite:///path or postgres://… (docs/scaling.md)")
	withDemo := fs.Bool("demo", false, "create and register a small local demo flake repository")
	noLocalBuilder := fs.Bool("no-local-builder", false, "run no build jobs in this process: `crystal-forge builder` processes sharing the database run them")
	var cf cacheFlags
	cf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*configFile, os.Getenv)
	if err != nil {
		return err
	}
	if *dataDir != "" {
		cfg.DataDir, _ = filepath.Abs(*dataDir)
	}
	if *keyFile != "" {
		cfg.KeyFile = *keyFile
	}
	if *dbFlag != "" {
		cfg.Database = *dbFlag
	}
	// Bind before creating anything: a port in use stops the server
	// before a data directory or signing key is made for nothing.
	// With tailnet_only nothing listens outside the tailnet.
	var cacheLn, apiLn net.Listener
	if !cfg.Tailscale.TailnetOnly {
		if cacheLn, err = bind("cache", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.CachePort)), "cache_port (or BUILD_SERVER_CACHE_PORT)"); err != nil {
			return err
		}
		defer cacheLn.Close()
		if apiLn, err = bind("api", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.APIPort)), "api_port (or BUILD_SERVER_API_PORT)"); err != nil {
			return err
		}
		defer apiLn.Close()
	}

	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data directory %s: %w", cfg.DataDir, err)
	}

	// Agent 1 next: the key exists before anything serves.
	key, err := keygen.Ensure(keygen.Options{KeyFile: cfg.KeyFile, Name: cfg.Hostname, Owner: cfg.KeyOwner, Logger: log})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, key.Key.Public().String())

	dsn := cfg.Database
	if dsn == "" {
		dsn = filepath.Join(cfg.DataDir, "crystal-forge.db")
	}
	database, err := db.Open(ctx, dsn)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer closeLogged(log, "database", database)
	log.Info("database open", "engine", database.Dialect())

	var nixEnv []string
	if cfg.NixPath != "" {
		nixEnv = append(nixEnv, "NIX_PATH="+cfg.NixPath)
	}
	if *withDemo {
		// The demo must build on an offline machine without waiting on
		// substituters; a real server keeps the user's Nix settings.
		nixEnv = append(nixEnv, "NIX_CONFIG="+demo.NixConfig(os.Getenv("NIX_CONFIG")))
	}
	nix, err := nixcli.Detect(ctx, nixEnv)
	if err != nil {
		return err
	}
	log.Info("nix found", "version", nix.Version)

	if *withDemo {
		r, err := demo.Ensure(ctx, cfg.DataDir, cfg.System)
		if err != nil {
			return err
		}
		if _, exists := cfg.Repository(r.Name); !exists {
			cfg.Repositories = append(cfg.Repositories, r)
		}
	}

	if cf.noLocalStore {
		return fmt.Errorf("--no-local-store is for `crystal-forge cache`: the server serves what it builds from its local store")
	}
	// The cache's storage: flags first, then the configuration file.
	if cf.storage == "" {
		cf.storage = cfg.Storage
	}
	if cf.storage == "" {
		cf.storage = "dir://" + filepath.Join(cfg.DataDir, "cache")
	}
	if cf.uploadTokenFile == "" {
		cf.uploadTokenFile = cfg.UploadTokenFile
	}
	// API tokens of role trigger or admin may upload (docs/security.md).
	cf.apiTokens = &auth.Tokens{DB: database}
	cacheSrv, st, err := cf.open(ctx, log, []*signing.SecretKey{key.Key})
	if err != nil {
		return err
	}
	defer closeLogged(log, "nix store database", st)
	// Pushes of every build's outputs (docs/caches.md), resumed from a
	// previous run before any new build can queue one.
	var pusher *push.Service
	if len(cfg.Push) > 0 {
		dests := make([]push.Destination, len(cfg.Push))
		for i, p := range cfg.Push {
			dests[i] = push.Destination{Name: p.Name, URL: p.URL, TokenFile: p.TokenFile}
		}
		pushTmp := filepath.Join(cfg.DataDir, "tmp", "push")
		if err := os.MkdirAll(pushTmp, 0o700); err != nil {
			return fmt.Errorf("create push directory: %w", err)
		}
		if pusher, err = push.New(push.Config{DB: database, Store: st, Keys: []*signing.SecretKey{key.Key}, Destinations: dests, TempDir: pushTmp, Logger: log}); err != nil {
			return err
		}
	}
	pushCtx, stopPushes := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		// Pushes in flight stop and stay queued for the next start; they
		// use the store and the database, closed after this.
		stopPushes()
		if pusher != nil {
			pusher.Wait()
		}
	}()
	var buildPusher build.Pusher
	if pusher != nil {
		if err := pusher.Start(pushCtx); err != nil {
			return err
		}
		buildPusher = pusher
	}

	orch, err := build.New(build.Config{
		DataDir:          cfg.DataDir,
		Repositories:     cfg.Repositories,
		MaxParallel:      cfg.MaxParallelBuilds,
		Timeout:          cfg.BuildTimeout.Duration,
		GitTimeout:       cfg.GitTimeout.Duration,
		PollInterval:     cfg.PollInterval.Duration,
		System:           cfg.System,
		HomeManagerFlake: cfg.HomeManagerFlake,
		Nix:              nix,
		DB:               database,
		Pusher:           buildPusher,
		Logger:           log,
		NoLocalBuilder:   *noLocalBuilder,
		Version:          version,
	})
	if err != nil {
		return err
	}
	buildCtx, stopBuilds := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBuilds()
	if err := orch.Start(buildCtx); err != nil {
		return err
	}

	fleetSvc := fleet.New(fleet.Config{
		DB:           database,
		Store:        st,
		Key:          key.Key,
		Enrolment:    cfg.FleetEnrolment,
		MaxPending:   cfg.MaxPendingHosts,
		EnrolPerHour: cfg.EnrolmentsPerHour,
		Repositories: orch.Repositories(),
		FleetCache:   cfg.FleetCache,
		Logger:       log,
	})
	if err := fleetSvc.ConfigureHosts(ctx, cfg.Hosts); err != nil {
		return err
	}

	info := api.Info{Hostname: cfg.Hostname, APIPort: cfg.APIPort, CachePort: cfg.CachePort, CacheURL: publicURL(ctx, cfg), PublicKey: key.Key.Public().String()}
	authCfg := api.AuthConfig{
		RequireAuthForRead: cfg.RequireAuthForRead,
		DistrustLoopback:   !cfg.TrustLoopback,
		AllowedHosts:       serverNames(ctx, cfg),
	}
	for _, a := range cfg.ACL {
		role, err := auth.ParseRole(a.Role)
		if err != nil {
			return fmt.Errorf("config: acl %s: %w", a.Match, err)
		}
		authCfg.ACL = append(authCfg.ACL, auth.ACLEntry{Match: a.Match, Role: role})
	}
	var resolvers []auth.PeerResolver
	var node *tailnet.Node
	if cfg.Tailscale.Enable {
		if node, err = startTailnet(ctx, cfg, log); err != nil {
			return err
		}
		defer closeLogged(log, "tailnet node", node)
		resolvers = append(resolvers, node.Resolver())
		if node.DNSName != "" {
			// Clients on the tailnet reach the cache by its MagicDNS name,
			// unless public_url says otherwise.
			if cfg.PublicURL == "" {
				info.CacheURL = fmt.Sprintf("http://%s:%d", node.DNSName, cfg.CachePort)
			}
			short, _, _ := strings.Cut(node.DNSName, ".")
			authCfg.AllowedHosts = append(authCfg.AllowedHosts, node.DNSName, short)
		}
	}
	if cfg.Tailscale.UseTailscaled {
		resolvers = append(resolvers, tailnet.SystemTailscaled(cfg.Tailscale.TailscaledSocket))
	}
	authCfg.Tailnet = tailnet.First(resolvers...)

	var cacheUp atomic.Bool
	apiSrv := api.New(api.Config{
		Info:          info,
		Orchestrator:  orch,
		Fleet:         fleetSvc,
		EnableWebUI:   cfg.EnableWebUI,
		CacheRunning:  cacheUp.Load,
		WebhookSecret: cfg.WebhookSecret,
		Auth:          authCfg,
		Logger:        log,
	})

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	srvCtx, stopServers := context.WithCancel(ctx)
	defer stopServers()
	servers := 0
	start := func(name string, ln net.Listener, hs httpServer, hooks serveHooks) {
		servers++
		hooks.perClient = cfg.MaxConnectionsPerClient
		wg.Go(func() { errc <- serve(srvCtx, log, name, ln, hs, hooks) })
	}
	cacheHooks := serveHooks{listening: func() { cacheUp.Store(true) }, stopped: func() { cacheUp.Store(false) }}
	if !cfg.Tailscale.TailnetOnly {
		start("cache", cacheLn, cacheServer(log, cacheSrv), cacheHooks)
		cacheHooks = serveHooks{}
		start("api", apiLn, stdServer(log, apiSrv, apiSrv.Close), serveHooks{})
	}
	if node != nil {
		for _, l := range []struct {
			name string
			port int
			hs   httpServer
			h    serveHooks
		}{
			{"cache (tailnet)", cfg.CachePort, cacheServer(log, cacheSrv), cacheHooks},
			{"api (tailnet)", cfg.APIPort, tailnetAPIServer(log, apiSrv), serveHooks{}},
		} {
			ln, err := node.Listen(":" + strconv.Itoa(l.port))
			if err != nil {
				stopServers()
				wg.Wait()
				return fmt.Errorf("%s: listen on the tailnet: %w", l.name, err)
			}
			start(l.name, ln, l.hs, l.h)
		}
	}
	// The first server to stop (an error, or the shutdown signal) stops all.
	err = <-errc
	stopServers()
	wg.Wait()
	for range servers - 1 {
		if e := <-errc; err == nil {
			err = e
		}
	}
	// Running builds are interrupted and record it before we exit.
	stopBuilds()
	orch.Wait()
	return err
}

// serverNames are the names a request's Host may carry (against DNS
// rebinding): the configured hostname, this machine's name and FQDN,
// public_url's host and allowed_hosts. localhost and IP addresses always pass.
func serverNames(ctx context.Context, cfg *config.Config) []string {
	names := []string{cfg.Hostname}
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, h)
	}
	names = append(names, hostname.FQDN(ctx))
	if u, err := url.Parse(cfg.PublicURL); err == nil && u.Hostname() != "" {
		names = append(names, u.Hostname())
	}
	return append(names, cfg.AllowedHosts...)
}

// startTailnet joins the tailnet as the [tailscale] section says.
func startTailnet(ctx context.Context, cfg *config.Config, log *slog.Logger) (*tailnet.Node, error) {
	t := cfg.Tailscale
	authKey, err := tailnet.ReadAuthKey(t.AuthKeyFile)
	if err != nil {
		return nil, err
	}
	name := t.Hostname
	if name == "" {
		name = cfg.Hostname
	}
	stateDir := t.StateDir
	if stateDir == "" {
		stateDir = filepath.Join(cfg.DataDir, "tailscale")
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("tailscale state directory: %w", err)
	}
	return tailnet.Start(ctx, tailnet.Config{Hostname: name, AuthKey: authKey, StateDir: stateDir, ControlURL: t.ControlURL, Logger: log})
}

// tailnetAPIServer serves the API on the tailnet listener, marking its
// requests so the node's WhoIs identifies them.
func tailnetAPIServer(log *slog.Logger, a *api.Server) *http.Server {
	hs := stdServer(log, a, a.Close)
	hs.ConnContext = tailnet.MarkConn
	return hs
}

// publicURL is the cache's URL as clients reach it: public_url, or this
// host's FQDN (the key name, the hostname setting, need not resolve).
func publicURL(ctx context.Context, cfg *config.Config) string {
	if cfg.PublicURL != "" {
		return cfg.PublicURL
	}
	return "http://" + net.JoinHostPort(hostname.FQDN(ctx), strconv.Itoa(cfg.CachePort))
}
