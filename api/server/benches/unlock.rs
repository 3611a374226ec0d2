//! `cargo xtask bench unlock`: credential unlocks per second and their latency, through
//! HTTPS with the local KMS and with the AWS KMS API (moto on loopback), next to the raw
//! costs of the work inside one unlock measured in the same run: an AES-256-GCM open of
//! the secret and an Ed25519 verification (an unlock checks three signatures: the
//! gateway's request, the user's authorization, and, at the handshake, the gateway's
//! certificate).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use ed25519_dalek::Signer as _;
use serde_json::json;
use support::{Store, authorize, start};

const N: usize = 300;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

async fn run(label: &str, kms: Option<lastmile_vault::KmsConfig>, aes_us: f64, ed_us: f64) {
    let api = start(Store::Sqlite, |c| {
        if let Some(k) = kms {
            c.kms = k;
        }
    })
    .await;
    let (_, alice, gw) = support::vault_fixture(&api, "bench-secret").await;
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let bodies: Vec<_> = (0..N)
        .map(|_| {
            let (a, sig) = authorize(&alice, "orders-db", "gw1");
            json!({"resource": "orders-db", "authorization": a, "authorization_signature": sig, "recipient": recipient})
        })
        .collect();
    // Warm the connection.
    assert_eq!(gw.unlock(&bodies[0]).await.status, 200);
    let mut times = Vec::with_capacity(N);
    let started = Instant::now();
    for b in &bodies[1..] {
        let t = Instant::now();
        let a = gw.unlock(b).await;
        assert_eq!(a.status, 200, "{}", a.body);
        times.push(t.elapsed());
    }
    let rate = (N - 1) as f64 / started.elapsed().as_secs_f64();
    let m = median(times.clone());
    println!(
        "{label:<6} unlock over HTTPS, 1 gateway, sequential: {rate:>6.0}/s; median {:>6.2} ms, p95 {:>6.2} ms = {:.0} x AES-256-GCM open, {:.0} x Ed25519 verify",
        m.as_secs_f64() * 1e3,
        pct(times, 0.95).as_secs_f64() * 1e3,
        m.as_secs_f64() * 1e6 / aes_us,
        m.as_secs_f64() * 1e6 / ed_us,
    );
}

fn main() {
    // Baselines, one thread, same run.
    let key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7u8; 32]).unwrap(),
    );
    let mut sealed = b"bench-secret".to_vec();
    key.seal_in_place_append_tag(
        ring::aead::Nonce::assume_unique_for_key([1; 12]),
        ring::aead::Aad::from(&[0u8; 64]),
        &mut sealed,
    )
    .unwrap();
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        let mut b = sealed.clone();
        key.open_in_place(
            ring::aead::Nonce::assume_unique_for_key([1; 12]),
            ring::aead::Aad::from(&[0u8; 64]),
            std::hint::black_box(&mut b),
        )
        .unwrap();
    }
    let aes_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let sk = lastmile_api_client::new_key().unwrap();
    let sig = sk.sign(b"message");
    let vk = sk.verifying_key();
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        vk.verify_strict(std::hint::black_box(b"message"), &sig)
            .unwrap();
    }
    let ed_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "baseline: AES-256-GCM open of a 12-byte secret: {aes_us:.2} us; Ed25519 verify: {ed_us:.1} us"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        run("local", None, aes_us, ed_us).await;
        let moto = lastmile_testkit::MotoServer::start().expect("moto (run `cargo xtask setup`)");
        let mut config = lastmile_vault::AwsConfig {
            endpoint: Some(moto.endpoint()),
            region: "eu-west-1".into(),
            key_id: "bootstrap".into(),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
        };
        let lastmile_vault::Kms::Aws(aws) = lastmile_vault::Kms::open(
            &lastmile_vault::KmsConfig::Aws(config.clone()),
            std::path::Path::new("/nonexistent"),
        )
        .await
        .unwrap() else {
            panic!("not aws")
        };
        config.key_id = aws.create_key("lastmile bench").await.unwrap();
        run(
            "moto",
            Some(lastmile_vault::KmsConfig::Aws(config)),
            aes_us,
            ed_us,
        )
        .await;
    });
}
