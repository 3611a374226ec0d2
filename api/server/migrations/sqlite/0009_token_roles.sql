-- An enrollment token is for a gateway or for a node (`lastmile-api nodes token`): the
-- role is fixed when the token is made, so a node's token cannot enroll a gateway. Keep
-- in step with the other dialect's 0009_token_roles.sql.
ALTER TABLE gateway_tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'gateway';
