package build

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/git"
	"github.com/crystal-forge/crystal-forge/internal/nixcli"
)

// execute runs one build from queue to recorded end. Whatever happens —
// failure, timeout, cancel, shutdown, panic — the status is written before
// it returns.
func (o *Orchestrator) execute(ctx context.Context, rn *run, repo config.Repository) {
	b := rn.build
	lg := rn.log
	// Final writes must land even when ctx is what ended the build.
	bg := context.WithoutCancel(ctx)
	status, errMsg := db.StatusFailed, ""
	slot := false
	defer func() {
		if p := recover(); p != nil {
			o.log.Error("build panicked", "repository", b.Repository, "build", b.ID, "panic", p)
			status, errMsg = db.StatusFailed, fmt.Sprintf("internal error: %v", p)
			lg.Line("Error: internal error: %v", p)
		}
		// Pushes are queued before the build is seen to end, so whoever
		// sees the end also sees them.
		o.pushOutputs(bg, b, status)
		now := time.Now()
		if err := o.db.FinishBuild(bg, b.ID, status, errMsg, now); err != nil {
			o.log.Error("record build end", "build", b.ID, "err", err)
		}
		b.Status, b.Error, b.FinishedAt = status, errMsg, &now
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
		o.writeStatusFile(bg, b.Repository)
		o.publish(b)
		o.log.Info("build finished", "repository", b.Repository, "build", b.ID, "status", status, "error", errMsg)
	}()

	// Wait for a slot; a cancel or shutdown while queued ends the build here.
	select {
	case o.slots <- struct{}{}:
		slot = true
	case <-ctx.Done():
		status, errMsg = o.ended(ctx, lg)
		return
	}

	if o.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, o.cfg.Timeout, fmt.Errorf("timed out after %s", o.cfg.Timeout))
		defer cancel()
	}
	start := time.Now()
	if err := o.db.StartBuild(bg, b.ID, start); err != nil {
		errMsg = err.Error()
		return
	}
	b.Status, b.StartedAt = db.StatusRunning, &start
	o.writeStatusFile(bg, b.Repository)
	o.publish(b)

	err := o.phases(ctx, rn, repo)
	switch {
	case ctx.Err() != nil:
		status, errMsg = o.ended(ctx, lg)
	case err != nil:
		status, errMsg = db.StatusFailed, err.Error()
	default:
		status = db.StatusSuccess
	}
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
	case o.ctx.Err() != nil:
		lg.Line("Build interrupted: the server is shutting down")
		return db.StatusFailed, "interrupted"
	default:
		lg.Line("Build failed: %v", cause)
		return db.StatusFailed, cause.Error()
	}
}

// phases is the spec's build script, phase by phase, with its log lines.
func (o *Orchestrator) phases(ctx context.Context, rn *run, repo config.Repository) error {
	b, lg := rn.build, rn.log
	repoDir := filepath.Join(o.cfg.DataDir, "builds", repo.Name)

	// Phase 1: initialisation.
	lg.Line("Starting build for %s", repo.Name)

	// Phase 2: repository sync.
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
		if err := o.git.Clone(ctx, repo.URL, repo.Branch, repoDir, lg); err != nil {
			lg.Line("Error: failed to clone %s (branch %s): %v", repo.URL, repo.Branch, err)
			if rerr := os.RemoveAll(repoDir); rerr != nil {
				lg.Line("Error: remove incomplete clone: %v", rerr)
			}
			return fmt.Errorf("clone %s: %w", repo.URL, err)
		}
	} else {
		lg.Line("Updating repository...")
		if err := o.git.Update(ctx, repoDir, repo.Branch, repo.URL, lg); err != nil {
			lg.Line("Error: failed to update from %s (branch %s): %v", repo.URL, repo.Branch, err)
			return fmt.Errorf("update %s: %w", repo.URL, err)
		}
	}
	full, short, err := git.Head(ctx, repoDir)
	if err != nil {
		lg.Line("Error: %v", err)
		return err
	}
	if err := o.db.SetCommit(context.WithoutCancel(ctx), b.ID, full, short); err != nil {
		return err
	}
	b.Commit, b.ShortCommit = full, short
	o.publish(b)
	lg.Line("Building commit %s", short)

	gcroots := filepath.Join(o.cfg.DataDir, "gcroots", repo.Name)
	if err := os.MkdirAll(gcroots, 0o755); err != nil {
		return fmt.Errorf("create GC root directory: %w", err)
	}

	// Phase 3: flake detection and update.
	if _, err := os.Stat(filepath.Join(repoDir, "flake.nix")); err != nil {
		lg.Line("No flake.nix found, will attempt default.nix")
		// Phase 4, strategy B: legacy build.
		if err := o.legacyBuild(ctx, rn, repoDir, gcroots); err != nil {
			return err
		}
	} else {
		lg.Line("Updating flake inputs...")
		if err := o.nix.Run(ctx, repoDir, lg, "flake", "update"); err != nil {
			if ctx.Err() != nil {
				return err
			}
			lg.Line("Warning: flake update failed (%v); continuing with the locked inputs", err)
		}
		lg.Line("Checking flake...")
		// A failing check fails the build like a failing package: it is
		// recorded as the attribute "checks", and the packages still build.
		err := o.attempt(ctx, rn, "checks", "check", func() (string, []string, error) {
			return "", nil, o.nix.Run(ctx, repoDir, lg, "flake", "check", "--print-build-logs", "--keep-going")
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			lg.Line("Flake check failed; building the packages anyway")
		} else {
			lg.Line("Flake check passed")
		}
		// Phase 4, strategy A: flake build.
		if err := o.flakeBuild(ctx, rn, repo, repoDir, gcroots); err != nil {
			return err
		}
	}

	// Phase 5: completion. The spec's success lines only when nothing failed.
	t := rn.tally
	if len(t.failed) > 0 {
		lg.Line("Build complete with failures: %d built, %d failed, %d skipped; what built is cached.", t.built, len(t.failed), t.skipped)
		lg.Line("Build failed for commit %s: %s", short, t.summary())
		return errors.New(t.summary())
	}
	lg.Line("Build complete. All dependencies cached.")
	lg.Line("Build finished successfully for commit %s", short)
	return nil
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

func (o *Orchestrator) flakeBuild(ctx context.Context, rn *run, repo config.Repository, repoDir, gcroots string) error {
	lg := rn.log
	show, err := o.nix.ShowFlake(ctx, repoDir, lg)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		lg.Line("Error: cannot evaluate the flake's outputs: %v", err)
		return fmt.Errorf("evaluate the flake's outputs: %w", err)
	}
	pkgs := make([]string, 0, len(show.Packages[o.cfg.System]))
	for name := range show.Packages[o.cfg.System] {
		pkgs = append(pkgs, name)
	}
	sort.Strings(pkgs)
	if len(pkgs) == 0 {
		lg.Line("No packages for %s in this flake", o.cfg.System)
	}
	for _, pkg := range pkgs {
		if !attrRE.MatchString(pkg) {
			lg.Line("Skipping package %q: unsupported attribute name", pkg)
			o.skip(ctx, rn, pkg, "package", "unsupported attribute name")
			continue
		}
		lg.Line("Building package %s...", pkg)
		err := o.buildAttr(ctx, rn, pkg, "package", repoDir, filepath.Join(gcroots, pkg), "", ".#"+pkg)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			lg.Line("Failed to build package %s", pkg)
		} else {
			lg.Line("Successfully built package %s", pkg)
		}
	}

	if err := o.nixosBuilds(ctx, rn, show, repoDir, gcroots); err != nil {
		return err
	}

	if len(show.HomeManagerModules) > 0 && string(show.HomeManagerModules) != "null" {
		lg.Line("Found homeManagerModules, building test home configuration...")
		homeFile := filepath.Join(o.cfg.DataDir, "tmp", "test-home-"+repo.Name+".nix")
		if err := os.WriteFile(homeFile, []byte(testHome), 0o644); err != nil {
			return fmt.Errorf("write test home configuration: %w", err)
		}
		expr := homeManagerExpr(o.cfg.HomeManagerFlake, repoDir, homeFile)
		err := o.buildAttr(ctx, rn, "homeManagerConfiguration", "home-manager", repoDir, filepath.Join(gcroots, "home-manager"), "", "--impure", "--expr", expr)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			lg.Line("Failed to build home-manager configuration")
		} else {
			lg.Line("Successfully built home-manager configuration")
		}
	}
	return nil
}

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

// buildAttr builds one installable and records its result. When wantDrv is
// set, a build whose derivation differs from it fails: what was built must
// be what was evaluated.
func (o *Orchestrator) buildAttr(ctx context.Context, rn *run, attr, kind, dir, outLink, wantDrv string, installable ...string) error {
	return o.attempt(ctx, rn, attr, kind, func() (string, []string, error) {
		return o.nixBuild(ctx, rn, attr, dir, outLink, wantDrv, installable...)
	})
}

// nixBuild runs nix build and returns the derivation and outputs built.
func (o *Orchestrator) nixBuild(ctx context.Context, rn *run, attr, dir, outLink, wantDrv string, installable ...string) (string, []string, error) {
	res, err := o.nix.Build(ctx, dir, rn.log, outLink, installable...)
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
		rn.log.Line("Error: derivation of %s changed between evaluation and build: %v", attr, err)
	}
	if err != nil && drv == "" {
		drv = wantDrv
	}
	return drv, outs, err
}

// tailLineCount is how many lines of a failed attribute's part of the log
// its result keeps.
const tailLineCount = 25

// attempt runs fn, the work of one attribute, and records its result: the
// derivation and outputs fn returns, and for a failure Nix's error message,
// the derivation Nix named when fn did not know it, and the last lines of
// the attribute's part of the build log. It returns fn's error, or the
// database's when the result could not be recorded (then the attribute
// counts as failed: an outcome nobody can see is not a success).
func (o *Orchestrator) attempt(ctx context.Context, rn *run, attr, kind string, fn func() (drv string, outs []string, err error)) error {
	bg := context.WithoutCancel(ctx)
	name := fmt.Sprintf("%s (%s)", attr, kind)
	start := rn.log.offset()
	rid, err := o.db.StartResultLog(bg, rn.build.ID, attr, kind, time.Now(), &start)
	if err != nil {
		rn.tally.failed = append(rn.tally.failed, name)
		rn.log.Line("Error: cannot record the result of %s: %v", attr, err)
		return err
	}
	o.publish(rn.build)
	drv, outs, ferr := fn()
	sort.Strings(outs)
	end := rn.log.offset()
	status, errMsg, tail := db.ResultSuccess, "", ""
	if ferr != nil {
		status, errMsg = db.ResultFailed, resultError(ferr)
		if drv == "" {
			drv = failedDrv(ferr)
		}
		if t, err := tailLines(rn.build.LogPath, start, end, tailLineCount); err == nil {
			tail = t
		} else {
			o.log.Warn("read the end of a failed attribute's log", "build", rn.build.ID, "attr", attr, "err", err)
		}
	}
	if err := o.db.FinishResultLog(bg, rid, status, drv, outs, errMsg, time.Now(), &end, tail); err != nil {
		rn.tally.failed = append(rn.tally.failed, name)
		rn.log.Line("Error: cannot record the result of %s: %v", attr, err)
		return err
	}
	if ferr != nil {
		rn.tally.failed = append(rn.tally.failed, name)
	} else {
		rn.tally.built++
	}
	o.publish(rn.build)
	return ferr
}

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

// legacyBuild is strategy B: nix-build of default.nix. Nix 2.x's nix-build
// prints build logs by default and has no --print-build-logs flag.
func (o *Orchestrator) legacyBuild(ctx context.Context, rn *run, repoDir, gcroots string) error {
	lg := rn.log
	link := filepath.Join(gcroots, "result")
	err := o.attempt(ctx, rn, "default.nix", "legacy", func() (string, []string, error) {
		if err := o.nix.Legacy(ctx, repoDir, lg, "nix-build", "--keep-going", "--out-link", link); err != nil {
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
		return "", outs, nil
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		lg.Line("Error: nix-build failed: %v", err)
	}
	return nil
}

// nixosBuilds evaluates (a dry run: the derivation path only) and then
// builds each nixosConfigurations.<name>.config.system.build.toplevel, so
// the fleet can hand hosts a verified, built and cached system.
func (o *Orchestrator) nixosBuilds(ctx context.Context, rn *run, show *nixcli.FlakeShow, repoDir, gcroots string) error {
	lg := rn.log
	names := make([]string, 0, len(show.NixosConfigurations))
	for name := range show.NixosConfigurations {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !attrRE.MatchString(name) {
			lg.Line("Skipping nixosConfigurations %q: unsupported attribute name", name)
			o.skip(ctx, rn, name, "nixos", "unsupported attribute name")
			continue
		}
		attr := ".#nixosConfigurations." + name + ".config.system.build.toplevel"
		lg.Line("Evaluating nixosConfigurations.%s...", name)
		err := o.attempt(ctx, rn, name, "nixos", func() (string, []string, error) {
			out, err := o.nix.Output(ctx, repoDir, lg, "eval", "--raw", attr+".drvPath")
			if err != nil {
				lg.Line("Failed to evaluate nixosConfigurations.%s", name)
				return "", nil, fmt.Errorf("evaluation failed: %w", err)
			}
			drv := strings.TrimSpace(string(out))
			lg.Line("Evaluated nixosConfigurations.%s: %s", name, drv)
			lg.Line("Building nixosConfigurations.%s...", name)
			return o.nixBuild(ctx, rn, name, repoDir, filepath.Join(gcroots, "nixos-"+name), drv, attr)
		})
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			lg.Line("Failed to build nixosConfigurations.%s", name)
		} else {
			lg.Line("Successfully built nixosConfigurations.%s", name)
		}
	}
	return nil
}

// skip records an attribute that is not built, and why.
func (o *Orchestrator) skip(ctx context.Context, rn *run, attr, kind, why string) {
	bg := context.WithoutCancel(ctx)
	rid, err := o.db.StartResult(bg, rn.build.ID, attr, kind, time.Now())
	if err == nil {
		err = o.db.FinishResult(bg, rid, db.ResultSkipped, "", nil, why, time.Now())
	}
	if err != nil {
		// Unrecorded, the skip would be invisible: count it as a failure.
		rn.tally.failed = append(rn.tally.failed, fmt.Sprintf("%s (%s)", attr, kind))
		rn.log.Line("Error: cannot record that %s is skipped: %v", attr, err)
		return
	}
	rn.tally.skipped++
	o.publish(rn.build)
}
