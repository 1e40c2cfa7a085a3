-- Where each attribute's part of its build's log is (byte offsets into the
-- build log; NULL for results recorded before this), and the last lines of
-- that part for a failed attribute.
ALTER TABLE build_results ADD COLUMN log_start BIGINT;
ALTER TABLE build_results ADD COLUMN log_end BIGINT;
ALTER TABLE build_results ADD COLUMN log_tail TEXT NOT NULL DEFAULT '';
