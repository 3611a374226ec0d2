//! `lastmile-api`'s configuration file (TOML, one `[api]` table). Every field has a
//! default, so `lastmile-api init` and `serve` work with no file at all.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Audit kinds the API records whatever `[api.audit] kinds` says: a credential released
/// or a connection opened with no record of it is what the audit log exists to prevent.
pub const ALWAYS_AUDITED: &[&str] = &["credential.decrypt", "connection.open"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    api: ApiConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// HTTPS listener. Default 127.0.0.1:8443.
    pub listen: SocketAddr,
    /// Keys, the SQLite database and the audit file. Default /var/lib/lastmile-api.
    pub data_dir: PathBuf,
    /// `sqlite:PATH` or `postgres://…`. Default: `sqlite:<data_dir>/api.db`.
    pub database: Option<String>,
    /// Names and addresses the API's TLS certificate covers (used at init).
    pub names: Vec<String>,
    /// How long a login lasts. Default 12h.
    #[serde(with = "lastmile_proto::duration")]
    pub session_ttl: Duration,
    /// How long a session's client certificate lasts; refresh before it ends. Default 1h.
    #[serde(with = "lastmile_proto::duration")]
    pub certificate_ttl: Duration,
    /// How long a gateway certificate lasts; the gateway renews it. Default 24h.
    #[serde(with = "lastmile_proto::duration")]
    pub gateway_certificate_ttl: Duration,
    /// How long a node's audit-writer certificate lasts (`lastmiled node enroll`); not
    /// renewed in place: enroll again before it ends. Default 90 days.
    #[serde(with = "lastmile_proto::duration")]
    pub node_certificate_ttl: Duration,
    /// How far a signature's `created` may be from the server's clock. Default 30s.
    #[serde(with = "lastmile_proto::duration")]
    pub signature_window: Duration,
    /// Largest request body accepted. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Failed logins before a user is locked for `lockout`. Default 10.
    pub max_failed_logins: i64,
    /// Default 5m.
    #[serde(with = "lastmile_proto::duration")]
    pub lockout: Duration,
    /// Logins checked at once (each hashes a password with argon2id, 19 MiB); more are
    /// refused with 429 `too_many_logins` and `Retry-After` rather than queued. Default
    /// twice the CPUs.
    pub max_concurrent_logins: usize,
    /// Where audit events are appended as JSON lines. Default `<data_dir>/audit.jsonl`.
    pub audit_file: Option<PathBuf>,
    /// Audit events (admin changes, logins, sessions, devices, decryptions): to
    /// `audit_file`, and wherever this section adds. A `kinds` list must include
    /// [`ALWAYS_AUDITED`] (`credential.decrypt`, `connection.open`), or be empty.
    pub audit: lastmile_audit_sink::SinkConfig,
    /// Where the vault's (and the CAs') master keys live: `kind = "local"` (the default:
    /// `<data_dir>/kms`) or `kind = "aws"` with `region`, `key_id`, and optionally
    /// `endpoint`, `access_key_id`, `secret_access_key`.
    pub kms: lastmile_vault::KmsConfig,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP: keep it on a local
    /// or monitoring-only address). Default: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// How long an unlock's SSH user certificate lasts. Default 5m.
    #[serde(with = "lastmile_proto::duration")]
    pub ssh_certificate_ttl: Duration,
    /// How long a gateway's SSH host certificate for a resource lasts (gateways renew it
    /// an hour before it ends). Default 1d.
    #[serde(with = "lastmile_proto::duration")]
    pub ssh_host_certificate_ttl: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("/var/lib/lastmile-api"),
            database: None,
            names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            session_ttl: Duration::from_secs(12 * 3600),
            certificate_ttl: Duration::from_secs(3600),
            gateway_certificate_ttl: Duration::from_secs(24 * 3600),
            node_certificate_ttl: Duration::from_secs(90 * 86_400),
            signature_window: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            max_failed_logins: 10,
            lockout: Duration::from_secs(300),
            max_concurrent_logins: 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            audit_file: None,
            audit: lastmile_audit_sink::SinkConfig::default(),
            kms: lastmile_vault::KmsConfig::default(),
            metrics_listen: None,
            ssh_certificate_ttl: Duration::from_secs(300),
            ssh_host_certificate_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid lastmile-api config")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

impl ApiConfig {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: File = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let c = file.api;
        let invalid = |why: &str| ConfigError::Invalid {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        if c.certificate_ttl > c.session_ttl {
            return Err(invalid("certificate_ttl must not exceed session_ttl"));
        }
        if c.signature_window < Duration::from_secs(1)
            || c.signature_window > Duration::from_secs(600)
        {
            return Err(invalid("signature_window must be between 1s and 10m"));
        }
        if c.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes must be at least 1024"));
        }
        if c.max_concurrent_logins == 0 {
            return Err(invalid("max_concurrent_logins must be at least 1"));
        }
        c.audit
            .policy(ALWAYS_AUDITED)
            .map_err(|e| invalid(&format!("[api.audit] {e}")))?;
        Ok(c)
    }

    pub fn database_url(&self) -> String {
        self.database.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("api.db").display()
            )
        })
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.data_dir.join("keys")
    }

    pub fn kms_dir(&self) -> PathBuf {
        self.data_dir.join("kms")
    }

    pub fn audit_file(&self) -> PathBuf {
        self.audit_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit.jsonl"))
    }
}

/// Seconds in `d`, as the store keeps times.
pub fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The README's `api.toml` block: it parses, its values are the defaults, and it
    /// names every field the parser takes (the list is the parser's own, from the
    /// error for an unknown field), so the documentation cannot fall behind the code.
    #[test]
    fn the_readme_lists_every_field_with_its_default() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let start = readme
            .find("# api.toml: every field is optional; these are the defaults")
            .unwrap();
        let block = &readme[start..];
        let block = &block[..block.find("```").unwrap()];
        let documented: File = toml::from_str(block).unwrap();
        assert_eq!(
            format!("{:?}", documented.api),
            format!("{:?}", ApiConfig::default())
        );
        let unknown = toml::from_str::<File>("[api]\nnot_a_field = 1\n")
            .unwrap_err()
            .to_string();
        let expected = &unknown[unknown.find("expected one of").unwrap()..];
        let fields: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert!(fields.len() >= 17, "{unknown}");
        for field in fields {
            assert!(
                block.contains(&format!("{field} =")) || block.contains(&format!("[api.{field}]")),
                "README's api.toml block does not mention `{field}`"
            );
        }
    }

    fn load(text: &str) -> Result<ApiConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.toml");
        std::fs::write(&path, text).unwrap();
        ApiConfig::load(Some(&path))
    }

    #[test]
    fn audit_kinds_cannot_leave_out_decryptions_or_connections() {
        for (kinds, missing) in [
            (r#"["login"]"#, "credential.decrypt"),
            (r#"["login", "credential.decrypt"]"#, "connection.open"),
        ] {
            let e = load(&format!("[api.audit]\nkinds = {kinds}\n")).unwrap_err();
            let message = e.to_string();
            assert!(
                message.contains(&format!("leaves out \"{missing}\"")),
                "{message}"
            );
        }
        load("[api.audit]\nkinds = [\"login\", \"credential.decrypt\", \"connection.open\"]\n")
            .unwrap();
        load("[api.audit]\nkinds = []\n").unwrap();
    }
}
