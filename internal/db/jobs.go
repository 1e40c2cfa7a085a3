package db

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// JobKind says what a job does.
type JobKind string

const (
	// JobEval syncs a build's repository, evaluates each attribute and
	// queues one JobAttr per attribute.
	JobEval JobKind = "eval"
	// JobAttr builds one attribute.
	JobAttr JobKind = "attr"
)

// JobState is where a job is in its life cycle: queued → running → one of
// the three ends; a running job whose lease expires goes back to queued.
type JobState string

const (
	JobQueued    JobState = "queued"
	JobRunning   JobState = "running"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
	JobCancelled JobState = "cancelled"
)

// Done reports whether the state is an end.
func (s JobState) Done() bool { return s == JobSucceeded || s == JobFailed || s == JobCancelled }

// DefaultMaxAttempts is how many times a job is claimed before a lost
// lease fails it: a job that kills every worker that takes it must not
// go round for ever.
const DefaultMaxAttempts = 3

var (
	// ErrNoJob is returned by ClaimJob when no job is waiting for the worker.
	ErrNoJob = errors.New("no job queued")
	// ErrLeaseLost is returned when a worker renews or finishes a job it no
	// longer holds: its lease expired and the job went back to the queue,
	// or the job was cancelled.
	ErrLeaseLost = errors.New("job lease lost")
)

// Job is one unit of a build's work.
type Job struct {
	ID      int64   `json:"id"`
	BuildID int64   `json:"build_id"`
	Kind    JobKind `json:"kind"`
	// Attr and AttrKind name the attribute of an attr job ("hello",
	// "package"); System is the system it builds for ("" for any).
	Attr           string     `json:"attr,omitempty"`
	AttrKind       string     `json:"attr_kind,omitempty"`
	System         string     `json:"system,omitempty"`
	DrvPath        string     `json:"drv_path,omitempty"`
	State          JobState   `json:"state"`
	Attempts       int        `json:"attempts"`
	MaxAttempts    int        `json:"max_attempts"`
	Worker         string     `json:"worker,omitempty"`
	LeaseExpiresAt *time.Time `json:"lease_expires_at,omitempty"`
	CreatedAt      time.Time  `json:"created_at"`
	StartedAt      *time.Time `json:"started_at"`
	FinishedAt     *time.Time `json:"finished_at"`
	Error          string     `json:"error,omitempty"`
	Forced         bool       `json:"forced"`
}

// NewJob is a job to queue.
type NewJob struct {
	BuildID     int64
	Kind        JobKind
	Attr        string
	AttrKind    string
	System      string
	DrvPath     string
	MaxAttempts int // 0: DefaultMaxAttempts
	Forced      bool
}

const jobCols = `id, build_id, kind, attr, attr_kind, system, drv_path, state, attempts, max_attempts, worker,
	lease_expires_at, created_at, started_at, finished_at, error, forced`

func scanJob(row interface{ Scan(...any) error }) (*Job, error) {
	var (
		j                        Job
		created                  int64
		lease, started, finished sql.NullInt64
	)
	if err := row.Scan(&j.ID, &j.BuildID, &j.Kind, &j.Attr, &j.AttrKind, &j.System, &j.DrvPath, &j.State, &j.Attempts, &j.MaxAttempts, &j.Worker,
		&lease, &created, &started, &finished, &j.Error, &j.Forced); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	j.CreatedAt = time.UnixMilli(created).UTC()
	j.LeaseExpiresAt = fromMillis(lease)
	j.StartedAt = fromMillis(started)
	j.FinishedAt = fromMillis(finished)
	return &j, nil
}

// EnqueueJobs queues jobs, all or none, and returns their ids in order.
func (d *DB) EnqueueJobs(ctx context.Context, jobs []NewJob, at time.Time) ([]int64, error) {
	return d.enqueue(ctx, 0, "", jobs, at)
}

// EnqueueJobsFrom is EnqueueJobs for a running job queueing the next jobs
// of its build (an evaluation queueing its attributes): they are queued
// only while worker holds job parent (else ErrLeaseLost), so a cancelled
// build or a lost attempt queues nothing; and a job the build already has
// (same kind, attribute and attribute kind: queued by an earlier attempt
// of parent that was then lost) is not queued twice. It returns the ids
// of the jobs it queued.
func (d *DB) EnqueueJobsFrom(ctx context.Context, parent int64, worker string, jobs []NewJob, at time.Time) ([]int64, error) {
	return d.enqueue(ctx, parent, worker, jobs, at)
}

func (d *DB) enqueue(ctx context.Context, parent int64, worker string, jobs []NewJob, at time.Time) ([]int64, error) {
	ids := make([]int64, 0, len(jobs))
	err := d.tx(ctx, func(tx *sql.Tx) error {
		if parent != 0 {
			// FOR UPDATE holds off a concurrent cancel until the jobs are in
			// (SQLite's write transaction already does).
			lock := ""
			if d.dialect == Postgres {
				lock = " FOR UPDATE"
			}
			var id int64
			err := tx.QueryRowContext(ctx, `SELECT id FROM jobs WHERE id = $1 AND worker = $2 AND state = 'running'`+lock, parent, worker).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("job %d: %w", parent, ErrLeaseLost)
			}
			if err != nil {
				return err
			}
		}
		for _, j := range jobs {
			if j.MaxAttempts <= 0 {
				j.MaxAttempts = DefaultMaxAttempts
			}
			if parent != 0 {
				var n int
				if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM jobs WHERE build_id = $1 AND kind = $2 AND attr = $3 AND attr_kind = $4`,
					j.BuildID, j.Kind, j.Attr, j.AttrKind).Scan(&n); err != nil {
					return err
				}
				if n > 0 {
					continue
				}
			}
			var id int64
			if err := tx.QueryRowContext(ctx, `INSERT INTO jobs (build_id, kind, attr, attr_kind, system, drv_path, state, max_attempts, created_at, forced)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id`,
				j.BuildID, j.Kind, j.Attr, j.AttrKind, j.System, j.DrvPath, JobQueued, j.MaxAttempts, millis(at), j.Forced).Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return d.notifyBuilds(ctx, tx, jobs)
	})
	if err != nil {
		return nil, fmt.Errorf("queue %d jobs: %w", len(jobs), err)
	}
	return ids, nil
}

// notifyBuilds sends ChanJobs once for each build of jobs.
func (d *DB) notifyBuilds(ctx context.Context, tx *sql.Tx, jobs []NewJob) error {
	seen := map[int64]bool{}
	for _, j := range jobs {
		if !seen[j.BuildID] {
			seen[j.BuildID] = true
			if err := d.notify(ctx, tx, ChanJobs, j.BuildID); err != nil {
				return err
			}
		}
	}
	return nil
}

// notifyJobs sends ChanJobs once for each build of jobs.
func (d *DB) notifyJobs(ctx context.Context, tx *sql.Tx, jobs []*Job) error {
	nj := make([]NewJob, len(jobs))
	for i, j := range jobs {
		nj[i].BuildID = j.BuildID
	}
	return d.notifyBuilds(ctx, tx, nj)
}

// systemsFilter is the claim query's condition on a job's system: any
// system-less job, or one of systems. Placeholders start at $first.
func systemsFilter(systems []string, first int) (string, []any) {
	if len(systems) == 0 {
		return `system = ''`, nil
	}
	ph := make([]string, len(systems))
	args := make([]any, len(systems))
	for i, s := range systems {
		ph[i] = fmt.Sprintf("$%d", first+i)
		args[i] = s
	}
	return `(system = '' OR system IN (` + strings.Join(ph, ", ") + `))`, args
}

// ClaimJob gives the oldest queued job that worker can build (its system is
// one of systems, or none) to worker, running, under a lease until
// now+lease; ErrNoJob when there is none. Each call claims at most one job
// and no two calls claim the same one: on PostgreSQL the row is locked with
// FOR UPDATE SKIP LOCKED, so concurrent claimers take different rows
// without waiting; SQLite serialises writers, so one UPDATE picking its row
// in a subquery is enough.
func (d *DB) ClaimJob(ctx context.Context, worker string, systems []string, lease time.Duration, now time.Time) (*Job, error) {
	cond, sysArgs := systemsFilter(systems, 1)
	pick := `SELECT id FROM jobs WHERE state = 'queued' AND ` + cond + ` ORDER BY id LIMIT 1`
	const set = `UPDATE jobs SET state = 'running', worker = $%d, attempts = attempts + 1, lease_expires_at = $%d, started_at = $%d, error = ''`
	var (
		j   *Job
		err error
	)
	switch d.dialect {
	case Postgres:
		// Two statements: PostgreSQL must know every parameter's type, so
		// the UPDATE cannot carry the SELECT's unused ones.
		err = d.tx(ctx, func(tx *sql.Tx) error {
			var id int64
			if err := tx.QueryRowContext(ctx, pick+` FOR UPDATE SKIP LOCKED`, sysArgs...).Scan(&id); err != nil {
				return err
			}
			j, err = scanJob(tx.QueryRowContext(ctx, fmt.Sprintf(set, 1, 2, 3)+` WHERE id = $4 RETURNING `+jobCols,
				worker, millis(now.Add(lease)), millis(now), id))
			if err != nil {
				return err
			}
			return d.notify(ctx, tx, ChanJobs, j.BuildID)
		})
	default:
		n := len(sysArgs)
		j, err = scanJob(d.sql.QueryRowContext(ctx, fmt.Sprintf(set, n+1, n+2, n+3)+` WHERE id = (`+pick+`) RETURNING `+jobCols,
			append(sysArgs, worker, millis(now.Add(lease)), millis(now))...))
	}
	switch {
	case errors.Is(err, sql.ErrNoRows), errors.Is(err, ErrNotFound):
		return nil, ErrNoJob
	case err != nil:
		return nil, fmt.Errorf("claim a job for worker %s: %w", worker, err)
	}
	return j, nil
}

// RenewLease extends worker's lease on job id to now+lease. ErrLeaseLost
// means the worker no longer holds the job (its lease expired, or the job
// was cancelled: see Job): it must stop working on it.
func (d *DB) RenewLease(ctx context.Context, id int64, worker string, lease time.Duration, now time.Time) error {
	res, err := d.sql.ExecContext(ctx, `UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND worker = $3 AND state = 'running'`,
		millis(now.Add(lease)), id, worker)
	if err != nil {
		return fmt.Errorf("renew the lease on job %d: %w", id, err)
	}
	return oneRow(res, id)
}

func oneRow(res sql.Result, id int64) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("job %d: %w", id, err)
	}
	if n != 1 {
		return fmt.Errorf("job %d: %w", id, ErrLeaseLost)
	}
	return nil
}

// JobFinish is a job's end as its worker reports it.
type JobFinish struct {
	ID     int64
	Worker string
	State  JobState // JobSucceeded, JobFailed or JobCancelled
	Error  string
	At     time.Time
}

// FinishJob records a job's end, once: only while worker still holds the
// job's lease (else ErrLeaseLost, and nothing is written), so a worker
// that lost its job to another cannot record it too. The job's results
// still running are ended with it (a result left running means the
// attribute did not record its end: it failed).
func (d *DB) FinishJob(ctx context.Context, f JobFinish) error {
	if !f.State.Done() {
		return fmt.Errorf("finish job %d: %q is not an end state", f.ID, f.State)
	}
	return d.tx(ctx, func(tx *sql.Tx) error {
		var buildID int64
		err := tx.QueryRowContext(ctx, `UPDATE jobs SET state = $1, error = $2, finished_at = $3, lease_expires_at = NULL
			WHERE id = $4 AND worker = $5 AND state = 'running' RETURNING build_id`, f.State, f.Error, millis(f.At), f.ID, f.Worker).Scan(&buildID)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("job %d: %w", f.ID, ErrLeaseLost)
		}
		if err != nil {
			return fmt.Errorf("finish job %d: %w", f.ID, err)
		}
		if err := d.notify(ctx, tx, ChanJobs, buildID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE build_results SET status = $1, error = $2, finished_at = $3 WHERE job_id = $4 AND status = $5`,
			ResultFailed, "the job ended before the attribute recorded its end", millis(f.At), f.ID, ResultRunning); err != nil {
			return fmt.Errorf("finish job %d: end its results: %w", f.ID, err)
		}
		return nil
	})
}

// ReclaimExpired takes back every running job whose lease expired before
// now: its worker is gone. A job with attempts left goes back to the
// queue, and what its lost attempt recorded of its results is dropped (the
// next attempt records them again); a job out of attempts fails. It
// returns the jobs requeued and the jobs failed.
func (d *DB) ReclaimExpired(ctx context.Context, now time.Time) (requeued, failed []*Job, err error) {
	err = d.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `UPDATE jobs SET
				state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
				finished_at = CASE WHEN attempts >= max_attempts THEN $1 ELSE NULL END,
				error = CASE WHEN attempts >= max_attempts
					THEN 'worker ' || worker || ' was lost (lease expired) on attempt ' || attempts || ' of ' || max_attempts
					ELSE 'worker ' || worker || ' was lost (lease expired); queued again' END,
				worker = CASE WHEN attempts >= max_attempts THEN worker ELSE '' END,
				lease_expires_at = NULL
			WHERE state = 'running' AND lease_expires_at < $1
			RETURNING `+jobCols, millis(now))
		if err != nil {
			return err
		}
		jobs, err := scanAll(rows, scanJob)
		if err != nil {
			return err
		}
		for _, j := range jobs {
			if j.State == JobQueued {
				requeued = append(requeued, j)
			} else {
				failed = append(failed, j)
			}
		}
		if err := d.notifyJobs(ctx, tx, jobs); err != nil {
			return err
		}
		return dropLostResults(ctx, tx, requeued, failed, now)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reclaim jobs whose lease expired: %w", err)
	}
	return requeued, failed, nil
}

// dropLostResults removes the results a requeued job's lost attempt
// recorded, and fails those of a failed job still running.
func dropLostResults(ctx context.Context, tx *sql.Tx, requeued, failed []*Job, now time.Time) error {
	for _, j := range requeued {
		if _, err := tx.ExecContext(ctx, `DELETE FROM build_results WHERE job_id = $1`, j.ID); err != nil {
			return err
		}
	}
	for _, j := range failed {
		if _, err := tx.ExecContext(ctx, `UPDATE build_results SET status = $1, error = $2, finished_at = $3 WHERE job_id = $4 AND status = $5`,
			ResultFailed, j.Error, millis(now), j.ID, ResultRunning); err != nil {
			return err
		}
	}
	return nil
}

// RequeueWorkerJobs puts the jobs worker holds back in the queue, without
// waiting for their leases to expire: a worker restarting under the same
// name knows it runs none of them. The attempt is not counted against the
// job's limit (it was interrupted, not lost), though attempts still counts
// it, so each attempt keeps a number of its own.
func (d *DB) RequeueWorkerJobs(ctx context.Context, worker string) ([]*Job, error) {
	var out []*Job
	err := d.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `UPDATE jobs SET state = 'queued', worker = '', lease_expires_at = NULL, max_attempts = max_attempts + 1,
				error = 'interrupted: worker ' || worker || ' restarted; queued again'
			WHERE state = 'running' AND worker = $1 RETURNING `+jobCols, worker)
		if err != nil {
			return err
		}
		if out, err = scanAll(rows, scanJob); err != nil {
			return err
		}
		if err := d.notifyJobs(ctx, tx, out); err != nil {
			return err
		}
		return dropLostResults(ctx, tx, out, nil, time.Now())
	})
	if err != nil {
		return nil, fmt.Errorf("requeue the jobs of worker %s: %w", worker, err)
	}
	return out, nil
}

// CancelJobs cancels a build's queued and running jobs, and fails the
// results they were recording. A worker running one learns it at its next
// lease renewal (ErrLeaseLost, and Job says cancelled) and stops.
func (d *DB) CancelJobs(ctx context.Context, buildID int64, at time.Time) ([]*Job, error) {
	var out []*Job
	err := d.tx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `UPDATE jobs SET state = 'cancelled', error = 'cancelled', finished_at = $1, lease_expires_at = NULL
			WHERE build_id = $2 AND state IN ('queued', 'running') RETURNING `+jobCols, millis(at), buildID)
		if err != nil {
			return err
		}
		if out, err = scanAll(rows, scanJob); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE build_results SET status = $1, error = $2, finished_at = $3
			WHERE build_id = $4 AND status = $5 AND job_id IS NOT NULL`, ResultFailed, "cancelled", millis(at), buildID, ResultRunning)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cancel the jobs of build %d: %w", buildID, err)
	}
	return out, nil
}

// RepositoryByName returns a recorded repository's URL and branch, for a
// worker that has only the database; ErrNotFound for an unknown one.
func (d *DB) RepositoryByName(ctx context.Context, name string) (url, branch string, err error) {
	err = d.sql.QueryRowContext(ctx, `SELECT url, branch FROM repositories WHERE name = $1`, name).Scan(&url, &branch)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", ErrNotFound
	}
	if err != nil {
		return "", "", fmt.Errorf("repository %s: %w", name, err)
	}
	return url, branch, nil
}

// Job returns one job, or ErrNotFound.
func (d *DB) Job(ctx context.Context, id int64) (*Job, error) {
	j, err := scanJob(d.sql.QueryRowContext(ctx, `SELECT `+jobCols+` FROM jobs WHERE id = $1`, id))
	if err != nil && !errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("job %d: %w", id, err)
	}
	return j, err
}

// BuildJobs returns a build's jobs in the order they were queued.
func (d *DB) BuildJobs(ctx context.Context, buildID int64) ([]*Job, error) {
	return queryAll(ctx, d, scanJob, fmt.Sprintf("jobs of build %d", buildID), `SELECT `+jobCols+` FROM jobs WHERE build_id = $1 ORDER BY id`, buildID)
}

// ActiveJobs returns up to limit queued and running jobs, running first,
// then oldest first: the queue as /api/v1/queue shows it.
func (d *DB) ActiveJobs(ctx context.Context, limit int) ([]*Job, error) {
	return queryAll(ctx, d, scanJob, "list the queue", `SELECT `+jobCols+` FROM jobs WHERE state IN ('queued', 'running')
		ORDER BY CASE state WHEN 'running' THEN 0 ELSE 1 END, id LIMIT $1`, limit)
}

// QueueCounts counts the jobs queued and running.
func (d *DB) QueueCounts(ctx context.Context) (queued, running int, err error) {
	err = d.sql.QueryRowContext(ctx, `SELECT
		COALESCE(SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), 0),
		COALESCE(SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), 0)
		FROM jobs WHERE state IN ('queued', 'running')`).Scan(&queued, &running)
	if err != nil {
		return 0, 0, fmt.Errorf("count the queue: %w", err)
	}
	return queued, running, nil
}

// StartJobResult is StartResultLog for an attribute that job jobID builds:
// the result goes with the job (dropped if the job's attempt is lost).
func (d *DB) StartJobResult(ctx context.Context, buildID, jobID int64, attr, kind string, at time.Time, logStart *int64) (int64, error) {
	var id int64
	err := d.sql.QueryRowContext(ctx, `INSERT INTO build_results (build_id, job_id, attr, kind, status, started_at, log_start) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`,
		buildID, jobID, attr, kind, ResultRunning, millis(at), nullInt(logStart)).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("record result %s of build %d: %w", attr, buildID, err)
	}
	return id, nil
}

// FinishJobResult is FinishResultLog for a result of job jobID, written
// only while worker holds the job (else ErrLeaseLost): a worker that lost
// its job records nothing of it.
func (d *DB) FinishJobResult(ctx context.Context, id, jobID int64, worker, status, drvPath string, outPaths []string, errMsg string, at time.Time, logEnd *int64, logTail string) error {
	res, err := d.sql.ExecContext(ctx, `UPDATE build_results SET status = $1, drv_path = $2, out_paths = $3, error = $4, finished_at = $5, log_end = $6, log_tail = $7
		WHERE id = $8 AND job_id = $9 AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = $9 AND jobs.worker = $10 AND jobs.state = 'running')`,
		status, drvPath, strings.Join(outPaths, " "), errMsg, millis(at), nullInt(logEnd), logTail, id, jobID, worker)
	if err != nil {
		return fmt.Errorf("finish result %d: %w", id, err)
	}
	return oneRow(res, jobID)
}

// ActiveBuilds returns the queued and running builds, oldest first: after
// a restart, the builds to resume.
func (d *DB) ActiveBuilds(ctx context.Context) ([]*Build, error) {
	return queryAll(ctx, d, scanBuild, "list active builds", `SELECT `+buildCols+` FROM builds WHERE status IN ('queued', 'running') ORDER BY id`)
}
