-- At most one queued or running build per repository, kept by the database
-- itself: CreateBuild's check-then-insert is not enough on PostgreSQL, whose
-- transactions do not serialise writers the way SQLite's do. Older active
-- duplicates, if any, are failed first so that the index can be made.
UPDATE builds SET status = 'failed', error = 'interrupted', finished_at = CAST(strftime('%s', 'now') AS BIGINT) * 1000
    WHERE status IN ('queued', 'running')
    AND id NOT IN (SELECT MAX(id) FROM builds WHERE status IN ('queued', 'running') GROUP BY repository);
CREATE UNIQUE INDEX builds_one_active ON builds (repository) WHERE status IN ('queued', 'running');
