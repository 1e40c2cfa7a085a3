CREATE TABLE repositories (
    name        TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    branch      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE builds (
    id           BIGSERIAL PRIMARY KEY,
    repository   TEXT NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    commit_sha   TEXT NOT NULL DEFAULT '',
    short_commit TEXT NOT NULL DEFAULT '',
    error        TEXT NOT NULL DEFAULT '',
    log_path     TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    finished_at  BIGINT
);
CREATE INDEX builds_repository_id ON builds (repository, id);
CREATE INDEX builds_status ON builds (status);

CREATE TABLE build_results (
    id           BIGSERIAL PRIMARY KEY,
    build_id     BIGINT NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    attr         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    drv_path     TEXT NOT NULL DEFAULT '',
    out_paths    TEXT NOT NULL DEFAULT '',
    error        TEXT NOT NULL DEFAULT '',
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT
);
CREATE INDEX build_results_build ON build_results (build_id);
