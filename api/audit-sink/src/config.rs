//! The `[audit]` section every component's configuration shares.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{AuditWriter, ClientIdentity, Policy, PolicyError, ServiceTarget, WriteError};

/// A component's audit section: its logging policy and destinations.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Event kinds to keep (see docs/audit-events.md); empty keeps every kind.
    pub kinds: Vec<String>,
    /// age X25519 recipients (`age1…`): events are sealed to them before leaving the host.
    pub seal_to: Vec<String>,
    /// The audit service, when events should go there too.
    pub service: Option<ServiceConfig>,
    /// A syslog receiver (RFC 5424 over TLS), when a SIEM should get a copy of events.
    pub syslog: Option<SyslogConfig>,
}

/// `[….audit.service]`: how to reach `lastmile-audit serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// e.g. https://audit.internal:7443
    pub url: String,
    /// The CA of the service's certificate (PEM).
    pub ca: PathBuf,
    /// This component's certificate and key (PEM files), read again when they change.
    /// Default: the identity it enrolled with (a gateway's `gateway.pem`, a node's
    /// `node.pem`, the API's own), which the audit service can accept by role.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Where events wait while the service is unreachable. Default
    /// /var/lib/lastmile/audit-spool.jsonl (the name is kept from when it held JSON lines;
    /// it holds framed, checksummed records now, and damaged bytes go to
    /// `<spool>.damaged`).
    #[serde(default = "default_spool")]
    pub spool: PathBuf,
}

impl ServiceConfig {
    /// The configured `cert` and `key`, else `enrolled`.
    fn identity(&self, enrolled: Option<ClientIdentity>) -> Result<ClientIdentity, WriteError> {
        match (&self.cert, &self.key, enrolled) {
            (Some(cert), Some(key), _) => Ok(ClientIdentity::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, Some(enrolled)) => Ok(enrolled),
            (None, None, None) => Err(WriteError::NoIdentity),
            _ => Err(WriteError::HalfIdentity),
        }
    }
}

/// `[….audit.syslog]`: a syslog receiver (rsyslog, syslog-ng, a SIEM's collector) that
/// gets a copy of every event written, as RFC 5424 messages over TLS (RFC 5425). A copy
/// only: what the receiver cannot take in time is dropped (and counted in an error log),
/// while the audit service and its spool are the durable path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The receiver, `host:port` (`[v6addr]:port`); RFC 5425's port is 6514.
    pub address: String,
    /// The CA that signed the receiver's certificate (PEM).
    pub ca: PathBuf,
    /// This component's certificate and key (PEM), for a receiver that wants mutual TLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the receiver's certificate must carry; default the host part of `address`.
    pub server_name: Option<String>,
    /// APP-NAME of each message; default `lastmile`.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// HOSTNAME of each message; default this host's name.
    pub hostname: Option<String>,
    /// The facility of each message's PRI; default `authpriv`.
    #[serde(default)]
    pub facility: crate::syslog::Facility,
    /// How many messages wait in memory while the receiver is unreachable or slow; past
    /// that, new ones are dropped and counted. Default 8192.
    #[serde(default = "default_syslog_queue")]
    pub queue: usize,
}

fn default_app_name() -> String {
    "lastmile".to_owned()
}

fn default_syslog_queue() -> usize {
    8192
}

fn default_spool() -> PathBuf {
    PathBuf::from("/var/lib/lastmile/audit-spool.jsonl")
}

impl SinkConfig {
    /// The writer this section describes, also appending to `file` when given.
    pub fn writer(&self, file: Option<&Path>) -> Result<AuditWriter, WriteError> {
        self.writer_keeping(file, &[])
    }

    /// The policy this section describes, for a component that always records
    /// `always_kept`: refused when `kinds` leaves one of them out.
    pub fn policy(&self, always_kept: &'static [&'static str]) -> Result<Policy, PolicyError> {
        let policy = Policy {
            kinds: self.kinds.iter().cloned().collect(),
            always_kept,
            ..Policy::default()
        };
        policy.validate()?;
        Ok(policy)
    }

    /// As [`writer`](Self::writer), for a component that always records `always_kept`.
    pub fn writer_keeping(
        &self,
        file: Option<&Path>,
        always_kept: &'static [&'static str],
    ) -> Result<AuditWriter, WriteError> {
        self.writer_as(file, always_kept, None)
    }

    /// As [`writer_keeping`](Self::writer_keeping), presenting `enrolled` to the audit
    /// service unless `[….audit.service]` names a `cert` and `key`.
    pub fn writer_as(
        &self,
        file: Option<&Path>,
        always_kept: &'static [&'static str],
        enrolled: Option<ClientIdentity>,
    ) -> Result<AuditWriter, WriteError> {
        let policy = self.policy(always_kept)?;
        let service = match &self.service {
            Some(s) => Some(ServiceTarget {
                url: s.url.clone(),
                ca: s.ca.clone(),
                identity: s.identity(enrolled)?,
                spool: s.spool.clone(),
            }),
            None => None,
        };
        let writer = AuditWriter::new(policy, &self.seal_to, file, service.as_ref())?;
        match &self.syslog {
            Some(syslog) => writer.with_syslog(syslog),
            None => Ok(writer),
        }
    }
}
