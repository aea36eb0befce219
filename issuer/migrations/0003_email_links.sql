-- Portcullis issuer schema, version 3: single-use links of the email flows.
--
-- Portable SQL for SQLite and PostgreSQL (see 0001): TEXT and BIGINT only, unix seconds.

CREATE TABLE email_links (
    -- SHA-256 (hex) of the 256-bit token mailed in the link; the token itself is never stored.
    token_hash TEXT PRIMARY KEY,
    purpose    TEXT NOT NULL CHECK (purpose IN ('confirm_email', 'reset_password', 'change_email')),
    -- Not a foreign key, like sessions.user_id; delete_user leaves links that can no longer
    -- resolve to an account.
    user_id    TEXT NOT NULL,
    -- The address the link is about: the one to confirm, or the new one of a change.
    email      TEXT,
    expires_at BIGINT NOT NULL,
    -- Set exactly once, by the request that wins the conditional UPDATE.
    used_at    BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX email_links_user_purpose_idx ON email_links (user_id, purpose);
CREATE INDEX email_links_expires_at_idx ON email_links (expires_at);
