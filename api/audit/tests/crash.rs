//! Crash safety: `kill -9` during a heavy append loses nothing that was acknowledged, and
//! the log reopens (cutting only an unfinished write) and verifies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lastmile_audit::{
    envelope::Envelope,
    log::read_entries,
    verify::{Anchors, verify},
};

const ORIGIN: &str = "crash.lastmile/audit";

fn audit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lastmile-audit"))
}

#[test]
fn kill_dash_9_during_heavy_append_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = audit()
        .args(["init", "--origin", ORIGIN, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let verifier = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let mut next_event = 0u64;
    let mut acked_total = 0u64;
    for round in 0..3 {
        let mut child = audit()
            .args(["append", "--origin", ORIGIN, "--batch", "256", "--data-dir"])
            .arg(&data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_writer = stop.clone();
        let first = next_event;
        // Events carry their own counter, so what survives can be checked one by one.
        let feeder = thread::spawn(move || {
            let mut n = first;
            while !stop_writer.load(Ordering::Relaxed) {
                let line = format!("{{\"kind\":\"query\",\"n\":{n},\"text\":\"select {n}\"}}\n");
                if stdin.write_all(line.as_bytes()).is_err() {
                    break;
                }
                n += 1;
            }
            n
        });
        let mut acks = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last_acked = None;
        let deadline = Instant::now() + Duration::from_millis(400 + 300 * round);
        while Instant::now() < deadline {
            match acks.next() {
                Some(Ok(line)) => {
                    last_acked = line
                        .strip_prefix("acked ")
                        .and_then(|n| n.parse::<u64>().ok())
                }
                _ => break,
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-batch
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        let sent = feeder.join().unwrap();
        let last_acked = last_acked.expect("some batches were acknowledged before the kill");
        assert!(
            last_acked + 1 > acked_total,
            "round {round} acknowledged nothing new"
        );

        // Every acknowledged entry is there, in order, with its own content.
        let entries = read_entries(&data).unwrap();
        let records: Vec<_> = entries.records().map(|(_, r)| r.clone()).collect();
        assert!(
            records.len() as u64 > last_acked,
            "acked {last_acked}, found {}",
            records.len()
        );
        for r in &records[..=last_acked as usize] {
            let e = Envelope::parse(&r.payload).unwrap();
            assert_eq!(e.seq, r.index);
            assert_eq!(
                e.event["n"], r.index,
                "entry {} holds the wrong event",
                r.index
            );
        }
        acked_total = last_acked + 1;
        // The next round continues the numbering after what the log holds whole.
        next_event = records.len() as u64;
        assert!(sent >= next_event);
    }

    // Reopen once more (recovery), publish a final checkpoint, and verify the whole log.
    let mut child = audit()
        .args(["append", "--origin", ORIGIN, "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    child.stdout.clear();
    let report = verify(&data, &verifier, &Anchors::default());
    assert!(report.ok(), "{:?}", report.problems);
    assert!(report.entries >= acked_total);
    assert!(!report.torn_tail, "recovery cut the unfinished write");
}
