-- Gateways announce where agents reach their tunnel (HOST:PORT). Keep in step with the
-- other dialect's 0003_tunnel.sql.
ALTER TABLE gateways ADD COLUMN tunnel TEXT;
ALTER TABLE gateways ADD COLUMN announced_at BIGINT;
