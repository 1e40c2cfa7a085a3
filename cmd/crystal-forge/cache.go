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
	"time"

	"github.com/crystal-forge/crystal-forge/internal/cache"
	"github.com/crystal-forge/crystal-forge/internal/connlimit"
	"github.com/crystal-forge/crystal-forge/internal/http1"
	"github.com/crystal-forge/crystal-forge/internal/keygen"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// cacheFlags are the binary cache's serving settings, shared by `cache`
// and `server` (which differ in where the signing keys come from).
type cacheFlags struct {
	priority    int
	compression string
	narMemMiB   int
	store       nixstore.Config
}

func (c *cacheFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&c.priority, "priority", 40, "Priority advertised in nix-cache-info (lower is preferred)")
	fs.StringVar(&c.compression, "compression", cache.CompressionZstd, "on-the-fly NAR compression when the client accepts it: zstd or none")
	fs.IntVar(&c.narMemMiB, "small-nar-memory", 64, "MiB of memory for keeping NARs of up to 64 KiB ready to send; 0 turns it off")
	fs.StringVar(&c.store.StoreDir, "store-dir", "/nix/store", "Nix store directory")
	fs.StringVar(&c.store.RealStoreDir, "real-store-dir", "", "where the store's files are on disk, for a chroot store (default: --store-dir)")
	fs.StringVar(&c.store.DBPath, "nix-db", "/nix/var/nix/db/db.sqlite", "Nix's store database, opened read-only")
	fs.StringVar(&c.store.LogDir, "nix-log-dir", "/nix/var/log/nix", "Nix's build log directory")
}

// open opens the store and builds the cache over it, signing with keys.
// The caller closes the store.
func (c *cacheFlags) open(ctx context.Context, log *slog.Logger, keys []*signing.SecretKey) (*cache.Server, *nixstore.Store, error) {
	store, err := nixstore.Open(ctx, c.store)
	if err != nil {
		return nil, nil, err
	}
	narMem := int64(c.narMemMiB) << 20
	if narMem <= 0 {
		narMem = -1 // off
	}
	srv, err := cache.New(cache.Config{Store: store, Keys: keys, Priority: c.priority, Compression: c.compression, SmallNarCacheBytes: narMem, Logger: log})
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	return srv, store, nil
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
	srv, store, err := cf.open(ctx, log, keys)
	if err != nil {
		return err
	}
	defer store.Close()
	if *pprofAddr != "" {
		go func() {
			if err := serve(ctx, log, "pprof", *pprofAddr, stdServer(log, pprofHandler(), nil), serveHooks{}); err != nil {
				log.Error("pprof", "err", err)
			}
		}()
	}
	return serve(ctx, log, "cache", *listen, cacheServer(log, srv), serveHooks{})
}

// serveHooks are optional callbacks around a server's life, and its
// listener's bound.
type serveHooks struct {
	listening func() // the socket is bound
	stopped   func() // the server no longer serves
	// perClient bounds the connections one client address may hold open
	// (0: unbounded).
	perClient int
	// listener, when set, is served instead of listening on addr (the
	// tailnet's).
	listener net.Listener
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

// serve runs hs on addr until ctx ends, then drains for up to 10 seconds.
func serve(ctx context.Context, log *slog.Logger, name, addr string, hs httpServer, hooks serveHooks) error {
	ln := hooks.listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return fmt.Errorf("%s: listen on %s: %w", name, addr, err)
		}
	}
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
