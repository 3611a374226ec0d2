-- lastmile-api schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_initial.sql:
-- the two differ only where the engines do (the revocation sequence).
CREATE TABLE org (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL,
    device_policy TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    password_one_time BIGINT NOT NULL DEFAULT 0,
    totp_secret TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    admin BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE TABLE group_members (
    group_name TEXT NOT NULL,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    PRIMARY KEY (group_name, user_name)
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    public_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoke_reason TEXT
);
CREATE INDEX sessions_device ON sessions(device_id);
CREATE TABLE revocations (
    seq BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    device_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE TABLE nonces (
    key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX nonces_expiry ON nonces(expires_at);
CREATE TABLE challenges (
    challenge TEXT PRIMARY KEY,
    user_name TEXT NOT NULL,
    device_key TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE gateway_tokens (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    addresses TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_by TEXT NOT NULL
);
CREATE TABLE gateways (
    name TEXT PRIMARY KEY,
    addresses TEXT NOT NULL,
    cert_expires_at BIGINT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE resources (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    port BIGINT NOT NULL,
    protect TEXT NOT NULL,
    upstream_tls TEXT NOT NULL,
    credential TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE grants (
    id TEXT PRIMARY KEY,
    resource TEXT NOT NULL REFERENCES resources(name) ON DELETE CASCADE,
    subject_kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    expires_at BIGINT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX grants_subject ON grants(subject_kind, subject);
