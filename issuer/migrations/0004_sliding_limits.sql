-- Portcullis issuer schema, version 4: sliding-window rate limits.
--
-- Portable SQL for SQLite and PostgreSQL (see 0001): TEXT and BIGINT only, unix seconds.
--
-- A rate_limits row now keeps two windows: `hits` of the current one (starting at
-- window_start) and `prev_hits` of the one before, from which the hits of the last `window`
-- seconds are estimated (store/limits.rs). `admitted` is the verdict of the row's last hit (1
-- or 0): the upsert decides and counts in one statement, and RETURNING only sees the new row.
-- Existing rows keep their meaning: their hits are those of their current window, and the
-- previous window counts as empty. The SMS interval claims stored in the same table only use
-- window_start, hits and expires_at.

ALTER TABLE rate_limits ADD COLUMN prev_hits BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rate_limits ADD COLUMN admitted BIGINT NOT NULL DEFAULT 0;
