-- TOTP seeds sealed by the KMS like every other secret (JSON of lastmile_vault::Sealed,
-- context: organisation and user). `totp_secret` keeps only seeds stored before this
-- migration, until the API seals them at its next start. Keep in step with the other
-- dialect's 0006_totp_sealed.sql.
ALTER TABLE users ADD COLUMN totp_sealed TEXT;
