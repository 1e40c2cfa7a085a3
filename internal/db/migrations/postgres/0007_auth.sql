CREATE TABLE api_tokens (
    name          TEXT PRIMARY KEY,
    lookup_id     TEXT NOT NULL UNIQUE,
    token_hash    TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT
);

CREATE TABLE webhook_deliveries (
    provider     TEXT NOT NULL,
    delivery_id  TEXT NOT NULL,
    repository   TEXT NOT NULL,
    at           BIGINT NOT NULL,
    PRIMARY KEY (provider, delivery_id)
);
CREATE INDEX webhook_deliveries_at ON webhook_deliveries (at);
