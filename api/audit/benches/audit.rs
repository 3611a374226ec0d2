//! `cargo xtask bench audit`: durable appends per second (with checkpointing) and the time
//! to verify one million events, each next to the machine's raw SHA-256 and fsync rates
//! measured in the same run.
//!
//! Aims: at least 100,000 durable appends per second; one million events verified in at
//! most 3 seconds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    fs::OpenOptions,
    io::Write as _,
    time::{Duration, Instant, SystemTime},
};

use lastmile_audit::{
    checkpoints::{self, Publisher},
    log::Log,
    verify::{Anchors, verify},
};
use sha2::{Digest as _, Sha256};

const ORIGIN: &str = "bench.lastmile/audit";
const APPENDS: u64 = 300_000;
const BATCH: usize = 1000;
const VERIFY_EVENTS: u64 = 1_000_000;

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
    let started = Instant::now();
    let report = verify(&data, &verifier, &Anchors::default());
    let took = started.elapsed().as_secs_f64();
    assert!(report.ok(), "{:?}", report.problems);
    let hashing_alone = report.entries as f64 / sha_per_s;
    println!(
        "verify {} events, {} checkpoints     {took:>10.2} s  = {:.1}x the time to SHA-256 them alone ({hashing_alone:.2} s)  [aim <= 3 s: {}]",
        report.entries,
        report.checkpoints,
        took / hashing_alone,
        if took <= 3.0 { "met" } else { "MISSED" }
    );
}
