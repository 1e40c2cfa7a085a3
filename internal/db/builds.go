package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Build statuses. Queued and running are the active ones.
const (
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusSuccess   = "success"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// Result statuses for one package or attribute of a build.
const (
	ResultRunning = "running"
	ResultSuccess = "success"
	ResultFailed  = "failed"
	ResultSkipped = "skipped"
)

// Build is one run of the orchestrator for a repository.
type Build struct {
	ID          int64      `json:"id"`
	Repository  string     `json:"repository"`
	Status      string     `json:"status"`
	Reason      string     `json:"reason"`
	Commit      string     `json:"commit"`
	ShortCommit string     `json:"short_commit"`
	Error       string     `json:"error,omitempty"`
	LogPath     string     `json:"-"`
	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at"`
	FinishedAt  *time.Time `json:"finished_at"`
	// Counts are the build's attribute results so far, by outcome.
	Counts ResultCounts `json:"counts"`
}

// ResultCounts counts a build's attributes by outcome.
type ResultCounts struct {
	Built   int `json:"built"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
}

// Active reports whether the build is queued or running.
func (b *Build) Active() bool { return b.Status == StatusQueued || b.Status == StatusRunning }

// Result is the outcome of building one attribute.
type Result struct {
	ID       int64    `json:"id"`
	BuildID  int64    `json:"build_id"`
	Attr     string   `json:"attr"`
	Kind     string   `json:"kind"`
	Status   string   `json:"status"`
	DrvPath  string   `json:"drv_path,omitempty"`
	OutPaths []string `json:"out_paths"`
	Error    string   `json:"error,omitempty"`
	// LogTail is the end of the attribute's part of the build log, for a
	// failed attribute: the failing builder's last lines and Nix's error.
	LogTail    string     `json:"log_tail,omitempty"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	// LogStart and LogEnd are byte offsets of the attribute's part of the
	// build log; LogStart is nil when it was not recorded, LogEnd nil
	// while the attribute builds.
	LogStart *int64 `json:"-"`
	LogEnd   *int64 `json:"-"`
	// JobID is the job that recorded the result; its log offsets are then
	// into that job's log. Nil for results recorded by the build itself.
	JobID *int64 `json:"job_id,omitempty"`
}

// buildCols are a build's columns and its result counts, for "FROM builds".
const buildCols = `id, repository, status, reason, commit_sha, short_commit, error, log_path, created_at, started_at, finished_at,
	(SELECT COUNT(*) FROM build_results r WHERE r.build_id = builds.id AND r.status = 'success'),
	(SELECT COUNT(*) FROM build_results r WHERE r.build_id = builds.id AND r.status = 'failed'),
	(SELECT COUNT(*) FROM build_results r WHERE r.build_id = builds.id AND r.status = 'skipped')`

func scanBuild(row interface{ Scan(...any) error }) (*Build, error) {
	var (
		b                 Build
		created           int64
		started, finished sql.NullInt64
	)
	if err := row.Scan(&b.ID, &b.Repository, &b.Status, &b.Reason, &b.Commit, &b.ShortCommit, &b.Error, &b.LogPath, &created, &started, &finished,
		&b.Counts.Built, &b.Counts.Failed, &b.Counts.Skipped); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	b.CreatedAt = time.UnixMilli(created).UTC()
	b.StartedAt = fromMillis(started)
	b.FinishedAt = fromMillis(finished)
	return &b, nil
}

// SyncRepository records a configured repository (for history of removed ones).
func (d *DB) SyncRepository(ctx context.Context, name, url, branch string) error {
	_, err := d.sql.ExecContext(ctx, `INSERT INTO repositories (name, url, branch, updated_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (name) DO UPDATE SET url = excluded.url, branch = excluded.branch, updated_at = excluded.updated_at`,
		name, url, branch, millis(time.Now()))
	if err != nil {
		return fmt.Errorf("record repository %s: %w", name, err)
	}
	return nil
}

// CreateBuild queues a build, unless the repository already has an active
// one: then it returns that build and created=false. The check and insert
// are one transaction, and a unique index allows one active build per
// repository, so two triggers cannot both start a build.
func (d *DB) CreateBuild(ctx context.Context, repo, reason, logDir string) (b *Build, created bool, err error) {
	err = d.tx(ctx, func(tx *sql.Tx) error {
		// Twice at most: on PostgreSQL a concurrent trigger may insert
		// between the check and the insert; the insert then does nothing
		// and the next check (a new snapshot) finds that build.
		for range 2 {
			existing, err := scanBuild(tx.QueryRowContext(ctx, `SELECT `+buildCols+` FROM builds WHERE repository = $1 AND status IN ('queued', 'running') ORDER BY id DESC LIMIT 1`, repo))
			if err == nil {
				b = existing
				return nil
			}
			if !errors.Is(err, ErrNotFound) {
				return err
			}
			now := time.Now()
			var id int64
			err = tx.QueryRowContext(ctx, `INSERT INTO builds (repository, status, reason, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING id`,
				repo, StatusQueued, reason, millis(now)).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			logPath := fmt.Sprintf("%s/%d.log", strings.TrimSuffix(logDir, "/"), id)
			if _, err := tx.ExecContext(ctx, `UPDATE builds SET log_path = $1 WHERE id = $2`, logPath, id); err != nil {
				return err
			}
			b = &Build{ID: id, Repository: repo, Status: StatusQueued, Reason: reason, LogPath: logPath, CreatedAt: time.UnixMilli(millis(now)).UTC()}
			created = true
			return nil
		}
		return errors.New("another build was created and finished meanwhile; trigger again")
	})
	if err != nil {
		return nil, false, fmt.Errorf("create build for %s: %w", repo, err)
	}
	return b, created, nil
}

// StartBuild marks a queued build running.
func (d *DB) StartBuild(ctx context.Context, id int64, at time.Time) error {
	return d.exec(ctx, "start build", `UPDATE builds SET status = $1, started_at = $2 WHERE id = $3`, StatusRunning, millis(at), id)
}

// SetCommit records the commit a build is building.
func (d *DB) SetCommit(ctx context.Context, id int64, full, short string) error {
	return d.exec(ctx, "set commit", `UPDATE builds SET commit_sha = $1, short_commit = $2 WHERE id = $3`, full, short, id)
}

// FinishBuild records a build's end.
func (d *DB) FinishBuild(ctx context.Context, id int64, status, errMsg string, at time.Time) error {
	return d.exec(ctx, "finish build", `UPDATE builds SET status = $1, error = $2, finished_at = $3 WHERE id = $4`, status, errMsg, millis(at), id)
}

// InterruptActive marks every queued or running build failed with reason
// "interrupted" and returns them: after a restart nothing is running.
func (d *DB) InterruptActive(ctx context.Context, at time.Time) ([]*Build, error) {
	var out []*Build
	err := d.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT `+buildCols+` FROM builds WHERE status IN ('queued', 'running') ORDER BY id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			b, err := scanBuild(rows)
			if err != nil {
				rows.Close()
				return err
			}
			out = append(out, b)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE builds SET status = $1, error = $2, finished_at = $3 WHERE status IN ('queued', 'running')`,
			StatusFailed, "interrupted", millis(at)); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE build_results SET status = $1, error = $2, finished_at = $3 WHERE status = $4`,
			ResultFailed, "interrupted", millis(at), ResultRunning)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mark interrupted builds: %w", err)
	}
	return out, nil
}

// Build returns one build.
func (d *DB) Build(ctx context.Context, id int64) (*Build, error) {
	b, err := scanBuild(d.sql.QueryRowContext(ctx, `SELECT `+buildCols+` FROM builds WHERE id = $1`, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("build %d: %w", id, err)
	}
	return b, err
}

// LatestBuild returns the repository's newest build, or ErrNotFound.
func (d *DB) LatestBuild(ctx context.Context, repo string) (*Build, error) {
	b, err := scanBuild(d.sql.QueryRowContext(ctx, `SELECT `+buildCols+` FROM builds WHERE repository = $1 ORDER BY id DESC LIMIT 1`, repo))
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("latest build of %s: %w", repo, err)
	}
	return b, err
}

// LastBuiltCommit returns the newest commit any build of repo got to, or "".
func (d *DB) LastBuiltCommit(ctx context.Context, repo string) (string, error) {
	var c string
	err := d.sql.QueryRowContext(ctx, `SELECT commit_sha FROM builds WHERE repository = $1 AND commit_sha <> '' ORDER BY id DESC LIMIT 1`, repo).Scan(&c)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("last built commit of %s: %w", repo, err)
	}
	return c, nil
}

// ListBuilds returns up to limit builds of repo, newest first, older than
// beforeID when it is positive.
func (d *DB) ListBuilds(ctx context.Context, repo string, limit int, beforeID int64) ([]*Build, error) {
	if beforeID <= 0 {
		beforeID = 1 << 62
	}
	return queryAll(ctx, d, scanBuild, fmt.Sprintf("list builds of %s", repo), `SELECT `+buildCols+` FROM builds WHERE repository = $1 AND id < $2 ORDER BY id DESC LIMIT $3`, repo, beforeID, limit)
}

// StartResult records that building attr has begun and returns its id.
func (d *DB) StartResult(ctx context.Context, buildID int64, attr, kind string, at time.Time) (int64, error) {
	return d.StartResultLog(ctx, buildID, attr, kind, at, nil)
}

// StartResultLog is StartResult for an attribute whose part of the build
// log starts at byte logStart.
func (d *DB) StartResultLog(ctx context.Context, buildID int64, attr, kind string, at time.Time, logStart *int64) (int64, error) {
	var id int64
	err := d.sql.QueryRowContext(ctx, `INSERT INTO build_results (build_id, attr, kind, status, started_at, log_start) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		buildID, attr, kind, ResultRunning, millis(at), nullInt(logStart)).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("record result %s of build %d: %w", attr, buildID, err)
	}
	return id, nil
}

// FinishResult records an attribute's outcome.
func (d *DB) FinishResult(ctx context.Context, id int64, status, drvPath string, outPaths []string, errMsg string, at time.Time) error {
	return d.FinishResultLog(ctx, id, status, drvPath, outPaths, errMsg, at, nil, "")
}

// FinishResultLog is FinishResult that also records where the attribute's
// part of the build log ends and, for a failure, its last lines.
func (d *DB) FinishResultLog(ctx context.Context, id int64, status, drvPath string, outPaths []string, errMsg string, at time.Time, logEnd *int64, logTail string) error {
	return d.exec(ctx, "finish result", `UPDATE build_results SET status = $1, drv_path = $2, out_paths = $3, error = $4, finished_at = $5, log_end = $6, log_tail = $7 WHERE id = $8`,
		status, drvPath, strings.Join(outPaths, " "), errMsg, millis(at), nullInt(logEnd), logTail, id)
}

func nullInt(p *int64) sql.NullInt64 {
	if p == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: *p, Valid: true}
}

func fromNullInt(n sql.NullInt64) *int64 {
	if !n.Valid {
		return nil
	}
	return &n.Int64
}

// Result returns one result of a build, or ErrNotFound.
func (d *DB) Result(ctx context.Context, buildID, id int64) (*Result, error) {
	rows, err := d.results(ctx, `WHERE build_id = $1 AND id = $2`, buildID, id)
	if err != nil {
		return nil, fmt.Errorf("result %d of build %d: %w", id, buildID, err)
	}
	if len(rows) == 0 {
		return nil, ErrNotFound
	}
	return rows[0], nil
}

// Results returns a build's per-attribute results in the order they ran.
func (d *DB) Results(ctx context.Context, buildID int64) ([]*Result, error) {
	out, err := d.results(ctx, `WHERE build_id = $1`, buildID)
	if err != nil {
		return nil, fmt.Errorf("results of build %d: %w", buildID, err)
	}
	return out, nil
}

func (d *DB) results(ctx context.Context, where string, args ...any) ([]*Result, error) {
	rows, err := d.sql.QueryContext(ctx, `SELECT id, build_id, attr, kind, status, drv_path, out_paths, error, log_tail, started_at, finished_at, log_start, log_end, job_id
		FROM build_results `+where+` ORDER BY id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*Result{}
	for rows.Next() {
		var (
			r                      Result
			outs                   string
			started                int64
			finished, lstart, lend sql.NullInt64
			jobID                  sql.NullInt64
		)
		if err := rows.Scan(&r.ID, &r.BuildID, &r.Attr, &r.Kind, &r.Status, &r.DrvPath, &outs, &r.Error, &r.LogTail, &started, &finished, &lstart, &lend, &jobID); err != nil {
			return nil, err
		}
		r.LogStart, r.LogEnd, r.JobID = fromNullInt(lstart), fromNullInt(lend), fromNullInt(jobID)
		r.OutPaths = strings.Fields(outs)
		if r.OutPaths == nil {
			r.OutPaths = []string{}
		}
		r.StartedAt = time.UnixMilli(started).UTC()
		r.FinishedAt = fromMillis(finished)
		out = append(out, &r)
	}
	return out, rows.Err()
}

func (d *DB) exec(ctx context.Context, what, q string, args ...any) error {
	if _, err := d.sql.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
