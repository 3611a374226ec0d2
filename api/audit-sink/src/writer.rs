//! Writing events to their destinations: a local JSON-lines file, the audit service, a
//! syslog receiver (a copy for a SIEM: [`crate::syslog`]), or several, after the policy
//! and (optionally) sealing. Every destination gets the same event.
//!
//! Nothing is lost when the service is down: an event it did not acknowledge goes to a
//! local spool file (framed, checksummed, fsynced: [`crate::spool`]) and is sent, in
//! order, before the next event once the service answers again.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject as _},
};

use crate::{
    Policy, PolicyError, SealError, error_chain, seal,
    spool::{MAX_SPOOLED, Spool},
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Syslog(#[from] crate::SyslogError),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit service TLS set-up: {0}")]
    Tls(String),
    #[error(
        "[….audit.service] names no cert and key, and this component has no enrolled \
         identity: enroll it (`lastmiled node enroll`, `lastmiled gateway enroll`) or set \
         cert and key"
    )]
    NoIdentity,
    #[error("[….audit.service] needs both cert and key, or neither (to use the enrolled identity)")]
    HalfIdentity,
    #[error("this component's audit writer identity")]
    Identity(#[from] crate::identity::IdentityError),
    #[error(
        "an event of {0} bytes is too large for the spool (at most {MAX_SPOOLED} bytes): \
         make it smaller"
    )]
    TooLargeToSpool(usize),
}

/// Where a written event went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Dropped by the policy (its kind is not kept): written nowhere.
    pub filtered: bool,
    /// Appended and synced to the local file.
    pub file: bool,
    /// Acknowledged by the audit service (durable there).
    pub service: bool,
    /// Kept in the local spool because the service did not acknowledge it (why).
    pub spooled: Option<String>,
    /// Queued for the syslog receiver (false without one, or when its queue was full and
    /// the copy was dropped).
    pub syslog: bool,
}

/// How to reach the audit service.
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    /// e.g. https://audit.internal:7443
    pub url: String,
    /// The CA of the service's certificate (PEM).
    pub ca: PathBuf,
    /// This component's certificate, presented as its writer identity.
    pub identity: crate::ClientIdentity,
    /// Where unacknowledged events wait (framed records; see [`crate::spool`]). Damaged
    /// bytes found in it are kept beside it, in `<spool>.damaged`.
    pub spool: PathBuf,
}

/// A component's audit writer.
#[derive(Debug)]
pub struct AuditWriter {
    policy: Policy,
    recipients: Vec<age::x25519::Recipient>,
    file: Option<(PathBuf, Mutex<File>)>,
    service: Option<Service>,
    syslog: Option<crate::syslog::sender::Sender>,
}

#[derive(Debug)]
struct Service {
    client: reqwest::Client,
    url: String,
    /// The spool, behind the lock that serialises sends, so it is replayed before anything
    /// newer.
    order: tokio::sync::Mutex<Spool>,
    /// Events in the spool as last seen (for the metrics; the file is the truth).
    depth: std::sync::atomic::AtomicU64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_owned(),
        source,
    }
}

impl AuditWriter {
    pub fn new(
        policy: Policy,
        seal_to: &[String],
        file: Option<&Path>,
        service: Option<&ServiceTarget>,
    ) -> Result<Self, WriteError> {
        policy.validate()?;
        let recipients = if seal_to.is_empty() {
            Vec::new()
        } else {
            crate::parse_recipients(seal_to)?
        };
        let file = match file {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                let f = crate::files::open_append(p).map_err(io(p))?;
                Some((p.to_owned(), Mutex::new(f)))
            }
            None => None,
        };
        let service = match service {
            Some(t) => Some(Service {
                client: tls_client(t)?,
                url: format!("{}/v1/events", t.url.trim_end_matches('/')),
                order: tokio::sync::Mutex::new(Spool::new(&t.spool)),
                depth: std::sync::atomic::AtomicU64::new(0),
            }),
            None => None,
        };
        Ok(Self {
            policy,
            recipients,
            file,
            service,
            syslog: None,
        })
    }

    /// Also sends a copy of every event to this syslog receiver (starts its task: call
    /// inside a tokio runtime).
    pub fn with_syslog(mut self, syslog: &crate::SyslogConfig) -> Result<Self, WriteError> {
        self.syslog = Some(crate::syslog::sender::Sender::start(syslog)?);
        Ok(self)
    }

    /// Applies the policy, seals if configured, and writes to every destination.
    pub async fn write(&self, event: Value) -> Result<Delivery, WriteError> {
        self.write_batch(vec![event]).await
    }

    /// As [`write`](Self::write) for several events at once, in order: one write and one
    /// sync of the file, one request to the service. Busy writers (a gateway logging
    /// every statement) batch what queued while the previous batch was being synced.
    pub async fn write_batch(&self, events: Vec<Value>) -> Result<Delivery, WriteError> {
        let mut delivery = Delivery {
            filtered: false,
            file: false,
            service: false,
            spooled: None,
            syslog: false,
        };
        let mut kept = Vec::with_capacity(events.len());
        for event in events {
            if let Some(event) = self.policy.apply(event)? {
                kept.push(if self.recipients.is_empty() {
                    event
                } else {
                    seal(&event, &self.recipients)?
                });
            }
        }
        if kept.is_empty() {
            delivery.filtered = true;
            return Ok(delivery);
        }
        let mut lines = String::new();
        let mut queued = 0;
        for event in &kept {
            let start = lines.len();
            lines.push_str(&event.to_string());
            // The copy goes before the file and the service are tried: whether they fail
            // or not, the event happened, and the SIEM should hear of it.
            if let Some(syslog) = &self.syslog
                && syslog.send(event, lines.get(start..).unwrap_or_default())
            {
                queued += 1;
            }
            lines.push('\n');
        }
        delivery.syslog = self.syslog.is_some() && queued == kept.len();
        if let Some((path, file)) = &self.file {
            let mut f = file.lock().map_err(|_| WriteError::Io {
                path: path.clone(),
                source: std::io::Error::other("a writer panicked"),
            })?;
            f.write_all(lines.as_bytes())
                .and_then(|()| f.sync_data())
                .map_err(io(path))?;
            delivery.file = true;
        }
        if let Some(service) = &self.service {
            let mut spool = service.order.lock().await;
            let refused = match service.replay(&mut spool).await {
                Ok(()) => service.send(&kept).await.err(),
                Err(why) => Some(why),
            };
            match refused {
                None => delivery.service = true,
                Some(why) => {
                    spool.append(&kept)?;
                    service
                        .depth
                        .fetch_add(kept.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    delivery.spooled = Some(why);
                }
            }
        }
        Ok(delivery)
    }
}

impl AuditWriter {
    /// How many events wait in the spool for the audit service (as last seen by this
    /// writer); `None` without a service.
    pub fn spool_depth(&self) -> Option<u64> {
        self.service
            .as_ref()
            .map(|s| s.depth.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// How many events the syslog copy dropped since start because its queue was full
    /// (each drop is also named in an error log); `None` without syslog.
    pub fn syslog_dropped(&self) -> Option<u64> {
        self.syslog
            .as_ref()
            .map(crate::syslog::sender::Sender::dropped)
    }

    /// Sends whatever waits in the spool, if the service answers. Components call this
    /// now and then, so spooled events do not wait for the next event to go out.
    pub async fn flush(&self) -> Result<(), String> {
        match &self.service {
            Some(service) => {
                let mut spool = service.order.lock().await;
                service.replay(&mut spool).await
            }
            None => Ok(()),
        }
    }
}

impl Service {
    async fn send(&self, events: &[Value]) -> Result<(), String> {
        let resp = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(events).map_err(|e| e.to_string())?)
            .send()
            .await
            .map_err(|e| format!("the audit service is unreachable: {}", error_chain(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "the audit service refused: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ))
        }
    }

    /// Sends what waits in the spool, oldest first; acknowledged events leave it at once,
    /// so a failure later resends only what was not acknowledged.
    async fn replay(&self, spool: &mut Spool) -> Result<(), String> {
        let events = spool.pending().map_err(|e| error_chain(&e))?;
        let left = |sent: usize| (events.len() - sent) as u64;
        self.depth
            .store(left(0), std::sync::atomic::Ordering::Relaxed);
        let mut sent = 0;
        for chunk in events.chunks(100) {
            self.send(chunk).await?;
            sent += chunk.len();
            self.depth
                .store(left(sent), std::sync::atomic::Ordering::Relaxed);
            spool
                .keep_only(events.get(sent..).unwrap_or_default())
                .map_err(|e| error_chain(&e))?;
        }
        Ok(())
    }
}

fn tls_client(t: &ServiceTarget) -> Result<reqwest::Client, WriteError> {
    let tls = |e: &dyn std::fmt::Display| WriteError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&t.ca).map_err(|e| tls(&e))? {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let resolver = Arc::new(crate::identity::Resolver::new(t.identity.clone())?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| tls(&e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;
    use crate::files::{FILE_MODE, READER_GROUP};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn the_event_file_it_creates_is_not_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log").join("node-events.jsonl");
        AuditWriter::new(Policy::default(), &[], Some(&path), None).unwrap();
        assert_eq!(mode(&path), FILE_MODE, "{:o}", mode(&path));
        if let Ok(Some(group)) = nix::unistd::Group::from_name(READER_GROUP)
            && nix::unistd::geteuid().is_root()
        {
            let gid = std::fs::metadata(&path).unwrap().gid();
            assert_eq!(gid, group.gid.as_raw());
        }
    }

    #[test]
    fn an_existing_event_file_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        AuditWriter::new(Policy::default(), &[], Some(&path), None).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    /// On a current-thread runtime the sender's task cannot run while the test does not
    /// yield, so nothing leaves the queue: exactly what exceeds it is dropped.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_syslog_queue_drops_and_counts_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        let syslog = crate::SyslogConfig {
            address: "127.0.0.1:9".into(),
            ca: ca_path,
            cert: None,
            key: None,
            server_name: None,
            app_name: "lastmile".into(),
            hostname: None,
            facility: crate::syslog::Facility::default(),
            queue: 2,
        };
        let file = dir.path().join("events.jsonl");
        let writer = AuditWriter::new(Policy::default(), &[], Some(&file), None)
            .unwrap()
            .with_syslog(&syslog)
            .unwrap();
        let mut queued = Vec::new();
        for uid in 0..5 {
            let event =
                serde_json::json!({"v": 1, "kind": "node.agent", "uid": uid, "registered": true});
            let delivery = writer.write(event).await.unwrap();
            assert!(delivery.file, "the file gets every event");
            queued.push(delivery.syslog);
        }
        assert_eq!(queued, [true, true, false, false, false]);
        assert_eq!(writer.syslog_dropped(), Some(3));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 5);
    }

    #[test]
    fn the_spool_it_creates_is_not_world_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-spool.jsonl");
        let mut spool = Spool::new(&path);
        spool
            .append(&[serde_json::json!({"v": 1, "kind": "login"})])
            .unwrap();
        assert_eq!(mode(&path), FILE_MODE);
        // Rewritten (some events acknowledged), it stays so.
        spool
            .keep_only(&[serde_json::json!({"v": 1, "kind": "login"})])
            .unwrap();
        assert_eq!(mode(&path), FILE_MODE);
    }
}
