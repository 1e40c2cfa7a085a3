package build

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/git"
	"github.com/crystal-forge/crystal-forge/internal/nixcli"
)

// Attribute kinds, as results and attr jobs record them.
const (
	KindCheck       = "check"
	KindPackage     = "package"
	KindNixOS       = "nixos"
	KindHomeManager = "home-manager"
	KindLegacy      = "legacy"
)

// RunnerConfig configures a Runner.
type RunnerConfig struct {
	// DataDir holds the runner's clones (builds/), GC roots (gcroots/) and
	// scratch files (tmp/).
	DataDir          string
	System           string
	HomeManagerFlake string
	GitTimeout       time.Duration
	Nix              *nixcli.Nix
	DB               *db.DB
	Logger           *slog.Logger
	// Notify, when set, is called when a build's job log has new lines in
	// the database.
	Notify func(buildID int64)
	// PushTo, when set, is the binary cache every attribute's outputs are
	// copied to (`nix copy --to`, with their closures) once built, with
	// PushNetrc as Nix's netrc-file for the cache's upload token: a worker
	// with a store of its own hands its outputs to the central cache this
	// way. An attribute whose push fails is failed.
	PushTo    string
	PushNetrc string
}

// Runner runs the jobs of builds — the spec's build phases, split into an
// evaluation job and one job per attribute — for a worker.
type Runner struct {
	cfg RunnerConfig
	git git.Client

	mu    sync.Mutex
	repos map[string]*sync.Mutex // one sync of a clone at a time
}

// NewRunner returns a runner, creating its directories.
func NewRunner(cfg RunnerConfig) (*Runner, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, d := range []string{"builds", "gcroots", "tmp"} {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("create %s directory: %w", d, err)
		}
	}
	return &Runner{cfg: cfg, git: git.Client{IdleTimeout: cfg.GitTimeout}, repos: make(map[string]*sync.Mutex)}, nil
}

func (r *Runner) lockRepo(name string) func() {
	r.mu.Lock()
	m := r.repos[name]
	if m == nil {
		m = new(sync.Mutex)
		r.repos[name] = m
	}
	r.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// jobRun is one job as it runs.
type jobRun struct {
	r       *Runner
	worker  string
	job     *db.Job
	build   *db.Build
	repo    config.Repository
	log     *jobLog
	repoDir string
	gcroots string
	// recErr holds the results that could not be recorded: the job fails
	// with it, since an outcome nobody can see is not a success.
	recErr error
}

// RunJob runs job j for worker. Its log goes to the database as it goes,
// and is all there when RunJob returns.
func (r *Runner) RunJob(ctx context.Context, worker string, j *db.Job) (err error) {
	b, err := r.cfg.DB.Build(ctx, j.BuildID)
	if err != nil {
		return err
	}
	url, branch, err := r.cfg.DB.RepositoryByName(ctx, b.Repository)
	if err != nil {
		return fmt.Errorf("repository %s of build %d: %w", b.Repository, b.ID, err)
	}
	lg, err := openJobLog(r.cfg.DB, filepath.Join(r.cfg.DataDir, "tmp"), j, r.cfg.Notify)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := lg.close(); cerr != nil {
			r.cfg.Logger.Error("job log incomplete", "job", j.ID, "build", j.BuildID, "err", cerr)
		}
	}()
	jr := &jobRun{r: r, worker: worker, job: j, build: b, log: lg,
		repo:    config.Repository{Name: b.Repository, URL: url, Branch: branch},
		repoDir: filepath.Join(r.cfg.DataDir, "builds", b.Repository),
		gcroots: filepath.Join(r.cfg.DataDir, "gcroots", b.Repository),
	}
	if err := os.MkdirAll(jr.gcroots, 0o755); err != nil {
		return fmt.Errorf("create GC root directory: %w", err)
	}
	switch j.Kind {
	case db.JobEval:
		return jr.eval(ctx)
	case db.JobAttr:
		return jr.attr(ctx)
	}
	return fmt.Errorf("job %d: unknown kind %q", j.ID, j.Kind)
}

// sync brings the clone up to the branch's head (phase 2), with the
// spec's lines.
func (jr *jobRun) sync(ctx context.Context) error {
	lg, repo, repoDir := jr.log, jr.repo, jr.repoDir
	if _, err := os.Stat(repoDir); err == nil && !git.IsRepo(ctx, repoDir) {
		// A clone killed half-way leaves a directory git cannot fetch into.
		lg.Line("Removing incomplete clone in %s", repoDir)
		if err := os.RemoveAll(repoDir); err != nil {
			lg.Line("Error: %v", err)
			return fmt.Errorf("remove incomplete clone: %w", err)
		}
	}
	if _, err := os.Stat(repoDir); errors.Is(err, os.ErrNotExist) {
		lg.Line("Cloning repository...")
		if err := jr.r.git.Clone(ctx, repo.URL, repo.Branch, repoDir, lg); err != nil {
			lg.Line("Error: failed to clone %s (branch %s): %v", repo.URL, repo.Branch, err)
			if rerr := os.RemoveAll(repoDir); rerr != nil {
				lg.Line("Error: remove incomplete clone: %v", rerr)
			}
			return fmt.Errorf("clone %s: %w", repo.URL, err)
		}
		return nil
	}
	lg.Line("Updating repository...")
	if err := jr.r.git.Update(ctx, repoDir, repo.Branch, repo.URL, lg); err != nil {
		lg.Line("Error: failed to update from %s (branch %s): %v", repo.URL, repo.Branch, err)
		return fmt.Errorf("update %s: %w", repo.URL, err)
	}
	return nil
}

// checkout makes the clone hold the build's commit, for an attr job: as
// it is when this worker evaluated the build, else fetched.
func (jr *jobRun) checkout(ctx context.Context) error {
	defer jr.r.lockRepo(jr.repo.Name)()
	if full, _, err := git.Head(ctx, jr.repoDir); err == nil && full == jr.build.Commit {
		return nil
	}
	if err := jr.sync(ctx); err != nil {
		return err
	}
	if err := git.ResetTo(ctx, jr.repoDir, jr.build.Commit, jr.log); err != nil {
		jr.log.Line("Error: cannot check out commit %s: %v", jr.build.Commit, err)
		return fmt.Errorf("check out %s: %w", jr.build.Commit, err)
	}
	return nil
}

// eval is the evaluation job: phases 1 to 3, the flake check, and the
// evaluation of each attribute on its own, queueing a job for each that
// evaluates; an attribute that does not evaluate is recorded failed and
// the others go on.
func (jr *jobRun) eval(ctx context.Context) error {
	lg, b := jr.log, jr.build
	// Phase 1: initialisation.
	lg.Line("Starting build for %s", jr.repo.Name)
	// Phase 2: repository sync.
	unlock := jr.r.lockRepo(jr.repo.Name)
	err := jr.sync(ctx)
	if err == nil && b.Commit != "" {
		// An earlier attempt of this evaluation, since lost, chose the
		// commit: the build's jobs all build that one.
		lg.Line("Evaluating commit %s again: an earlier attempt was lost", b.ShortCommit)
		if err = git.ResetTo(ctx, jr.repoDir, b.Commit, lg); err != nil {
			lg.Line("Error: cannot check out commit %s: %v", b.Commit, err)
		}
	}
	var full, short string
	if err == nil {
		full, short, err = git.Head(ctx, jr.repoDir)
		if err != nil {
			lg.Line("Error: %v", err)
		}
	}
	unlock()
	if err != nil {
		return err
	}
	if err := jr.r.cfg.DB.SetCommit(context.WithoutCancel(ctx), b.ID, full, short); err != nil {
		return err
	}
	b.Commit, b.ShortCommit = full, short
	lg.Line("Building commit %s", short)

	// Phase 3: flake detection and update.
	if _, err := os.Stat(filepath.Join(jr.repoDir, "flake.nix")); err != nil {
		lg.Line("No flake.nix found, will attempt default.nix")
		// Phase 4, strategy B: the legacy build, one job.
		return jr.enqueue(ctx, []db.NewJob{{Attr: "default.nix", AttrKind: KindLegacy}})
	}
	nix := jr.r.cfg.Nix
	lg.Line("Updating flake inputs...")
	if err := nix.Run(ctx, jr.repoDir, lg, "flake", "update"); err != nil {
		if ctx.Err() != nil {
			return err
		}
		lg.Line("Warning: flake update failed (%v); continuing with the locked inputs", err)
	}
	lg.Line("Checking flake...")
	// The flake's own check, without building: the outputs evaluate and
	// have the right types. A failure fails the build like a failing
	// package: it is recorded as the attribute "checks", and the packages
	// still build. Each checks.<system>.<name> is built as a job of its own.
	err = jr.attempt(ctx, "checks", KindCheck, func() (string, []string, error) {
		return "", nil, nix.Run(ctx, jr.repoDir, lg, "flake", "check", "--no-build")
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		lg.Line("Flake check failed; building the packages anyway")
	} else {
		lg.Line("Flake check passed")
	}

	// Phase 4, strategy A: each attribute evaluated on its own.
	show, err := nix.ShowFlake(ctx, jr.repoDir, lg)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		lg.Line("Error: cannot evaluate the flake's outputs: %v", err)
		return fmt.Errorf("evaluate the flake's outputs: %w", err)
	}
	var jobs []db.NewJob
	system := jr.r.cfg.System
	pkgs := make([]string, 0, len(show.Packages[system]))
	for name := range show.Packages[system] {
		pkgs = append(pkgs, name)
	}
	sort.Strings(pkgs)
	if len(pkgs) == 0 {
		lg.Line("No packages for %s in this flake", system)
	}
	for _, pkg := range pkgs {
		if !attrRE.MatchString(pkg) {
			lg.Line("Skipping package %q: unsupported attribute name", pkg)
			jr.skip(ctx, pkg, KindPackage, "unsupported attribute name")
			continue
		}
		if j, ok := jr.evalAttr(ctx, pkg, KindPackage, "package "+pkg, "eval", "--raw", ".#packages."+system+"."+pkg+".drvPath"); ok {
			jobs = append(jobs, j)
		}
	}

	checks := make([]string, 0, len(show.Checks[system]))
	for name := range show.Checks[system] {
		checks = append(checks, name)
	}
	sort.Strings(checks)
	for _, name := range checks {
		if !attrRE.MatchString(name) {
			lg.Line("Skipping check %q: unsupported attribute name", name)
			jr.skip(ctx, "checks."+name, KindCheck, "unsupported attribute name")
			continue
		}
		if j, ok := jr.evalAttr(ctx, "checks."+name, KindCheck, "check "+name, "eval", "--raw", ".#checks."+system+"."+name+".drvPath"); ok {
			jobs = append(jobs, j)
		}
	}

	names := make([]string, 0, len(show.NixosConfigurations))
	for name := range show.NixosConfigurations {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !attrRE.MatchString(name) {
			lg.Line("Skipping nixosConfigurations %q: unsupported attribute name", name)
			jr.skip(ctx, name, KindNixOS, "unsupported attribute name")
			continue
		}
		lg.Line("Evaluating nixosConfigurations.%s...", name)
		if j, ok := jr.evalAttr(ctx, name, KindNixOS, "nixosConfigurations."+name, "eval", "--raw", nixosAttr(name)+".drvPath"); ok {
			lg.Line("Evaluated nixosConfigurations.%s: %s", name, j.DrvPath)
			jobs = append(jobs, j)
		}
	}

	if len(show.HomeManagerModules) > 0 && string(show.HomeManagerModules) != "null" {
		expr, err := jr.homeManagerExpr()
		if err != nil {
			return err
		}
		if j, ok := jr.evalAttr(ctx, "homeManagerConfiguration", KindHomeManager, "the home-manager configuration",
			"eval", "--raw", "--impure", "--expr", "("+expr+").drvPath"); ok {
			jobs = append(jobs, j)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return errors.Join(jr.enqueue(ctx, jobs), jr.recErr)
}

// nixosAttr is the installable of a NixOS configuration's system.
func nixosAttr(name string) string {
	return ".#nixosConfigurations." + name + ".config.system.build.toplevel"
}

// evalAttr evaluates one attribute's derivation with `nix <args>` and
// returns its job, unless it does not evaluate or it failed before (and
// the build is not forced): then its failed result is recorded here.
func (jr *jobRun) evalAttr(ctx context.Context, attr, kind, what string, args ...string) (db.NewJob, bool) {
	lg := jr.log
	start := lg.offset()
	out, err := jr.r.cfg.Nix.Output(ctx, jr.repoDir, lg, args...)
	if ctx.Err() != nil {
		return db.NewJob{}, false
	}
	if err != nil {
		lg.Line("Failed to evaluate %s", what)
		jr.record(ctx, attr, kind, db.ResultFailed, "", resultError(err), start)
		return db.NewJob{}, false
	}
	drv := strings.TrimSpace(string(out))
	if !jr.job.Forced {
		prev, err := jr.r.cfg.DB.LookupDerivation(ctx, drv)
		if err != nil && !errors.Is(err, db.ErrNotFound) {
			lg.Line("Warning: cannot read what became of %s before (%v); building it", drv, err)
		}
		if err == nil && prev.Status == db.DrvFailed {
			lg.Line("Not building %s: its derivation %s failed in build %d; trigger a forced build to retry it", what, drv, prev.BuildID)
			jr.record(ctx, attr, kind, db.ResultFailed, drv,
				fmt.Sprintf("%s (failed before, in build %d; not rebuilt: trigger a forced build to retry)", prev.Error, prev.BuildID), start)
			return db.NewJob{}, false
		}
	}
	return db.NewJob{Attr: attr, AttrKind: kind, DrvPath: drv}, true
}

// enqueue queues attr jobs for the build, on this job's system.
func (jr *jobRun) enqueue(ctx context.Context, jobs []db.NewJob) error {
	if len(jobs) == 0 {
		return nil
	}
	for i := range jobs {
		jobs[i].BuildID = jr.build.ID
		jobs[i].Kind = db.JobAttr
		jobs[i].Forced = jr.job.Forced
		if jobs[i].System == "" {
			jobs[i].System = jr.r.cfg.System
		}
	}
	if _, err := jr.r.cfg.DB.EnqueueJobsFrom(context.WithoutCancel(ctx), jr.job.ID, jr.worker, jobs, time.Now()); err != nil {
		jr.log.Line("Error: cannot queue the attributes' builds: %v", err)
		return err
	}
	return nil
}

// attr is an attribute's job: it builds the derivation its evaluation
// found, from the build's commit.
func (jr *jobRun) attr(ctx context.Context) error {
	lg, j := jr.log, jr.job
	if err := jr.checkout(ctx); err != nil {
		return err
	}
	var err error
	switch j.AttrKind {
	case KindPackage:
		what := "package " + j.Attr
		lg.Line("Building %s...", what)
		err = jr.buildReported(ctx, what, filepath.Join(jr.gcroots, j.Attr), ".#packages."+jr.system()+"."+j.Attr)
	case KindCheck:
		name := strings.TrimPrefix(j.Attr, "checks.")
		what := "check " + name
		lg.Line("Building %s...", what)
		err = jr.buildReported(ctx, what, filepath.Join(jr.gcroots, j.Attr), ".#checks."+jr.system()+"."+name)
	case KindNixOS:
		what := "nixosConfigurations." + j.Attr
		lg.Line("Building %s...", what)
		err = jr.buildReported(ctx, what, filepath.Join(jr.gcroots, "nixos-"+j.Attr), nixosAttr(j.Attr))
	case KindHomeManager:
		lg.Line("Found homeManagerModules, building test home configuration...")
		expr, herr := jr.homeManagerExpr()
		if herr != nil {
			return herr
		}
		err = jr.buildReported(ctx, "home-manager configuration", filepath.Join(jr.gcroots, "home-manager"), "--impure", "--expr", expr)
	case KindLegacy:
		err = jr.legacyBuild(ctx)
	default:
		return fmt.Errorf("job %d: unknown attribute kind %q", j.ID, j.AttrKind)
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// buildReported builds as buildAttr does and logs the outcome, "Successfully
// built WHAT" or "Failed to build WHAT", unless the job was cancelled.
func (jr *jobRun) buildReported(ctx context.Context, what, outLink string, installable ...string) error {
	err := jr.buildAttr(ctx, outLink, installable...)
	if ctx.Err() != nil {
		return err
	}
	if err != nil {
		jr.log.Line("Failed to build %s", what)
	} else {
		jr.log.Line("Successfully built %s", what)
	}
	return err
}

// system is the system the job builds for.
func (jr *jobRun) system() string {
	if jr.job.System != "" {
		return jr.job.System
	}
	return jr.r.cfg.System
}

// homeManagerExpr writes the test home configuration and returns the
// spec's expression building it.
func (jr *jobRun) homeManagerExpr() (string, error) {
	homeFile := filepath.Join(jr.r.cfg.DataDir, "tmp", "test-home-"+jr.repo.Name+".nix")
	if err := os.WriteFile(homeFile, []byte(testHome), 0o644); err != nil {
		return "", fmt.Errorf("write test home configuration: %w", err)
	}
	return homeManagerExpr(jr.r.cfg.HomeManagerFlake, jr.repoDir, homeFile), nil
}

// buildAttr builds the job's attribute (and pushes its outputs) and
// records its result; what is built must be the derivation the evaluation
// found.
func (jr *jobRun) buildAttr(ctx context.Context, outLink string, installable ...string) error {
	return jr.attempt(ctx, jr.job.Attr, jr.job.AttrKind, func() (string, []string, error) {
		drv, outs, err := jr.nixBuild(ctx, outLink, jr.job.DrvPath, installable...)
		if err == nil {
			err = jr.push(ctx, outs)
		}
		return drv, outs, err
	})
}

// push copies built outputs, with their closures, to the central cache
// when the runner has one.
func (jr *jobRun) push(ctx context.Context, outs []string) error {
	to := jr.r.cfg.PushTo
	if to == "" || len(outs) == 0 {
		return nil
	}
	jr.log.Line("Pushing %d outputs of %s to %s...", len(outs), jr.job.Attr, to)
	args := []string{"copy", "--to", to}
	if jr.r.cfg.PushNetrc != "" {
		args = append(args, "--option", "netrc-file", jr.r.cfg.PushNetrc)
	}
	if err := jr.r.cfg.Nix.Run(ctx, jr.repoDir, jr.log, append(args, outs...)...); err != nil {
		jr.log.Line("Error: built, but pushing to %s failed: %v", to, err)
		return fmt.Errorf("built, but pushing to %s failed: %w", to, err)
	}
	return nil
}

// nixBuild runs nix build and returns the derivation and outputs built.
func (jr *jobRun) nixBuild(ctx context.Context, outLink, wantDrv string, installable ...string) (string, []string, error) {
	res, err := jr.r.cfg.Nix.Build(ctx, jr.repoDir, jr.log, outLink, installable...)
	drv := ""
	var outs []string
	for _, r := range res {
		drv = r.DrvPath
		for _, p := range r.Outputs {
			outs = append(outs, p)
		}
	}
	if err == nil && wantDrv != "" && drv != wantDrv {
		err = fmt.Errorf("built %s, but evaluation gave %s", drv, wantDrv)
		jr.log.Line("Error: derivation of %s changed between evaluation and build: %v", jr.job.Attr, err)
	}
	if err != nil && drv == "" {
		drv = wantDrv
	}
	return drv, outs, err
}

// legacyBuild is strategy B: nix-build of default.nix. Nix 2.x's nix-build
// prints build logs by default and has no --print-build-logs flag.
func (jr *jobRun) legacyBuild(ctx context.Context) error {
	lg := jr.log
	link := filepath.Join(jr.gcroots, "result")
	err := jr.attempt(ctx, "default.nix", KindLegacy, func() (string, []string, error) {
		if err := jr.r.cfg.Nix.Legacy(ctx, jr.repoDir, lg, "nix-build", "--keep-going", "--out-link", link); err != nil {
			return "", nil, err
		}
		// nix-build names the links result, result-2, … for several outputs.
		var outs []string
		matches, _ := filepath.Glob(link + "*")
		for _, m := range matches {
			if t, err := os.Readlink(m); err == nil {
				outs = append(outs, t)
			}
		}
		return "", outs, jr.push(ctx, outs)
	})
	if err != nil && ctx.Err() == nil {
		lg.Line("Error: nix-build failed: %v", err)
	}
	return err
}

// attempt runs fn, the work of one attribute, and records its result: the
// derivation and outputs fn returns, and for a failure Nix's error message,
// the derivation Nix named when fn did not know it, and the last lines of
// the attribute's part of the job's log. It remembers what became of the
// derivation (a failed one is not rebuilt by later builds unless forced).
// It returns fn's error, or the database's when the result could not be
// recorded (then the attribute counts as failed: an outcome nobody can see
// is not a success).
func (jr *jobRun) attempt(ctx context.Context, attr, kind string, fn func() (drv string, outs []string, err error)) error {
	bg := context.WithoutCancel(ctx)
	d, lg := jr.r.cfg.DB, jr.log
	start := lg.offset()
	rid, err := d.StartJobResult(bg, jr.build.ID, jr.job.ID, attr, kind, time.Now(), &start)
	if err != nil {
		lg.Line("Error: cannot record the result of %s: %v", attr, err)
		return err
	}
	drv, outs, ferr := fn()
	sort.Strings(outs)
	end := lg.offset()
	status, errMsg, tail := db.ResultSuccess, "", ""
	if ferr != nil {
		status, errMsg = db.ResultFailed, resultError(ferr)
		if drv == "" {
			drv = failedDrv(ferr)
		}
		if t, err := lg.tail(start, end, tailLineCount); err == nil {
			tail = t
		} else {
			jr.r.cfg.Logger.Warn("read the end of a failed attribute's log", "build", jr.build.ID, "attr", attr, "err", err)
		}
	}
	if err := d.FinishJobResult(bg, rid, jr.job.ID, jr.worker, status, drv, outs, errMsg, time.Now(), &end, tail); err != nil {
		lg.Line("Error: cannot record the result of %s: %v", attr, err)
		return err
	}
	jr.remember(ctx, attr, kind, drv, outs, ferr, errMsg)
	return ferr
}

// remember records what became of an attribute's derivation: built, or
// failed by its builder (not stopped, nor failed before building).
func (jr *jobRun) remember(ctx context.Context, attr, kind, drv string, outs []string, ferr error, errMsg string) {
	if drv == "" || (kind == KindCheck && attr == "checks") {
		return
	}
	rec := db.Derivation{DrvPath: drv, Status: db.DrvBuilt, OutPaths: outs, BuildID: jr.build.ID, At: time.Now()}
	if ferr != nil {
		if ctx.Err() != nil || failedDrv(ferr) == "" {
			return
		}
		rec.Status, rec.OutPaths, rec.Error = db.DrvFailed, nil, errMsg
	}
	if err := jr.r.cfg.DB.RecordDerivation(context.WithoutCancel(ctx), rec); err != nil {
		jr.r.cfg.Logger.Warn("remember a derivation's outcome", "drv", drv, "err", err)
	}
}

// record records an attribute's outcome decided without building it.
func (jr *jobRun) record(ctx context.Context, attr, kind, status, drv, errMsg string, logStart int64) {
	bg := context.WithoutCancel(ctx)
	d := jr.r.cfg.DB
	end := jr.log.offset()
	tail := ""
	if status == db.ResultFailed {
		tail, _ = jr.log.tail(logStart, end, tailLineCount)
	}
	rid, err := d.StartJobResult(bg, jr.build.ID, jr.job.ID, attr, kind, time.Now(), &logStart)
	if err == nil {
		err = d.FinishJobResult(bg, rid, jr.job.ID, jr.worker, status, drv, nil, errMsg, time.Now(), &end, tail)
	}
	if err != nil {
		jr.log.Line("Error: cannot record the result of %s: %v", attr, err)
		jr.recErr = errors.Join(jr.recErr, err)
	}
}

// skip records an attribute that is not built, and why.
func (jr *jobRun) skip(ctx context.Context, attr, kind, why string) {
	off := jr.log.offset()
	jr.record(ctx, attr, kind, db.ResultSkipped, "", why, off)
}
