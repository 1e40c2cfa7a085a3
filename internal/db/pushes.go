package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// PushState is where a push job is in its life.
type PushState string

// Push job states. Queued and running are the active ones.
const (
	PushQueued    PushState = "queued"
	PushRunning   PushState = "running"
	PushSucceeded PushState = "succeeded"
	PushFailed    PushState = "failed"
)

// PushJob is the push of a build's outputs, with their closures, to one
// destination.
type PushJob struct {
	ID          int64     `json:"id"`
	BuildID     int64     `json:"build_id"`
	Destination string    `json:"destination"`
	URL         string    `json:"url"`
	State       PushState `json:"state"`
	// Roots are the store paths pushed with their closures.
	Roots    []string `json:"roots"`
	Attempts int      `json:"attempts"`
	// Paths is the size of the closure; Uploaded how many of its paths
	// this job sent (the others the destination already held).
	Paths      int        `json:"paths"`
	Uploaded   int        `json:"uploaded"`
	Bytes      int64      `json:"bytes"`
	DurationMS int64      `json:"duration_ms"`
	Error      string     `json:"error,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
}

// PushProgress is what an attempt of a push job found and did.
type PushProgress struct {
	Attempts int
	Paths    int
	Uploaded int
	Bytes    int64
	Duration time.Duration
	Error    string
}

const pushCols = `id, build_id, destination, url, state, roots, attempts, paths, uploaded, bytes, duration_ms, error, created_at, started_at, finished_at`

func scanPush(row interface{ Scan(...any) error }) (*PushJob, error) {
	var (
		p                 PushJob
		roots             string
		created           int64
		started, finished sql.NullInt64
	)
	if err := row.Scan(&p.ID, &p.BuildID, &p.Destination, &p.URL, &p.State, &roots, &p.Attempts, &p.Paths, &p.Uploaded, &p.Bytes, &p.DurationMS, &p.Error,
		&created, &started, &finished); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	p.Roots = strings.Fields(roots)
	if p.Roots == nil {
		p.Roots = []string{}
	}
	p.CreatedAt = time.UnixMilli(created).UTC()
	p.StartedAt = fromMillis(started)
	p.FinishedAt = fromMillis(finished)
	return &p, nil
}

// CreatePush queues a push job.
func (d *DB) CreatePush(ctx context.Context, buildID int64, destination, url string, roots []string, at time.Time) (*PushJob, error) {
	p, err := scanPush(d.sql.QueryRowContext(ctx, `INSERT INTO push_jobs (build_id, destination, url, state, roots, created_at)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING `+pushCols,
		buildID, destination, url, PushQueued, strings.Join(roots, " "), millis(at)))
	if err != nil {
		return nil, fmt.Errorf("queue push of build %d to %s: %w", buildID, destination, err)
	}
	return p, nil
}

// StartPush marks a push job running.
func (d *DB) StartPush(ctx context.Context, id int64, at time.Time) error {
	return d.exec(ctx, "start push", `UPDATE push_jobs SET state = $1, started_at = $2 WHERE id = $3`, PushRunning, millis(at), id)
}

// UpdatePush records a push job's progress; with a final state, its end.
func (d *DB) UpdatePush(ctx context.Context, id int64, state PushState, p PushProgress, at time.Time) error {
	var finished sql.NullInt64
	if state == PushSucceeded || state == PushFailed {
		finished = sql.NullInt64{Int64: millis(at), Valid: true}
	}
	return d.exec(ctx, "record push", `UPDATE push_jobs SET state = $1, attempts = $2, paths = $3, uploaded = $4, bytes = $5, duration_ms = $6, error = $7, finished_at = $8 WHERE id = $9`,
		state, p.Attempts, p.Paths, p.Uploaded, p.Bytes, p.Duration.Milliseconds(), p.Error, finished, id)
}

// Push returns one push job, or ErrNotFound.
func (d *DB) Push(ctx context.Context, id int64) (*PushJob, error) {
	p, err := scanPush(d.sql.QueryRowContext(ctx, `SELECT `+pushCols+` FROM push_jobs WHERE id = $1`, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("push job %d: %w", id, err)
	}
	return p, err
}

// Pushes returns a build's push jobs in the order they were queued.
func (d *DB) Pushes(ctx context.Context, buildID int64) ([]*PushJob, error) {
	return d.pushes(ctx, fmt.Sprintf("pushes of build %d", buildID), `WHERE build_id = $1`, buildID)
}

// ActivePushes returns the push jobs left queued or running, oldest first:
// after a restart they are run again.
func (d *DB) ActivePushes(ctx context.Context) ([]*PushJob, error) {
	return d.pushes(ctx, "active pushes", `WHERE state IN ($1, $2)`, PushQueued, PushRunning)
}

func (d *DB) pushes(ctx context.Context, what, where string, args ...any) ([]*PushJob, error) {
	return queryAll(ctx, d, scanPush, what, `SELECT `+pushCols+` FROM push_jobs `+where+` ORDER BY id`, args...)
}

// LatestPushedNixosBuild is LatestNixosBuild restricted to builds whose
// push to destination succeeded: what a host may be handed when agents pull
// from that destination.
func (d *DB) LatestPushedNixosBuild(ctx context.Context, repository, configuration, destination string) (out, drv string, buildID int64, err error) {
	err = d.sql.QueryRowContext(ctx, `SELECT r.out_paths, r.drv_path, r.build_id FROM build_results r JOIN builds b ON b.id = r.build_id
		WHERE b.repository = $1 AND r.kind = 'nixos' AND r.attr = $2 AND r.status = 'success'
		AND EXISTS (SELECT 1 FROM push_jobs p WHERE p.build_id = r.build_id AND p.destination = $3 AND p.state = $4)
		ORDER BY r.id DESC LIMIT 1`,
		repository, configuration, destination, PushSucceeded).Scan(&out, &drv, &buildID)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", 0, ErrNotFound
	}
	if err != nil {
		return "", "", 0, fmt.Errorf("latest build of %s#%s pushed to %s: %w", repository, configuration, destination, err)
	}
	return out, drv, buildID, nil
}

// PushStates returns the state of each push of a build to destination,
// newest first (empty when there is none).
func (d *DB) PushStates(ctx context.Context, buildID int64, destination string) ([]PushState, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT state FROM push_jobs WHERE build_id = $1 AND destination = $2 ORDER BY id DESC`, buildID, destination)
	if err != nil {
		return nil, fmt.Errorf("pushes of build %d to %s: %w", buildID, destination, err)
	}
	defer rows.Close()
	var out []PushState
	for rows.Next() {
		var s PushState
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
