CREATE TABLE hosts (
    name            TEXT PRIMARY KEY,
    public_key      TEXT NOT NULL UNIQUE,
    status          TEXT NOT NULL,
    policy          TEXT NOT NULL DEFAULT 'manual',
    target          TEXT NOT NULL DEFAULT '',
    repository      TEXT NOT NULL DEFAULT '',
    configuration   TEXT NOT NULL DEFAULT '',
    current_system  TEXT NOT NULL DEFAULT '',
    fingerprint     TEXT NOT NULL DEFAULT '',
    facts           TEXT NOT NULL DEFAULT '',
    agent           TEXT NOT NULL DEFAULT '',
    remote          TEXT NOT NULL DEFAULT '',
    last_seen       BIGINT,
    last_ts         BIGINT NOT NULL DEFAULT 0,
    desired         TEXT NOT NULL DEFAULT '',
    desired_reason  TEXT NOT NULL DEFAULT '',
    desired_drv     TEXT NOT NULL DEFAULT '',
    target_error    TEXT NOT NULL DEFAULT '',
    drift_since     BIGINT,
    created_at      BIGINT NOT NULL
);

CREATE TABLE heartbeats (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    host            TEXT NOT NULL,
    current_system  TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    first_at        BIGINT NOT NULL,
    last_at         BIGINT NOT NULL,
    count           BIGINT NOT NULL
);
CREATE INDEX heartbeats_host_id ON heartbeats (host, id);

CREATE TABLE deployments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    host         TEXT NOT NULL,
    target       TEXT NOT NULL,
    previous     TEXT NOT NULL,
    status       TEXT NOT NULL,
    error        TEXT NOT NULL DEFAULT '',
    duration_ms  BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    reported_at  BIGINT NOT NULL
);
CREATE INDEX deployments_host_id ON deployments (host, id);

CREATE TABLE host_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    host    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX host_events_host_id ON host_events (host, id);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    host    TEXT NOT NULL,
    detail  TEXT NOT NULL,
    remote  TEXT NOT NULL,
    at      BIGINT NOT NULL
);
