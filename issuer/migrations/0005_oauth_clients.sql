-- Portcullis issuer schema, version 5: OAuth clients.
--
-- Portable SQL for SQLite and PostgreSQL (see 0001): TEXT and BIGINT only.

-- The client a session was opened by, kept so that refreshed tokens name the same client
-- (`client_id` claim) and so that introspection and revocation know whose token it is:
-- an API key's id (machine logins), or NULL for the first-party client (password, SMS,
-- anonymous and sign-up logins), whose id comes from the configuration and may change.
-- Sessions opened before this migration have NULL, and count as the first-party client's.
ALTER TABLE sessions ADD COLUMN client_id TEXT;

-- What an API key may do beyond logging in, as a JSON list of names: `introspect` (any
-- token at /oauth/introspect) and `revoke` (any token at /oauth/revoke). Without them a key
-- sees and revokes only the tokens of its own sessions.
ALTER TABLE api_keys ADD COLUMN permissions TEXT NOT NULL DEFAULT '[]';
