//! The syslog copy against a real receiver: Debian's rsyslog with its TLS driver (gtls),
//! on loopback, writing what its RFC 5424 parser (pmrfc5424, first in its default parser
//! chain) made of each message. A message it could not parse as RFC 5424 would fall to
//! the RFC 3164 parser and have no MSGID, no structured data and protocol version 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lastmile_audit_sink::{SinkConfig, SyslogConfig, syslog::Facility};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};

const CLIENT_NAME: &str = "audit-client.test";

/// A CA, the receiver's certificate (for 127.0.0.1) and a client's, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, sans) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ),
            ("client", vec![CLIENT_NAME.to_owned()]),
        ] {
            let mut params = CertificateParams::new(sans).unwrap();
            let cn = if name == "client" {
                CLIENT_NAME
            } else {
                "localhost"
            };
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ClientAuth {
    /// The receiver shows its certificate and asks for none.
    None,
    /// The receiver wants a certificate naming [`CLIENT_NAME`] (rsyslog's `x509/name`).
    Required,
}

/// rsyslogd in the foreground with its own configuration, working directory and pid file;
/// killed on drop.
struct Rsyslog {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

fn rsyslogd() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("rsyslogd"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "rsyslogd is not installed: run `cargo xtask setup` (it installs Debian's \
             rsyslog and rsyslog-gnutls)"
        )
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rsyslog {
    fn start(pki: &Pki, port: u16, auth: ClientAuth) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let mode = match auth {
            ClientAuth::None => r#"StreamDriver.Authmode="anon""#.to_owned(),
            ClientAuth::Required => {
                format!(r#"StreamDriver.Authmode="x509/name" PermittedPeer=["{CLIENT_NAME}"]"#)
            }
        };
        // Every property as JSON, so the test reads exactly what the parser found.
        let fields = [
            ("version", "protocol-version"),
            ("facility", "syslogfacility"),
            ("severity", "syslogseverity"),
            ("timestamp", "timereported:::date-rfc3339,json"),
            ("hostname", "hostname"),
            ("app_name", "app-name"),
            ("procid", "procid"),
            ("msgid", "msgid"),
            ("structured_data", "structured-data"),
            ("msg", "msg"),
        ];
        let template = fields
            .iter()
            .map(|(name, property)| {
                let property = if property.contains(':') {
                    property.to_string()
                } else {
                    format!("{property}:::json")
                };
                format!(r#"\"{name}\":\"%{property}%\""#)
            })
            .collect::<Vec<_>>()
            .join(",");
        let conf = format!(
            r#"global(
  workDirectory="{work}"
  maxMessageSize="64k"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}"
  DefaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" {mode})
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="parsed" type="string" string="{{{template}}}\n")
action(type="omfile" file="{out}" template="parsed")
"#,
            work = work.display(),
            ca = pki.path("ca.pem").display(),
            cert = pki.path("server.pem").display(),
            key = pki.path("server.key").display(),
            out = dir.path().join("received.jsonl").display(),
        );
        let conf_path = dir.path().join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("rsyslogd.log")).unwrap();
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut rsyslog = Self { child, dir, port };
        rsyslog.wait_listening();
        rsyslog
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "rsyslogd exited ({status}) before listening: {}\n(is rsyslog-gnutls \
                     installed? `cargo xtask setup` installs it)",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "rsyslogd did not listen on 127.0.0.1:{} within 10 s: {}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.log")).unwrap_or_default()
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// What rsyslog wrote, once it holds `n` messages.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslog received {} of {n} messages within 20 s: {got:#?}\nits log: {}",
                got.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn syslog(pki: &Pki, port: u16, auth: ClientAuth) -> SyslogConfig {
    let mutual = auth == ClientAuth::Required;
    SyslogConfig {
        address: format!("127.0.0.1:{port}"),
        ca: pki.path("ca.pem"),
        cert: mutual.then(|| pki.path("client.pem")),
        key: mutual.then(|| pki.path("client.key")),
        server_name: None,
        app_name: "lastmile".into(),
        hostname: Some("gw-1.test".into()),
        facility: Facility::try_from("local4".to_owned()).unwrap(),
        queue: 64,
    }
}

/// The JSON after the BOM that starts MSG (RFC 5424 §6.4), which rsyslog keeps in `msg`.
fn msg_json(received: &Value) -> &str {
    let msg = received["msg"].as_str().unwrap();
    msg.strip_prefix('\u{feff}')
        .unwrap_or_else(|| panic!("MSG has no BOM: {msg:?}"))
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_parses_each_event_as_rfc5424_as_the_file_has_it() {
    let pki = Pki::new();
    let rsyslog = Rsyslog::start(&pki, free_port(), ClientAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let config = SinkConfig {
        kinds: vec!["connection.open".into(), "gateway.refused".into()],
        syslog: Some(syslog(&pki, rsyslog.port, ClientAuth::None)),
        ..SinkConfig::default()
    };
    let writer = config.writer(Some(&file)).unwrap();
    // Not a kept kind: goes nowhere, syslog included.
    let filtered = writer
        .write(json!({"v": 1, "kind": "login", "user": "ana", "device": "d", "session": "s-1"}))
        .await
        .unwrap();
    assert!(filtered.filtered && !filtered.syslog);
    let open = writer
        .write(
            json!({"v": 1, "kind": "connection.open", "time": "2026-11-28T14:36:54.360646Z",
            "user": "ana", "session": "s-1", "resource": "pg-main", "connection": "conn_19"}),
        )
        .await
        .unwrap();
    assert!(open.file && open.syslog);
    writer
        .write(json!({"v": 1, "kind": "gateway.refused", "time": "2026-11-28T14:36:55Z",
            "user": "x\"] [evil@1 a=\"b\\", "session": "s-1", "gateway": "gw-1", "code": "no_grant"}))
        .await
        .unwrap();

    let got = rsyslog.wait_for(2).await;
    let lines = file_lines(&file);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(lines.len(), 2);
    for (received, line) in got.iter().zip(&lines) {
        assert_eq!(
            received["version"], "1",
            "not parsed as RFC 5424: {received}"
        );
        assert_eq!(received["facility"], "20", "local4");
        assert_eq!(received["hostname"], "gw-1.test");
        assert_eq!(received["app_name"], "lastmile");
        assert_eq!(received["procid"], "-");
        assert_eq!(msg_json(received), line);
    }
    let (open, refused) = (&got[0], &got[1]);
    assert_eq!(open["msgid"], "connection.open");
    assert_eq!(open["severity"], "6");
    assert!(
        open["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-28T14:36:54.360646"),
        "{open}"
    );
    assert_eq!(
        open["structured_data"],
        r#"[lastmile@32473 user="ana" session="s-1" resource="pg-main" connection="conn_19"]"#
    );
    assert_eq!(refused["msgid"], "gateway.refused");
    assert_eq!(refused["severity"], "4", "a refusal is a warning");
    // rsyslog keeps the element as sent; it took the escaped `]` and `"` as part of the
    // value (else the element would have ended there and the rest been MSG).
    assert_eq!(
        refused["structured_data"],
        r#"[lastmile@32473 user="x\"\] [evil@1 a=\"b\\" session="s-1"]"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_events_reach_rsyslog_as_the_file_has_them() {
    let pki = Pki::new();
    let rsyslog = Rsyslog::start(&pki, free_port(), ClientAuth::None);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let identity = age::x25519::Identity::generate();
    let config = SinkConfig {
        seal_to: vec![identity.to_public().to_string()],
        syslog: Some(syslog(&pki, rsyslog.port, ClientAuth::None)),
        ..SinkConfig::default()
    };
    let writer = config.writer(Some(&file)).unwrap();
    writer
        .write(json!({"v": 1, "kind": "db.query", "time": "2026-11-28T14:36:54Z",
            "session": "s-1", "connection": "conn_19", "resource": "pg-main",
            "query": "SELECT secret FROM vault", "protocol": "simple", "outcome": "ok", "duration_us": 12}))
        .await
        .unwrap();
    let got = rsyslog.wait_for(1).await;
    let line = &file_lines(&file)[0];
    assert_eq!(msg_json(&got[0]), line);
    assert!(
        line.contains("\"sealed\"") && !line.contains("SELECT"),
        "{line}"
    );
    // The join keys stay in the clear, in the structured data too.
    assert_eq!(
        got[0]["structured_data"],
        r#"[lastmile@32473 session="s-1" resource="pg-main" connection="conn_19"]"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_wants_mutual_tls_takes_only_a_certified_client() {
    let pki = Pki::new();
    let rsyslog = Rsyslog::start(&pki, free_port(), ClientAuth::Required);
    let anonymous = SinkConfig {
        syslog: Some(syslog(&pki, rsyslog.port, ClientAuth::None)),
        ..SinkConfig::default()
    }
    .writer(None)
    .unwrap();
    anonymous
        .write(json!({"v": 1, "kind": "login", "user": "nobody", "device": "d", "session": "s-0"}))
        .await
        .unwrap();
    // Time to be refused (and retried, and refused again).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let certified = SinkConfig {
        syslog: Some(syslog(&pki, rsyslog.port, ClientAuth::Required)),
        ..SinkConfig::default()
    }
    .writer(None)
    .unwrap();
    certified
        .write(json!({"v": 1, "kind": "login", "user": "ana", "device": "d", "session": "s-1"}))
        .await
        .unwrap();
    let got = rsyslog.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_later = rsyslog.received();
    assert_eq!(got_later.len(), 1, "{got_later:#?}");
    assert!(
        got[0]["structured_data"]
            .as_str()
            .unwrap()
            .contains("user=\"ana\""),
        "{got:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_rsyslog_is_down_arrive_when_it_is_back() {
    let pki = Pki::new();
    let port = free_port();
    let writer = SinkConfig {
        syslog: Some(syslog(&pki, port, ClientAuth::None)),
        ..SinkConfig::default()
    }
    .writer(None)
    .unwrap();
    let event = |n: u32| json!({"v": 1, "kind": "node.agent", "uid": n, "registered": true});
    // Nothing listens yet: the event waits in memory while the sender backs off.
    assert!(writer.write(event(1)).await.unwrap().syslog);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let first = Rsyslog::start(&pki, port, ClientAuth::None);
    let got = first.wait_for(1).await;
    assert!(msg_json(&got[0]).contains("\"uid\":1"), "{got:#?}");

    // The receiver goes away (the sender sees the idle connection close) and comes back.
    drop(first);
    assert!(writer.write(event(2)).await.unwrap().syslog);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Rsyslog::start(&pki, port, ClientAuth::None);
    assert!(writer.write(event(3)).await.unwrap().syslog);
    let got = second.wait_for(2).await;
    let uids: Vec<&str> = got.iter().map(msg_json).collect();
    assert!(
        uids[0].contains("\"uid\":2") && uids[1].contains("\"uid\":3"),
        "{uids:#?}"
    );
    assert_eq!(writer.syslog_dropped(), Some(0));
}
