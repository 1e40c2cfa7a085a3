package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/command"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
)

// switchScript is what every NixOS system closure has, and what activates it.
const switchScript = "bin/switch-to-configuration"

// nixArgs prefixes the arguments of a `nix` command with the experimental
// features it needs.
func nixArgs(args ...string) []string {
	return append([]string{"--extra-experimental-features", "nix-command flakes"}, args...)
}

// Deployer switches the host to a system closure the way nixos-rebuild
// does: fetch the closure, add a profile generation, activate it; and when
// a step after the fetch fails, put the profile and the running system back
// to what they were.
type Deployer struct {
	cfg Config
	log *slog.Logger
}

// NewDeployer returns a Deployer for cfg (ServerURL and ServerKeys are not
// needed).
func NewDeployer(cfg Config) (*Deployer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Deployer{cfg: cfg, log: cfg.Logger}, nil
}

// Deploy switches to target and reports the outcome; it never panics on a
// bad target and always returns a complete report.
//
// Once the profile is about to change, the remaining steps (and any
// rollback) run to completion even if ctx is cancelled: killing an
// activation halfway would leave the host in neither configuration. Only
// an activation that outlives ActivationTimeout is stopped, and then rolled
// back like one that failed.
func (d *Deployer) Deploy(ctx context.Context, target string) fleetproto.DeploymentReport {
	r, _ := d.deploy(ctx, target)
	return r
}

// deploy is Deploy that also says whether the host was touched: whether the
// profile or the running system may have changed, even if restored.
func (d *Deployer) deploy(ctx context.Context, target string) (r fleetproto.DeploymentReport, touched bool) {
	start := time.Now()
	r = fleetproto.DeploymentReport{
		Target:    target,
		Previous:  readLink(d.cfg.CurrentSystem),
		StartedAt: start.UTC(),
	}
	defer func() { r.DurationMS = time.Since(start).Milliseconds() }()
	log := d.log.With("target", target, "previous", r.Previous)

	fail := func(status string, err error) (fleetproto.DeploymentReport, bool) {
		r.Status, r.Error = status, err.Error()
		log.Error("deploy failed", "status", status, "err", err)
		return r, touched
	}
	if !fleetproto.ValidStorePath(target, d.cfg.StoreDir) {
		return fail(fleetproto.DeployNotApplied, fmt.Errorf("refusing target %q: not a top-level path in %s", target, d.cfg.StoreDir))
	}
	if d.cfg.DryRun {
		log.Info("dry run: would deploy",
			"fetch_from", strings.Join(d.cfg.substituters(), " "),
			"set_profile", d.cfg.Profile,
			"activate", d.storeFile(target, switchScript)+" switch")
		r.Status = fleetproto.DeployDryRun
		return r, false
	}

	// Refuse before changing anything a deploy that could not be undone.
	prevGen, err := d.rollbackPoint(r.Previous)
	if err != nil {
		return fail(fleetproto.DeployNotApplied, fmt.Errorf("refusing to deploy: no way back if it fails: %w", err))
	}

	log.Info("deploying")
	if err := d.fetch(ctx, log, target); err != nil {
		return fail(fleetproto.DeployNotApplied, fmt.Errorf("fetch closure: %w", err))
	}
	if !isExecutable(d.storeFile(target, switchScript)) {
		return fail(fleetproto.DeployNotApplied, fmt.Errorf("refusing target %s: it is not a NixOS system (no executable %s)", target, switchScript))
	}

	// From here on the host changes: finish, or roll back, whatever ctx says.
	ctx = context.WithoutCancel(ctx)
	touched = true
	stepErr := d.setProfile(ctx, log, target)
	profileSet := stepErr == nil
	if stepErr != nil {
		stepErr = fmt.Errorf("set profile %s: %w", d.cfg.Profile, stepErr)
	} else if err := d.activate(ctx, log, target); err != nil {
		stepErr = fmt.Errorf("activate %s: %w", target, err)
	} else if now := readLink(d.cfg.CurrentSystem); now != target {
		// The host does not run the target whatever the exit code said:
		// reporting success would leave the server believing it does.
		stepErr = fmt.Errorf("activate %s: %s exited 0 but %s points at %q, not the target", target, switchScript, d.cfg.CurrentSystem, now)
	}
	if stepErr == nil {
		r.Status = fleetproto.DeploySuccess
		log.Info("deployed", "duration", time.Since(start).Round(time.Millisecond))
		return r, touched
	}

	log.Error("deploy failed, rolling back", "err", stepErr)
	var rbErrs []error
	if profileSet {
		if err := d.switchGeneration(ctx, log, prevGen); err != nil {
			rbErrs = append(rbErrs, fmt.Errorf("switch profile back to generation %d: %w", prevGen, err))
		}
	}
	if err := d.activate(ctx, log, r.Previous); err != nil {
		rbErrs = append(rbErrs, fmt.Errorf("re-activate %s: %w", r.Previous, err))
	}
	if len(rbErrs) > 0 {
		return fail(fleetproto.DeployFailed, fmt.Errorf("%w; rollback failed: %w", stepErr, errors.Join(rbErrs...)))
	}
	log.Info("rolled back to the previous system")
	return fail(fleetproto.DeployRolledBack, stepErr)
}

// fetch makes target's closure valid in the store, copying it from the
// first substituter that has it. Nix checks that every copied path is
// signed by one of TrustedPublicKeys (require-sigs), whatever nix.conf says.
func (d *Deployer) fetch(ctx context.Context, log *slog.Logger, target string) error {
	if d.valid(ctx, target) {
		log.Info("closure already in the store")
		return nil
	}
	subs := d.cfg.substituters()
	if len(subs) == 0 {
		return fmt.Errorf("%s is not in the store and no substituter is configured", target)
	}
	if len(d.cfg.TrustedPublicKeys) == 0 {
		return errors.New("no trusted public keys configured: refusing to copy a closure whose signatures cannot be checked")
	}
	var errs []error
	for _, sub := range subs {
		args := []string{"copy", "--from", sub}
		if d.cfg.StoreRoot != "" {
			// Without --to, nix copy writes to the default (local) store.
			args = append(args, "--to", d.cfg.StoreRoot)
		}
		args = append(args,
			"--option", "trusted-public-keys", strings.Join(d.cfg.TrustedPublicKeys, " "),
			"--option", "require-sigs", "true",
			"--option", "narinfo-cache-negative-ttl", "0",
			target)
		err := d.run(ctx, log, "nix", nixArgs(args...)...)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", sub, err))
	}
	return errors.Join(errs...)
}

// valid reports whether target is a valid path in the store.
func (d *Deployer) valid(ctx context.Context, target string) bool {
	args := nixArgs(append(append([]string{"path-info"}, d.storeArgs()...), target)...)
	_, err := command.Output(ctx, command.Cmd{}, "nix", args...)
	return err == nil
}

func (d *Deployer) setProfile(ctx context.Context, log *slog.Logger, target string) error {
	if err := os.MkdirAll(filepath.Dir(d.cfg.Profile), 0o755); err != nil {
		return fmt.Errorf("create profile directory: %w", err)
	}
	return d.nixEnv(ctx, log, "--set", target)
}

func (d *Deployer) switchGeneration(ctx context.Context, log *slog.Logger, gen int) error {
	return d.nixEnv(ctx, log, "--switch-generation", strconv.Itoa(gen))
}

func (d *Deployer) nixEnv(ctx context.Context, log *slog.Logger, args ...string) error {
	all := append(d.storeArgs(), "--profile", d.cfg.Profile)
	return d.run(ctx, log, "nix-env", append(all, args...)...)
}

// activate runs system's switch-to-configuration, for at most
// ActivationTimeout: then its process group gets SIGTERM, and SIGKILL if it
// lingers, and the deploy rolls back as for any failed activation.
func (d *Deployer) activate(ctx context.Context, log *slog.Logger, system string) error {
	if d.cfg.ActivationTimeout < 0 {
		return d.run(ctx, log, d.storeFile(system, switchScript), "switch")
	}
	actx, cancel := context.WithTimeout(ctx, d.cfg.ActivationTimeout)
	defer cancel()
	err := d.run(actx, log, d.storeFile(system, switchScript), "switch")
	if err != nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %s (stopped): %w", d.cfg.ActivationTimeout, err)
	}
	return err
}

// rollbackPoint checks that a deploy can be undone: the current system is
// a link to a system with a switch script (previous is its target), and
// the profile points at a generation. It returns that generation.
func (d *Deployer) rollbackPoint(previous string) (int, error) {
	if err := checkCurrentSystem(d.cfg.CurrentSystem); err != nil {
		return 0, err
	}
	if !isExecutable(d.storeFile(previous, switchScript)) {
		return 0, fmt.Errorf("the running system %s (from %s) has no executable %s to re-activate", previous, d.cfg.CurrentSystem, switchScript)
	}
	return profileGeneration(d.cfg.Profile)
}

// checkCurrentSystem checks that the current-system link exists and is a
// symlink: without it the agent can neither report nor restore what runs.
func checkCurrentSystem(path string) error {
	if err := checkSymlink(path); err != nil {
		return fmt.Errorf("current system %w: pass --current-system the symlink to the running system (%s on NixOS)", err, DefaultCurrentSystem)
	}
	return nil
}

// profileGeneration returns the generation number the profile points at.
// Rolling back to this number, rather than with --rollback, returns to it
// even when `nix-env --set` reused a generation instead of adding one.
func profileGeneration(profile string) (int, error) {
	const hint = "pass --profile the system profile (%s on NixOS)"
	if err := checkSymlink(profile); err != nil {
		return 0, fmt.Errorf("system profile %w: "+hint, err, DefaultProfile)
	}
	t, err := os.Readlink(profile)
	if err != nil {
		return 0, fmt.Errorf("system profile: %w", err)
	}
	// A generation link is named "<profile>-<number>-link".
	num, ok1 := strings.CutPrefix(filepath.Base(t), filepath.Base(profile)+"-")
	num, ok2 := strings.CutSuffix(num, "-link")
	n, err := strconv.Atoi(num)
	if !ok1 || !ok2 || err != nil || n <= 0 {
		return 0, fmt.Errorf("system profile %s points at %q, not a generation (%s-<N>-link): "+hint,
			profile, t, filepath.Base(profile), DefaultProfile)
	}
	return n, nil
}

// checkSymlink says what is wrong when path is not a symlink.
func checkSymlink(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist", path)
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink == 0:
		return fmt.Errorf("%s is not a symlink", path)
	}
	return nil
}

func (d *Deployer) storeArgs() []string {
	if d.cfg.StoreRoot == "" {
		return nil
	}
	return []string{"--store", d.cfg.StoreRoot}
}

// storeFile returns where a file of a store path is on disk.
func (d *Deployer) storeFile(storePath, rel string) string {
	return filepath.Join(d.cfg.StoreRoot, storePath, rel)
}

// run runs a program, logging its output line by line; a failure's error
// ends with the end of the output.
func (d *Deployer) run(ctx context.Context, log *slog.Logger, name string, args ...string) error {
	log = log.With("cmd", filepath.Base(name))
	log.Info("running", "argv", strings.Join(append([]string{name}, args...), " "))
	out := newOutputLog(log)
	// A crash of the agent must not stop a switch or profile update half-way.
	err := command.New(ctx, command.Cmd{Stdout: out, Stderr: out, OutliveParent: true}, name, args...).Run()
	out.Flush()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", filepath.Base(name), err, out.Tail())
	}
	return nil
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
