package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"

	"github.com/crystal-forge/crystal-forge/internal/cachegc"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
)

// defaultServerDB is the server's database with the spec's data_dir.
const defaultServerDB = "/var/lib/nix-build-server/crystal-forge.db"

// runCacheTool runs `crystal-forge cache gc|pin|unpin|pins`; ok is false
// when args name none of them (then it is the cache server).
func runCacheTool(ctx context.Context, args []string, stdout, stderr io.Writer) (ok bool, err error) {
	if len(args) == 0 {
		return false, nil
	}
	switch args[0] {
	case "gc":
		return true, runCacheGC(ctx, args[1:], stdout, stderr)
	case "pin":
		return true, runCachePin(ctx, args[1:], stdout, stderr)
	case "unpin":
		return true, runCacheUnpin(ctx, args[1:], stdout, stderr)
	case "pins":
		return true, runCachePins(ctx, args[1:], stdout, stderr)
	}
	return false, nil
}

// openStorage opens --storage, which these commands require.
func openStorage(ctx context.Context, storage string) (objstore.Store, error) {
	if storage == "" {
		return nil, errors.New("--storage is required: the cache's storage URL (dir:///path or s3://bucket?endpoint=...)")
	}
	return objstore.Open(ctx, storage, objstore.Options{})
}

func runCacheGC(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cache gc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storage := fs.String("storage", "", "the cache's storage URL: dir:///path or s3://bucket?endpoint=URL&region=R")
	retention := fs.Duration("retention", cachegc.DefaultRetention, "keep every object younger than this, reachable or not")
	dryRun := fs.Bool("dry-run", false, "list what would be deleted, delete nothing")
	dsn := fs.String("db", defaultServerDB, "the server's database (its roots: newest successful builds, hosts' systems): a SQLite file or postgres://...")
	noDB := fs.Bool("no-db", false, "no server database: the roots are the pins alone (a standalone cache)")
	if err := parse(fs, args); err != nil {
		return err
	}
	var roots []string
	if !*noDB {
		r, err := serverRoots(ctx, *dsn)
		if err != nil {
			return err
		}
		roots = r
	}
	s, err := openStorage(ctx, *storage)
	if err != nil {
		return err
	}
	verb := "deleted"
	if *dryRun {
		verb = "would delete"
	}
	rep, err := cachegc.Collect(ctx, s, cachegc.Options{
		Roots: roots, Retention: *retention, DryRun: *dryRun,
		Deleted: func(i objstore.Info) { fmt.Fprintf(stdout, "%s %s (%d bytes)\n", verb, i.Key, i.Size) },
	})
	if err != nil {
		return fmt.Errorf("cache gc of %s: %w", s, err)
	}
	fmt.Fprintf(stdout, "%s %d narinfos and %d NARs (%d bytes); kept %d narinfos and %d NARs; %d of %d roots in the cache\n",
		verb, rep.DeletedNarinfos, rep.DeletedNars, rep.DeletedBytes, rep.KeptNarinfos, rep.KeptNars, rep.RootsInBackend, rep.Roots)
	return nil
}

// serverRoots reads the roots from the server's database, which must
// exist: a gc without them would delete what the fleet runs.
func serverRoots(ctx context.Context, dsn string) ([]string, error) {
	if !strings.Contains(dsn, "://") {
		if _, err := os.Stat(dsn); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("server database %s does not exist: pass --db with the server's database (<data_dir>/crystal-forge.db, or its database setting), or --no-db to keep only pinned and recent paths", dsn)
		}
	}
	d, err := db.Open(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("open the server's database: %w", err)
	}
	roots, err := d.CacheRoots(ctx)
	if cerr := d.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close the server's database: %w", cerr)
	}
	return roots, err
}

func runCachePin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cache pin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storage := fs.String("storage", "", "the cache's storage URL")
	name := fs.String("name", "", "the pin's name (default: the store path's base name)")
	pos, err := positional(fs, args, 1, "cache pin --storage URL [--name NAME] STORE-PATH", stderr)
	if err != nil {
		return err
	}
	s, err := openStorage(ctx, *storage)
	if err != nil {
		return err
	}
	n, err := cachegc.Pin(ctx, s, pos[0], *name)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "pinned %s as %s\n", pos[0], n)
	return nil
}

func runCacheUnpin(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cache unpin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storage := fs.String("storage", "", "the cache's storage URL")
	pos, err := positional(fs, args, 1, "cache unpin --storage URL NAME|STORE-PATH", stderr)
	if err != nil {
		return err
	}
	s, err := openStorage(ctx, *storage)
	if err != nil {
		return err
	}
	n, err := cachegc.Unpin(ctx, s, pos[0])
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("no pin named %s or of that store path (crystal-forge cache pins lists them)", pos[0])
	}
	fmt.Fprintf(stdout, "removed %d pin(s)\n", n)
	return nil
}

func runCachePins(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cache pins", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storage := fs.String("storage", "", "the cache's storage URL")
	if err := parse(fs, args); err != nil {
		return err
	}
	s, err := openStorage(ctx, *storage)
	if err != nil {
		return err
	}
	pins, err := cachegc.Pins(ctx, s)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(pins))
	for n := range pins {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(stdout, "%s\t%s\n", n, pins[n])
	}
	return nil
}
