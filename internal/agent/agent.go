// Package agent is the fleet agent on each NixOS host: it heartbeats to the
// Crystal Forge server and switches the host to the system the server names.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/keygen"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// maxDeploysPerRound bounds the deploys one round of heartbeats may start,
// should the server name a new target in every answer.
const maxDeploysPerRound = 3

// Agent reports the host's state to the server and deploys what it names.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	key      *signing.SecretKey
	deployer *Deployer

	mu sync.Mutex
	// pending is the last deploy's report, until the server accepts it.
	pending *fleetproto.DeploymentReport
	// lastTimestamp is the last heartbeat's; each is a millisecond newer.
	lastTimestamp time.Time
	// skip are targets not to deploy again until the agent restarts, with
	// the reason: one whose activation failed here is not re-activated
	// (and rolled back) on every heartbeat, and a dry run reports a
	// target once.
	skip map[string]string
}

// New checks cfg and loads the agent's key, creating it on first start.
func New(cfg Config) (*Agent, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.ServerURL == "" {
		return nil, errors.New("no server URL")
	}
	if len(cfg.ServerKeys) == 0 {
		return nil, errors.New("no server keys: the agent refuses every reply it cannot verify")
	}
	// Refuse at start what would make a deploy impossible to undo: on
	// NixOS both links always exist, so a missing one is a wrong flag.
	if err := checkCurrentSystem(cfg.CurrentSystem); err != nil {
		return nil, err
	}
	if !cfg.DryRun {
		if _, err := profileGeneration(cfg.Profile); err != nil {
			return nil, err
		}
	}
	res, err := keygen.Ensure(keygen.Options{
		KeyFile: cfg.KeyFile,
		Name:    cfg.Host,
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, fmt.Errorf("agent key: %w", err)
	}
	log := cfg.Logger.With("host", cfg.Host)
	log.Info("agent key", "file", cfg.KeyFile, "public_key", res.Key.Public().String(), "created", res.Created)
	if len(cfg.TrustedPublicKeys) == 0 && !cfg.DryRun {
		log.Warn("no trusted public keys for closures: deploys that need a copy will fail")
	}
	return &Agent{
		cfg:      cfg,
		log:      log,
		key:      res.Key,
		deployer: &Deployer{cfg: cfg, log: log},
		skip:     make(map[string]string),
	}, nil
}

// PublicKey is the key the agent signs heartbeats with.
func (a *Agent) PublicKey() *signing.PublicKey { return a.key.Public() }

// Run heartbeats at start, whenever the current system changes and every
// Interval ± Jitter, until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	changes, err := Watch(ctx, a.cfg.CurrentSystem, DefaultDebounce, a.log)
	if err != nil {
		// A nil channel never fires: heartbeats keep to the interval.
		a.log.Warn("not watching the current system; heartbeats only on the interval", "err", err)
	}
	a.log.Info("agent started", "server", a.cfg.ServerURL, "interval", a.cfg.Interval, "jitter", a.cfg.Jitter,
		"current_system", a.cfg.CurrentSystem, "dry_run", a.cfg.DryRun)
	for {
		if err := a.RunOnce(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("heartbeat round failed; retrying at the next interval", "err", err)
		}
		wait := a.nextWait()
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		case <-changes:
			timer.Stop()
			a.log.Info("current system changed", "current", readLink(a.cfg.CurrentSystem))
		}
	}
}

// nextWait is Interval plus or minus a random duration up to Jitter.
func (a *Agent) nextWait() time.Duration {
	if a.cfg.Jitter <= 0 {
		return a.cfg.Interval
	}
	return a.cfg.Interval - a.cfg.Jitter + rand.N(2*a.cfg.Jitter+1)
}

// RunOnce sends a heartbeat and acts on the answer: when the server names
// a new target, it deploys it and heartbeats again at once, carrying the
// report. It returns an error when a heartbeat fails or a deploy does not
// succeed; a host that awaits approval is not an error.
func (a *Agent) RunOnce(ctx context.Context) error {
	var deployErr error
	// deployed are this round's targets: whatever the server answers, one
	// round never deploys a target twice.
	deployed := make(map[string]bool)
	for deploys := 0; ; deploys++ {
		reply, hb, err := a.heartbeat(ctx)
		if errors.Is(err, ErrPending) {
			a.log.Info("waiting for approval: an admin must approve this host and its key",
				"approve_with", "crystal-forge host approve "+a.cfg.Host,
				"public_key", a.key.Public().String(), "detail", err)
			return deployErr
		}
		if err != nil {
			return errors.Join(deployErr, err)
		}
		target := a.wantedTarget(reply, hb.Current)
		if target == "" {
			return deployErr
		}
		if deployed[target] {
			a.log.Warn("server names a target this round already deployed: leaving it to the next heartbeat", "target", target)
			return deployErr
		}
		if deploys == maxDeploysPerRound {
			a.log.Warn("server names yet another target: leaving it to the next heartbeat", "target", target)
			return deployErr
		}
		a.log.Info("server names a new target", "target", target, "reason", reply.Reason, "current", hb.Current)
		deployed[target] = true
		report, touched := a.deployer.deploy(ctx, target)
		a.mu.Lock()
		a.pending = &report
		switch {
		case report.Status == fleetproto.DeployDryRun:
			a.skip[target] = "a dry run already reported it"
		case touched && report.Status != fleetproto.DeploySuccess:
			a.skip[target] = "its activation failed here; restart the agent to retry"
		}
		a.mu.Unlock()
		deployErr = nil
		if report.Status != fleetproto.DeploySuccess && report.Status != fleetproto.DeployDryRun {
			deployErr = fmt.Errorf("deploy %s: %s: %s", target, report.Status, report.Error)
		}
	}
}

// wantedTarget returns the target to deploy, or "" for none.
func (a *Agent) wantedTarget(r *fleetproto.Reply, current string) string {
	if !r.Deploy || r.Target == "" || r.Target == current || r.Status == "pending" {
		return ""
	}
	a.mu.Lock()
	why, skip := a.skip[r.Target]
	a.mu.Unlock()
	if skip {
		a.log.Info("not deploying the server's target", "target", r.Target, "why", why)
		return ""
	}
	return r.Target
}
