-- A resource's DNS names (a JSON array): what users dial for it, named by the gateway's
-- SSH host and TLS certificates for it. Keep in step with the other dialect's
-- 0010_resource_names.sql.
ALTER TABLE resources ADD COLUMN names TEXT NOT NULL DEFAULT '[]';
