//! `cargo xtask bench api`: how fast the API checks a signed call and logs a user in,
//! and how soon a revocation reaches a subscriber, each next to a baseline measured in
//! the same run: one single-threaded Ed25519 verification, and one argon2id hash.
//!
//! Aims: a signed call costs about two Ed25519 verifications plus two indexed database
//! round trips; revocation reaches the stream within 100 ms of the decision.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use ed25519_dalek::Signer as _;
use lastmile_api::{ApiConfig, App, admin, auth};
use lastmile_api_client::{ApiClient, Login, Session, new_key, nonce, now, random32};
use lastmile_proto::wire::NewUser;
use lastmile_testkit::PgServer;

const PASSWORD: &str = "a long enough password";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

struct Running {
    app: Arc<App>,
    client: ApiClient,
    host: String,
    _dir: tempfile::TempDir,
}

async fn start(database: Option<String>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        data_dir: dir.path().to_owned(),
        database,
        ..ApiConfig::default()
    };
    let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
        .await
        .unwrap();
    lastmile_api::pki::Pki::create(&config.keys_dir(), "bench", &config.names, &kms)
        .await
        .unwrap();
    let app = App::open(config).await.unwrap();
    admin::bootstrap(&app, "admin").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = format!("localhost:{}", listener.local_addr().unwrap().port());
    tokio::spawn(lastmile_api::http::serve(app.clone(), listener));
    let client = ApiClient::new(&format!("https://{host}"), app.pki.ca_pem(), None).unwrap();
    Running {
        app,
        client,
        host,
        _dir: dir,
    }
}

async fn user(r: &Running, name: &str, admin_: bool) -> Session {
    let otp = admin::add_user(
        &r.app,
        "bench",
        NewUser {
            name: name.into(),
            admin: admin_,
            groups: vec![],
        },
    )
    .await
    .unwrap();
    let device = new_key().unwrap();
    let fingerprint: String = random32()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    r.client
        .login(&Login {
            user: name,
            password: &otp.one_time_password,
            totp: None,
            new_password: Some(PASSWORD),
            device_key: &device,
            fingerprint: &fingerprint,
            device_name: "bench",
        })
        .await
        .unwrap()
}

/// Signed-call checks per second, in-process and single-task (what one core can do),
/// and through HTTPS with 4 concurrent clients.
async fn verification(r: &Running, label: &str, ed_per_s: f64) {
    let s = user(r, &format!("v-{label}"), false).await;
    const N: usize = 3000;
    let requests: Vec<HeaderMap> = (0..N)
        .map(|_| {
            let h = r
                .client
                .sign(&s, &Method::GET, "/v1/me", b"", now(), &nonce().unwrap())
                .unwrap();
            let mut m = HeaderMap::new();
            m.insert("host", HeaderValue::from_str(&r.host).unwrap());
            m.insert(
                "content-digest",
                HeaderValue::from_str(&h.content_digest).unwrap(),
            );
            m.insert(
                "signature-input",
                HeaderValue::from_str(&h.signature_input).unwrap(),
            );
            m.insert("signature", HeaderValue::from_str(&h.signature).unwrap());
            m
        })
        .collect();
    let uri: Uri = "/v1/me".parse().unwrap();
    let started = Instant::now();
    for h in &requests {
        auth::authenticate(&r.app, &Method::GET, &uri, h, b"")
            .await
            .unwrap();
    }
    let in_process = N as f64 / started.elapsed().as_secs_f64();

    const CLIENTS: usize = 4;
    const PER: usize = 300;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (client, s) = (r.client.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER {
                assert_eq!(
                    client
                        .call(&s, Method::GET, "/v1/me", None)
                        .await
                        .unwrap()
                        .status,
                    200
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let https = (CLIENTS * PER) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{label:<8} signed-call check, in-process, 1 task: {in_process:>8.0}/s = {:.2} x one ed25519 verify ({:.1} verifies' worth each)",
        in_process / ed_per_s,
        ed_per_s / in_process
    );
    println!(
        "{label:<8} signed GET /v1/me over HTTPS, {CLIENTS} clients: {https:>8.0}/s = {:.2} x one ed25519 verify",
        https / ed_per_s
    );
}

async fn login_latency(r: &Running, label: &str, argon: Duration) {
    let name = format!("l-{label}");
    let otp = admin::add_user(
        &r.app,
        "bench",
        NewUser {
            name: name.clone(),
            admin: false,
            groups: vec![],
        },
    )
    .await
    .unwrap();
    let device = new_key().unwrap();
    let fingerprint: String = random32()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut first = Some(otp.one_time_password);
    let mut times = Vec::new();
    for _ in 0..21 {
        let (password, new_password) = match first.take() {
            Some(p) => (p, Some(PASSWORD)),
            None => (PASSWORD.to_owned(), None),
        };
        let t = Instant::now();
        r.client
            .login(&Login {
                user: &name,
                password: &password,
                totp: None,
                new_password,
                device_key: &device,
                fingerprint: &fingerprint,
                device_name: "bench",
            })
            .await
            .unwrap();
        times.push(t.elapsed());
    }
    times.remove(0); // the first also sets the password
    let m = median(times.clone());
    println!(
        "{label:<8} login (challenge + login, HTTPS): median {:>6.1} ms, p95 {:>6.1} ms = {:.2} x one argon2id hash",
        m.as_secs_f64() * 1e3,
        pct(times, 0.95).as_secs_f64() * 1e3,
        m.as_secs_f64() / argon.as_secs_f64()
    );
}

async fn revocation_latency(r: &Running, label: &str) {
    let watcher = user(r, &format!("w-{label}"), true).await;
    let mut stream = r.client.stream(&watcher, "/v1/revocations").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut times = Vec::new();
    let mut buf = String::new();
    for i in 0..20 {
        let victim = user(r, &format!("r{i}-{label}"), false).await;
        let t = Instant::now();
        admin::revoke(&r.app, "bench", &victim.login.session, None)
            .await
            .unwrap();
        loop {
            if let Some(end) = buf.find("\n\n") {
                let ev: String = buf.drain(..end + 2).collect();
                if ev.contains(&victim.login.session) {
                    break;
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        times.push(t.elapsed());
    }
    let max = *times.iter().max().unwrap();
    println!(
        "{label:<8} revocation -> subscriber: median {:>5.1} ms, max {:>5.1} ms (aim <= 100 ms: {})",
        median(times).as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        if max <= Duration::from_millis(100) {
            "met"
        } else {
            "MISSED"
        }
    );
}

fn main() {
    // Baselines, single thread, same run.
    let key = new_key().unwrap();
    let msg = [7u8; 200];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        vk.verify_strict(std::hint::black_box(&msg), &sig).unwrap();
    }
    let ed_per_s = f64::from(n) / t.elapsed().as_secs_f64();
    println!(
        "baseline: ed25519 verify, 1 thread: {ed_per_s:.0}/s ({:.1} us)",
        1e6 / ed_per_s
    );
    let argon = median(
        (0..7)
            .map(|_| {
                let t = Instant::now();
                lastmile_api::secret::hash_password(PASSWORD).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "baseline: argon2id hash (m=19 MiB, t=2, p=1): {:.1} ms",
        argon.as_secs_f64() * 1e3
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sqlite = start(None).await;
        verification(&sqlite, "sqlite", ed_per_s).await;
        login_latency(&sqlite, "sqlite", argon).await;
        revocation_latency(&sqlite, "sqlite").await;

        let pg = PgServer::start().expect("PostgreSQL (run `cargo xtask setup`)");
        let postgres = start(Some(pg.url())).await;
        verification(&postgres, "postgres", ed_per_s).await;
        login_latency(&postgres, "postgres", argon).await;
        revocation_latency(&postgres, "postgres").await;
        drop(postgres);
        drop(pg);
    });
}
