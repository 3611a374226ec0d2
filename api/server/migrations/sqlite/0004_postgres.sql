-- PostgreSQL resources: the role the gateway logs in as, the databases a client may ask
-- for (a JSON list; empty means any), and the CA an upstream verify-full checks against.
-- Keep in step with the other dialect's 0004_postgres.sql.
ALTER TABLE resources ADD COLUMN database_user TEXT;
ALTER TABLE resources ADD COLUMN databases TEXT NOT NULL DEFAULT '[]';
ALTER TABLE resources ADD COLUMN upstream_ca TEXT;
