//! The running API's shared state, and the audit trail of everything it decides.

use lastmile_proto::wire::ErrorCode;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    config::ApiConfig, db::Db, error::ApiError, events::ApiEvent, pki::Pki, revocation::Revocations,
};

#[derive(Debug)]
pub struct App {
    pub db: Db,
    pub pki: Pki,
    pub config: ApiConfig,
    pub audit: lastmile_audit_sink::AuditWriter,
    pub revocations: Arc<Revocations>,
    pub kms: lastmile_vault::Kms,
    /// Permits for logins being checked (`max_concurrent_logins`): bounds the argon2id
    /// hashes, and their memory, that unauthenticated requests can make us run at once.
    pub logins: tokio::sync::Semaphore,
    /// The time every expiry and freshness check of this API uses.
    pub clock: Clock,
    pub metrics: crate::metrics::ApiMetrics,
}

/// The API's time in Unix seconds: the system's, moved forward by what a test asked for,
/// so that tests of an expiry need not wait for it. Nothing outside tests moves it.
#[derive(Debug, Default)]
pub struct Clock {
    ahead: std::sync::atomic::AtomicI64,
}

impl Clock {
    pub fn now(&self) -> i64 {
        crate::db::now().saturating_add(self.ahead.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Moves the clock forward by `by` (whole seconds).
    pub fn advance(&self, by: std::time::Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.ahead
            .fetch_add(secs, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long the API's own audit-writer certificate lasts; it is replaced after a
/// seventh of that, so a renewal that fails has days to succeed.
const AUDIT_IDENTITY_TTL: i64 = 7 * 86_400;

/// Replaces the API's audit-writer certificate (a new key too) every day while it runs.
async fn renew_audit_identity(
    app: std::sync::Weak<App>,
    identity: Arc<lastmile_audit_sink::MemoryIdentity>,
) {
    let every = std::time::Duration::from_secs((AUDIT_IDENTITY_TTL / 7).unsigned_abs());
    loop {
        tokio::time::sleep(every).await;
        let Some(app) = app.upgrade() else { return };
        let renewed = app
            .pki
            .api_client_identity(crate::db::now() + AUDIT_IDENTITY_TTL)
            .map_err(|e| lastmile_audit_sink::error_chain(&e))
            .and_then(|(cert, key)| {
                identity
                    .replace(&cert, &key)
                    .map_err(|e| lastmile_audit_sink::error_chain(&e))
            });
        match renewed {
            Ok(()) => tracing::info!("the API's audit-writer certificate was renewed"),
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the API's audit-writer certificate; retrying in a day")
            }
        }
    }
}

impl App {
    /// Opens the organisation in `config.data_dir` and its database.
    pub async fn open(config: ApiConfig) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context as _;
        let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
            .await
            .context("opening the KMS")?;
        let pki = Pki::load(&config.keys_dir(), &kms).await?;
        let db = Db::open(&config.database_url()).await?;
        // The API writes to the audit service as itself (`urn:lastmile:api`, which the
        // service's `role:api` accepts) unless `[api.audit.service]` names a cert and key.
        let identity = match &config.audit.service {
            Some(s) if s.cert.is_none() && s.key.is_none() => {
                let (cert, key) = pki.api_client_identity(crate::db::now() + AUDIT_IDENTITY_TTL)?;
                Some(Arc::new(lastmile_audit_sink::MemoryIdentity::new(
                    &cert, &key,
                )?))
            }
            _ => None,
        };
        let audit = config
            .audit
            .writer_as(
                Some(&config.audit_file()),
                crate::config::ALWAYS_AUDITED,
                identity
                    .clone()
                    .map(lastmile_audit_sink::ClientIdentity::Memory),
            )
            .context("opening the audit sink")?;
        let revocations = Arc::new(Revocations::new(&db).await?);
        let logins = tokio::sync::Semaphore::new(config.max_concurrent_logins.max(1));
        let app = Arc::new(Self {
            clock: Clock::default(),
            metrics: crate::metrics::ApiMetrics::default(),
            logins,
            db,
            pki,
            config,
            audit,
            revocations,
            kms,
        });
        let sealed = crate::admin::seal_clear_totp_seeds(&app)
            .await
            .map_err(|e| anyhow::anyhow!("sealing TOTP seeds stored in the clear: {e}"))?;
        if sealed > 0 {
            tracing::info!(sealed, "TOTP seeds stored in the clear are sealed now");
        }
        if let Some(identity) = identity {
            tokio::spawn(renew_audit_identity(Arc::downgrade(&app), identity));
        }
        Ok(app)
    }

    /// The task that feeds the revocation stream (see [`Revocations::tail`]).
    pub fn revocations_tail(&self) -> impl Future<Output = ()> + use<> {
        self.revocations.clone().tail(self.db.clone())
    }

    /// Records an audit event; an error means it was not recorded, and the caller must
    /// not go on with what it records (fail closed).
    pub async fn audit(&self, event: &ApiEvent<'_>) -> Result<(), ApiError> {
        let mut fields = serde_json::to_value(event).map_err(ApiError::internal)?;
        let kind = fields
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Value::Object(m) = &mut fields {
            m.insert("v".into(), json!(lastmile_audit_sink::schema::VERSION));
            m.insert(
                "time".into(),
                json!(humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()),
            );
            m.insert("component".into(), json!("api"));
        }
        match self.audit.write(fields).await {
            Ok(delivery) => {
                let outcome = if delivery.spooled.is_some() {
                    "spooled"
                } else {
                    "ok"
                };
                self.metrics.audit_write(outcome, self.audit.spool_depth());
                Ok(())
            }
            Err(e) => {
                self.metrics.audit_write("failed", self.audit.spool_depth());
                tracing::error!(error = %lastmile_audit_sink::error_chain(&e), %kind, "audit write failed");
                Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::AuditUnavailable,
                    "the audit log cannot be written, so nothing was changed; try again when it is back",
                ))
            }
        }
    }
}
