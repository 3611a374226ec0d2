-- The credential vault. Keep in step with ../sqlite/0002_vault.sql.
ALTER TABLE resources ADD COLUMN ssh_principals TEXT NOT NULL DEFAULT '[]';
CREATE TABLE credentials (
    resource TEXT NOT NULL REFERENCES resources(name) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    kind TEXT NOT NULL,
    key_id TEXT NOT NULL,
    wrapped_key TEXT NOT NULL,
    nonce TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (resource, version)
);
