package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/build"
	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/nixcli"
	"github.com/crystal-forge/crystal-forge/internal/worker"
)

// runBuilder is a build worker: it takes build jobs from the shared
// database and runs them with the server's own code. ctx ending (the first
// SIGTERM or SIGINT) drains it: no new jobs, the running ones finish; a
// second signal stops them (they go back to the queue).
func runBuilder(ctx context.Context, args []string, stderr io.Writer, log *slog.Logger) error {
	defaults := config.Default()
	host, _ := os.Hostname()
	fs := flag.NewFlagSet("builder", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("db", "", "the server's database: postgres://… (or, on the server's machine, its SQLite file)")
	jobs := fs.Int("jobs", 1, "jobs to run at once")
	systems := fs.String("systems", defaults.System, "comma-separated Nix systems this worker builds; the first is the one it evaluates for")
	name := fs.String("name", host, "this worker's name in the queue (unique among workers)")
	dataDir := fs.String("data-dir", "/var/lib/crystal-forge-builder", "directory for clones, GC roots and scratch files")
	hmFlake := fs.String("home-manager-flake", defaults.HomeManagerFlake, "flake reference of home-manager, for flakes with homeManagerModules")
	gitTimeout := fs.Duration("git-timeout", defaults.GitTimeout.Duration, "fail a clone or fetch silent this long (0: never)")
	lease := fs.Duration("lease", 30*time.Second, "how long a claimed job stays this worker's without renewal (renewed every third of it)")
	pushTo := fs.String("push-to", "", "binary cache to copy every built output to, with its closure (the server's cache: http://HOST:5000); needed when this builder has a Nix store of its own")
	pushNetrc := fs.String("push-netrc", "", "Nix netrc-file with the cache's upload token (docs/caches.md)")
	if err := parse(fs, args); err != nil {
		return err
	}
	var sys []string
	for _, s := range strings.Split(*systems, ",") {
		if s = strings.TrimSpace(s); s != "" {
			sys = append(sys, s)
		}
	}
	switch {
	case *dsn == "":
		return fmt.Errorf("--db is required: the database the server uses (its `database` setting)")
	case *jobs < 1:
		return fmt.Errorf("--jobs %d: must be at least 1", *jobs)
	case len(sys) == 0:
		return fmt.Errorf("--systems is empty: name at least one Nix system, e.g. %s", defaults.System)
	case *name == "":
		return fmt.Errorf("--name is empty and the host name is unknown: name this worker")
	case *lease < 3*time.Second:
		return fmt.Errorf("--lease %s: must be at least 3s", *lease)
	case *pushNetrc != "" && *pushTo == "":
		return fmt.Errorf("--push-netrc without --push-to: name the cache to push to")
	}
	abs, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}

	// The second signal kills; the first (ctx) drains.
	kill, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	go func() {
		<-ctx.Done()
		log.Info("draining: no new jobs; the running ones finish (signal again to stop them)")
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		defer signal.Stop(sig)
		select {
		case <-sig:
			log.Warn("stopping the running jobs; they go back to the queue")
			stop()
		case <-kill.Done():
		}
	}()

	database, err := db.Open(kill, *dsn)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer closeLogged(log, "database", database)
	nix, err := nixcli.Detect(kill, nil)
	if err != nil {
		return err
	}
	runner, err := build.NewRunner(build.RunnerConfig{DataDir: abs, System: sys[0], HomeManagerFlake: *hmFlake,
		GitTimeout: *gitTimeout, Nix: nix, DB: database, Logger: log, PushTo: *pushTo, PushNetrc: *pushNetrc})
	if err != nil {
		return err
	}
	w := worker.New(worker.Config{DB: database, Executor: runner, Name: *name, Host: host, Systems: sys, Capacity: *jobs,
		Version: version, Lease: *lease, Logger: log})
	log.Info("builder started", "name", *name, "systems", sys, "jobs", *jobs, "nix", nix.Version)
	err = w.Run(ctx, kill)
	if errors.Is(err, context.Canceled) && kill.Err() != nil {
		return nil
	}
	return err
}
