package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"syscall"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/cache"
	"github.com/crystal-forge/crystal-forge/internal/connlimit"
	"github.com/crystal-forge/crystal-forge/internal/http1"
	"github.com/crystal-forge/crystal-forge/internal/keygen"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// cacheFlags are the binary cache's serving settings, shared by `cache`
// and `server` (which differ in where the signing keys come from).
type cacheFlags struct {
	priority    int
	compression string
	narMemMiB   int
	store       nixstore.Config

	// Storage backend and uploads (docs/caches.md).
	storage         string
	noLocalStore    bool
	uploadTokenFile string
	signaturePolicy string
	trustedKeys     stringList
	maxUploadMiB    int64
	stagingDir      string
	// apiTokens, set by the server, also authenticate uploads (and turn
	// them on without a token file).
	apiTokens cache.Authenticator
}

func (c *cacheFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&c.priority, "priority", 40, "Priority advertised in nix-cache-info (lower is preferred)")
	fs.StringVar(&c.compression, "compression", cache.CompressionZstd, "on-the-fly NAR compression when the client accepts it: zstd or none")
	fs.IntVar(&c.narMemMiB, "small-nar-memory", 64, "MiB of memory for keeping NARs of up to 64 KiB ready to send; 0 turns it off")
	fs.StringVar(&c.store.StoreDir, "store-dir", "/nix/store", "Nix store directory")
	fs.StringVar(&c.store.RealStoreDir, "real-store-dir", "", "where the store's files are on disk, for a chroot store (default: --store-dir)")
	fs.StringVar(&c.store.DBPath, "nix-db", "/nix/var/nix/db/db.sqlite", "Nix's store database, opened read-only")
	fs.StringVar(&c.store.LogDir, "nix-log-dir", "/nix/var/log/nix", "Nix's build log directory")
	fs.StringVar(&c.storage, "storage", "", "storage backend for uploaded paths: dir:///path or s3://bucket?endpoint=URL&region=R (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE)")
	fs.BoolVar(&c.noLocalStore, "no-local-store", false, "serve only the storage backend, not the local Nix store (a central cache on a machine without Nix)")
	fs.StringVar(&c.uploadTokenFile, "upload-token-file", "", "file of upload tokens, one per line (\"token\" or \"name:token\"); turns on uploads (PUT) into --storage")
	fs.StringVar(&c.signaturePolicy, "signature-policy", string(cache.PolicySign), "uploads: sign (accept unsigned paths, sign with our keys) or require-trusted (need a signature by a --trusted-public-key)")
	fs.Var(&c.trustedKeys, "trusted-public-key", "public key (name:base64) whose signatures uploads may carry under require-trusted; repeatable")
	fs.Int64Var(&c.maxUploadMiB, "max-upload-size", cache.DefaultMaxNarBytes>>20, "largest NAR file accepted in one upload, in MiB")
	fs.StringVar(&c.stagingDir, "staging-dir", "", "where uploaded NARs over 4 MiB (or beyond 256 MiB of them in memory) wait for their narinfo (default: <dir>/.staging for a dir:// backend, else the temporary directory)")
}

// open opens the store and the storage backend and builds the cache over
// them, signing with keys. The caller closes the store, which is nil with
// --no-local-store.
func (c *cacheFlags) open(ctx context.Context, log *slog.Logger, keys []*signing.SecretKey) (*cache.Server, *nixstore.Store, error) {
	cfg, err := c.backendConfig(ctx)
	if err != nil {
		return nil, nil, err
	}
	var store *nixstore.Store
	if !c.noLocalStore {
		if store, err = nixstore.Open(ctx, c.store); err != nil {
			return nil, nil, err
		}
	}
	narMem := int64(c.narMemMiB) << 20
	if narMem <= 0 {
		narMem = -1 // off
	}
	cfg.Store, cfg.Keys, cfg.Priority, cfg.Compression, cfg.SmallNarCacheBytes, cfg.Logger = store, keys, c.priority, c.compression, narMem, log
	cfg.StoreDir = c.store.StoreDir
	srv, err := cache.New(cfg)
	if err == nil {
		err = srv.WriteCacheInfo(ctx)
	}
	if err != nil {
		if store != nil {
			err = errors.Join(err, store.Close())
		}
		return nil, nil, err
	}
	if cfg.Backend != nil {
		log.Info("cache storage", "backend", cfg.Backend.String(), "local_store", store != nil, "uploads", cfg.Uploads != nil)
	}
	return srv, store, nil
}

// backendConfig opens --storage and sets up uploads.
func (c *cacheFlags) backendConfig(ctx context.Context) (cache.Config, error) {
	var cfg cache.Config
	if c.storage == "" {
		switch {
		case c.noLocalStore:
			return cfg, errors.New("--no-local-store needs --storage: there would be nothing to serve")
		case c.uploadTokenFile != "":
			return cfg, errors.New("--upload-token-file needs --storage: uploads go into the storage backend (e.g. --storage dir:///var/lib/crystal-forge/cache)")
		}
		return cfg, nil
	}
	backend, err := objstore.Open(ctx, c.storage, objstore.Options{})
	if err != nil {
		return cfg, err
	}
	cfg.Backend = backend
	var auths cache.AnyAuthenticator
	if c.apiTokens != nil {
		auths = append(auths, c.apiTokens)
	}
	if c.uploadTokenFile != "" {
		tokens, err := cache.LoadTokenFile(c.uploadTokenFile)
		if err != nil {
			return cfg, err
		}
		auths = append(auths, tokens)
	}
	if len(auths) == 0 {
		return cfg, nil
	}
	up := &cache.UploadConfig{Auth: auths, Policy: cache.SignaturePolicy(c.signaturePolicy), MaxNarBytes: c.maxUploadMiB << 20, StagingDir: c.stagingDir}
	for _, k := range c.trustedKeys {
		pk, err := signing.ParsePublicKey(k)
		if err != nil {
			return cfg, fmt.Errorf("--trusted-public-key %q: %w", k, err)
		}
		up.TrustedKeys = append(up.TrustedKeys, pk)
	}
	if d, ok := backend.(*objstore.Dir); ok && up.StagingDir == "" {
		up.StagingDir = d.StagingDir() // same filesystem as the objects
	}
	cfg.Uploads = up
	return cfg, nil
}

func runCache(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("cache", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "[::]:5000", "address to serve the cache on")
	pprofAddr := fs.String("pprof-listen", "", "serve Go's profiler (net/http/pprof) on this address, e.g. 127.0.0.1:6060; off when empty")
	var keyFiles stringList
	fs.Var(&keyFiles, "key-file", "secret signing key file; repeat to sign with several keys (default "+keygen.DefaultKeyFile+")")
	var cf cacheFlags
	cf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(keyFiles) == 0 {
		keyFiles = stringList{keygen.DefaultKeyFile}
	}
	// Keys first, so a missing key is reported even on a machine without a store.
	var keys []*signing.SecretKey
	for _, f := range keyFiles {
		k, err := signing.LoadSecretKeyFile(f)
		if err != nil {
			return err
		}
		keys = append(keys, k)
	}
	ln, err := bind("cache", *listen, "--listen")
	if err != nil {
		return err
	}
	defer ln.Close()
	var pprofLn net.Listener
	if *pprofAddr != "" {
		if pprofLn, err = bind("pprof", *pprofAddr, "--pprof-listen"); err != nil {
			return err
		}
		defer pprofLn.Close()
	}
	srv, store, err := cf.open(ctx, log, keys)
	if err != nil {
		return err
	}
	if store != nil {
		defer closeLogged(log, "nix store database", store)
	}
	if pprofLn != nil {
		go func() {
			if err := serve(ctx, log, "pprof", pprofLn, stdServer(log, pprofHandler(), nil), serveHooks{}); err != nil {
				log.Error("pprof", "err", err)
			}
		}()
	}
	return serve(ctx, log, "cache", ln, cacheServer(log, srv), serveHooks{})
}

// serveHooks are optional callbacks around a server's life, and its
// listener's bound.
type serveHooks struct {
	listening func() // the socket is bound
	stopped   func() // the server no longer serves
	// perClient bounds the connections one client address may hold open
	// (0: unbounded).
	perClient int
}

// httpServer is what serve runs: net/http's server, or http1's for the
// binary cache.
type httpServer interface {
	Serve(net.Listener) error
	Shutdown(context.Context) error
}

// stdServer is net/http's server for h, for everything but the cache.
// onShutdown, when set, is called as shutdown begins (to end streams).
// Idle keep-alive connections close after a minute, headers must arrive
// within 10 s and bodies within 30 s; no ReadTimeout or WriteTimeout,
// which would cut the long-lived event and log streams.
func stdServer(log *slog.Logger, h http.Handler, onShutdown func()) *http.Server {
	hs := &http.Server{
		Handler:           connlimit.BodyDeadline(h, 30*time.Second),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if onShutdown != nil {
		hs.RegisterOnShutdown(onShutdown)
	}
	return hs
}

// cacheServer serves the binary cache with http1, which costs Nix's
// sequential narinfo and NAR requests less than net/http (docs/benchmarks.md).
func cacheServer(log *slog.Logger, h http.Handler) *http1.Server {
	return &http1.Server{Handler: h, Logger: log}
}

// bind listens on addr for service name; setting names what configures addr,
// for the error.
func bind(name, addr, setting string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s: listen on %s: the port is already in use: set %s to a free port, or stop what listens there: %w", name, addr, setting, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: listen on %s (%s): %w", name, addr, setting, err)
	}
	return ln, nil
}

// serve runs hs on ln until ctx ends, then drains for up to 10 seconds.
func serve(ctx context.Context, log *slog.Logger, name string, ln net.Listener, hs httpServer, hooks serveHooks) error {
	ln = connlimit.New(ln, hooks.perClient, log.With("service", name))
	if hooks.listening != nil {
		hooks.listening()
	}
	if hooks.stopped != nil {
		defer hooks.stopped()
	}
	log.Info("listening", "service", name, "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("%s: %w", name, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: shutdown: %w", name, err)
	}
	log.Info("stopped", "service", name)
	return nil
}

// pprofHandler serves the profiler on its own mux, never on a public port.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
