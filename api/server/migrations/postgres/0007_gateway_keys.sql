-- A gateway is known by its certificate's key, not only its name: `key` is the hex
-- Ed25519 public key of its current certificate (NULL for gateways enrolled before this
-- migration, filled in from the first certificate presented). A revoked key stays
-- revoked when the name is enrolled again. Keep in step with the other dialect's
-- 0007_gateway_keys.sql.
ALTER TABLE gateways ADD COLUMN key TEXT;
CREATE TABLE revoked_gateway_keys (
    key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    revoked_at BIGINT NOT NULL
);
