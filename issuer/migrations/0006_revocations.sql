-- Portcullis issuer schema, version 6: the revocation feed (`GET /v1/revocations`).
--
-- Portable SQL for SQLite and PostgreSQL (see 0001): TEXT and BIGINT only.

-- One record per event that ends a session (`kind = 'session'`, `target` = the sid) or every
-- token of a subject issued before `not_before` (`kind = 'subject'`, `target` = the sub).
-- `seq` is assigned from `revocation_feed.last_seq` inside the writing transaction (not by a
-- sequence or AUTOINCREMENT), so that sequence numbers become visible in commit order.
CREATE TABLE revocations (
    seq            BIGINT PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('session', 'subject')),
    target         TEXT NOT NULL,
    -- Subject records only: tokens with `iat` before this are revoked.
    not_before     BIGINT,
    created_at     BIGINT NOT NULL,
    -- When every access token the record could affect has expired; pruned after that.
    relevant_until BIGINT NOT NULL
);
CREATE INDEX revocations_relevant_until_idx ON revocations (relevant_until);

-- The feed's single row: the last sequence number handed out (its row lock serialises
-- appends, see store/revocations.rs) and the highest one pruned (cursors below it get a
-- snapshot).
CREATE TABLE revocation_feed (
    id             BIGINT PRIMARY KEY CHECK (id = 1),
    last_seq       BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL
);
INSERT INTO revocation_feed (id, last_seq, pruned_through) VALUES (1, 0, 0);
