package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/crystal-forge/crystal-forge/internal/api"
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
	cacheLn, err := bind("cache", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.CachePort)), "cache_port (or BUILD_SERVER_CACHE_PORT)")
	if err != nil {
		return err
	}
	defer cacheLn.Close()
	apiLn, err := bind("api", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.APIPort)), "api_port (or BUILD_SERVER_API_PORT)")
	if err != nil {
		return err
	}
	defer apiLn.Close()

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
		Repositories: orch.Repositories(),
		FleetCache:   cfg.FleetCache,
		Logger:       log,
	})
	if err := fleetSvc.ConfigureHosts(ctx, cfg.Hosts); err != nil {
		return err
	}

	var cacheUp atomic.Bool
	apiSrv := api.New(api.Config{
		Info:          api.Info{Hostname: cfg.Hostname, APIPort: cfg.APIPort, CachePort: cfg.CachePort, CacheURL: publicURL(ctx, cfg), PublicKey: key.Key.Public().String()},
		Orchestrator:  orch,
		Fleet:         fleetSvc,
		EnableWebUI:   cfg.EnableWebUI,
		CacheRunning:  cacheUp.Load,
		WebhookSecret: cfg.WebhookSecret,
		Logger:        log,
	})

	var wg sync.WaitGroup
	errc := make(chan error, 2)
	srvCtx, stopServers := context.WithCancel(ctx)
	defer stopServers()
	wg.Go(func() {
		errc <- serve(srvCtx, log, "cache", cacheLn, cacheServer(log, cacheSrv),
			serveHooks{listening: func() { cacheUp.Store(true) }, stopped: func() { cacheUp.Store(false) }})
	})
	wg.Go(func() {
		errc <- serve(srvCtx, log, "api", apiLn, stdServer(log, apiSrv, apiSrv.Close), serveHooks{})
	})
	// The first server to stop (an error, or the shutdown signal) stops all.
	err = <-errc
	stopServers()
	wg.Wait()
	if e := <-errc; err == nil {
		err = e
	}
	// Running builds are interrupted and record it before we exit.
	stopBuilds()
	orch.Wait()
	return err
}

// publicURL is the cache's URL as clients reach it: public_url, or this
// host's FQDN (the key name, the hostname setting, need not resolve).
func publicURL(ctx context.Context, cfg *config.Config) string {
	if cfg.PublicURL != "" {
		return cfg.PublicURL
	}
	return "http://" + net.JoinHostPort(hostname.FQDN(ctx), strconv.Itoa(cfg.CachePort))
}
