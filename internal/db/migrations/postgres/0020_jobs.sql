-- The job queue (see docs/architecture.md, "Jobs"): a build is an
-- evaluation job, then one job per attribute, claimed by workers under a
-- lease they renew. Times are unix milliseconds.
CREATE TABLE jobs (
    id                BIGSERIAL PRIMARY KEY,
    build_id          BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    kind              TEXT NOT NULL,
    attr              TEXT NOT NULL DEFAULT '',
    attr_kind         TEXT NOT NULL DEFAULT '',
    system            TEXT NOT NULL DEFAULT '',
    drv_path          TEXT NOT NULL DEFAULT '',
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    worker            TEXT NOT NULL DEFAULT '',
    lease_expires_at  BIGINT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    error             TEXT NOT NULL DEFAULT '',
    forced            BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_build ON jobs (build_id, id);

-- Workers, as they register and heartbeat.
CREATE TABLE workers (
    name        TEXT PRIMARY KEY,
    host        TEXT NOT NULL,
    systems     TEXT NOT NULL,
    capacity    INTEGER NOT NULL,
    version     TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    running     INTEGER NOT NULL DEFAULT 0,
    draining    BOOLEAN NOT NULL DEFAULT FALSE
);

-- What became of each derivation built: a success is not rebuilt, a
-- failure not retried unless a build is forced.
CREATE TABLE derivations (
    drv_path   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    out_paths  TEXT NOT NULL DEFAULT '',
    error      TEXT NOT NULL DEFAULT '',
    build_id   BIGINT NOT NULL,
    at         BIGINT NOT NULL
);

-- Jobs' logs, appended in chunks as they run, for followers of a job that
-- runs on another machine. attempt tells a lost attempt's output apart.
CREATE TABLE job_logs (
    id        BIGSERIAL PRIMARY KEY,
    job_id    BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    build_id  BIGINT NOT NULL,
    attempt   INTEGER NOT NULL,
    data      BYTEA NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX job_logs_build_id ON job_logs (build_id, id);
CREATE INDEX job_logs_job_id ON job_logs (job_id, id);

-- The job that recorded a result, so a lost attempt's result can be
-- dropped when the job goes back to the queue.
ALTER TABLE build_results ADD COLUMN job_id BIGINT;
