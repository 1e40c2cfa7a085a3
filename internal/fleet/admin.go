package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/crystal-forge/crystal-forge/internal/config"
	"github.com/crystal-forge/crystal-forge/internal/db"
	"github.com/crystal-forge/crystal-forge/internal/fleetproto"
	"github.com/crystal-forge/crystal-forge/internal/signing"
)

// Actor is who did an admin action and from where, for the audit log.
type Actor struct {
	Name   string
	Remote string
}

// ErrInvalid wraps a bad admin request (400).
var ErrInvalid = errors.New("invalid request")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

func (s *Service) audit(ctx context.Context, a Actor, action, host, detail string) {
	if a.Name == "" {
		a.Name = "anonymous"
	}
	if err := s.cfg.DB.Audit(ctx, &db.AuditEntry{Actor: a.Name, Action: action, Host: host, Detail: detail, Remote: a.Remote, At: s.now()}); err != nil {
		s.log.Error("audit log", "err", err)
	}
	s.log.Info("admin action", "actor", a.Name, "action", action, "host", host, "detail", detail, "remote", a.Remote)
}

// Policy is a host's desired-state policy.
type Policy struct {
	Policy        string `json:"policy"`
	Target        string `json:"target,omitempty"`
	Repository    string `json:"repository,omitempty"`
	Configuration string `json:"configuration,omitempty"`
}

func (s *Service) checkPolicy(p Policy) error {
	switch p.Policy {
	case db.PolicyManual:
		if p.Target != "" {
			if err := s.checkPath(p.Target); err != nil {
				return err
			}
		}
	case db.PolicyPinned:
		if p.Target == "" {
			return invalid("a pinned host needs a target: give \"target\", the store path to hold it at (crystal-forge host set-policy NAME pinned --target STOREPATH)")
		}
		if err := s.checkPath(p.Target); err != nil {
			return err
		}
	case db.PolicyAuto:
		if !slices.Contains(s.cfg.Repositories, p.Repository) {
			return invalid("auto policy needs a configured repository, not %q", p.Repository)
		}
		if p.Configuration != "" && !ValidHostName(p.Configuration) {
			return invalid("bad configuration name %q", p.Configuration)
		}
	default:
		return invalid("policy must be manual, pinned or auto, not %q", p.Policy)
	}
	return nil
}

func (s *Service) checkPath(p string) error {
	if !fleetproto.ValidStorePath(p, s.cfg.Store.StoreDir()) {
		return invalid("target must be a store path like %s/<hash>-<name>, not %q", s.cfg.Store.StoreDir(), p)
	}
	return nil
}

// AddHost pre-registers a host with its agent's public key: approved.
func (s *Service) AddHost(ctx context.Context, a Actor, name, publicKey string, p Policy) error {
	if !ValidHostName(name) {
		return invalid("bad host name %q", name)
	}
	pk, err := signing.ParsePublicKey(publicKey)
	if err != nil {
		return invalid("public key: %v", err)
	}
	if p.Policy == "" {
		p.Policy = db.PolicyManual
	}
	if err := s.checkPolicy(p); err != nil {
		return err
	}
	err = s.cfg.DB.CreateHost(ctx, &db.Host{Name: name, PublicKey: pk.String(), Status: db.HostApproved, Policy: p.Policy,
		Target: p.Target, Repository: p.Repository, Configuration: p.Configuration})
	if err != nil {
		return err
	}
	s.audit(ctx, a, "add-host", name, fmt.Sprintf("key %s, policy %s", pk, describe(p)))
	return nil
}

// RemoveHost deletes a host and its history, e.g. a name squatted by an
// enrolment that was not the real host's; the real agent then enrols
// again (or is added with host add).
func (s *Service) RemoveHost(ctx context.Context, a Actor, name string) error {
	h, err := s.cfg.DB.Host(ctx, name)
	if err != nil {
		return err
	}
	if err := s.cfg.DB.DeleteHost(ctx, name); err != nil {
		return err
	}
	s.audit(ctx, a, "remove-host", name, fmt.Sprintf("%s, key %s", h.Status, h.PublicKey))
	return nil
}

// Rekey gives a host a new agent key (approved): a reinstalled machine, a
// leaked key, or a name an impostor enrolled first.
func (s *Service) Rekey(ctx context.Context, a Actor, name, publicKey string) error {
	pk, err := signing.ParsePublicKey(publicKey)
	if err != nil {
		return invalid("public key: %v", err)
	}
	h, err := s.cfg.DB.Host(ctx, name)
	if err != nil {
		return err
	}
	if err := s.cfg.DB.SetHostKey(ctx, name, pk.String()); err != nil {
		return err
	}
	if err := s.cfg.DB.AddHostEvent(ctx, name, "rekeyed", fmt.Sprintf("key %s → %s", h.PublicKey, pk), s.now()); err != nil {
		// The key changed; the event is history, the audit entry below says it too.
		s.log.Error("record host event", "host", name, "err", err)
	}
	s.audit(ctx, a, "rekey", name, fmt.Sprintf("key %s → %s", h.PublicKey, pk))
	return nil
}

// Approve admits a host that enrolled on first contact.
func (s *Service) Approve(ctx context.Context, a Actor, name string) error {
	h, err := s.cfg.DB.Host(ctx, name)
	if err != nil {
		return err
	}
	if h.Status == db.HostApproved {
		return nil
	}
	if err := s.cfg.DB.SetHostStatus(ctx, name, db.HostApproved); err != nil {
		return err
	}
	s.audit(ctx, a, "approve", name, "key "+h.PublicKey)
	return nil
}

// SetTarget sets a manual target for a host (policy becomes manual).
func (s *Service) SetTarget(ctx context.Context, a Actor, name, target string) error {
	return s.SetPolicy(ctx, a, name, Policy{Policy: db.PolicyManual, Target: target}, "set-target")
}

// SetPolicy changes a host's policy.
func (s *Service) SetPolicy(ctx context.Context, a Actor, name string, p Policy, action string) error {
	if err := s.checkPolicy(p); err != nil {
		return err
	}
	h, err := s.cfg.DB.Host(ctx, name)
	if err != nil {
		return err
	}
	if err := s.cfg.DB.SetHostPolicy(ctx, name, p.Policy, p.Target, p.Repository, p.Configuration, s.now()); err != nil {
		return err
	}
	if action == "" {
		action = "set-policy"
	}
	s.audit(ctx, a, action, name, fmt.Sprintf("%s → %s", describe(Policy{h.Policy, h.Target, h.Repository, h.Configuration}), describe(p)))
	return nil
}

func describe(p Policy) string {
	switch p.Policy {
	case db.PolicyAuto:
		return fmt.Sprintf("auto(%s#%s)", p.Repository, p.Configuration)
	case "":
		return "none"
	}
	if p.Target == "" {
		return p.Policy
	}
	return fmt.Sprintf("%s(%s)", p.Policy, p.Target)
}

// HostView is a host with what the page and CLI show about it.
type HostView struct {
	*db.Host
	Drift          string             `json:"drift"` // how long current ≠ desired, "" when in sync
	Online         bool               `json:"online"`
	LastDeployment *db.Deployment     `json:"last_deployment"`
	Alerts         []*db.HostEvent    `json:"alerts"`
	Heartbeats     []*db.HeartbeatRow `json:"heartbeats,omitempty"`
	Deployments    []*db.Deployment   `json:"deployments,omitempty"`
	Events         []*db.HostEvent    `json:"events,omitempty"`
	Audit          []*db.AuditEntry   `json:"audit,omitempty"`
}

// alertKinds are events the page raises as alerts.
var alertKinds = []string{"fingerprint-changed", "deployment-failed", "enrolled"}

// View returns a host's summary; detail adds its histories.
func (s *Service) View(ctx context.Context, h *db.Host, detail bool) (*HostView, error) {
	v := &HostView{Host: h, Alerts: []*db.HostEvent{}}
	now := s.now()
	if h.DriftSince != nil {
		v.Drift = now.Sub(*h.DriftSince).Round(time.Second).String()
	}
	// Online: heard from within two heartbeat intervals (15 min each).
	v.Online = h.LastSeen != nil && now.Sub(*h.LastSeen) < 31*time.Minute
	deps, err := s.cfg.DB.Deployments(ctx, h.Name, 20)
	if err != nil {
		return nil, err
	}
	var lastSuccess *db.Deployment
	for _, d := range deps {
		if d.Status == fleetproto.DeploySuccess {
			lastSuccess = d
			break
		}
	}
	if len(deps) > 0 {
		v.LastDeployment = deps[0]
	}
	events, err := s.cfg.DB.HostEvents(ctx, h.Name, 20)
	if err != nil {
		return nil, err
	}
	for _, e := range events {
		// An alert stands until something newer settles it: a successful
		// deployment after a failed one, approval after enrolment.
		if !slices.Contains(alertKinds, e.Kind) {
			continue
		}
		if e.Kind == "deployment-failed" && lastSuccess != nil && lastSuccess.ReportedAt.After(e.At) {
			continue
		}
		if e.Kind == "enrolled" && h.Status == db.HostApproved {
			continue
		}
		v.Alerts = append(v.Alerts, e)
	}
	if detail {
		if v.Heartbeats, err = s.cfg.DB.Heartbeats(ctx, h.Name, 50); err != nil {
			return nil, err
		}
		v.Deployments, v.Events = deps, events
		if v.Audit, err = s.cfg.DB.AuditLog(ctx, h.Name, 50); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// DB exposes the store for read-only API queries.
func (s *Service) DB() *db.DB { return s.cfg.DB }

// ConfigureHosts applies the configuration file's [[hosts]]: each is
// created or updated, approved, with its policy. They are checked as the
// API checks an admin's request (the store path against the store the
// cache serves), and errors name the file's key.
func (s *Service) ConfigureHosts(ctx context.Context, hosts []config.Host) error {
	existing, err := s.cfg.DB.Hosts(ctx)
	if err != nil {
		return err
	}
	for i, h := range hosts {
		key := fmt.Sprintf("config: hosts[%d]", i)
		p := Policy{Policy: h.Policy, Target: h.Target, Repository: h.Repository, Configuration: h.Configuration}
		if p.Policy == "" {
			p.Policy = db.PolicyManual
		}
		if err := s.checkPolicy(p); err != nil {
			return fmt.Errorf("%s (%s): %s", key, h.Name, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
		}
		pk, err := signing.ParsePublicKey(h.PublicKey)
		if err != nil {
			return fmt.Errorf("%s.public_key: %w", key, err)
		}
		for _, e := range existing {
			if e.Name != h.Name && e.PublicKey == pk.String() {
				return fmt.Errorf("%s.public_key: the database already has this key for host %q (%s); name this entry %q if it is that host, or use %s's own key",
					key, e.Name, e.Status, e.Name, h.Name)
			}
		}
		if err := s.cfg.DB.UpsertHost(ctx, &db.Host{Name: h.Name, PublicKey: pk.String(), Policy: p.Policy, Target: p.Target, Repository: p.Repository, Configuration: p.Configuration}); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	return nil
}
