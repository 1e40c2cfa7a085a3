// Package push sends builds' outputs, with their closures, to the configured
// destinations — another Crystal Forge cache over HTTP, S3 (or a
// directory) in the binary cache layout, or Attic — as recorded jobs with
// retries, so a fleet that pulls from those caches gets what was built.
package push

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/nar"
	"github.com/crystal-forge/crystal-forge/internal/narinfo"
	"github.com/crystal-forge/crystal-forge/internal/nixbase32"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/objstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// Defaults.
const (
	DefaultParallel = 8
	DefaultAttempts = 4
	DefaultBackoff  = 2 * time.Second
)

// Config configures a Service.
type Config struct {
	DB           *db.DB
	Store        *nixstore.Store      // where the paths are
	Keys         []*signing.SecretKey // narinfos are signed with each
	Destinations []Destination
	// Parallel bounds the narinfo checks and uploads in flight per job.
	Parallel int
	// Attempts is how many times a job is tried before it fails; Backoff
	// the wait after the first failed attempt, doubled after each.
	Attempts int
	Backoff  time.Duration
	// TempDir holds compressed NARs while they are sent.
	TempDir string
	// AtticCommand is the attic client (default "attic", found in PATH).
	AtticCommand string
	// Getenv gives S3 destinations their credentials (nil: os.Getenv).
	Getenv func(string) string
	Logger *slog.Logger
}

// dest is a destination ready to push to.
type dest struct {
	Destination
	kind  Kind
	cache cacheTarget // nil for attic
}

// Service queues and runs push jobs.
type Service struct {
	cfg   Config
	log   *slog.Logger
	dests []*dest
	wg    sync.WaitGroup
	ctx   context.Context // ends at shutdown
}

// New checks the destinations and returns a Service; call Start before Push.
func New(cfg Config) (*Service, error) {
	if cfg.Parallel <= 0 {
		cfg.Parallel = DefaultParallel
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = DefaultAttempts
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.TempDir == "" {
		cfg.TempDir = os.TempDir()
	}
	if cfg.AtticCommand == "" {
		cfg.AtticCommand = "attic"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Keys) == 0 {
		return nil, errors.New("push: no signing key")
	}
	s := &Service{cfg: cfg, log: cfg.Logger}
	for _, d := range cfg.Destinations {
		kind, err := KindOf(d.URL)
		if err != nil {
			return nil, fmt.Errorf("push destination %s: %w", d.Name, err)
		}
		pd := &dest{Destination: d, kind: kind}
		switch kind {
		case KindHTTP:
			t, err := newHTTPTarget(d)
			if err != nil {
				return nil, err
			}
			pd.cache = t
		case KindStorage:
			pd.cache = &storageTarget{url: d.URL, opts: objstore.Options{Getenv: cfg.Getenv}}
		}
		s.dests = append(s.dests, pd)
	}
	return s, nil
}

// Start runs again the jobs a previous process left queued or running
// (pushing is idempotent: what arrived is skipped). Jobs run until ctx
// ends; Wait lets them record where they stopped.
func (s *Service) Start(ctx context.Context) error {
	s.ctx = ctx
	jobs, err := s.cfg.DB.ActivePushes(ctx)
	if err != nil {
		return err
	}
	for _, j := range jobs {
		d := s.dest(j.Destination)
		if d == nil {
			err := s.cfg.DB.UpdatePush(ctx, j.ID, db.PushFailed, db.PushProgress{Attempts: j.Attempts, Paths: j.Paths, Uploaded: j.Uploaded, Bytes: j.Bytes,
				Duration: time.Duration(j.DurationMS) * time.Millisecond, Error: "destination " + j.Destination + " is no longer configured"}, time.Now())
			if err != nil {
				return err
			}
			continue
		}
		s.log.Info("resuming push", "build", j.BuildID, "destination", j.Destination, "job", j.ID)
		s.wg.Go(func() { s.run(ctx, d, j) })
	}
	return nil
}

// Wait blocks until every job goroutine has returned.
func (s *Service) Wait() { s.wg.Wait() }

// Destinations returns the configured destination names.
func (s *Service) Destinations() []string {
	out := make([]string, len(s.dests))
	for i, d := range s.dests {
		out[i] = d.Name
	}
	return out
}

func (s *Service) dest(name string) *dest {
	for _, d := range s.dests {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Push queues one job per destination pushing roots (with their closures)
// for build buildID, and runs them in the background. The jobs are
// recorded before it returns.
func (s *Service) Push(ctx context.Context, buildID int64, roots []string) ([]*db.PushJob, error) {
	if len(roots) == 0 || len(s.dests) == 0 {
		return nil, nil
	}
	if s.ctx == nil || s.ctx.Err() != nil {
		return nil, errors.New("push service is not running")
	}
	roots = append([]string(nil), roots...)
	sort.Strings(roots)
	var jobs []*db.PushJob
	var errs []error
	for _, d := range s.dests {
		j, err := s.cfg.DB.CreatePush(ctx, buildID, d.Name, Redact(d.URL), roots, time.Now())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		jobs = append(jobs, j)
		s.wg.Go(func() { s.run(s.ctx, d, j) })
	}
	return jobs, errors.Join(errs...)
}

// run tries a job until it succeeds, its attempts are spent, or the server
// stops (then it stays active, to be resumed by the next Start).
func (s *Service) run(ctx context.Context, d *dest, j *db.PushJob) {
	bg := context.WithoutCancel(ctx)
	start := time.Now()
	if err := s.cfg.DB.StartPush(bg, j.ID, start); err != nil {
		s.log.Error("record push start", "job", j.ID, "err", err)
	}
	prog := db.PushProgress{Attempts: j.Attempts}
	wait := s.cfg.Backoff
	for {
		prog.Attempts++
		res, err := s.attempt(ctx, d, j.Roots)
		prog.Paths = res.paths
		prog.Uploaded += res.uploaded
		prog.Bytes += res.bytes
		prog.Duration = time.Since(start)
		state := db.PushSucceeded
		switch {
		case err == nil:
			prog.Error = ""
		case ctx.Err() != nil:
			// Shutdown: left running for the next start to resume.
			prog.Error = "interrupted: the server stopped; the push resumes when it starts again"
			state = db.PushRunning
		case prog.Attempts >= s.cfg.Attempts:
			prog.Error = err.Error()
			state = db.PushFailed
		default:
			prog.Error = fmt.Sprintf("attempt %d of %d failed, retrying in %s: %v", prog.Attempts, s.cfg.Attempts, wait, err)
			state = db.PushRunning
		}
		if uerr := s.cfg.DB.UpdatePush(bg, j.ID, state, prog, time.Now()); uerr != nil {
			s.log.Error("record push progress", "job", j.ID, "err", uerr)
		}
		switch {
		case state == db.PushSucceeded:
			s.log.Info("push succeeded", "build", j.BuildID, "destination", d.Name, "paths", prog.Paths, "uploaded", prog.Uploaded, "bytes", prog.Bytes, "attempts", prog.Attempts)
			return
		case state == db.PushFailed:
			s.log.Error("push failed", "build", j.BuildID, "destination", d.Name, "attempts", prog.Attempts, "err", err)
			return
		case ctx.Err() != nil:
			return
		}
		s.log.Warn("push attempt failed; retrying", "build", j.BuildID, "destination", d.Name, "attempt", prog.Attempts, "in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		wait *= 2
	}
}

// result is what one attempt did.
type result struct {
	paths, uploaded int
	bytes           int64
}

// attempt pushes the closure of roots once: check what the destination
// holds, then upload the rest, each path after its references.
func (s *Service) attempt(ctx context.Context, d *dest, roots []string) (result, error) {
	var res result
	closure, err := s.closure(ctx, roots)
	if err != nil {
		return res, err
	}
	res.paths = len(closure)
	if d.kind == KindAttic {
		if err := atticPush(ctx, s.cfg.AtticCommand, d.URL, roots); err != nil {
			return res, err
		}
		return res, nil
	}
	missing, err := s.missing(ctx, d.cache, closure)
	if err != nil {
		return res, fmt.Errorf("push to %s: %w", d.Name, err)
	}
	uploaded, bytes, err := s.upload(ctx, d.cache, closure, missing)
	res.uploaded, res.bytes = uploaded, bytes
	if err != nil {
		return res, fmt.Errorf("push to %s: %w", d.Name, err)
	}
	return res, nil
}

// closure returns the paths roots refer to, directly or not, and roots.
func (s *Service) closure(ctx context.Context, roots []string) (map[string]*nixstore.PathInfo, error) {
	out := make(map[string]*nixstore.PathInfo)
	queue := append([]string(nil), roots...)
	for len(queue) > 0 {
		p := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		if _, seen := out[p]; seen {
			continue
		}
		hash, ok := nixstore.ParseHashPart(path.Base(p))
		if !ok || path.Dir(p) != s.cfg.Store.StoreDir() {
			return nil, fmt.Errorf("%q is not a store path in %s", p, s.cfg.Store.StoreDir())
		}
		info, err := s.cfg.Store.QueryByHash(ctx, hash)
		if errors.Is(err, nixstore.ErrNotFound) || err == nil && info.Path != p {
			return nil, fmt.Errorf("%s is not in this server's store (garbage-collected?)", p)
		}
		if err != nil {
			return nil, err
		}
		out[p] = info
		queue = append(queue, info.References...)
	}
	return out, nil
}

// missing asks the destination, in parallel, which paths it lacks.
func (s *Service) missing(ctx context.Context, t cacheTarget, closure map[string]*nixstore.PathInfo) (map[string]bool, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu  sync.Mutex
		out = make(map[string]bool)
		wg  sync.WaitGroup
		sem = make(chan struct{}, s.cfg.Parallel)
	)
	for p := range closure {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			has, err := t.has(ctx, hashOf(p))
			if err != nil {
				cancel(err)
				return
			}
			if !has {
				mu.Lock()
				out[p] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return out, nil
}

// upload sends the missing paths, up to Parallel at a time, each once all
// of its missing references have arrived: a cache refuses a path whose
// references it does not hold, and a reader must never find a narinfo
// whose references are absent.
func (s *Service) upload(ctx context.Context, t cacheTarget, closure map[string]*nixstore.PathInfo, missing map[string]bool) (int, int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(map[string]chan struct{}, len(missing))
	for p := range missing {
		done[p] = make(chan struct{})
	}
	var (
		mu       sync.Mutex
		uploaded int
		bytes    int64
		wg       sync.WaitGroup
		sem      = make(chan struct{}, s.cfg.Parallel)
	)
	for p := range missing {
		wg.Go(func() {
			defer close(done[p])
			for _, ref := range closure[p].References {
				if ch := done[ref]; ch != nil && ref != p {
					select {
					case <-ch:
					case <-ctx.Done():
						return
					}
				}
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				return
			}
			n, err := s.uploadPath(ctx, t, closure[p])
			if err != nil {
				cancel(fmt.Errorf("upload %s: %w", p, err))
				return
			}
			mu.Lock()
			uploaded++
			bytes += n
			mu.Unlock()
		})
	}
	wg.Wait()
	return uploaded, bytes, context.Cause(ctx)
}

// uploadPath compresses the path's NAR into a temporary file, checks it
// against the store's NarHash, and sends it with its signed narinfo. It
// returns the bytes sent.
func (s *Service) uploadPath(ctx context.Context, t cacheTarget, info *nixstore.PathInfo) (int64, error) {
	f, err := os.CreateTemp(s.cfg.TempDir, "push-*.nar.zst")
	if err != nil {
		return 0, fmt.Errorf("temporary NAR file: %w", err)
	}
	defer func() {
		if err := os.Remove(f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("remove a pushed NAR's temporary file", "file", f.Name(), "err", err)
		}
	}()
	defer f.Close()
	fileHash := sha256.New()
	narHash := sha256.New()
	enc, err := zstd.NewWriter(io.MultiWriter(f, fileHash), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, err
	}
	narSize, err := nar.Dump(io.MultiWriter(enc, narHash), s.cfg.Store.RealPath(info.Path))
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("serialise %s: %w", info.Path, err)
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	gotHash := "sha256:" + nixbase32.Encode(narHash.Sum(nil))
	if gotHash != info.NarHash || uint64(narSize) != info.NarSize {
		return 0, fmt.Errorf("%s on disk (%s, %d bytes) differs from what the store registered (%s, %d bytes): the store is damaged, run nix-store --verify --check-contents",
			info.Path, gotHash, narSize, info.NarHash, info.NarSize)
	}
	st, err := os.Stat(f.Name())
	if err != nil {
		return 0, err
	}
	fh := nixbase32.Encode(fileHash.Sum(nil))
	ni := &narinfo.NarInfo{
		StorePath:   info.Path,
		URL:         "nar/" + fh + ".nar.zst",
		Compression: "zstd",
		FileHash:    "sha256:" + fh,
		FileSize:    uint64(st.Size()),
		NarHash:     info.NarHash,
		NarSize:     info.NarSize,
		References:  info.References,
		Deriver:     info.Deriver,
		Sigs:        s.sigs(info.Sigs),
		CA:          info.CA,
	}
	ni.Sign(s.cfg.Keys...)
	if err := t.put(ctx, upload{info: ni, narFile: f.Name()}); err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// sigs keeps the store's signatures but ours, which are made afresh.
func (s *Service) sigs(stored []string) []string {
	var out []string
	for _, sig := range stored {
		name, _, _ := strings.Cut(sig, ":")
		ours := false
		for _, k := range s.cfg.Keys {
			ours = ours || k.Name == name
		}
		if !ours {
			out = append(out, sig)
		}
	}
	return out
}

// hashOf is the hash part of a store path.
func hashOf(storePath string) string {
	b := path.Base(storePath)
	if len(b) < 32 {
		return b
	}
	return b[:32]
}
