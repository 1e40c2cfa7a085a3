ALTER TABLE hosts ADD COLUMN policy_set_at BIGINT;
