//! `lastmile-audit serve` as a process, over real mutual TLS: who may append, what bad
//! input gets, and that its checkpoints and proofs check out.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use lastmile_audit::service::{Appended, ProofBody};
use lastmile_audit_log::{Hash, NoteVerifier, open, verify_consistency, verify_inclusion};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

const ORIGIN: &str = "svc.lastmile/audit";

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate (PEM cert, PEM key) with these SANs.
    fn leaf(&self, dns: &[&str], uri: Option<&str>) -> (String, String) {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Service {
    child: Child,
    config: PathBuf,
    addr: String,
    /// Where its metrics are served.
    metrics: std::net::SocketAddr,
    data: PathBuf,
    verifier: NoteVerifier,
    ca: Ca,
    _tmp: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Service {
    start_signing_with(None)
}

/// The service with its signing key in a file, or held by the KMS at (endpoint, key id).
fn start_signing_with(kms: Option<(&str, &str)>) -> Service {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let mut init = Command::new(env!("CARGO_BIN_EXE_lastmile-audit"));
    init.args(["init", "--origin", ORIGIN, "--data-dir"])
        .arg(&data);
    let mut kms_table = String::new();
    if let Some((endpoint, key_id)) = kms {
        init.args(["--kms-endpoint", endpoint, "--kms-region", "eu-west-1"])
            .args(["--kms-key-id", key_id])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing");
        kms_table = format!(
            "[audit.signing_kms]\nendpoint = \"{endpoint}\"\nregion = \"eu-west-1\"\n\
             key_id = \"{key_id}\"\naccess_key_id = \"testing\"\nsecret_access_key = \"testing\"\n"
        );
    }
    let out = init.output().unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verifier: NoteVerifier = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ca = Ca::new("org CA");
    let (cert, key) = ca.leaf(&["localhost"], None);
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics: std::net::SocketAddr =
        ([127, 0, 0, 1], lastmile_testkit::metrics::free_port()).into();
    let config = dir.join("audit.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\ndata_dir = {data:?}\norigin = \"{ORIGIN}\"\nlisten = \"127.0.0.1:{port}\"\n\
             metrics_listen = \"{metrics}\"\n\
             witness = {:?}\ntls_cert = {:?}\ntls_key = {:?}\nclient_ca = {:?}\n\
             writers = [\"lastmile://gateway/gw-1\"]\nreaders = [\"lastmile://security/sam\"]\n\
             max_events_per_request = 100\ncommit_window_ms = 2\n{kms_table}",
            dir.join("witness"),
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("ca.pem"),
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let child = spawn(&config, &addr);
    Service {
        child,
        config,
        addr,
        metrics,
        data,
        verifier,
        ca,
        _tmp: tmp,
    }
}

fn spawn(config: &Path, addr: &str) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_lastmile-audit"))
        .args(["serve", "--config"])
        .arg(config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "lastmile-audit serve did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Service {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.config, &self.addr);
    }
}

/// An HTTPS client presenting `identity` (PEM cert, PEM key), trusting `ca_pem`.
fn client(ca_pem: &str, identity: Option<(String, String)>) -> reqwest::Client {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect();
            builder
                .with_client_auth_cert(
                    certs,
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

fn url(s: &Service, path: &str) -> String {
    format!(
        "https://localhost:{}{path}",
        s.addr.rsplit(':').next().unwrap()
    )
}

fn hash(hex: &str) -> Hash {
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    Hash(bytes.try_into().unwrap())
}

/// A proof from the service, as hashes.
async fn fetch_proof(s: &Service, c: &reqwest::Client, path: &str) -> Vec<Hash> {
    let body: ProofBody = c
        .get(url(s, path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body.proof.iter().map(|h| hash(h)).collect()
}

async fn latest(s: &Service, c: &reqwest::Client) -> lastmile_audit_log::Checkpoint {
    let text = c
        .get(url(s, "/v1/checkpoint"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    open(&text, &s.verifier).unwrap()
}

async fn wait_checkpoint(
    s: &Service,
    c: &reqwest::Client,
    size: u64,
) -> lastmile_audit_log::Checkpoint {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = c.get(url(s, "/v1/checkpoint")).send().await.unwrap();
        if resp.status().is_success() {
            let cp = open(&resp.text().await.unwrap(), &s.verifier).unwrap();
            if cp.size >= size {
                return cp;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of size {size} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_append_and_checkpoints_and_proofs_check_out() {
    let s = start();
    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    for batch in 0..3 {
        let events: Vec<_> = (0..10)
            .map(|i| serde_json::json!({ "kind": "query", "n": batch * 10 + i }))
            .collect();
        let resp = gw
            .post(url(&s, "/v1/events"))
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let appended: Appended = resp.json().await.unwrap();
        assert_eq!((appended.first, appended.count), (batch * 10, 10));
    }
    let first = wait_checkpoint(&s, &gw, 30).await;
    assert_eq!(first.size, 30);

    // Inclusion of entry 7 in the signed tree.
    let entries = lastmile_audit::log::read_entries(&s.data).unwrap();
    let leaf = lastmile_audit_log::leaf_hash(&entries.segments[0].1[7].payload);
    let proof = fetch_proof(&s, &gw, "/v1/proof/inclusion?index=7&size=30").await;
    verify_inclusion(&leaf, 7, 30, &proof, &first.root).unwrap();

    // More entries, a newer checkpoint, and consistency between the two.
    let more: Vec<_> = (0..5)
        .map(|i| serde_json::json!({ "kind": "login", "n": i }))
        .collect();
    assert_eq!(
        gw.post(url(&s, "/v1/events"))
            .json(&more)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let second = wait_checkpoint(&s, &gw, 35).await;
    let proof = fetch_proof(&s, &gw, "/v1/proof/consistency?old=30&new=35").await;
    verify_consistency(30, 35, &first.root, &second.root, &proof).unwrap();
    assert_eq!(latest(&s, &gw).await.size, 35);
    assert!(
        s.data
            .parent()
            .unwrap()
            .join("witness")
            .join("00000000000000000035.note")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_listed_identities_may_write_or_read_and_nothing_may_rewrite() {
    let s = start();
    let event = serde_json::json!([{ "kind": "login" }]);
    let rogue = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/rogue"))),
    );
    let resp = rogue
        .post(url(&s, "/v1/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("lastmile://gateway/rogue is not on this log's writer list")
    );

    // A certificate from another CA, or none at all: no TLS session.
    let other_ca = Ca::new("someone else");
    let stranger = client(
        &s.ca.pem(),
        Some(other_ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    assert!(
        stranger
            .post(url(&s, "/v1/events"))
            .json(&event)
            .send()
            .await
            .is_err()
    );
    let anonymous = client(&s.ca.pem(), None);
    assert!(
        anonymous
            .get(url(&s, "/v1/checkpoint"))
            .send()
            .await
            .is_err()
    );

    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    assert_eq!(
        gw.post(url(&s, "/v1/events"))
            .json(&event)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Writers cannot read entries; readers can.
    assert_eq!(
        gw.get(url(&s, "/v1/entries?start=0"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let sam = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://security/sam"))),
    );
    let body = sam
        .get(url(&s, "/v1/entries?start=0"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("\"writer\":\"lastmile://gateway/gw-1\""),
        "{body}"
    );
    // There is no way to change or remove an entry.
    for method in [
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let resp = gw
            .request(method, url(&s, "/v1/events"))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_that_says_what_is_wrong() {
    let s = start();
    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    let post = |body: Vec<u8>| {
        gw.post(url(&s, "/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "JSON array"),
        (b"{\"kind\":\"login\"}".to_vec(), 400, "JSON array"),
        (b"[]".to_vec(), 400, "send 1 to 100 events"),
        (b"[1, 2]".to_vec(), 400, "event 0 is not a JSON object"),
        (
            serde_json::to_vec(&vec![serde_json::json!({"k": 1}); 101]).unwrap(),
            400,
            "not 101",
        ),
        (vec![b' '; 100 * 64 * 1024 + 1], 413, ""),
    ];
    for (body, status, says) in cases {
        let resp = post(body).await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{status}: {text}");
    }
    let resp = gw
        .get(url(&s, "/v1/proof/inclusion?index=5&size=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("fewer than 2"));
    let resp = gw
        .get(url(&s, "/v1/proof/inclusion?index=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_the_entry_limit_gets_a_413_and_later_appends_go_on() {
    let s = start();
    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    let big = serde_json::json!([{ "kind": "query", "text": "x".repeat(1 << 20) }]);
    let resp = gw
        .post(url(&s, "/v1/events"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let text = resp.text().await.unwrap();
    assert!(text.contains("over the 1048576-byte limit"), "{text}");
    for n in 0..2 {
        let resp = gw
            .post(url(&s, "/v1/events"))
            .json(&serde_json::json!([{ "kind": "query", "n": n }]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        let appended: Appended = resp.json().await.unwrap();
        assert_eq!(appended.first, n, "the refused event took no position");
    }
}

/// POSTs one event as gw-1; returns the status and body.
async fn append_one(s: &Service, gw: &reqwest::Client, n: u64) -> (u16, String) {
    let resp = gw
        .post(url(s, "/v1/events"))
        .json(&serde_json::json!([{ "kind": "query", "n": n }]))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_are_refused_while_a_checkpoint_cannot_be_published() {
    let s = start();
    let witness = s.data.parent().unwrap().join("witness");
    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    assert_eq!(append_one(&s, &gw, 0).await.0, 200);
    wait_checkpoint(&s, &gw, 1).await;

    // Someone got to the witness first: the next note is already there.
    let next = witness.join("00000000000000000002.note");
    std::fs::write(&next, "not this log's note\n").unwrap();
    assert_eq!(
        append_one(&s, &gw, 1).await.0,
        200,
        "acknowledged before the attempt"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, text) = append_one(&s, &gw, 2).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("cannot publish a checkpoint"), "{text}");
    assert!(text.contains("FORK"), "{text}");
    // What an operator's alert sees meanwhile.
    let metrics = s.metrics;
    let m = tokio::task::spawn_blocking(move || {
        lastmile_testkit::metrics::wait_for(
            metrics,
            &[
                ("lastmile_audit_unverifiable", |v| v == 1.0),
                ("lastmile_audit_checkpoint_failures_total", |v| v >= 1.0),
                (
                    "lastmile_audit_appends_total{outcome=\"unverifiable\"}",
                    |v| v == 1.0,
                ),
                ("lastmile_audit_appends_total{outcome=\"ok\"}", |v| v == 2.0),
                ("lastmile_audit_events_appended_total", |v| v == 2.0),
                ("lastmile_audit_entries", |v| v == 2.0),
                ("lastmile_audit_last_checkpoint_timestamp_seconds", |v| {
                    v > 1.7e9
                }),
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        m.contains("lastmile_audit_append_duration_seconds_count 3"),
        "{m}"
    );

    // Cleared: the log signs again and acknowledges again.
    std::fs::remove_file(&next).unwrap();
    wait_checkpoint(&s, &gw, 2).await;
    let metrics = s.metrics;
    tokio::task::spawn_blocking(move || {
        lastmile_testkit::metrics::wait_for(
            metrics,
            &[("lastmile_audit_unverifiable", |v| v == 0.0)],
        )
    })
    .await
    .unwrap();
    assert_eq!(append_one(&s, &gw, 3).await.0, 200);
    wait_checkpoint(&s, &gw, 3).await;

    // The witness unmounted: its mount point is an empty directory again.
    std::fs::rename(&witness, witness.with_extension("real")).unwrap();
    std::fs::create_dir(&witness).unwrap();
    assert_eq!(append_one(&s, &gw, 4).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, text) = append_one(&s, &gw, 5).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no longer holds checkpoint 3"), "{text}");
    assert!(
        std::fs::read_dir(&witness).unwrap().next().is_none(),
        "nothing written to the wrong place"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_components_writer_spools_while_the_service_is_down_and_loses_nothing() {
    use lastmile_audit_sink::{AuditWriter, Policy, QueryText, ServiceTarget};
    let mut s = start();
    let dir = s.data.parent().unwrap().to_owned();
    let (cert, key) = s.ca.leaf(&[], Some("lastmile://gateway/gw-1"));
    std::fs::write(dir.join("gw.pem"), cert).unwrap();
    std::fs::write(dir.join("gw.key"), key).unwrap();
    let identity = age::x25519::Identity::generate();
    let policy = Policy {
        kinds: ["query".to_string(), "login".to_string()].into(),
        query_text: QueryText::KeyedHash,
        query_key: Some(b"a key of at least sixteen bytes".to_vec()),
        ..Policy::default()
    };
    let target = ServiceTarget {
        url: url(&s, ""),
        ca: dir.join("ca.pem"),
        identity: lastmile_audit_sink::ClientIdentity::Files {
            cert: dir.join("gw.pem"),
            key: dir.join("gw.key"),
        },
        spool: dir.join("spool/gw-1.jsonl"),
    };
    let recipient = vec![identity.to_public().to_string()];
    let local = dir.join("local/events.jsonl");
    let writer = AuditWriter::new(policy, &recipient, Some(&local), Some(&target)).unwrap();
    let query = |n: u64| serde_json::json!({"v": 1, "kind": "query", "session": "s1", "n": n, "query": "select salary"});

    let d = writer.write(query(1)).await.unwrap();
    assert!(d.service && d.file && d.spooled.is_none(), "{d:?}");
    let d = writer
        .write(serde_json::json!({"v": 1, "kind": "node.agent", "uid": 1}))
        .await
        .unwrap();
    assert!(d.filtered && !d.file && !d.service);

    s.stop();
    for n in 2..=3 {
        let d = writer.write(query(n)).await.unwrap();
        assert!(!d.service && d.file, "{d:?}");
        assert!(
            d.spooled.as_deref().unwrap().contains("unreachable"),
            "{d:?}"
        );
    }
    s.restart();
    // A flush sends what waits in the spool without a new event to push it.
    writer.flush().await.unwrap();
    assert!(!target.spool.exists(), "the spool was replayed and emptied");
    let d = writer.write(query(4)).await.unwrap();
    assert!(d.service && d.spooled.is_none(), "{d:?}");
    assert!(!target.spool.exists(), "the spool was replayed and emptied");

    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    wait_checkpoint(&s, &gw, 4).await;
    let entries = lastmile_audit::log::read_entries(&s.data).unwrap();
    let mut order = Vec::new();
    for (_, r) in entries.records() {
        let text = String::from_utf8(r.payload.clone()).unwrap();
        assert!(!text.contains("salary"), "sealed on the host: {text}");
        let envelope: serde_json::Value = serde_json::from_str(&text).unwrap();
        let opened =
            lastmile_audit_sink::open(&envelope["event"], std::slice::from_ref(&identity)).unwrap();
        assert!(
            opened.get("query").is_none() && opened["query_hmac"].is_string(),
            "{opened}"
        );
        order.push(opened["n"].as_u64().unwrap());
    }
    assert_eq!(order, [1, 2, 3, 4], "nothing lost, nothing reordered");
    assert_eq!(std::fs::read_to_string(&local).unwrap().lines().count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spool_torn_by_a_crash_or_damaged_loses_only_the_damaged_event() {
    use lastmile_audit_sink::{AuditWriter, Policy, ServiceTarget};
    let mut s = start();
    let dir = s.data.parent().unwrap().to_owned();
    let (cert, key) = s.ca.leaf(&[], Some("lastmile://gateway/gw-1"));
    std::fs::write(dir.join("gw.pem"), cert).unwrap();
    std::fs::write(dir.join("gw.key"), key).unwrap();
    let target = ServiceTarget {
        url: url(&s, ""),
        ca: dir.join("ca.pem"),
        identity: lastmile_audit_sink::ClientIdentity::Files {
            cert: dir.join("gw.pem"),
            key: dir.join("gw.key"),
        },
        spool: dir.join("spool/gw-1.jsonl"),
    };
    let writer = || AuditWriter::new(Policy::default(), &[], None, Some(&target)).unwrap();
    let event = |n: u64| serde_json::json!({"v": 1, "kind": "query", "session": "s1", "n": n});

    s.stop();
    let w = writer();
    for n in 1..=4 {
        assert!(w.write(event(n)).await.unwrap().spooled.is_some());
    }
    drop(w);
    // A bit flipped in event 2 (no longer UTF-8), and a crash in the middle of a write.
    let mut bytes = std::fs::read(&target.spool).unwrap();
    let at = bytes
        .windows(5)
        .position(|w| w == b"\"n\":2")
        .expect("event 2 in the spool");
    bytes[at + 4] = 0xff;
    bytes.extend_from_slice(b"{\"v\":1,\"kind\":\"query\",\"n\":9");
    std::fs::write(&target.spool, bytes).unwrap();

    // The next process spools one more, then the service is back.
    let w = writer();
    assert!(w.write(event(5)).await.unwrap().spooled.is_some());
    s.restart();
    w.flush().await.unwrap();
    assert!(!target.spool.exists(), "everything intact was delivered");

    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    wait_checkpoint(&s, &gw, 4).await;
    let order: Vec<u64> = lastmile_audit::log::read_entries(&s.data)
        .unwrap()
        .records()
        .map(|(_, r)| {
            let e: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            e["event"]["n"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(order, [1, 3, 4, 5], "only the damaged event is missing");
    let mut damaged = target.spool.clone().into_os_string();
    damaged.push(".damaged");
    let damaged = std::fs::read(damaged).expect("the damaged bytes are kept");
    assert!(
        damaged.windows(4).any(|w| w == b"\"n\":"),
        "{}",
        String::from_utf8_lossy(&damaged)
    );
}

/// A TCP forwarder to `target` on loopback that can be taken down and brought back on
/// the same port: a KMS that becomes unreachable and returns.
struct Cut {
    port: u16,
    target: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Cut {
    async fn new(target: String) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cut = Self {
            port,
            target,
            task: None,
        };
        cut.up().await;
        cut
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let target = self.target.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and drops every forwarded connection.
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Issue 14 item 13: the signing key held by a KMS (moto's, a real implementation of the
/// KMS API). Checkpoints are ECDSA P-256 signed notes (type 0x02) that open with the
/// verifier `init` printed and pass `verify` with the witness; no key is on the log's
/// host; a KMS that cannot be reached stops acknowledgement within the signing timeout,
/// and the log signs and acknowledges again once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_kms_held_key_signs_every_checkpoint_and_a_dead_kms_stops_acknowledgement() {
    let moto = match lastmile_testkit::MotoServer::start() {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    };
    let kms = lastmile_vault::AwsKms::new(&lastmile_vault::AwsConfig {
        endpoint: Some(moto.endpoint()),
        region: "eu-west-1".into(),
        key_id: "none".into(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    })
    .unwrap();
    let key_id = kms.create_signing_key("audit checkpoints").await.unwrap();

    // A symmetric key is refused at init, saying what key is needed.
    let symmetric = kms.create_key("not for signing").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lastmile-audit"))
        .args(["init", "--origin", ORIGIN, "--data-dir"])
        .arg(tmp.path().join("data"))
        .args([
            "--kms-endpoint",
            &moto.endpoint(),
            "--kms-region",
            "eu-west-1",
        ])
        .args(["--kms-key-id", &symmetric])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ECC_NIST_P256") && err.contains("SIGN_VERIFY"),
        "{err}"
    );
    assert_eq!(
        err.matches("ECC_NIST_P256 key").count(),
        1,
        "said once: {err}"
    );

    let mut cut = Cut::new(moto.endpoint().trim_start_matches("http://").to_owned()).await;
    let s = start_signing_with(Some((&cut.endpoint(), &key_id)));
    assert_eq!(
        s.verifier.algorithm(),
        lastmile_audit_log::checkpoint::ECDSA_ALGORITHM
    );
    assert!(
        !lastmile_audit::checkpoints::key_path(&s.data).exists(),
        "no key on the host"
    );
    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    for n in 0..3 {
        assert_eq!(append_one(&s, &gw, n).await.0, 200);
    }
    let cp = wait_checkpoint(&s, &gw, 3).await;
    assert_eq!(cp.size, 3);
    let witness = s.data.parent().unwrap().join("witness");
    let report = lastmile_audit::verify::verify(
        &s.data,
        &s.verifier,
        &lastmile_audit::verify::Anchors {
            witnesses: vec![witness],
            pinned: Vec::new(),
            archive: None,
        },
    );
    assert!(report.ok(), "{:?}", report.problems);

    // The KMS unreachable: appends are acknowledged until an attempt to sign has failed,
    // then refused with the cause; once refused, promptly (never held for a signing
    // timeout, since the attempt runs beside the appends).
    cut.down();
    let timeout = lastmile_audit::checkpoints::KMS_SIGN_TIMEOUT;
    let deadline = Instant::now() + timeout * 3;
    let mut n = 3;
    loop {
        let (status, text) = append_one(&s, &gw, n).await;
        n += 1;
        if status == 503 {
            assert!(text.contains("KMS"), "{text}");
            break;
        }
        assert_eq!(status, 200, "{text}");
        assert!(
            Instant::now() < deadline,
            "still acknowledged with the KMS cut"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..3 {
        let started = Instant::now();
        let (status, text) = append_one(&s, &gw, n).await;
        assert_eq!(status, 503, "{text}");
        assert!(
            started.elapsed() < timeout,
            "refused after {:?}, a signing timeout is {timeout:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // Back: the next checkpoint is signed and appends are acknowledged again.
    cut.up().await;
    let deadline = Instant::now() + timeout * 3;
    loop {
        let (status, text) = append_one(&s, &gw, n).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cp = wait_checkpoint(&s, &gw, 5).await;
    assert!(cp.size >= 5);
}

#[test]
fn a_missing_config_is_named_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("audit.toml");
    let stderr = lastmile_testkit::reports_missing_file(
        Command::new(env!("CARGO_BIN_EXE_lastmile-audit"))
            .arg("serve")
            .arg("--config")
            .arg(&missing)
            .env("RUST_LOG", "off"),
        &missing,
    )
    .unwrap();
    assert!(
        stderr.starts_with(&format!("lastmile-audit: reading {}: ", missing.display())),
        "{stderr}"
    );
}

/// A monitor keeps the last checkpoint it verified and asks for a consistency proof from
/// it; a log whose data was rewritten and signed again with the same key (its host taken,
/// a fresh witness beside it) is a fork, with both checkpoints as evidence.
#[tokio::test(flavor = "multi_thread")]
async fn a_monitor_sees_the_log_grow_and_reports_a_rewritten_history_as_a_fork() {
    use lastmile_audit::monitor::{Found, check};
    let mut s = start();
    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    let base = url(&s, "");
    for n in 0..3 {
        assert_eq!(append_one(&s, &gw, n).await.0, 200);
    }
    wait_checkpoint(&s, &gw, 3).await;
    let (found, kept) = check(&gw, &base, &s.verifier, None).await.unwrap();
    assert!(
        matches!(found, Found::First(ref c) if c.size == 3),
        "{found:?}"
    );
    for n in 3..5 {
        assert_eq!(append_one(&s, &gw, n).await.0, 200);
    }
    wait_checkpoint(&s, &gw, 5).await;
    let (found, kept) = check(&gw, &base, &s.verifier, kept.as_ref()).await.unwrap();
    assert!(
        matches!(found, Found::Extended { ref from, ref to } if from.size == 3 && to.size == 5),
        "{found:?}"
    );
    let (found, kept) = check(&gw, &base, &s.verifier, kept.as_ref()).await.unwrap();
    assert!(matches!(found, Found::Unchanged(_)), "{found:?}");
    let evidence = kept.clone().unwrap().note;

    // The host is taken: the log's data is replaced by another history, signed with the
    // same key (it is on the host), published to a witness of the intruder's.
    s.stop();
    for sub in ["segments", "checkpoints"] {
        let _ = std::fs::remove_dir_all(s.data.join(sub));
    }
    let config = std::fs::read_to_string(&s.config).unwrap();
    let witness = s.data.parent().unwrap().join("witness");
    std::fs::write(
        &s.config,
        config.replace(
            &format!("{witness:?}"),
            &format!("{:?}", witness.with_extension("intruder")),
        ),
    )
    .unwrap();
    s.restart();
    for n in 100..106 {
        assert_eq!(append_one(&s, &gw, n).await.0, 200);
    }
    wait_checkpoint(&s, &gw, 6).await;
    let (found, after) = check(&gw, &base, &s.verifier, kept.as_ref()).await.unwrap();
    match found {
        Found::Fork {
            kept,
            kept_note,
            served,
            served_note,
            why,
        } => {
            assert_eq!((kept.size, served.size), (5, 6));
            assert_eq!(kept_note, evidence);
            assert_ne!(served_note, kept_note);
            assert!(why.contains("does not verify"), "{why}");
        }
        other => panic!("a rewritten history passed: {other:?}"),
    }
    assert_eq!(after.unwrap().note, evidence, "the evidence is kept");
}

/// An entry the log holds is proved included under its signed checkpoint; the same entry
/// with one field changed is not.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_is_proved_included_and_an_edited_one_is_not() {
    use lastmile_audit::{envelope::Envelope, monitor::prove};
    let s = start();
    let gw = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://gateway/gw-1"))),
    );
    let sam = client(
        &s.ca.pem(),
        Some(s.ca.leaf(&[], Some("lastmile://security/sam"))),
    );
    for n in 0..4 {
        assert_eq!(append_one(&s, &gw, n).await.0, 200);
    }
    wait_checkpoint(&s, &gw, 4).await;
    let lines = sam
        .get(url(&s, "/v1/entries?start=2&count=1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let entry = Envelope::parse(lines.trim().as_bytes()).unwrap();
    assert_eq!(entry.seq, 2);
    let base = url(&s, "");
    let proved = prove(&sam, &base, &s.verifier, &entry).await.unwrap();
    assert_eq!(proved.unwrap().size, 4);
    let mut edited = entry.clone();
    edited.event["n"] = serde_json::json!(99);
    let why = prove(&sam, &base, &s.verifier, &edited)
        .await
        .unwrap()
        .unwrap_err();
    assert!(why.contains("changed, or never logged"), "{why}");
}
