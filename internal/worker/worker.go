// Package worker is the build worker's loop: it registers in the database,
// claims jobs under a lease, runs them, renews their leases while they run
// (learning so that a job was cancelled), records their end exactly once,
// takes back the jobs of workers that were lost, and drains on shutdown.
// The server runs one in-process; `crystal-forge builder` runs one alone.
// What a job does is the Executor's business (build.Runner).
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
)

// Executor runs one job to its end. It returns nil when the job succeeded.
// ctx ends when the job must stop: cancelled, lease lost, or the worker
// killed.
type Executor interface {
	RunJob(ctx context.Context, worker string, j *db.Job) error
}

// Config configures a Worker.
type Config struct {
	DB       *db.DB
	Executor Executor
	Name     string
	Host     string
	Systems  []string
	Capacity int // jobs at once; default 1
	Version  string
	// Lease is how long a claim holds without renewal; renewed every
	// Lease/3. Default 30 s.
	Lease time.Duration
	// Poll is how often an idle worker looks for jobs; Wake makes it look
	// at once. Default 1 s.
	Poll   time.Duration
	Logger *slog.Logger
	// OnJobEnd, when set, is called after a job's end is recorded (or
	// found to be someone else's to record).
	OnJobEnd func(*db.Job)
}

// Worker claims and runs jobs. Run it with Run.
type Worker struct {
	cfg  Config
	wake chan struct{}

	mu      sync.Mutex
	running map[int64]*runningJob
}

type runningJob struct {
	job    *db.Job
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the job's goroutine is through
}

// Causes a job's context ends with.
var (
	ErrCancelled = errors.New("job cancelled")
	errLost      = errors.New("lease lost: the job was given to another worker")
)

// New returns a worker.
func New(cfg Config) *Worker {
	if cfg.Capacity < 1 {
		cfg.Capacity = 1
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 30 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Worker{cfg: cfg, wake: make(chan struct{}, 1), running: make(map[int64]*runningJob)}
}

// Name is the worker's name, as jobs record it.
func (w *Worker) Name() string { return w.cfg.Name }

// Wake makes an idle worker look for jobs now.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// CancelBuild stops this worker's jobs of a build at once (their
// cancellation is recorded by the caller; a remote worker learns it at
// its next renewal) and waits until they have ended, their logs stored,
// or ctx ends.
func (w *Worker) CancelBuild(ctx context.Context, buildID int64) {
	var done []chan struct{}
	w.mu.Lock()
	for _, r := range w.running {
		if r.job.BuildID == buildID {
			r.cancel(ErrCancelled)
			done = append(done, r.done)
		}
	}
	w.mu.Unlock()
	for _, ch := range done {
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// Running returns how many jobs the worker runs.
func (w *Worker) Running() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.running)
}

// Run registers the worker and claims and runs jobs until drain ends;
// then it claims no more and waits for its running jobs to end, unless
// kill ends first, which stops them (they go back to the queue when this
// worker, or one of the same name, starts again, or when their leases
// expire). kill must outlive drain.
func (w *Worker) Run(drain, kill context.Context) error {
	d, log := w.cfg.DB, w.cfg.Logger
	now := time.Now()
	if err := d.RegisterWorker(kill, db.Worker{Name: w.cfg.Name, Host: w.cfg.Host, Systems: w.cfg.Systems, Capacity: w.cfg.Capacity,
		Version: w.cfg.Version, StartedAt: now, LastSeen: now}); err != nil {
		return err
	}
	// Jobs recorded as ours are from a previous life of this worker.
	back, err := d.RequeueWorkerJobs(kill, w.cfg.Name)
	if err != nil {
		return err
	}
	for _, j := range back {
		log.Warn("job of a previous run of this worker queued again", "job", j.ID, "build", j.BuildID, "attr", j.Attr)
	}
	var jobs sync.WaitGroup
	slots := make(chan struct{}, w.cfg.Capacity)
	tick := time.NewTicker(w.cfg.Poll)
	defer tick.Stop()
	// On PostgreSQL, queued jobs wake the worker at once; the poll stays
	// for what a notification cannot say (leases that expire) and for
	// SQLite, where notes is nil.
	notes := d.Listen(drain, log, db.ChanJobs)
	lastBeat := time.Time{}
	for drain.Err() == nil {
		if time.Since(lastBeat) >= w.cfg.Lease/3 {
			w.heartbeat(kill, false)
			w.reclaim(kill)
			lastBeat = time.Now()
		}
		w.claimAll(drain, kill, slots, &jobs)
		select {
		case <-drain.Done():
		case <-tick.C:
		case <-w.wake:
		case _, ok := <-notes:
			if !ok {
				notes = nil
			}
		}
	}
	if n := w.Running(); n > 0 {
		log.Info("worker draining: no new jobs; waiting for the running ones", "worker", w.cfg.Name, "running", n)
	}
	w.heartbeat(kill, true)
	done := make(chan struct{})
	go func() { jobs.Wait(); close(done) }()
	beat := time.NewTicker(w.cfg.Lease / 3)
	defer beat.Stop()
	for {
		select {
		case <-done:
			w.heartbeat(context.WithoutCancel(kill), true)
			return nil
		case <-beat.C:
			w.heartbeat(kill, true)
		}
	}
}

// claimAll claims jobs while slots are free and jobs are queued, and
// starts each.
func (w *Worker) claimAll(drain, kill context.Context, slots chan struct{}, jobs *sync.WaitGroup) {
	for drain.Err() == nil {
		select {
		case slots <- struct{}{}:
		default:
			return
		}
		j, err := w.cfg.DB.ClaimJob(kill, w.cfg.Name, w.cfg.Systems, w.cfg.Lease, time.Now())
		if err != nil {
			<-slots
			if !errors.Is(err, db.ErrNoJob) && kill.Err() == nil {
				w.cfg.Logger.Error("claim a job; trying again", "err", err)
			}
			return
		}
		jobs.Go(func() {
			defer func() { <-slots; w.Wake() }()
			w.runJob(kill, j)
		})
	}
}

func (w *Worker) heartbeat(ctx context.Context, draining bool) {
	if err := w.cfg.DB.WorkerHeartbeat(ctx, w.cfg.Name, w.Running(), draining, time.Now()); err != nil && ctx.Err() == nil {
		w.cfg.Logger.Error("worker heartbeat", "err", err)
	}
}

// reclaim takes back jobs whose workers were lost: any worker does it, so
// the queue moves on while the server is down.
func (w *Worker) reclaim(ctx context.Context) {
	requeued, failed, err := w.cfg.DB.ReclaimExpired(ctx, time.Now())
	if err != nil {
		if ctx.Err() == nil {
			w.cfg.Logger.Error("reclaim jobs of lost workers", "err", err)
		}
		return
	}
	for _, j := range requeued {
		w.cfg.Logger.Warn("job queued again: its worker was lost", "job", j.ID, "build", j.BuildID, "attr", j.Attr, "error", j.Error)
	}
	for _, j := range failed {
		w.cfg.Logger.Warn("job failed: its workers were lost too often", "job", j.ID, "build", j.BuildID, "attr", j.Attr, "error", j.Error)
		if w.cfg.OnJobEnd != nil {
			w.cfg.OnJobEnd(j)
		}
	}
}

// runJob runs one claimed job, renewing its lease, and records its end.
func (w *Worker) runJob(kill context.Context, j *db.Job) {
	d, log := w.cfg.DB, w.cfg.Logger
	ctx, cancel := context.WithCancelCause(kill)
	defer cancel(nil)
	rj := &runningJob{job: j, cancel: cancel, done: make(chan struct{})}
	w.mu.Lock()
	w.running[j.ID] = rj
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.running, j.ID)
		w.mu.Unlock()
		close(rj.done)
	}()
	log.Info("job started", "job", j.ID, "build", j.BuildID, "kind", j.Kind, "attr", j.Attr, "attempt", j.Attempts)

	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(w.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			err := d.RenewLease(ctx, j.ID, w.cfg.Name, w.cfg.Lease, time.Now())
			if errors.Is(err, db.ErrLeaseLost) {
				cause := errLost
				if cur, err := d.Job(ctx, j.ID); err == nil && cur.State == db.JobCancelled {
					cause = ErrCancelled
				}
				log.Warn("stopping job", "job", j.ID, "build", j.BuildID, "why", cause)
				cancel(cause)
				return
			}
			if err != nil && ctx.Err() == nil {
				// A database hiccup: keep working; the lease has margin.
				log.Error("renew job lease", "job", j.ID, "err", err)
			}
		}
	}()

	err := w.runSafely(ctx, j)
	cancel(nil)
	<-renewed
	state, msg := db.JobSucceeded, ""
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, ErrCancelled):
		state, msg = db.JobCancelled, "cancelled"
	case errors.Is(cause, errLost), kill.Err() != nil:
		// Not ours to record: another worker has the job, or it goes back
		// to the queue when this worker starts again.
		log.Warn("job stopped unrecorded", "job", j.ID, "build", j.BuildID, "why", context.Cause(ctx))
		return
	case err != nil:
		state, msg = db.JobFailed, err.Error()
	}
	ferr := d.FinishJob(context.WithoutCancel(kill), db.JobFinish{ID: j.ID, Worker: w.cfg.Name, State: state, Error: msg, At: time.Now()})
	switch {
	case errors.Is(ferr, db.ErrLeaseLost):
		log.Warn("job ended, but it is no longer this worker's: not recorded", "job", j.ID, "build", j.BuildID, "state", state)
	case ferr != nil:
		log.Error("record job end; its lease will expire and it will run again", "job", j.ID, "err", ferr)
		return
	default:
		log.Info("job finished", "job", j.ID, "build", j.BuildID, "attr", j.Attr, "state", state, "error", msg)
	}
	if w.cfg.OnJobEnd != nil {
		j.State = state
		w.cfg.OnJobEnd(j)
	}
}

// runSafely runs the executor, turning a panic into the job's failure.
func (w *Worker) runSafely(ctx context.Context, j *db.Job) (err error) {
	defer func() {
		if p := recover(); p != nil {
			w.cfg.Logger.Error("job panicked", "job", j.ID, "panic", p)
			err = fmt.Errorf("internal error: %v", p)
		}
	}()
	return w.cfg.Executor.RunJob(ctx, w.cfg.Name, j)
}
