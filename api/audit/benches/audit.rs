//! `cargo xtask bench audit`: durable appends per second (with checkpointing) and the time
//! to verify one million events, each next to the machine's raw SHA-256 and fsync rates
//! measured in the same run; then the same log checked over the service as a monitor
//! does (`lastmile audit verify --url`, [`lastmile_audit::monitor::check`]) from a
//! checkpoint of size 0 pinned, next to that local verify.
//!
//! Aims: at least 100,000 durable appends per second; one million events verified in at
//! most 3 seconds; verify over the URL in at most twice the time of the local verify.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    fs::OpenOptions,
    io::Write as _,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use lastmile_audit::{
    checkpoints::{self, Publisher},
    envelope::Envelope,
    log::{Log, read_entries},
    monitor::{self, Found, Kept},
    service::{ServeConfig, serve},
    verify::{Anchors, verify},
};
use lastmile_audit_log::{Checkpoint, empty_root};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use sha2::{Digest as _, Sha256};
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

const ORIGIN: &str = "bench.lastmile/audit";
const APPENDS: u64 = 300_000;
const BATCH: usize = 1000;
const VERIFY_EVENTS: u64 = 1_000_000;
/// Monitor checks timed (each with a new client, so a new TLS handshake, as each run of
/// `lastmile audit verify --url` makes), after one untimed.
const REMOTE_CHECKS: u32 = 20;
/// Inclusion proofs (`lastmile audit prove`) timed, over one client.
const PROOFS: u32 = 5;

/// CPU time (user + system) so far of the calling thread and of the whole process.
fn cpu() -> (Duration, Duration) {
    fn of(who: libc::c_int) -> Duration {
        // SAFETY: getrusage writes only the struct it is given, which is valid for writes.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `who` is RUSAGE_THREAD or RUSAGE_SELF.
        assert_eq!(unsafe { libc::getrusage(who, &raw mut ru) }, 0);
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
    (of(libc::RUSAGE_THREAD), of(libc::RUSAGE_SELF))
}

/// Wall and CPU time (this thread's, the process's) of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64, f64) {
    let (thread0, process0) = cpu();
    let started = Instant::now();
    let out = f();
    let wall = started.elapsed().as_secs_f64();
    let (thread1, process1) = cpu();
    (
        out,
        wall,
        (thread1 - thread0).as_secs_f64(),
        (process1 - process0).as_secs_f64(),
    )
}

/// Microseconds per entry of `s` seconds over `n` entries.
fn us_per(s: f64, n: u64) -> f64 {
    s * 1e6 / n as f64
}

/// A CA, and leaf certificates (PEM cert, PEM key) it signs.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "bench org CA");
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn leaf(&self, names: &[&str], uri: Option<&str>) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A monitor's HTTPS client, built as `lastmile audit verify --url` builds one: TLS 1.3,
/// trusting the organisation's CA, presenting a reader certificate.
fn client(ca_pem: &str, (cert, key): &(String, String)) -> reqwest::Client {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

fn event(n: u64) -> serde_json::Value {
    serde_json::json!({
        "kind": "query",
        "session": "s-7f3a2c",
        "connection": n / 10,
        "user": "alice@example.org",
        "resource": "orders-db",
        "query_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "n": n,
    })
}

fn main() {
    // Publishing is async (a KMS may sign); a file key never waits, a runtime drives it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let sample = lastmile_audit::envelope::Envelope {
        event: event(12345),
        received: "2026-11-28T00:00:00.000000Z".into(),
        seq: 12345,
        writer: "gw-1".into(),
    }
    .to_canonical();
    println!("event envelope: {} bytes", sample.len());

    // Baselines.
    let sha_per_s = {
        let n = 1_000_000u32;
        let started = Instant::now();
        let mut acc = 0u8;
        for i in 0..n {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(&sample);
            h.update(i.to_le_bytes());
            acc ^= h.finalize()[0];
        }
        std::hint::black_box(acc);
        f64::from(n) / started.elapsed().as_secs_f64()
    };
    let fsync_per_s = {
        let path = tmp.path().join("fsync-probe");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let started = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < Duration::from_secs(1) {
            f.write_all(&[0u8; 4096]).unwrap();
            f.sync_data().unwrap();
            n += 1;
        }
        f64::from(n) / started.elapsed().as_secs_f64()
    };
    println!("baseline: SHA-256 of one envelope     {sha_per_s:>12.0} /s (one core)");
    println!("baseline: 4 KiB write + fdatasync     {fsync_per_s:>12.0} /s");

    // Durable appends, batched, with a checkpoint signed every second.
    let data = tmp.path().join("append");
    checkpoints::init_key(&data, ORIGIN).unwrap();
    let (mut log, _) = Log::open(&data, 64 << 20).unwrap();
    let mut publisher = Publisher::new(
        &data,
        ORIGIN,
        checkpoints::Signer::File(checkpoints::load_signer(&data, ORIGIN).unwrap()),
        Some(tmp.path().join("w")),
    )
    .unwrap();
    let started = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut n = 0;
    let mut checkpoints_signed = 0;
    while n < APPENDS {
        let events = (n..n + BATCH as u64).map(event).collect();
        log.append(events, "gw-1", SystemTime::now()).unwrap();
        n += BATCH as u64;
        if last_checkpoint.elapsed() >= Duration::from_secs(1) {
            rt.block_on(publisher.publish(log.size(), log.root(), 1))
                .unwrap();
            checkpoints_signed += 1;
            last_checkpoint = Instant::now();
        }
    }
    rt.block_on(publisher.publish(log.size(), log.root(), 2))
        .unwrap();
    checkpoints_signed += 1;
    let append_per_s = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "durable appends ({BATCH}/fsync)          {append_per_s:>12.0} /s  = {:.2}x SHA-256 rate, {:.1} fsyncs/s of {fsync_per_s:.0} possible; {checkpoints_signed} checkpoints  [aim >= 100000/s: {}]",
        append_per_s / sha_per_s,
        append_per_s / BATCH as f64,
        if append_per_s >= 100_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(log);

    // Verify one million events.
    let data = tmp.path().join("verify");
    let verifier = checkpoints::init_key(&data, ORIGIN).unwrap();
    let (mut log, _) = Log::open(&data, 64 << 20).unwrap();
    let mut publisher = Publisher::new(
        &data,
        ORIGIN,
        checkpoints::Signer::File(checkpoints::load_signer(&data, ORIGIN).unwrap()),
        None,
    )
    .unwrap();
    let mut n = 0;
    while n < VERIFY_EVENTS {
        let events = (n..n + 10_000).map(event).collect();
        log.append(events, "gw-1", SystemTime::now()).unwrap();
        n += 10_000;
        if n % 100_000 == 0 {
            rt.block_on(publisher.publish(log.size(), log.root(), n))
                .unwrap();
        }
    }
    drop(log);
    // Local verify: reads every segment, re-hashes every entry into the Merkle tree, and
    // checks every checkpoint's signature and root against it (single-threaded).
    let (report, took, _, local_cpu) = timed(|| verify(&data, &verifier, &Anchors::default()));
    assert!(report.ok(), "{:?}", report.problems);
    let hashing_alone = report.entries as f64 / sha_per_s;
    println!(
        "verify {} events, {} checkpoints     {took:>10.2} s  = {:.1}x the time to SHA-256 them alone ({hashing_alone:.2} s)  [aim <= 3 s: {}]",
        report.entries,
        report.checkpoints,
        took / hashing_alone,
        if took <= 3.0 { "met" } else { "MISSED" }
    );
    println!(
        "  local verify per entry                {:>10.3} us wall, {:.3} us CPU",
        us_per(took, report.entries),
        us_per(local_cpu, report.entries),
    );

    remote(
        &tmp.path().join("tls"),
        &data,
        &verifier,
        report.entries,
        took,
        local_cpu,
    );
}

/// The same log checked over the service: `serve` on loopback in this process (its own
/// thread and runtime), and `monitor::check` from a pinned checkpoint of size 0 signed
/// with the log's key (a checkpoint of the empty tree, which every log extends: the
/// service never published it, and need not have; the monitor only opens it with the
/// pinned verifier key). A monitor does not re-hash entries: it fetches the newest
/// checkpoint, verifies its signature, and verifies a consistency proof from the kept
/// one, which from size 0 is empty. So its cost does not grow with the log; the local
/// verify's does.
fn remote(
    dir: &std::path::Path,
    data: &std::path::Path,
    verifier: &lastmile_audit_log::NoteVerifier,
    entries: u64,
    local_wall: f64,
    local_cpu: f64,
) {
    std::fs::create_dir_all(dir).unwrap();
    let ca = Ca::new();
    let (cert, key) = ca.leaf(&["127.0.0.1"], None);
    std::fs::write(dir.join("ca.pem"), ca.0.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert).unwrap();
    std::fs::write(dir.join("server.key"), key).unwrap();
    let reader = ca.leaf(&[], Some("lastmile://security/bench"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let config = ServeConfig {
        data_dir: data.to_path_buf(),
        origin: ORIGIN.into(),
        signing_key: None,
        signing_kms: None,
        listen,
        witness: None,
        archive: None,
        tls_cert: dir.join("server.pem"),
        tls_key: dir.join("server.key"),
        client_ca: dir.join("ca.pem"),
        writers: vec![],
        readers: vec!["lastmile://security/bench".into()],
        max_events_per_request: 1000,
        commit_window_ms: 0,
        metrics_listen: None,
    };
    let started = Instant::now();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        if let Err(e) = rt.block_on(serve(config)) {
            panic!("serve: {e:#}");
        }
    });
    // It listens once it has opened (read and hashed) the log.
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the service did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "service opened the log and listens     {:>10.2} s  (not part of what follows)",
        started.elapsed().as_secs_f64()
    );

    let base = format!("https://127.0.0.1:{port}");
    let signer = checkpoints::load_signer(data, ORIGIN).unwrap();
    let pinned = Kept {
        note: lastmile_audit_log::sign(
            &Checkpoint {
                origin: ORIGIN.into(),
                size: 0,
                root: empty_root(),
                time: 0,
            },
            &signer,
        )
        .unwrap(),
    };
    let ca_pem = ca.0.pem();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let check = || {
        let c = client(&ca_pem, &reader);
        let (found, _) = rt
            .block_on(monitor::check(&c, &base, verifier, Some(&pinned)))
            .unwrap();
        match found {
            Found::Extended { from, to } if from.size == 0 && to.size == entries => {}
            other => panic!("the monitor found {other:?}"),
        }
    };
    check();
    let ((), wall, thread_cpu, process_cpu) = timed(|| (0..REMOTE_CHECKS).for_each(|_| check()));
    let n = f64::from(REMOTE_CHECKS);
    let (wall, thread_cpu, process_cpu) = (wall / n, thread_cpu / n, process_cpu / n);
    let ratio = wall / local_wall;
    println!(
        "verify --url 0 -> {entries} (monitor check) {:>8.2} ms  = {ratio:.5}x the local verify ({local_wall:.2} s)  [aim <= 2x: {}]",
        wall * 1e3,
        if ratio <= 2.0 { "met" } else { "MISSED" }
    );
    println!(
        "  per entry                             {:>10.5} us wall, {:.5} us CPU monitor ({:.5}x local), {:.5} us CPU monitor + service ({:.5}x local); mean of {REMOTE_CHECKS}, each a new client and TLS handshake",
        us_per(wall, entries),
        us_per(thread_cpu, entries),
        thread_cpu / local_cpu,
        us_per(process_cpu, entries),
        process_cpu / local_cpu,
    );

    // Inclusion proofs: the service computes each from its leaves, O(n) hashing.
    let all = read_entries(data).unwrap();
    let picked: Vec<Envelope> = (0..PROOFS)
        .map(|i| entries * u64::from(2 * i + 1) / u64::from(2 * PROOFS))
        .map(|seq| {
            let (_, record) = all.records().nth(seq as usize).unwrap();
            Envelope::parse(&record.payload).unwrap()
        })
        .collect();
    drop(all);
    let c = client(&ca_pem, &reader);
    let ((), wall, thread_cpu, process_cpu) = timed(|| {
        for entry in &picked {
            let proved = rt
                .block_on(monitor::prove(&c, &base, verifier, entry))
                .unwrap();
            assert_eq!(proved.unwrap().size, entries);
        }
    });
    let n = f64::from(PROOFS);
    println!(
        "prove one entry of {entries} (inclusion)  {:>8.2} ms wall, {:.3} ms CPU monitor, {:.2} ms CPU monitor + service; mean of {PROOFS}, one client",
        wall / n * 1e3,
        thread_cpu / n * 1e3,
        process_cpu / n * 1e3,
    );
}
