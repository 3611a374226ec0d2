//! Moving framed messages to the syslog receiver: one TLS connection (RFC 5425), a task
//! that owns it, and a bounded channel from the writer to the task, so writing an event
//! never waits on the network.
//!
//! The copy is best effort by design: RFC 5425 has no acknowledgements, so a message
//! written just before a connection breaks can be lost, and when the receiver is away for
//! longer than the queue lasts, new messages are dropped and counted (an error log names
//! how many). The durable path is the audit service with its spool.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lastmile_api_client::backoff::Backoff;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::mpsc,
};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    },
};

use super::{Origin, frame, message};
use crate::{SyslogConfig, error_chain};

/// Connecting, the TLS handshake, and each write must finish within this long; a receiver
/// that stops reading counts as gone.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the syslog destination could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("syslog address `{0}` is not host:port: write it as e.g. siem.internal:6514")]
    Address(String),
    #[error(
        "`{0}` is not a DNS name or IP address to check the syslog receiver's certificate \
         against: set `server_name` to a name its certificate carries"
    )]
    ServerName(String),
    #[error("cannot read PEM from {}: check the path in the `[audit.syslog]` section", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "{} holds no certificate: `ca` must be the CA that signed the syslog receiver's \
         certificate, in PEM", path.display()
    )]
    NoCa { path: PathBuf },
    #[error("the syslog CA in {} is not a usable certificate", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("`cert` and `key` of `[audit.syslog]` go together (mutual TLS): give both or neither")]
    HalfClientIdentity,
    #[error("the syslog TLS client cannot be set up with this certificate and key")]
    Tls(#[source] rustls::Error),
    #[error(
        "sending audit events to syslog needs a tokio runtime: create the audit writer \
         inside one"
    )]
    NoRuntime,
}

/// The writer's end: formats and queues messages for the task.
#[derive(Debug)]
pub(crate) struct Sender {
    origin: Origin,
    queue: mpsc::Sender<Vec<u8>>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Messages dropped because the queue was full, since start (for metrics).
    dropped: AtomicU64,
    /// Of those, how many no error log has named yet.
    unreported: AtomicU64,
}

impl Counts {
    /// Names the drops not logged yet, once.
    fn report(&self, address: &str) {
        let count = self.unreported.swap(0, Ordering::Relaxed);
        if count > 0 {
            tracing::error!(
                count,
                address,
                "dropped audit events meant for syslog: the receiver was unreachable or slow \
                 and the queue was full (the file and the audit service still have them)"
            );
        }
    }
}

/// Where and how to connect, resolved from the configuration.
struct Receiver {
    host: String,
    port: u16,
    /// `host:port` as configured, for logs.
    address: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl Sender {
    /// Checks the configuration, loads the certificates and starts the task.
    pub(crate) fn start(config: &SyslogConfig) -> Result<Self, SyslogError> {
        let (host, port) = host_port(&config.address)?;
        let name = config.server_name.clone().unwrap_or_else(|| host.clone());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| SyslogError::ServerName(name))?;
        let receiver = Receiver {
            host,
            port,
            address: config.address.clone(),
            server_name,
            tls: TlsConnector::from(Arc::new(tls_config(config)?)),
        };
        let origin = Origin {
            hostname: config.hostname.clone().unwrap_or_else(this_host),
            app_name: config.app_name.clone(),
            facility: config.facility,
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SyslogError::NoRuntime)?;
        let (queue, messages) = mpsc::channel(config.queue.max(1));
        let counts = Arc::new(Counts::default());
        runtime.spawn(run(receiver, messages, counts.clone()));
        Ok(Self {
            origin,
            queue,
            counts,
        })
    }

    /// Queues `event` (its JSON text `json`); false when the queue was full and it was
    /// dropped.
    pub(crate) fn send(&self, event: &Value, json: &str) -> bool {
        let framed = frame(&message(&self.origin, event, json));
        match self.queue.try_send(framed) {
            Ok(()) => true,
            Err(_) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                self.counts.unreported.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Messages dropped since start because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }
}

/// The task: sends queued messages in order over one connection, reconnecting with
/// backoff; ends when the writer is gone and the queue is empty (or the receiver
/// unreachable then).
async fn run(receiver: Receiver, mut messages: mpsc::Receiver<Vec<u8>>, counts: Arc<Counts>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut connection: Option<TlsStream<TcpStream>> = None;
    let mut pending: Option<Vec<u8>> = None;
    loop {
        counts.report(&receiver.address);
        let framed = match pending.take() {
            Some(framed) => framed,
            None => match next(&mut messages, &mut connection, &receiver.address).await {
                Some(framed) => framed,
                None => break,
            },
        };
        let stream = match connection.as_mut() {
            Some(stream) => stream,
            None => match receiver.connect().await {
                Ok(stream) => {
                    backoff.reset();
                    tracing::info!(address = %receiver.address, "connected to the syslog receiver");
                    connection.insert(stream)
                }
                Err(why) => {
                    if messages.is_closed() {
                        // The writer is gone (shutting down): nobody will wait for these.
                        let left = messages.len() as u64 + 1;
                        counts.dropped.fetch_add(left, Ordering::Relaxed);
                        counts.unreported.fetch_add(left, Ordering::Relaxed);
                        counts.report(&receiver.address);
                        return;
                    }
                    let wait = backoff.failed();
                    tracing::warn!(address = %receiver.address, error = %why, retry_in_ms = wait.as_millis() as u64,
                        "cannot reach the syslog receiver; audit events for it wait in memory");
                    pending = Some(framed);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            },
        };
        let written = tokio::time::timeout(NETWORK_TIMEOUT, async {
            stream.write_all(&framed).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(address = %receiver.address, error = %error_chain(&e),
                    "the syslog connection broke; reconnecting");
                connection = None;
                pending = Some(framed);
            }
            Err(_) => {
                tracing::warn!(address = %receiver.address,
                    "the syslog receiver stopped reading; reconnecting");
                connection = None;
                pending = Some(framed);
            }
        }
    }
    if let Some(mut stream) = connection {
        let _ = stream.shutdown().await;
    }
    counts.report(&receiver.address);
}

/// The next queued message; meanwhile, notices the receiver closing an idle connection
/// (it sends nothing under RFC 5425, so a read ends only when the connection does), so
/// the next message goes on a fresh connection instead of into a dead one.
///
/// A receiver that refuses this client's certificate (or its lack of one) under TLS 1.3
/// does so after the client has finished its handshake, so the first message is written
/// before the refusal arrives, and is lost; the warning logged here names the refusal.
async fn next(
    messages: &mut mpsc::Receiver<Vec<u8>>,
    connection: &mut Option<TlsStream<TcpStream>>,
    address: &str,
) -> Option<Vec<u8>> {
    let mut scratch = [0u8; 512];
    loop {
        let Some(stream) = connection.as_mut() else {
            return messages.recv().await;
        };
        tokio::select! {
            framed = messages.recv() => return framed,
            read = stream.read(&mut scratch) => match read {
                Ok(0) => {
                    tracing::warn!(address, "the syslog receiver closed the connection");
                    *connection = None;
                }
                Err(e) => {
                    tracing::warn!(address, error = %error_chain(&e),
                        "the syslog connection failed (a refused client certificate shows here)");
                    *connection = None;
                }
                Ok(_) => {}
            },
        }
    }
}

impl Receiver {
    async fn connect(&self) -> Result<TlsStream<TcpStream>, String> {
        let tcp = tokio::time::timeout(
            NETWORK_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| error_chain(&e))?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(
            NETWORK_TIMEOUT,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| "the TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS: {}", error_chain(&e)))
    }
}

/// `host:port` or `[v6]:port`.
fn host_port(address: &str) -> Result<(String, u16), SyslogError> {
    let bad = || SyslogError::Address(address.to_owned());
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// This host's name, as the kernel has it; NILVALUE's stand-in when unreadable.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}

fn pem_error(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> SyslogError + '_ {
    move |source| SyslogError::Pem {
        path: path.to_owned(),
        source,
    }
}

fn tls_config(config: &SyslogConfig) -> Result<ClientConfig, SyslogError> {
    let identity = match (&config.cert, &config.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => return Err(SyslogError::HalfClientIdentity),
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&config.ca).map_err(pem_error(&config.ca))? {
        let cert = cert.map_err(pem_error(&config.ca))?;
        roots.add(cert).map_err(|source| SyslogError::BadCa {
            path: config.ca.clone(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(SyslogError::NoCa {
            path: config.ca.clone(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SyslogError::Tls)?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(pem_error(cert))?
                .collect::<Result<_, _>>()
                .map_err(pem_error(cert))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(pem_error(key))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(SyslogError::Tls)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_are_host_and_port() {
        assert_eq!(
            host_port("siem.internal:6514").unwrap(),
            ("siem.internal".to_owned(), 6514)
        );
        assert_eq!(host_port("[::1]:6514").unwrap(), ("::1".to_owned(), 6514));
        for bad in [
            "siem.internal",
            "::1:6514",
            ":6514",
            "siem:0",
            "siem:http",
            "[::1:6514",
        ] {
            let err = host_port(bad).unwrap_err();
            assert!(err.to_string().contains("write it as"), "{bad}: {err}");
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let config = |ca: PathBuf, cert: Option<PathBuf>| SyslogConfig {
            address: "127.0.0.1:6514".into(),
            ca,
            cert,
            key: None,
            server_name: None,
            app_name: "lastmile".into(),
            hostname: None,
            facility: crate::syslog::Facility::default(),
            queue: 1,
        };
        let err = tls_config(&config(empty.clone(), None)).unwrap_err();
        assert!(err.to_string().contains("`ca` must be the CA"), "{err}");
        let missing = dir.path().join("nope.pem");
        let err = tls_config(&config(missing, None)).unwrap_err();
        assert!(err.to_string().contains("check the path"), "{err}");
        let err = tls_config(&config(empty.clone(), Some(empty))).unwrap_err();
        assert!(err.to_string().contains("give both or neither"), "{err}");
    }
}
