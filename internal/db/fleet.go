package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Host statuses and policies.
const (
	HostPending  = "pending"
	HostApproved = "approved"

	PolicyManual = "manual"
	PolicyPinned = "pinned"
	PolicyAuto   = "auto"
)

// Host is a machine of the fleet and what it should run.
type Host struct {
	Name          string     `json:"name"`
	PublicKey     string     `json:"public_key"`
	Status        string     `json:"status"`
	Policy        string     `json:"policy"`
	Target        string     `json:"target"`
	Repository    string     `json:"repository"`
	Configuration string     `json:"configuration"`
	Current       string     `json:"current"`
	Fingerprint   string     `json:"fingerprint"`
	Facts         string     `json:"-"`
	Agent         string     `json:"agent"`
	Remote        string     `json:"remote"`
	LastSeen      *time.Time `json:"last_seen"`
	LastTS        int64      `json:"-"`
	Desired       string     `json:"desired"`
	DesiredReason string     `json:"desired_reason"`
	DesiredDrv    string     `json:"desired_drv"`
	TargetError   string     `json:"target_error"`
	DriftSince    *time.Time `json:"drift_since"`
	PolicySetAt   *time.Time `json:"policy_set_at"`
	CreatedAt     time.Time  `json:"created_at"`
}

const hostCols = `name, public_key, status, policy, target, repository, configuration, current_system, fingerprint, facts, agent, remote,
	last_seen, last_ts, desired, desired_reason, desired_drv, target_error, drift_since, policy_set_at, created_at`

func scanHost(row interface{ Scan(...any) error }) (*Host, error) {
	var (
		h                      Host
		seen, drift, policySet sql.NullInt64
		created                int64
	)
	err := row.Scan(&h.Name, &h.PublicKey, &h.Status, &h.Policy, &h.Target, &h.Repository, &h.Configuration, &h.Current, &h.Fingerprint, &h.Facts, &h.Agent, &h.Remote,
		&seen, &h.LastTS, &h.Desired, &h.DesiredReason, &h.DesiredDrv, &h.TargetError, &drift, &policySet, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	h.LastSeen, h.DriftSince, h.PolicySetAt = fromMillis(seen), fromMillis(drift), fromMillis(policySet)
	h.CreatedAt = time.UnixMilli(created).UTC()
	return &h, nil
}

// ErrExists is returned when creating a host whose name or key is taken.
var ErrExists = errors.New("already exists")

// CreateHost registers a host; ErrExists when its name or key is taken.
func (d *DB) CreateHost(ctx context.Context, h *Host) error {
	res, err := d.sql.ExecContext(ctx, `INSERT INTO hosts (name, public_key, status, policy, target, repository, configuration, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING`,
		h.Name, h.PublicKey, h.Status, h.Policy, h.Target, h.Repository, h.Configuration, millis(time.Now()))
	if err != nil {
		return fmt.Errorf("create host %s: %w", h.Name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrExists
	}
	return nil
}

// UpsertHost makes a configured host exist, approved, with the given key
// and policy (configuration files are the source of truth for them).
func (d *DB) UpsertHost(ctx context.Context, h *Host) error {
	_, err := d.sql.ExecContext(ctx, `INSERT INTO hosts (name, public_key, status, policy, target, repository, configuration, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key, status = excluded.status, policy = excluded.policy,
			target = excluded.target, repository = excluded.repository, configuration = excluded.configuration,
			policy_set_at = CASE WHEN hosts.policy <> excluded.policy OR hosts.target <> excluded.target
				OR hosts.repository <> excluded.repository OR hosts.configuration <> excluded.configuration
				THEN excluded.created_at ELSE hosts.policy_set_at END`,
		h.Name, h.PublicKey, HostApproved, h.Policy, h.Target, h.Repository, h.Configuration, millis(time.Now()))
	if err != nil {
		return fmt.Errorf("configure host %s: %w", h.Name, err)
	}
	return nil
}

// Host returns one host.
func (d *DB) Host(ctx context.Context, name string) (*Host, error) {
	h, err := scanHost(d.sql.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE name = $1`, name))
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("host %s: %w", name, err)
	}
	return h, err
}

// Hosts lists every host by name.
func (d *DB) Hosts(ctx context.Context) ([]*Host, error) {
	return queryAll(ctx, d, scanHost, "list hosts", `SELECT `+hostCols+` FROM hosts ORDER BY name`)
}

// CountHosts counts the hosts with status.
func (d *DB) CountHosts(ctx context.Context, status string) (int, error) {
	var n int
	if err := d.sql.QueryRowContext(ctx, `SELECT COUNT(*) FROM hosts WHERE status = $1`, status).Scan(&n); err != nil {
		return 0, fmt.Errorf("count hosts: %w", err)
	}
	return n, nil
}

// DeleteHost removes a host and its history (heartbeats, deployments,
// events); the audit log keeps what was done to it.
func (d *DB) DeleteHost(ctx context.Context, name string) error {
	return d.tx(ctx, func(tx *sql.Tx) error {
		for _, q := range []string{`DELETE FROM heartbeats WHERE host = $1`, `DELETE FROM deployments WHERE host = $1`, `DELETE FROM host_events WHERE host = $1`} {
			if _, err := tx.ExecContext(ctx, q, name); err != nil {
				return fmt.Errorf("delete host %s: %w", name, err)
			}
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM hosts WHERE name = $1`, name)
		if err != nil {
			return fmt.Errorf("delete host %s: %w", name, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
}

// SetHostKey gives a host a new agent key, approved, and forgets the old
// key's replay counter and hardware fingerprint (they were the old
// machine's); ErrExists when another host has that key.
func (d *DB) SetHostKey(ctx context.Context, name, publicKey string) error {
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var other int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM hosts WHERE public_key = $1 AND name <> $2`, publicKey, name).Scan(&other); err != nil {
			return err
		}
		if other > 0 {
			return ErrExists
		}
		res, err := tx.ExecContext(ctx, `UPDATE hosts SET public_key = $1, status = $2, last_ts = 0, fingerprint = '' WHERE name = $3`, publicKey, HostApproved, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrExists) {
		err = fmt.Errorf("set key of host %s: %w", name, err)
	}
	return err
}

// SetHostStatus changes pending/approved.
func (d *DB) SetHostStatus(ctx context.Context, name, status string) error {
	return d.execOne(ctx, "set host status", `UPDATE hosts SET status = $1 WHERE name = $2`, status, name)
}

// SetHostPolicy sets what a host should run; at is when (policy_set_at).
func (d *DB) SetHostPolicy(ctx context.Context, name, policy, target, repository, configuration string, at time.Time) error {
	return d.execOne(ctx, "set host policy", `UPDATE hosts SET policy = $1, target = $2, repository = $3, configuration = $4, policy_set_at = $5 WHERE name = $6`,
		policy, target, repository, configuration, millis(at), name)
}

func (d *DB) execOne(ctx context.Context, what, q string, args ...any) error {
	res, err := d.sql.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}

// Beat is an accepted heartbeat, as the fleet records it.
type Beat struct {
	Host, Current, Fingerprint, Facts, Agent, Remote string
	TS                                               int64 // the agent's timestamp, ms
	At                                               time.Time
}

// ErrReplay is returned for a heartbeat not newer than the last accepted one.
var ErrReplay = errors.New("replayed or out-of-order heartbeat")

// RecordBeat stores an accepted heartbeat in one transaction: the host's
// current state (only if ts is newer than any accepted before — replays
// fail with ErrReplay), and the heartbeat history, compacted: a heartbeat
// that changes nothing extends the previous row instead of adding one.
// It returns the host as it was before.
func (d *DB) RecordBeat(ctx context.Context, b Beat) (*Host, error) {
	var before *Host
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var err error
		// Locked: the host as it was before must be the state this
		// heartbeat replaces, not one a concurrent heartbeat has replaced.
		before, err = scanHost(tx.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE name = $1`+d.forUpdate(), b.Host))
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE hosts SET current_system = $1, fingerprint = $2, facts = $3, agent = $4, remote = $5, last_seen = $6, last_ts = $7
			WHERE name = $8 AND last_ts < $7`,
			b.Current, b.Fingerprint, b.Facts, b.Agent, b.Remote, millis(b.At), b.TS, b.Host)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrReplay
		}
		var (
			id      int64
			cur, fp string
		)
		err = tx.QueryRowContext(ctx, `SELECT id, current_system, fingerprint FROM heartbeats WHERE host = $1 ORDER BY id DESC LIMIT 1`, b.Host).Scan(&id, &cur, &fp)
		switch {
		case err == nil && cur == b.Current && fp == b.Fingerprint:
			_, err = tx.ExecContext(ctx, `UPDATE heartbeats SET last_at = $1, count = count + 1 WHERE id = $2`, millis(b.At), id)
		case err == nil || errors.Is(err, sql.ErrNoRows):
			_, err = tx.ExecContext(ctx, `INSERT INTO heartbeats (host, current_system, fingerprint, first_at, last_at, count) VALUES ($1, $2, $3, $4, $4, 1)`,
				b.Host, b.Current, b.Fingerprint, millis(b.At))
		}
		return err
	})
	if err != nil && !errors.Is(err, ErrReplay) && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("record heartbeat of %s: %w", b.Host, err)
	}
	return before, err
}

// TouchPending notes that a pending host called in.
func (d *DB) TouchPending(ctx context.Context, name, remote string, at time.Time) error {
	return d.exec(ctx, "touch host", `UPDATE hosts SET last_seen = $1, remote = $2 WHERE name = $3`, millis(at), remote, name)
}

// SetDesired records what the host was told to run and why, and keeps the
// drift clock: drift_since is when current first differed from desired.
func (d *DB) SetDesired(ctx context.Context, name, desired, reason, drv, targetErr string, drifting bool, at time.Time) error {
	return d.exec(ctx, "set desired", `UPDATE hosts SET desired = $1, desired_reason = $2, desired_drv = $3, target_error = $4,
		drift_since = CASE WHEN $5 THEN COALESCE(drift_since, $6) ELSE NULL END WHERE name = $7`,
		desired, reason, drv, targetErr, drifting, millis(at), name)
}

// HeartbeatRow is one compacted run of identical heartbeats.
type HeartbeatRow struct {
	ID          int64     `json:"id"`
	Current     string    `json:"current"`
	Fingerprint string    `json:"fingerprint"`
	FirstAt     time.Time `json:"first_at"`
	LastAt      time.Time `json:"last_at"`
	Count       int64     `json:"count"`
}

// Heartbeats returns a host's newest heartbeat runs.
func (d *DB) Heartbeats(ctx context.Context, host string, limit int) ([]*HeartbeatRow, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT id, current_system, fingerprint, first_at, last_at, count FROM heartbeats WHERE host = $1 ORDER BY id DESC LIMIT $2`, host, limit)
	if err != nil {
		return nil, fmt.Errorf("heartbeats of %s: %w", host, err)
	}
	defer rows.Close()
	out := []*HeartbeatRow{}
	for rows.Next() {
		var r HeartbeatRow
		var first, last int64
		if err := rows.Scan(&r.ID, &r.Current, &r.Fingerprint, &first, &last, &r.Count); err != nil {
			return nil, err
		}
		r.FirstAt, r.LastAt = time.UnixMilli(first).UTC(), time.UnixMilli(last).UTC()
		out = append(out, &r)
	}
	return out, rows.Err()
}

// Deployment is one switch an agent attempted.
type Deployment struct {
	ID         int64     `json:"id"`
	Host       string    `json:"host"`
	Target     string    `json:"target"`
	Previous   string    `json:"previous"`
	Status     string    `json:"status"`
	Error      string    `json:"error,omitempty"`
	DurationMS int64     `json:"duration_ms"`
	StartedAt  time.Time `json:"started_at"`
	ReportedAt time.Time `json:"reported_at"`
}

// AddDeployment records an agent's deployment report.
func (d *DB) AddDeployment(ctx context.Context, dep *Deployment) error {
	return d.exec(ctx, "record deployment", `INSERT INTO deployments (host, target, previous, status, error, duration_ms, started_at, reported_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		dep.Host, dep.Target, dep.Previous, dep.Status, dep.Error, dep.DurationMS, millis(dep.StartedAt), millis(dep.ReportedAt))
}

// Deployments returns a host's newest deployments.
func (d *DB) Deployments(ctx context.Context, host string, limit int) ([]*Deployment, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT id, host, target, previous, status, error, duration_ms, started_at, reported_at FROM deployments WHERE host = $1 ORDER BY id DESC LIMIT $2`, host, limit)
	if err != nil {
		return nil, fmt.Errorf("deployments of %s: %w", host, err)
	}
	defer rows.Close()
	out := []*Deployment{}
	for rows.Next() {
		var r Deployment
		var started, reported int64
		if err := rows.Scan(&r.ID, &r.Host, &r.Target, &r.Previous, &r.Status, &r.Error, &r.DurationMS, &started, &reported); err != nil {
			return nil, err
		}
		r.StartedAt, r.ReportedAt = time.UnixMilli(started).UTC(), time.UnixMilli(reported).UTC()
		out = append(out, &r)
	}
	return out, rows.Err()
}

// HostEvent is something about a host worth an alert or a look.
type HostEvent struct {
	ID     int64     `json:"id"`
	Host   string    `json:"host"`
	Kind   string    `json:"kind"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}

// AddHostEvent records an event.
func (d *DB) AddHostEvent(ctx context.Context, host, kind, detail string, at time.Time) error {
	return d.exec(ctx, "record host event", `INSERT INTO host_events (host, kind, detail, at) VALUES ($1, $2, $3, $4)`, host, kind, detail, millis(at))
}

// HostEvents returns a host's newest events.
func (d *DB) HostEvents(ctx context.Context, host string, limit int) ([]*HostEvent, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT id, host, kind, detail, at FROM host_events WHERE host = $1 ORDER BY id DESC LIMIT $2`, host, limit)
	if err != nil {
		return nil, fmt.Errorf("events of %s: %w", host, err)
	}
	defer rows.Close()
	out := []*HostEvent{}
	for rows.Next() {
		var e HostEvent
		var at int64
		if err := rows.Scan(&e.ID, &e.Host, &e.Kind, &e.Detail, &at); err != nil {
			return nil, err
		}
		e.At = time.UnixMilli(at).UTC()
		out = append(out, &e)
	}
	return out, rows.Err()
}

// AuditEntry is one admin action.
type AuditEntry struct {
	ID     int64     `json:"id"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Host   string    `json:"host"`
	Detail string    `json:"detail"`
	Remote string    `json:"remote"`
	At     time.Time `json:"at"`
}

// Audit records an admin action.
func (d *DB) Audit(ctx context.Context, e *AuditEntry) error {
	return d.exec(ctx, "audit", `INSERT INTO audit_log (actor, action, host, detail, remote, at) VALUES ($1, $2, $3, $4, $5, $6)`,
		e.Actor, e.Action, e.Host, e.Detail, e.Remote, millis(e.At))
}

// AuditLog returns the newest admin actions, for one host or all ("").
func (d *DB) AuditLog(ctx context.Context, host string, limit int) ([]*AuditEntry, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT id, actor, action, host, detail, remote, at FROM audit_log WHERE ($1 = '' OR host = $1) ORDER BY id DESC LIMIT $2`, host, limit)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer rows.Close()
	out := []*AuditEntry{}
	for rows.Next() {
		var e AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &e.Actor, &e.Action, &e.Host, &e.Detail, &e.Remote, &at); err != nil {
			return nil, err
		}
		e.At = time.UnixMilli(at).UTC()
		out = append(out, &e)
	}
	return out, rows.Err()
}

// LatestNixosBuild returns the output and derivation of the newest
// successful build of nixosConfigurations.<configuration> in repository.
func (d *DB) LatestNixosBuild(ctx context.Context, repository, configuration string) (out, drv string, buildID int64, err error) {
	var outs string
	err = d.sql.QueryRowContext(ctx, `SELECT r.out_paths, r.drv_path, r.build_id FROM build_results r JOIN builds b ON b.id = r.build_id
		WHERE b.repository = $1 AND r.kind = 'nixos' AND r.attr = $2 AND r.status = 'success' ORDER BY r.id DESC LIMIT 1`,
		repository, configuration).Scan(&outs, &drv, &buildID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", 0, ErrNotFound
	}
	if err != nil {
		return "", "", 0, fmt.Errorf("latest build of %s#%s: %w", repository, configuration, err)
	}
	return outs, drv, buildID, nil
}
