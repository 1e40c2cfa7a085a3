package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Worker is a build worker as it registered and last heartbeat.
type Worker struct {
	Name      string    `json:"name"`
	Host      string    `json:"host"`
	Systems   []string  `json:"systems"`
	Capacity  int       `json:"capacity"`
	Version   string    `json:"version"`
	StartedAt time.Time `json:"started_at"`
	LastSeen  time.Time `json:"last_seen"`
	Running   int       `json:"running"`
	Draining  bool      `json:"draining"`
}

// RegisterWorker records a worker starting (again, for a known name).
func (d *DB) RegisterWorker(ctx context.Context, w Worker) error {
	_, err := d.sql.ExecContext(ctx, `INSERT INTO workers (name, host, systems, capacity, version, started_at, last_seen, running, draining)
		VALUES ($1, $2, $3, $4, $5, $6, $7, 0, FALSE)
		ON CONFLICT (name) DO UPDATE SET host = excluded.host, systems = excluded.systems, capacity = excluded.capacity,
			version = excluded.version, started_at = excluded.started_at, last_seen = excluded.last_seen, running = 0, draining = FALSE`,
		w.Name, w.Host, strings.Join(w.Systems, " "), w.Capacity, w.Version, millis(w.StartedAt), millis(w.LastSeen))
	if err != nil {
		return fmt.Errorf("register worker %s: %w", w.Name, err)
	}
	return nil
}

// WorkerHeartbeat records that a worker is alive, running that many jobs,
// and whether it drains (takes no new jobs).
func (d *DB) WorkerHeartbeat(ctx context.Context, name string, running int, draining bool, at time.Time) error {
	res, err := d.sql.ExecContext(ctx, `UPDATE workers SET last_seen = $1, running = $2, draining = $3 WHERE name = $4`, millis(at), running, draining, name)
	if err != nil {
		return fmt.Errorf("heartbeat of worker %s: %w", name, err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return fmt.Errorf("heartbeat of worker %s: not registered", name)
	}
	return nil
}

// Workers returns every registered worker, by name.
func (d *DB) Workers(ctx context.Context) ([]*Worker, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT name, host, systems, capacity, version, started_at, last_seen, running, draining FROM workers ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list workers: %w", err)
	}
	defer rows.Close()
	out := []*Worker{}
	for rows.Next() {
		var (
			w                 Worker
			systems           string
			started, lastSeen int64
		)
		if err := rows.Scan(&w.Name, &w.Host, &systems, &w.Capacity, &w.Version, &started, &lastSeen, &w.Running, &w.Draining); err != nil {
			return nil, fmt.Errorf("list workers: %w", err)
		}
		w.Systems = strings.Fields(systems)
		w.StartedAt = time.UnixMilli(started).UTC()
		w.LastSeen = time.UnixMilli(lastSeen).UTC()
		out = append(out, &w)
	}
	return out, rows.Err()
}

// DrvStatus is what became of a derivation.
type DrvStatus string

const (
	DrvBuilt  DrvStatus = "built"
	DrvFailed DrvStatus = "failed"
)

// Derivation is the remembered outcome of building a derivation.
type Derivation struct {
	DrvPath  string
	Status   DrvStatus
	OutPaths []string
	Error    string
	BuildID  int64 // the build that last built it
	At       time.Time
}

// RecordDerivation remembers a derivation's latest outcome.
func (d *DB) RecordDerivation(ctx context.Context, drv Derivation) error {
	_, err := d.sql.ExecContext(ctx, `INSERT INTO derivations (drv_path, status, out_paths, error, build_id, at) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (drv_path) DO UPDATE SET status = excluded.status, out_paths = excluded.out_paths, error = excluded.error,
			build_id = excluded.build_id, at = excluded.at`,
		drv.DrvPath, drv.Status, strings.Join(drv.OutPaths, " "), drv.Error, drv.BuildID, millis(drv.At))
	if err != nil {
		return fmt.Errorf("remember the outcome of %s: %w", drv.DrvPath, err)
	}
	return nil
}

// LookupDerivation returns a derivation's remembered outcome, or ErrNotFound.
func (d *DB) LookupDerivation(ctx context.Context, drvPath string) (*Derivation, error) {
	var (
		drv  Derivation
		outs string
		at   int64
	)
	err := d.sql.QueryRowContext(ctx, `SELECT drv_path, status, out_paths, error, build_id, at FROM derivations WHERE drv_path = $1`, drvPath).
		Scan(&drv.DrvPath, &drv.Status, &outs, &drv.Error, &drv.BuildID, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", drvPath, err)
	}
	drv.OutPaths = strings.Fields(outs)
	drv.At = time.UnixMilli(at).UTC()
	return &drv, nil
}

// LogChunk is a piece of a job's log.
type LogChunk struct {
	ID      int64
	JobID   int64
	Attempt int
	Data    []byte
}

// AppendJobLog appends data to the log of attempt of job jobID of build
// buildID.
func (d *DB) AppendJobLog(ctx context.Context, buildID, jobID int64, attempt int, data []byte, at time.Time) error {
	if len(data) == 0 {
		return nil
	}
	if _, err := d.sql.ExecContext(ctx, `INSERT INTO job_logs (job_id, build_id, attempt, data, at) VALUES ($1, $2, $3, $4, $5)`,
		jobID, buildID, attempt, data, millis(at)); err != nil {
		return fmt.Errorf("append to the log of job %d: %w", jobID, err)
	}
	if err := d.notifyNow(ctx, ChanLogs, buildID); err != nil {
		return fmt.Errorf("announce the log of job %d: %w", jobID, err)
	}
	return nil
}

// BuildLogChunks returns up to limit chunks of a build's job logs written
// after chunk afterID, in the order they were written.
func (d *DB) BuildLogChunks(ctx context.Context, buildID, afterID int64, limit int) ([]LogChunk, error) {
	return d.logChunks(ctx, `build_id = $1`, buildID, afterID, limit)
}

// JobLogChunks is BuildLogChunks for one job.
func (d *DB) JobLogChunks(ctx context.Context, jobID, afterID int64, limit int) ([]LogChunk, error) {
	return d.logChunks(ctx, `job_id = $1`, jobID, afterID, limit)
}

func (d *DB) logChunks(ctx context.Context, where string, id, afterID int64, limit int) ([]LogChunk, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT id, job_id, attempt, data FROM job_logs WHERE `+where+` AND id > $2 ORDER BY id LIMIT $3`, id, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("read job logs: %w", err)
	}
	defer rows.Close()
	var out []LogChunk
	for rows.Next() {
		var c LogChunk
		if err := rows.Scan(&c.ID, &c.JobID, &c.Attempt, &c.Data); err != nil {
			return nil, fmt.Errorf("read job logs: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}
