// Package build is the build orchestrator (the seed spec's "Agent 3"): it
// syncs repositories, evaluates and builds their flakes, and records status,
// per-package results and logs, with builds of different repositories in
// parallel and never two of one.
package build

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/git"
	"github.com/crystal-forge/crystal-forge/internal/nixcli"
)

// ErrUnknownRepository is returned for a repository that is not configured.
var ErrUnknownRepository = errors.New("repository not found")

// ErrNotActive is returned when cancelling a build that is not queued or running.
var ErrNotActive = errors.New("build is not running")

// Config configures an Orchestrator.
type Config struct {
	DataDir          string
	Repositories     []config.Repository
	MaxParallel      int
	Timeout          time.Duration // 0: none
	GitTimeout       time.Duration // git clone/fetch/ls-remote silent this long fails; 0: never
	PollInterval     time.Duration // 0: no polling
	System           string
	HomeManagerFlake string
	Nix              *nixcli.Nix
	DB               *db.DB
	// Pusher, when set, pushes each build's outputs to the configured
	// caches as the build ends.
	Pusher Pusher
	Logger *slog.Logger
}

// Pusher pushes store paths, with their closures, to the configured
// destinations, recording one job per destination for the build.
type Pusher interface {
	Push(ctx context.Context, buildID int64, roots []string) ([]*db.PushJob, error)
}

// Orchestrator queues and runs builds.
type Orchestrator struct {
	cfg   Config
	db    *db.DB
	nix   *nixcli.Nix
	git   git.Client
	log   *slog.Logger
	repos map[string]config.Repository
	order []string
	slots chan struct{}
	hub   *hub

	mu      sync.Mutex
	running map[int64]*run // queued or running builds

	// statuses caches each repository's spec status between transitions:
	// /build/status is the hottest read of the API. statusGen counts the
	// transitions, so a read racing one never stores a stale answer.
	statusMu  sync.Mutex
	statuses  map[string]Status
	statusGen map[string]uint64

	// fileErrs holds the status files whose last write failed, by
	// repository, until a write succeeds.
	fileMu   sync.Mutex
	fileErrs map[string]error

	wg  sync.WaitGroup
	ctx context.Context // ends at shutdown
}

// run is the in-memory side of an active build.
type run struct {
	build  *db.Build
	cancel context.CancelCauseFunc
	log    *liveLog
	tally  tally // only the build's goroutine touches it
}

// errCancelled is the cause of a context ended by Cancel.
var errCancelled = errors.New("cancelled")

// New returns an orchestrator; call Start before triggering builds.
func New(cfg Config) (*Orchestrator, error) {
	if cfg.MaxParallel < 1 {
		cfg.MaxParallel = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	o := &Orchestrator{
		cfg:       cfg,
		db:        cfg.DB,
		nix:       cfg.Nix,
		git:       git.Client{IdleTimeout: cfg.GitTimeout},
		log:       cfg.Logger,
		repos:     make(map[string]config.Repository),
		slots:     make(chan struct{}, cfg.MaxParallel),
		hub:       newHub(),
		running:   make(map[int64]*run),
		statuses:  make(map[string]Status),
		statusGen: make(map[string]uint64),
		fileErrs:  make(map[string]error),
	}
	for _, r := range cfg.Repositories {
		o.repos[r.Name] = r
		o.order = append(o.order, r.Name)
	}
	for _, d := range []string{"builds", "logs", "status", "gcroots", "tmp"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("create %s directory: %w", d, err)
		}
	}
	return o, nil
}

// Repositories returns the configured repository names in config order.
func (o *Orchestrator) Repositories() []string { return o.order }

// Repository returns a configured repository.
func (o *Orchestrator) Repository(name string) (config.Repository, bool) {
	r, ok := o.repos[name]
	return r, ok
}

// Start recovers from a previous crash and starts polling. Builds run
// until ctx ends; then Wait lets them record their end.
func (o *Orchestrator) Start(ctx context.Context) error {
	o.ctx = ctx
	for _, name := range o.order {
		r := o.repos[name]
		if err := o.db.SyncRepository(ctx, r.Name, r.URL, r.Branch); err != nil {
			return err
		}
	}
	if err := o.recover(ctx); err != nil {
		return err
	}
	// Bring every status file up to date, whatever a previous process
	// failed to write.
	for _, name := range o.order {
		o.writeStatusFile(ctx, name)
	}
	if o.cfg.PollInterval > 0 {
		o.wg.Go(func() { o.poll(ctx) })
	}
	return nil
}

// Wait blocks until every build goroutine has finished recording.
func (o *Orchestrator) Wait() { o.wg.Wait() }

// recover marks builds left queued or running by a dead process as failed
// ("interrupted"), and says so at the end of their logs.
func (o *Orchestrator) recover(ctx context.Context) error {
	stale, err := o.db.InterruptActive(ctx, time.Now())
	if err != nil {
		return err
	}
	for _, b := range stale {
		o.log.Warn("build was interrupted by a restart", "repository", b.Repository, "build", b.ID)
		if err := appendNote(b.LogPath, fmt.Sprintf("Build interrupted: the server stopped while build %d was running; marked failed", b.ID)); err != nil {
			o.log.Error("note the interruption in the build log", "build", b.ID, "err", err)
		}
		o.writeStatusFile(ctx, b.Repository)
	}
	return nil
}

// Trigger queues a build of repo. If one is already queued or running it
// returns that one with created=false.
func (o *Orchestrator) Trigger(ctx context.Context, repo, reason string) (*db.Build, bool, error) {
	r, ok := o.repos[repo]
	if !ok {
		return nil, false, ErrUnknownRepository
	}
	if o.ctx == nil || o.ctx.Err() != nil {
		return nil, false, errors.New("orchestrator is not running")
	}
	logDir := filepath.Join(o.cfg.DataDir, "logs", repo)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, false, fmt.Errorf("create log directory: %w", err)
	}
	b, created, err := o.db.CreateBuild(ctx, repo, reason, logDir)
	if err != nil || !created {
		return b, false, err
	}
	lg, err := openLiveLog(b.LogPath)
	if err != nil {
		if ferr := o.db.FinishBuild(context.WithoutCancel(ctx), b.ID, db.StatusFailed, err.Error(), time.Now()); ferr != nil {
			o.log.Error("mark build failed after its log could not be opened", "repository", repo, "build", b.ID, "err", ferr)
		}
		b.Status = db.StatusFailed
		o.publish(b)
		return nil, false, err
	}
	if err := linkLatest(filepath.Join(o.cfg.DataDir, "logs", repo+".log"), b.LogPath); err != nil {
		o.log.Error("point the repository's log at the new build", "repository", repo, "build", b.ID, "err", err)
	}
	bctx, cancel := context.WithCancelCause(o.ctx)
	rn := &run{build: b, cancel: cancel, log: lg}
	o.mu.Lock()
	o.running[b.ID] = rn
	o.mu.Unlock()
	o.log.Info("build queued", "repository", repo, "build", b.ID, "reason", reason)
	o.publish(b)
	// The build goroutine updates b as it goes: the caller gets a copy.
	queued := *b
	o.wg.Go(func() { o.execute(bctx, rn, r) })
	return &queued, true, nil
}

// Cancel stops a queued or running build.
func (o *Orchestrator) Cancel(id int64) error {
	o.mu.Lock()
	rn := o.running[id]
	o.mu.Unlock()
	if rn == nil {
		return ErrNotActive
	}
	rn.cancel(errCancelled)
	return nil
}

// live returns the log of an active build, or nil.
func (o *Orchestrator) live(id int64) *liveLog {
	o.mu.Lock()
	defer o.mu.Unlock()
	if rn := o.running[id]; rn != nil {
		return rn.log
	}
	return nil
}

// Subscribe returns a channel of build events and a function to stop them.
func (o *Orchestrator) Subscribe() (<-chan Event, func()) { return o.hub.subscribe() }

func (o *Orchestrator) publish(b *db.Build) {
	o.statusMu.Lock()
	delete(o.statuses, b.Repository)
	o.statusGen[b.Repository]++
	o.statusMu.Unlock()
	o.hub.publish(Event{Repository: b.Repository, BuildID: b.ID, Status: b.Status})
}

// DB exposes the store for read-only API queries.
func (o *Orchestrator) DB() *db.DB { return o.db }
