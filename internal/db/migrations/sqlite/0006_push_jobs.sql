-- Pushes of builds' outputs (with their closures) to the configured
-- destinations (docs/caches.md): one job per build and destination.
CREATE TABLE push_jobs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id     BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    destination  TEXT NOT NULL,
    url          TEXT NOT NULL,
    state        TEXT NOT NULL,
    roots        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    paths        INTEGER NOT NULL DEFAULT 0,
    uploaded     INTEGER NOT NULL DEFAULT 0,
    bytes        BIGINT NOT NULL DEFAULT 0,
    duration_ms  BIGINT NOT NULL DEFAULT 0,
    error        TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT
);
CREATE INDEX push_jobs_build ON push_jobs (build_id);
CREATE INDEX push_jobs_state ON push_jobs (state);
