// Package fleet is the server side of fleet management: it authenticates
// agents' heartbeats, records what each host runs, decides what it should
// run (its policy), verifies that target before handing it out, and keeps
// the history and the audit log.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/auth"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/nixstore"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// Enrolment modes for hosts the server has never seen.
const (
	EnrolPending = "pending" // first contact creates a pending host an admin approves
	EnrolClosed  = "closed"  // only pre-registered hosts
)

// Config configures a Service.
type Config struct {
	DB        *db.DB
	Store     *nixstore.Store    // what the cache serves: targets must be in it
	Key       *signing.SecretKey // signs replies (the cache key: agents already trust it)
	Enrolment string
	// Repositories are the names auto policies may follow.
	Repositories []string
	// FleetCache, when set, is the push destination the agents pull from:
	// an auto host is handed only a build whose push there succeeded.
	FleetCache string
	// MaxPending caps hosts awaiting approval (default 100); beyond it
	// first contacts are refused until an admin approves or removes some.
	MaxPending int
	// EnrolPerHour bounds first contacts per source address (default 10).
	EnrolPerHour int
	Logger       *slog.Logger
	Now          func() time.Time
}

// Service handles heartbeats and admin actions.
type Service struct {
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	enrols *auth.Limiter
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Enrolment == "" {
		cfg.Enrolment = EnrolPending
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 100
	}
	if cfg.EnrolPerHour <= 0 {
		cfg.EnrolPerHour = 10
	}
	enrols := auth.NewLimiter(cfg.EnrolPerHour, time.Hour)
	enrols.Now = cfg.Now
	return &Service{cfg: cfg, log: cfg.Logger, now: cfg.Now, enrols: enrols}
}

// ValidHostName reports whether s can name a host (the configuration file
// checks with the same function).
func ValidHostName(s string) bool { return fleetproto.ValidHostName(s) }

// Rejection is a heartbeat the server refuses, with the status to answer.
type Rejection struct {
	Code    int
	Detail  string
	Pending bool
}

func (r *Rejection) Error() string { return r.Detail }

func reject(code int, format string, args ...any) *Rejection {
	return &Rejection{Code: code, Detail: fmt.Sprintf(format, args...)}
}

// Heartbeat authenticates and records one heartbeat and returns the signed
// reply body and its headers. A refused heartbeat is a *Rejection.
func (s *Service) Heartbeat(ctx context.Context, h http.Header, body []byte, remote string) ([]byte, http.Header, error) {
	now := s.now()
	pk, err := fleetproto.HeartbeatKey(h)
	if err != nil {
		return nil, nil, reject(http.StatusUnauthorized, "heartbeat is not signed")
	}
	if err := fleetproto.VerifyHeartbeat(h, body, pk); err != nil {
		return nil, nil, reject(http.StatusUnauthorized, "heartbeat signature does not verify")
	}
	hb, err := fleetproto.DecodeHeartbeat(body, s.cfg.Store.StoreDir())
	if err != nil {
		return nil, nil, reject(http.StatusBadRequest, "%v", err)
	}
	if err := checkSizes(&hb); err != nil {
		return nil, nil, err
	}
	if err := fleetproto.CheckFresh(hb.Timestamp, now); err != nil {
		return nil, nil, reject(http.StatusUnauthorized, "stale heartbeat: %v", err)
	}

	host, err := s.cfg.DB.Host(ctx, hb.Host)
	if errors.Is(err, db.ErrNotFound) {
		return nil, nil, s.enrol(ctx, hb, pk, remote)
	}
	if err != nil {
		return nil, nil, err
	}
	if host.PublicKey != pk.String() {
		s.log.Warn("heartbeat signed by a key the host is not registered with", "host", hb.Host, "remote", remote)
		return nil, nil, reject(http.StatusUnauthorized, "key not registered for host %s", hb.Host)
	}
	if host.Status != db.HostApproved {
		s.touchPending(ctx, hb.Host, remote, now)
		return nil, nil, &Rejection{Code: http.StatusForbidden, Detail: "host is waiting for approval", Pending: true}
	}

	facts, _ := json.Marshal(hb.Facts)
	before, err := s.cfg.DB.RecordBeat(ctx, db.Beat{
		Host: hb.Host, Current: hb.Current, Fingerprint: hb.Fingerprint, Facts: string(facts),
		Agent: hb.Agent, Remote: remote, TS: hb.Timestamp.UnixMilli(), At: now,
	})
	if errors.Is(err, db.ErrReplay) {
		return nil, nil, reject(http.StatusConflict, "replayed heartbeat: not newer than the last one accepted")
	}
	if err != nil {
		return nil, nil, err
	}
	if before.Fingerprint != "" && before.Fingerprint != hb.Fingerprint {
		s.log.Warn("hardware fingerprint changed", "host", hb.Host, "old", before.Fingerprint, "new", hb.Fingerprint)
		s.addEvent(ctx, hb.Host, "fingerprint-changed", fmt.Sprintf("%s → %s", before.Fingerprint, hb.Fingerprint), now)
	}
	if d := hb.Deployment; d != nil {
		s.recordDeployment(ctx, hb.Host, d, now)
	}

	host.Current = hb.Current
	t := s.desired(ctx, host)
	drifting := t.target != "" && t.target != hb.Current
	if drifting && t.err == "" {
		// A target this host already failed to switch to is not sent again
		// (it would fail and roll back forever); a new target, or an admin
		// setting the policy again, clears this.
		if failed, err := s.failedBefore(ctx, host, t.target); err != nil {
			return nil, nil, err
		} else if failed {
			t.err = "the last deployment of this target failed on the host; set the target or policy again to retry"
			t.reason = "deployment-failed"
		}
	}
	// Most heartbeats change nothing here: skip the write (half the cost of
	// a heartbeat in the 10,000-agent load test).
	unchanged := host.Desired == t.target && host.DesiredReason == t.reason && host.DesiredDrv == t.drv &&
		host.TargetError == t.err && (host.DriftSince != nil) == drifting
	if !unchanged {
		if err := s.cfg.DB.SetDesired(ctx, hb.Host, t.target, t.reason, t.drv, t.err, drifting, now); err != nil {
			return nil, nil, err
		}
	}
	reply := fleetproto.Reply{
		Target:    t.target,
		Reason:    t.reason,
		Deploy:    t.err == "" && drifting,
		Host:      hb.Host,
		Nonce:     hb.Nonce,
		Timestamp: now.UTC(),
		Status:    db.HostApproved,
	}
	if t.err != "" || reply.Target == "" {
		// Never hand out what failed verification: the host stays put.
		reply.Target = hb.Current
	}
	out, err := json.Marshal(reply)
	if err != nil {
		return nil, nil, err
	}
	rh := http.Header{}
	fleetproto.SignReply(rh, out, s.cfg.Key)
	return out, rh, nil
}

// Limits on what a heartbeat may store: anything anonymous that reaches
// the database has a size.
const (
	maxFingerprint = 256
	maxAgent       = 64
	maxFacts       = 16 << 10
	maxDeployError = 4 << 10
	maxDeployField = 300 // status, target, previous (store paths are shorter)
)

func checkSizes(hb *fleetproto.Heartbeat) error {
	if len(hb.Fingerprint) > maxFingerprint {
		return reject(http.StatusBadRequest, "fingerprint longer than %d bytes", maxFingerprint)
	}
	if len(hb.Agent) > maxAgent {
		return reject(http.StatusBadRequest, "agent version longer than %d bytes", maxAgent)
	}
	if hb.Facts != nil {
		if b, err := json.Marshal(hb.Facts); err != nil || len(b) > maxFacts {
			return reject(http.StatusBadRequest, "facts larger than %d bytes", maxFacts)
		}
	}
	if d := hb.Deployment; d != nil {
		if len(d.Status) > maxDeployField || len(d.Target) > maxDeployField || len(d.Previous) > maxDeployField {
			return reject(http.StatusBadRequest, "deployment report fields longer than %d bytes", maxDeployField)
		}
		// An activation's error output is worth keeping, its start at least.
		if len(d.Error) > maxDeployError {
			d.Error = d.Error[:maxDeployError] + "… (truncated)"
		}
	}
	return nil
}

func (s *Service) enrol(ctx context.Context, hb fleetproto.Heartbeat, pk *signing.PublicKey, remote string) error {
	if s.cfg.Enrolment != EnrolPending {
		return reject(http.StatusForbidden, "unknown host %s: register it first (crystal-forge host add)", hb.Host)
	}
	// First contact is anonymous: bound how fast and how far it can grow
	// the table.
	addr := remoteIP(remote)
	if blocked, wait := s.enrols.Blocked(addr); blocked {
		s.log.Warn("enrolment refused: too many from this address", "host", hb.Host, "remote", remote)
		return reject(http.StatusTooManyRequests, "too many new hosts from %s; try again in %s", addr, wait.Round(time.Second))
	}
	n, err := s.cfg.DB.CountHosts(ctx, db.HostPending)
	if err != nil {
		return err
	}
	if n >= s.cfg.MaxPending {
		s.log.Warn("enrolment refused: too many pending hosts", "host", hb.Host, "remote", remote, "pending", n)
		return reject(http.StatusServiceUnavailable, "%d hosts are already waiting for approval: an admin must approve or remove some (crystal-forge host approve|remove)", n)
	}
	s.enrols.Fail(addr)
	err = s.cfg.DB.CreateHost(ctx, &db.Host{Name: hb.Host, PublicKey: pk.String(), Status: db.HostPending, Policy: db.PolicyManual})
	if errors.Is(err, db.ErrExists) {
		// Its key belongs to another host already.
		return reject(http.StatusUnauthorized, "key already registered to another host")
	}
	if err != nil {
		return err
	}
	now := s.now()
	s.touchPending(ctx, hb.Host, remote, now)
	s.addEvent(ctx, hb.Host, "enrolled", "first contact from "+remote+" with key "+pk.String()+"; awaiting approval", now)
	s.log.Info("new host awaiting approval", "host", hb.Host, "remote", remote, "key", pk.String())
	return &Rejection{Code: http.StatusForbidden, Detail: "host is waiting for approval", Pending: true}
}

func (s *Service) recordDeployment(ctx context.Context, host string, d *fleetproto.DeploymentReport, now time.Time) {
	dep := &db.Deployment{Host: host, Target: d.Target, Previous: d.Previous, Status: d.Status, Error: d.Error,
		DurationMS: d.DurationMS, StartedAt: d.StartedAt, ReportedAt: now}
	if err := s.cfg.DB.AddDeployment(ctx, dep); err != nil {
		s.log.Error("record deployment", "host", host, "err", err)
	}
	// Every failure is an alert; only a switch that failed (not a refused
	// or unfetchable target, which changed nothing) blocks a retry.
	if d.Status == fleetproto.DeployFailed || d.Status == fleetproto.DeployRolledBack || d.Status == fleetproto.DeployNotApplied {
		s.log.Warn("deployment failed", "host", host, "target", d.Target, "status", d.Status, "err", d.Error)
		s.addEvent(ctx, host, "deployment-failed", fmt.Sprintf("%s: %s (%s)", d.Status, d.Target, d.Error), now)
	}
}

// touchPending records when a pending host was last heard from. A failure
// is logged, not returned: the agent's answer (403, pending) stays true.
func (s *Service) touchPending(ctx context.Context, host, remote string, at time.Time) {
	if err := s.cfg.DB.TouchPending(ctx, host, remote, at); err != nil {
		s.log.Error("record last contact of pending host", "host", host, "remote", remote, "err", err)
	}
}

// addEvent records a host event (an alert). A failure is logged with the
// whole event, so it is not lost without a trace, and does not fail a
// heartbeat whose other writes are already committed.
func (s *Service) addEvent(ctx context.Context, host, kind, detail string, at time.Time) {
	if err := s.cfg.DB.AddHostEvent(ctx, host, kind, detail, at); err != nil {
		s.log.Error("record host event", "host", host, "kind", kind, "detail", detail, "err", err)
	}
}

// failedBefore reports whether the host's newest deployment was of target
// and failed, after the host's policy was last set.
func (s *Service) failedBefore(ctx context.Context, h *db.Host, target string) (bool, error) {
	deps, err := s.cfg.DB.Deployments(ctx, h.Name, 1)
	if err != nil || len(deps) == 0 {
		return false, err
	}
	d := deps[0]
	if d.Target != target || (d.Status != fleetproto.DeployFailed && d.Status != fleetproto.DeployRolledBack) {
		return false, nil
	}
	return h.PolicySetAt == nil || d.ReportedAt.After(*h.PolicySetAt), nil
}

// target is what a host should run, and whether it may be handed out.
type target struct {
	target, reason, drv, err string
}

// desired applies the host's policy, then verifies the result.
func (s *Service) desired(ctx context.Context, h *db.Host) target {
	var t target
	switch h.Policy {
	case db.PolicyPinned:
		t = target{target: h.Target, reason: "policy:pinned"}
	case db.PolicyAuto:
		conf := h.Configuration
		if conf == "" {
			conf = h.Name
		}
		out, drv, _, err := s.cfg.DB.LatestNixosBuild(ctx, h.Repository, conf)
		switch {
		case errors.Is(err, db.ErrNotFound):
			return target{reason: "policy:auto:no-successful-build"}
		case err != nil:
			return target{reason: "policy:auto", err: err.Error()}
		}
		if s.cfg.FleetCache != "" {
			// The newest build the agents can fetch: pushed to their cache.
			// Until one is, the host stays where it is.
			out, drv, _, err = s.cfg.DB.LatestPushedNixosBuild(ctx, h.Repository, conf, s.cfg.FleetCache)
			switch {
			case errors.Is(err, db.ErrNotFound):
				return target{reason: "policy:auto:waiting-for-push"}
			case err != nil:
				return target{reason: "policy:auto", err: err.Error()}
			}
		}
		outs := strings.Fields(out)
		if len(outs) == 0 {
			return target{reason: "policy:auto", err: fmt.Sprintf("the newest build of %s#%s recorded no output path", h.Repository, conf)}
		}
		t = target{target: outs[0], drv: drv, reason: "policy:update"}
		if t.target == h.Current {
			t.reason = "policy:up-to-date"
		}
	default:
		t = target{target: h.Target, reason: "policy:manual"}
	}
	if t.target == "" {
		return target{reason: t.reason + ":unset"}
	}
	if err := s.verify(ctx, t.target); err != nil {
		t.err = err.Error()
		t.reason = "verification-failed"
	}
	return t
}

// verify checks that a target can be handed out: a top-level store path,
// valid in this server's store and so served signed by its cache.
func (s *Service) verify(ctx context.Context, p string) error {
	storeDir := s.cfg.Store.StoreDir()
	if !fleetproto.ValidStorePath(p, storeDir) {
		return fmt.Errorf("%q is not a store path", p)
	}
	hash := strings.TrimPrefix(p, storeDir+"/")[:32]
	info, err := s.cfg.Store.QueryByHash(ctx, hash)
	if errors.Is(err, nixstore.ErrNotFound) || err == nil && info.Path != p {
		return fmt.Errorf("%s is not built: it is not in this server's store, so the cache cannot serve it", p)
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", p, err)
	}
	return nil
}

// remoteIP is the address part of host:port (the whole string otherwise).
func remoteIP(remote string) string {
	if h, _, err := net.SplitHostPort(remote); err == nil {
		return h
	}
	return remote
}
