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
	"github.com/crystal-forge/crystal-forge/internal/worker"
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
	// NoLocalBuilder turns off the in-process worker: the build jobs are
	// then run by `crystal-forge builder` processes sharing the database.
	NoLocalBuilder bool
	// WorkerName names the in-process worker in the queue; default
	// "local@" and the host name.
	WorkerName string
	// Version is recorded with the in-process worker.
	Version string
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
	local *worker.Worker // nil with NoLocalBuilder

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
	forced bool          // failed derivations are built again
	wake   chan struct{} // a job of the build logged or ended
	// logChunk is the last job log chunk appended to log; only the
	// build's goroutine touches it.
	logChunk int64
}

// wakeBuild tells an active build's goroutine its jobs have news.
func (o *Orchestrator) wakeBuild(id int64) {
	o.mu.Lock()
	rn := o.running[id]
	o.mu.Unlock()
	if rn == nil {
		return
	}
	select {
	case rn.wake <- struct{}{}:
	default:
	}
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
	if !cfg.NoLocalBuilder {
		runner, err := NewRunner(RunnerConfig{DataDir: cfg.DataDir, System: cfg.System, HomeManagerFlake: cfg.HomeManagerFlake,
			GitTimeout: cfg.GitTimeout, Nix: cfg.Nix, DB: cfg.DB, Logger: cfg.Logger, Notify: o.wakeBuild})
		if err != nil {
			return nil, err
		}
		name := cfg.WorkerName
		host, _ := os.Hostname()
		if name == "" {
			name = "local@" + host
		}
		o.local = worker.New(worker.Config{DB: cfg.DB, Executor: runner, Name: name, Host: host, Systems: []string{cfg.System},
			Capacity: cfg.MaxParallel, Version: cfg.Version, Logger: cfg.Logger,
			OnJobEnd: func(j *db.Job) { o.wakeBuild(j.BuildID) }})
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
	// On PostgreSQL, builds on other machines wake their goroutines as
	// they log and as their jobs end; they poll as well.
	if notes := o.db.Listen(ctx, o.log, db.ChanJobs, db.ChanLogs); notes != nil {
		o.wg.Go(func() {
			for n := range notes {
				o.wakeBuild(n.BuildID)
			}
		})
	}
	if o.local != nil {
		o.wg.Go(func() {
			if err := o.local.Run(ctx, ctx); err != nil {
				o.log.Error("the in-process builder stopped; builds wait for other workers", "err", err)
			}
		})
	}
	if o.cfg.PollInterval > 0 {
		o.wg.Go(func() { o.poll(ctx) })
	}
	return nil
}

// Wait blocks until every build goroutine has finished recording.
func (o *Orchestrator) Wait() { o.wg.Wait() }

// recover resumes the builds a previous process left queued or running:
// their unfinished jobs go on (the in-process worker's own go back to the
// queue when it starts), and each gets its goroutine again. A build of a
// repository no longer configured is failed ("interrupted") instead.
func (o *Orchestrator) recover(ctx context.Context) error {
	active, err := o.db.ActiveBuilds(ctx)
	if err != nil {
		return err
	}
	for _, b := range active {
		if _, ok := o.repos[b.Repository]; !ok {
			o.interrupt(ctx, b, "its repository is no longer configured")
			continue
		}
		if err := o.resume(b); err != nil {
			o.log.Error("resume build", "repository", b.Repository, "build", b.ID, "err", err)
			o.interrupt(ctx, b, err.Error())
		}
	}
	return nil
}

// interrupt fails a build left active by a dead process that cannot be
// resumed, and says so at the end of its log.
func (o *Orchestrator) interrupt(ctx context.Context, b *db.Build, why string) {
	o.log.Warn("build was interrupted by a restart", "repository", b.Repository, "build", b.ID, "why", why)
	if _, err := o.db.CancelJobs(ctx, b.ID, time.Now()); err != nil {
		o.log.Error("cancel the jobs of an interrupted build", "build", b.ID, "err", err)
	}
	if err := o.db.FinishBuild(ctx, b.ID, db.StatusFailed, "interrupted", time.Now()); err != nil {
		o.log.Error("mark an interrupted build failed", "build", b.ID, "err", err)
	}
	if err := appendNote(b.LogPath, fmt.Sprintf("Build interrupted: the server stopped while build %d was running and cannot resume it (%s); marked failed", b.ID, why)); err != nil {
		o.log.Error("note the interruption in the build log", "build", b.ID, "err", err)
	}
	o.writeStatusFile(ctx, b.Repository)
}

// resume gives an active build of a previous process its goroutine again.
// Its log file is rebuilt from its jobs' logs in the database when it has
// any (the file may lack their last chunks), else continued.
func (o *Orchestrator) resume(b *db.Build) error {
	chunks, err := o.db.BuildLogChunks(o.ctx, b.ID, 0, 1)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(b.LogPath), 0o755); err != nil {
		return fmt.Errorf("create log directory: %w", err)
	}
	if err := linkLatest(filepath.Join(o.cfg.DataDir, "logs", b.Repository+".log"), b.LogPath); err != nil {
		o.log.Error("point the repository's log at the resumed build", "repository", b.Repository, "build", b.ID, "err", err)
	}
	var lg *liveLog
	if len(chunks) > 0 {
		lg, err = openLiveLog(b.LogPath)
	} else {
		lg, err = appendLiveLog(b.LogPath)
	}
	if err != nil {
		return err
	}
	bctx, cancel := context.WithCancelCause(o.ctx)
	rn := &run{build: b, cancel: cancel, log: lg, wake: make(chan struct{}, 1)}
	o.mu.Lock()
	o.running[b.ID] = rn
	o.mu.Unlock()
	o.log.Warn("build resumed after a restart", "repository", b.Repository, "build", b.ID, "status", b.Status)
	o.wg.Go(func() { o.execute(bctx, rn) })
	return nil
}

// TriggerOptions modify a triggered build.
type TriggerOptions struct {
	// Force builds again the derivations that failed in earlier builds
	// (which are otherwise recorded failed without building).
	Force bool
}

// Trigger queues a build of repo. If one is already queued or running it
// returns that one with created=false.
func (o *Orchestrator) Trigger(ctx context.Context, repo, reason string) (*db.Build, bool, error) {
	return o.TriggerWith(ctx, repo, reason, TriggerOptions{})
}

// TriggerWith is Trigger with options.
func (o *Orchestrator) TriggerWith(ctx context.Context, repo, reason string, opts TriggerOptions) (*db.Build, bool, error) {
	if _, ok := o.repos[repo]; !ok {
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
	rn := &run{build: b, cancel: cancel, log: lg, forced: opts.Force, wake: make(chan struct{}, 1)}
	o.mu.Lock()
	o.running[b.ID] = rn
	o.mu.Unlock()
	o.log.Info("build queued", "repository", repo, "build", b.ID, "reason", reason)
	o.publish(b)
	// The build goroutine updates b as it goes: the caller gets a copy.
	queued := *b
	o.wg.Go(func() { o.execute(bctx, rn) })
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
