-- Portcullis issuer schema, version 2: SMS one-time codes and the SMS message log.
-- Same portable conventions as 0001 (TEXT/BIGINT only, unix seconds, named indexes).

CREATE TABLE sms_codes (
    id         TEXT PRIMARY KEY,
    -- E.164.
    phone      TEXT NOT NULL,
    -- HMAC-SHA256 over phone and code under a server secret; the code itself is never stored.
    code_hash  TEXT NOT NULL,
    -- 'pending' (being sent), 'active' (sent, may be verified), 'consumed', 'cancelled'
    -- (replaced by a newer code), 'failed' (the provider refused it).
    state      TEXT NOT NULL CHECK (state IN ('pending', 'active', 'consumed', 'cancelled', 'failed')),
    -- Wrong guesses so far; a code with attempts >= the limit is dead.
    attempts   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sms_codes_phone_idx ON sms_codes (phone, created_at);

CREATE TABLE sms_messages (
    id          TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    -- The provider's id (Twilio's message SID); NULLs never clash.
    provider_id TEXT,
    phone       TEXT NOT NULL,
    -- Last reported delivery status (queued, sent, delivered, undelivered, failed…).
    status      TEXT NOT NULL,
    error_code  TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX sms_messages_provider_id_key ON sms_messages (provider_id);
CREATE INDEX sms_messages_phone_idx ON sms_messages (phone, created_at);
CREATE INDEX sms_messages_created_at_idx ON sms_messages (created_at);
