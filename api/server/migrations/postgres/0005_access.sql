-- Access revocations: a row with `resource` set says the user's access to that resource
-- ended (a grant revoked, a group left); its session_id is '*' (every session of the
-- user). Keep in step with the other dialect's 0005_access.sql.
ALTER TABLE revocations ADD COLUMN resource TEXT;
