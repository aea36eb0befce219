-- Portcullis issuer schema, version 1.
--
-- One file for SQLite and PostgreSQL alike, so only portable SQL is used: TEXT and BIGINT
-- columns, no BOOLEAN (flags are BIGINT 0/1), no BLOB/BYTEA, timestamps as BIGINT unix
-- seconds, ids as TEXT (random 128-bit hex), JSON documents and string lists as TEXT.
-- Unique constraints are named indexes so that a violation can be reported as the field
-- that clashed (SQLite names `table.column`, PostgreSQL names the index).

CREATE TABLE users (
    id                 TEXT PRIMARY KEY,
    -- Stored lower-cased by the application, so this unique index is case-insensitive.
    email              TEXT,
    username           TEXT,
    -- E.164, normalised by the caller.
    phone              TEXT,
    password_hash      TEXT,
    roles              TEXT NOT NULL DEFAULT '[]',
    app_metadata       TEXT NOT NULL DEFAULT '{}',
    user_metadata      TEXT NOT NULL DEFAULT '{}',
    anonymous          BIGINT NOT NULL DEFAULT 0 CHECK (anonymous IN (0, 1)),
    email_confirmed_at BIGINT,
    disabled           BIGINT NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
-- NULLs never clash in a unique index on either engine, so users without an email,
-- username or phone (anonymous, SMS-only) coexist.
CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE UNIQUE INDEX users_username_key ON users (username);
CREATE UNIQUE INDEX users_phone_key ON users (phone);
CREATE INDEX users_created_at_idx ON users (created_at);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    -- Public part of the key, used to look it up; the secret is only kept as `hash`.
    prefix       TEXT NOT NULL,
    hash         TEXT NOT NULL,
    -- A user id or a machine principal; deliberately not a foreign key.
    subject      TEXT NOT NULL,
    name         TEXT NOT NULL,
    scopes       TEXT NOT NULL DEFAULT '[]',
    roles        TEXT NOT NULL DEFAULT '[]',
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    created_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX api_keys_prefix_key ON api_keys (prefix);
CREATE INDEX api_keys_subject_idx ON api_keys (subject);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    -- Not a foreign key: sessions may belong to machine subjects too; delete_user removes
    -- a user's sessions explicitly.
    user_id        TEXT NOT NULL,
    amr            TEXT NOT NULL DEFAULT '[]',
    -- Scopes and roles granted at login (API keys carry their own), kept for refreshes.
    scopes         TEXT NOT NULL DEFAULT '[]',
    roles          TEXT NOT NULL DEFAULT '[]',
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE refresh_tokens (
    -- Hash of the opaque token; the token itself is never stored.
    hash       TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- Set exactly once, by the caller that wins the rotation.
    rotated_at BIGINT
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    -- Opaque to the store (the caller may encrypt it).
    private_key  TEXT NOT NULL,
    public_jwk   TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,
    retired_at   BIGINT,
    remove_after BIGINT
);

CREATE TABLE rate_limits (
    limit_key    TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    hits         BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX rate_limits_expires_at_idx ON rate_limits (expires_at);
