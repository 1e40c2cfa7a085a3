package build

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/nixcli"
)

// supervisePoll is how often a build's supervisor looks at its jobs and
// their logs when nothing woke it (jobs on other machines do not).
const supervisePoll = 500 * time.Millisecond

// execute runs one build from queue to recorded end: it waits for one of
// the server's build slots, queues the build's evaluation job, then follows
// its jobs, wherever workers run them, appending their logs to the build's
// log, until all have ended. Whatever happens — failure, timeout, cancel,
// panic — the status is written before it returns; at shutdown the build
// is left as it is, for the next start to resume.
func (o *Orchestrator) execute(ctx context.Context, rn *run) {
	b := rn.build
	lg := rn.log
	// Final writes must land even when ctx is what ended the build.
	bg := context.WithoutCancel(ctx)
	status, errMsg := db.StatusFailed, ""
	slot, detached := false, false
	defer func() {
		if p := recover(); p != nil {
			o.log.Error("build panicked", "repository", b.Repository, "build", b.ID, "panic", p)
			status, errMsg, detached = db.StatusFailed, fmt.Sprintf("internal error: %v", p), false
			o.stopJobs(bg, b.ID)
			lg.Line("Error: internal error: %v", p)
		}
		if !detached {
			// Pushes are queued before the build is seen to end, so whoever
			// sees the end also sees them.
			o.pushOutputs(bg, b, status)
			now := time.Now()
			if err := o.db.FinishBuild(bg, b.ID, status, errMsg, now); err != nil {
				o.log.Error("record build end", "build", b.ID, "err", err)
			}
			b.Status, b.Error, b.FinishedAt = status, errMsg, &now
		}
		// Free the slot only now that the end is recorded, so no one sees
		// more than MaxParallel builds running.
		if slot {
			<-o.slots
		}
		o.mu.Lock()
		delete(o.running, b.ID)
		o.mu.Unlock()
		if err := lg.close(); err != nil {
			o.log.Error("build log incomplete", "repository", b.Repository, "build", b.ID, "err", err)
		}
		if detached {
			o.log.Info("build left to resume at the next start", "repository", b.Repository, "build", b.ID)
			return
		}
		o.writeStatusFile(bg, b.Repository)
		o.publish(b)
		o.log.Info("build finished", "repository", b.Repository, "build", b.ID, "status", status, "error", errMsg)
	}()

	// Wait for a slot; a cancel while queued ends the build here, a
	// shutdown leaves it queued.
	select {
	case o.slots <- struct{}{}:
		slot = true
	case <-ctx.Done():
		if detached = o.shuttingDown(ctx); !detached {
			status, errMsg = o.ended(ctx, lg)
		}
		return
	}

	if o.cfg.Timeout > 0 {
		// A resumed build's timeout counts from its first start.
		deadline := time.Now().Add(o.cfg.Timeout)
		if b.StartedAt != nil {
			deadline = b.StartedAt.Add(o.cfg.Timeout)
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, deadline, fmt.Errorf("timed out after %s", o.cfg.Timeout))
		defer cancel()
	}
	jobs, err := o.db.BuildJobs(bg, b.ID)
	if err != nil {
		errMsg = err.Error()
		return
	}
	if b.Status != db.StatusRunning {
		start := time.Now()
		if err := o.db.StartBuild(bg, b.ID, start); err != nil {
			errMsg = err.Error()
			return
		}
		b.Status, b.StartedAt = db.StatusRunning, &start
	}
	o.writeStatusFile(bg, b.Repository)
	o.publish(b)

	// A build resumed with its jobs has its evaluation job already.
	if len(jobs) == 0 {
		if _, err := o.db.EnqueueJobs(bg, []db.NewJob{{BuildID: b.ID, Kind: db.JobEval, Forced: rn.forced}}, time.Now()); err != nil {
			lg.Line("Error: %v", err)
			errMsg = err.Error()
			return
		}
	}
	if o.local != nil {
		o.local.Wake()
	}
	status, errMsg, detached = o.supervise(ctx, rn)
}

// shuttingDown reports whether ctx ended because the server stops (not a
// cancel or timeout of the build).
func (o *Orchestrator) shuttingDown(ctx context.Context) bool {
	return o.ctx.Err() != nil && !errors.Is(context.Cause(ctx), errCancelled)
}

// supervise follows a running build's jobs until all have ended, or ctx
// ends, and returns the build's outcome; detached when the server shuts
// down, leaving the build and its jobs to resume.
func (o *Orchestrator) supervise(ctx context.Context, rn *run) (status, errMsg string, detached bool) {
	b := rn.build
	bg := context.WithoutCancel(ctx)
	t := time.NewTicker(supervisePoll)
	defer t.Stop()
	seen := ""
	for {
		o.pumpLog(bg, rn)
		jobs, err := o.db.BuildJobs(bg, b.ID)
		if err != nil {
			o.log.Error("read the jobs of a build; trying again", "build", b.ID, "err", err)
		} else {
			if sig := jobsSignature(jobs); sig != seen {
				seen = sig
				o.refresh(bg, b)
			}
			if allEnded(jobs) {
				o.pumpLog(bg, rn)
				status, errMsg = o.conclude(bg, rn, jobs)
				return status, errMsg, false
			}
		}
		select {
		case <-ctx.Done():
			if o.shuttingDown(ctx) {
				o.pumpLog(bg, rn)
				return "", "", true
			}
			o.stopJobs(bg, b.ID)
			o.pumpLog(bg, rn)
			status, errMsg = o.ended(ctx, rn.log)
			return status, errMsg, false
		case <-rn.wake:
		case <-t.C:
		}
	}
}

// stopJobs cancels a build's jobs: at once on this server's worker, at
// their next lease renewal on others.
func (o *Orchestrator) stopJobs(ctx context.Context, buildID int64) {
	if _, err := o.db.CancelJobs(ctx, buildID, time.Now()); err != nil {
		o.log.Error("cancel the jobs of a build", "build", buildID, "err", err)
	}
	if o.local != nil {
		// Wait for this server's jobs to stop, so their last lines are in
		// the log before the build's end; jobs elsewhere stop at their next
		// lease renewal, and what they print after is not in the log file.
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		o.local.CancelBuild(wctx, buildID)
	}
}

// pumpLog appends the build's job log chunks not yet in its log file.
func (o *Orchestrator) pumpLog(ctx context.Context, rn *run) {
	for {
		chunks, err := o.db.BuildLogChunks(ctx, rn.build.ID, rn.logChunk, 256)
		if err != nil {
			o.log.Error("read the logs of a build's jobs; trying again", "build", rn.build.ID, "err", err)
			return
		}
		for _, c := range chunks {
			// A failed write is kept by the log and reported when it closes.
			_, _ = rn.log.Write(c.Data)
			rn.logChunk = c.ID
		}
		if len(chunks) < 256 {
			return
		}
	}
}

// refresh re-reads the build (its commit, set by the evaluation job) and
// tells subscribers something changed.
func (o *Orchestrator) refresh(ctx context.Context, b *db.Build) {
	if cur, err := o.db.Build(ctx, b.ID); err == nil {
		b.Commit, b.ShortCommit, b.Counts = cur.Commit, cur.ShortCommit, cur.Counts
	}
	o.publish(b)
}

func jobsSignature(jobs []*db.Job) string {
	var sb strings.Builder
	for _, j := range jobs {
		fmt.Fprintf(&sb, "%d:%s:%d ", j.ID, j.State, j.Attempts)
	}
	return sb.String()
}

func allEnded(jobs []*db.Job) bool {
	if len(jobs) == 0 {
		return false
	}
	for _, j := range jobs {
		if !j.State.Done() {
			return false
		}
	}
	return true
}

// conclude decides a build's outcome once all its jobs have ended, and
// writes the spec's last lines (phase 5).
func (o *Orchestrator) conclude(ctx context.Context, rn *run, jobs []*db.Job) (string, string) {
	b, lg := rn.build, rn.log
	o.refresh(ctx, b)
	results, err := o.db.Results(ctx, b.ID)
	if err != nil {
		lg.Line("Error: %v", err)
		return db.StatusFailed, err.Error()
	}
	// A job that failed without recording its attribute (it could not
	// check out the commit, or its workers were lost too often) gets a
	// failed result, so the failure shows where the attributes are.
	recorded := make(map[int64]bool)
	for _, r := range results {
		if r.JobID != nil {
			recorded[*r.JobID] = true
		}
	}
	for _, j := range jobs {
		if j.Kind != db.JobAttr || j.State != db.JobFailed || recorded[j.ID] {
			continue
		}
		lg.Line("Error: %s (%s) failed: %s", j.Attr, j.AttrKind, j.Error)
		rid, err := o.db.StartResult(ctx, b.ID, j.Attr, j.AttrKind, time.Now())
		if err == nil {
			err = o.db.FinishResult(ctx, rid, db.ResultFailed, j.DrvPath, nil, j.Error, time.Now())
		}
		if err != nil {
			lg.Line("Error: cannot record the result of %s: %v", j.Attr, err)
			return db.StatusFailed, err.Error()
		}
		results = append(results, &db.Result{Attr: j.Attr, Kind: j.AttrKind, Status: db.ResultFailed})
	}
	for _, j := range jobs {
		switch {
		case j.Kind == db.JobEval && j.State == db.JobFailed:
			return db.StatusFailed, j.Error
		case j.State == db.JobCancelled:
			lg.Line("Build cancelled")
			return db.StatusCancelled, "cancelled"
		}
	}
	var t tally
	for _, r := range results {
		switch r.Status {
		case db.ResultSuccess:
			t.built++
		case db.ResultSkipped:
			t.skipped++
		default:
			t.failed = append(t.failed, fmt.Sprintf("%s (%s)", r.Attr, r.Kind))
		}
	}
	if len(t.failed) > 0 {
		lg.Line("Build complete with failures: %d built, %d failed, %d skipped; what built is cached.", t.built, len(t.failed), t.skipped)
		lg.Line("Build failed for commit %s: %s", b.ShortCommit, t.summary())
		return db.StatusFailed, t.summary()
	}
	lg.Line("Build complete. All dependencies cached.")
	lg.Line("Build finished successfully for commit %s", b.ShortCommit)
	return db.StatusSuccess, ""
}

// pushOutputs queues the push of the outputs of every attribute that built,
// also when others failed: what built is as good as from a successful
// build, and a fleet host of a working configuration should not wait on a
// broken package. A cancelled or interrupted build pushes nothing.
// The build log is left alone: its last line is the spec's end of build.
func (o *Orchestrator) pushOutputs(ctx context.Context, b *db.Build, status string) {
	if o.cfg.Pusher == nil || status == db.StatusCancelled || o.ctx.Err() != nil {
		return
	}
	results, err := o.db.Results(ctx, b.ID)
	if err != nil {
		o.log.Error("list the outputs to push", "build", b.ID, "err", err)
		return
	}
	var roots []string
	for _, r := range results {
		if r.Status == db.ResultSuccess {
			roots = append(roots, r.OutPaths...)
		}
	}
	if len(roots) == 0 {
		return
	}
	jobs, err := o.cfg.Pusher.Push(ctx, b.ID, roots)
	for _, j := range jobs {
		o.log.Info("push queued", "repository", b.Repository, "build", b.ID, "destination", j.Destination, "job", j.ID, "roots", len(roots))
	}
	if err != nil {
		o.log.Error("queue pushes", "build", b.ID, "err", err)
	}
}

// ended logs why a build's context ended and returns its final status.
func (o *Orchestrator) ended(ctx context.Context, lg *liveLog) (string, string) {
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, errCancelled):
		lg.Line("Build cancelled")
		return db.StatusCancelled, "cancelled"
	default:
		lg.Line("Build failed: %v", cause)
		return db.StatusFailed, cause.Error()
	}
}

// tally counts a build's attributes by outcome as they end.
type tally struct {
	built, skipped int
	failed         []string // "attr (kind)"
}

func (t *tally) summary() string {
	total := t.built + t.skipped + len(t.failed)
	return fmt.Sprintf("%d of %d attributes failed: %s", len(t.failed), total, strings.Join(t.failed, ", "))
}

// attrRE is what we pass as an attribute name in an installable; anything
// else in a flake's output names is skipped, never quoted into a command.
var attrRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_'+-]*$`)

// testHome is the minimal home configuration the modules are tried with.
const testHome = `{ ... }: {
  home.username = "test";
  home.homeDirectory = "/home/test";
  home.stateVersion = "23.11";
}
`

// homeManagerExpr is the spec's expression, building the configuration's
// activation package (the configuration itself is not a derivation).
func homeManagerExpr(hmFlake, repoDir, homeFile string) string {
	return fmt.Sprintf(`let
  pkgs = import <nixpkgs> {};
  home-manager = builtins.getFlake %s;
  flake = builtins.getFlake %s;
in
(home-manager.lib.homeManagerConfiguration {
  inherit pkgs;
  modules = [
    (import %s)
  ] ++ (if flake ? homeManagerModules.default
        then [ flake.homeManagerModules.default ]
        else []);
}).activationPackage`, nixString(hmFlake), nixString("path:"+repoDir), nixString(homeFile))
}

// nixString quotes s as a Nix string literal.
func nixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "${", `\${`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}

// tailLineCount is how many lines of a failed attribute's part of the log
// its result keeps.
const tailLineCount = 25

// resultError is what a failed attribute's result says: Nix's own error
// message when Nix gave one, else the error.
func resultError(err error) string {
	var ne *nixcli.Error
	if errors.As(err, &ne) && ne.Message != "" {
		return ne.Message
	}
	return err.Error()
}

// failedDrv is the derivation a failed nix command names: the one asked
// for, else the first whose builder failed; "" after an evaluation error.
func failedDrv(err error) string {
	var ne *nixcli.Error
	if !errors.As(err, &ne) {
		return ""
	}
	top, builders := nixcli.FailedDerivations(ne.Message)
	if top == "" && len(builders) > 0 {
		top = builders[0]
	}
	return top
}
