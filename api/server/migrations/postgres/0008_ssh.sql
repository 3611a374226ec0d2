-- SSH resources: how the gateway trusts the target's host key (host CA public keys and
-- pinned host keys, JSON lists of OpenSSH lines; both empty means the organisation's own
-- SSH host CA), and whether users may forward ports through it. Keep in step with the
-- other dialect's 0008_ssh.sql.
ALTER TABLE resources ADD COLUMN ssh_host_ca TEXT NOT NULL DEFAULT '[]';
ALTER TABLE resources ADD COLUMN ssh_host_keys TEXT NOT NULL DEFAULT '[]';
ALTER TABLE resources ADD COLUMN ssh_allow_port_forwarding BIGINT NOT NULL DEFAULT 0;
