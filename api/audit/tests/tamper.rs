//! The tamper matrix: every way of rewriting the log that the design promises to catch,
//! each applied to a fresh copy, each caught by `verify` and pointed at the right entry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use lastmile_testkit::block_on;
use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use lastmile_audit::{
    checkpoints::{self, KeySource, Publisher, Signer, checkpoints_dir},
    log::{Log, segments_dir},
    segment::{self, list_segments},
    verify::{Anchors, Problem, Report, Source, verify},
};
use lastmile_audit_log::{Checkpoint, NoteSigner, NoteVerifier, sign};

const ORIGIN: &str = "test.lastmile/audit";

fn key_file(data: &Path) -> KeySource {
    KeySource::File(checkpoints::key_path(data))
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    witness: PathBuf,
    verifier: NoteVerifier,
}

/// 100 events in four batches, a checkpoint after each (sizes 25, 50, 75, 100).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let witness = tmp.path().join("witness");
    let verifier = checkpoints::init_key(&data, ORIGIN).unwrap();
    let (mut log, _) = Log::open(&data, 1 << 20).unwrap();
    let signer = Signer::File(checkpoints::load_signer(&data, ORIGIN).unwrap());
    let mut publisher = Publisher::new(&data, ORIGIN, signer, Some(witness.clone())).unwrap();
    for batch in 0..4u64 {
        let events = (0..25)
            .map(|i| serde_json::json!({ "kind": "query", "n": batch * 25 + i }))
            .collect();
        log.append(events, "gw-1", SystemTime::now()).unwrap();
        block_on(publisher.publish(log.size(), log.root(), 1_800_000_000 + batch)).unwrap();
    }
    Fixture {
        _tmp: tmp,
        data,
        witness,
        verifier,
    }
}

fn check(f: &Fixture) -> Report {
    verify(&f.data, &f.verifier, &witnessed(&f.witness))
}

fn witnessed(dir: &Path) -> Anchors {
    Anchors {
        witnesses: vec![dir.to_owned()],
        pinned: vec![],
        archive: None,
    }
}

fn segment_file(f: &Fixture) -> PathBuf {
    let segs = list_segments(&segments_dir(&f.data)).unwrap();
    assert_eq!(segs.len(), 1);
    segs[0].1.clone()
}

/// (start, end) byte offsets of every record in the segment.
fn record_spans(path: &Path) -> Vec<(usize, usize)> {
    let bytes = fs::read(path).unwrap();
    let mut spans = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        spans.push((at, at + 8 + len));
        at += 8 + len;
    }
    spans
}

fn rewrite_records(path: &Path, edit: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let bytes = fs::read(path).unwrap();
    let mut records: Vec<Vec<u8>> = record_spans(path)
        .iter()
        .map(|(s, e)| bytes[*s..*e].to_vec())
        .collect();
    edit(&mut records);
    fs::write(path, records.concat()).unwrap();
}

/// A record with `payload`, its checksum recomputed as a careful forger would.
fn forged_record(payload: &[u8]) -> Vec<u8> {
    let mut r = (payload.len() as u32).to_be_bytes().to_vec();
    r.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

#[test]
fn an_untouched_log_verifies() {
    let f = fixture();
    let report = check(&f);
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!((report.entries, report.checkpoints), (100, 8));
}

#[test]
fn one_changed_byte_is_found_at_its_entry() {
    let f = fixture();
    let path = segment_file(&f);
    let (start, end) = record_spans(&path)[42];
    let mut bytes = fs::read(&path).unwrap();
    let at = (start + end) / 2;
    bytes[at] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    let report = check(&f);
    assert!(!report.ok());
    assert_eq!(
        report.first_failing_entry(),
        Some(42),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_changed_entry_with_a_recomputed_checksum_breaks_the_signed_root() {
    let f = fixture();
    let path = segment_file(&f);
    rewrite_records(&path, |records| {
        let payload = &records[42][8..];
        let text = String::from_utf8(payload.to_vec())
            .unwrap()
            .replace("\"n\":42", "\"n\":43");
        records[42] = forged_record(text.as_bytes());
    });
    let report = check(&f);
    assert!(
        report.problems.iter().any(|p| matches!(
            p,
            Problem::RootMismatch {
                size: 50,
                since: 25,
                ..
            }
        )),
        "{:?}",
        report.problems
    );
    assert_eq!(
        report.first_failing_entry(),
        Some(25),
        "the change is pinned to 25..50"
    );
}

#[test]
fn a_deleted_entry_is_named() {
    let f = fixture();
    rewrite_records(&segment_file(&f), |records| {
        records.remove(60);
    });
    let report = check(&f);
    assert!(
        report
            .problems
            .contains(&Problem::OutOfOrder { index: 60, seq: 61 }),
        "{:?}",
        report.problems
    );
    assert_eq!(report.first_failing_entry(), Some(60));
}

#[test]
fn swapped_entries_are_named() {
    let f = fixture();
    rewrite_records(&segment_file(&f), |records| records.swap(10, 11));
    let report = check(&f);
    assert!(
        report
            .problems
            .contains(&Problem::OutOfOrder { index: 10, seq: 11 }),
        "{:?}",
        report.problems
    );
    assert_eq!(report.first_failing_entry(), Some(10));
}

#[test]
fn a_tail_cut_below_a_published_checkpoint_is_found() {
    let f = fixture();
    rewrite_records(&segment_file(&f), |records| records.truncate(80));
    let report = check(&f);
    assert!(
        report.problems.iter().any(|p| matches!(
            p,
            Problem::Truncated {
                checkpoint_size: 100,
                entries: 80,
                ..
            }
        )),
        "{:?}",
        report.problems
    );
    assert_eq!(report.first_failing_entry(), Some(80));
    // And the log refuses to append on top of it.
    let (log, _) = Log::open(&f.data, 1 << 20).unwrap();
    let publisher = Publisher::new(
        &f.data,
        ORIGIN,
        Signer::File(checkpoints::load_signer(&f.data, ORIGIN).unwrap()),
        None,
    )
    .unwrap();
    assert!(publisher.last_size().unwrap() > log.size());
}

#[test]
fn a_fork_is_found() {
    let f = fixture();
    // A second checkpoint of size 50, signed by the real key, over another history.
    let signer = checkpoints::load_signer(&f.data, ORIGIN).unwrap();
    let other = Checkpoint {
        origin: ORIGIN.into(),
        size: 50,
        root: lastmile_audit_log::leaf_hash(b"another history"),
        time: 1_800_000_001,
    };
    let dir = f.witness.parent().unwrap().join("elsewhere");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("00000000000000000050.note"),
        sign(&other, &signer).unwrap(),
    )
    .unwrap();
    let report = verify(&f.data, &f.verifier, &witnessed(&dir));
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Fork { size: 50, .. })),
        "{:?}",
        report.problems
    );

    // The publisher refuses to write a different note where the witness has one.
    fs::remove_file(checkpoints_dir(&f.data).join("00000000000000000100.note")).unwrap();
    let publisher_err = {
        let mut p = Publisher::new(
            &f.data,
            ORIGIN,
            Signer::File(checkpoints::load_signer(&f.data, ORIGIN).unwrap()),
            Some(f.witness.clone()),
        )
        .unwrap();
        block_on(p.publish(100, other.root, 1_800_000_009)).unwrap_err()
    };
    assert!(
        publisher_err.to_string().contains("FORK"),
        "{publisher_err}"
    );
    assert!(
        !checkpoints_dir(&f.data)
            .join("00000000000000000100.note")
            .exists(),
        "nothing is published locally after a fork"
    );
}

#[test]
fn a_log_rebuilt_and_resigned_with_another_key_is_refused() {
    let f = fixture();
    // The forger rewrites entry 5, recomputes everything and signs new checkpoints with a
    // key of their own, under the same name, replacing the log's own checkpoints.
    rewrite_records(&segment_file(&f), |records| {
        let text = String::from_utf8(records[5][8..].to_vec())
            .unwrap()
            .replace("\"n\":5", "\"n\":500");
        records[5] = forged_record(text.as_bytes());
    });
    let (log, _) = Log::open(&f.data, 1 << 20).unwrap();
    let forger = NoteSigner::generate(ORIGIN).unwrap();
    fs::remove_dir_all(checkpoints_dir(&f.data)).unwrap();
    let mut publisher = Publisher::new(&f.data, ORIGIN, Signer::File(forger), None).unwrap();
    block_on(publisher.publish(log.size(), log.root(), 1_900_000_000)).unwrap();

    // Against the pinned key and without the witness: nothing vouches for the log.
    let report = verify(&f.data, &f.verifier, &Anchors::default());
    assert!(
        report.problems.contains(&Problem::NoValidCheckpoint),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::BadSignature { .. }))
    );
    // With the witness: the original checkpoints convict the rewrite.
    let report = check(&f);
    assert_eq!(
        report.first_failing_entry(),
        Some(0),
        "{:?}",
        report.problems
    );
}

#[test]
fn checkpoints_that_go_backwards_are_found() {
    let f = fixture();
    let signer = checkpoints::load_signer(&f.data, ORIGIN).unwrap();
    let (log, _) = Log::open(&f.data, 1 << 20).unwrap();
    // Size 100 again is the real root; re-signed as if at a time before size 25's.
    let early = Checkpoint {
        origin: ORIGIN.into(),
        size: log.size(),
        root: log.root(),
        time: 1_700_000_000,
    };
    let dir = f.witness.parent().unwrap().join("replayed");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("x.note"), sign(&early, &signer).unwrap()).unwrap();
    let report = verify(&f.data, &f.verifier, &witnessed(&dir));
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::Backwards { .. })),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_pinned_checkpoint_must_still_be_in_the_log() {
    let f = fixture();
    let pinned_path = checkpoints_dir(&f.data).join("00000000000000000075.note");
    let pinned = fs::read_to_string(&pinned_path).unwrap();
    // Cut the log and remove every later checkpoint: only the pin remembers size 75.
    rewrite_records(&segment_file(&f), |records| records.truncate(70));
    fs::remove_dir_all(&f.witness).unwrap();
    for n in [75, 100] {
        fs::remove_file(checkpoints_dir(&f.data).join(format!("{n:020}.note"))).unwrap();
    }
    let anchors = Anchors {
        witnesses: vec![],
        pinned: vec![(pinned_path, pinned)],
        archive: None,
    };
    let report = verify(&f.data, &f.verifier, &anchors);
    assert_eq!(
        report.first_failing_entry(),
        Some(70),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_segment_damaged_before_the_newest_is_refused_at_open() {
    let f = fixture();
    let path = segment_file(&f);
    let mut bytes = fs::read(&path).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let err = Log::open(&f.data, 1 << 20).unwrap_err().to_string();
    assert!(err.contains("not a torn write"), "{err}");
    let _ = segment::list_segments(&segments_dir(&f.data)).unwrap();
}

#[test]
fn a_log_changed_while_closed_is_refused_at_open() {
    let f = fixture();
    rewrite_records(&segment_file(&f), |records| {
        let text = String::from_utf8(records[42][8..].to_vec())
            .unwrap()
            .replace("\"n\":42", "\"n\":43");
        records[42] = forged_record(text.as_bytes());
    });
    let err = block_on(lastmile_audit::open_for_writing(
        &f.data,
        &key_file(&f.data),
        ORIGIN,
        Some(f.witness.clone()),
    ))
    .unwrap_err();
    assert!(
        matches!(err, lastmile_audit::OpenError::Rewritten { size: 100, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("lastmile audit verify"), "{err}");
    // With its own checkpoints gone, the witness still remembers.
    fs::remove_dir_all(checkpoints_dir(&f.data)).unwrap();
    let err = block_on(lastmile_audit::open_for_writing(
        &f.data,
        &key_file(&f.data),
        ORIGIN,
        Some(f.witness.clone()),
    ))
    .unwrap_err();
    assert!(
        matches!(err, lastmile_audit::OpenError::Rewritten { size: 100, .. }),
        "{err}"
    );
}

#[test]
fn entries_after_the_last_checkpoint_are_adopted_at_open() {
    let f = fixture();
    // Acknowledged after the last checkpoint, then the log stopped.
    let (mut log, _) = Log::open(&f.data, 1 << 20).unwrap();
    log.append(
        vec![serde_json::json!({"kind": "login"})],
        "gw-1",
        SystemTime::now(),
    )
    .unwrap();
    drop(log);
    let (log, _, _) = block_on(lastmile_audit::open_for_writing(
        &f.data,
        &key_file(&f.data),
        ORIGIN,
        Some(f.witness.clone()),
    ))
    .unwrap();
    assert_eq!(log.size(), 101);
}

#[test]
fn a_log_resigned_with_its_own_key_is_vouched_for_only_by_the_witness() {
    let f = fixture();
    // The key sits on the log's host: whoever holds the host rewrites entry 5 and signs
    // every checkpoint again with the log's own key.
    rewrite_records(&segment_file(&f), |records| {
        let text = String::from_utf8(records[5][8..].to_vec())
            .unwrap()
            .replace("\"n\":5", "\"n\":500");
        records[5] = forged_record(text.as_bytes());
    });
    let (log, _) = Log::open(&f.data, 1 << 20).unwrap();
    fs::remove_dir_all(checkpoints_dir(&f.data)).unwrap();
    let signer = Signer::File(checkpoints::load_signer(&f.data, ORIGIN).unwrap());
    let mut p = Publisher::new(&f.data, ORIGIN, signer, None).unwrap();
    block_on(p.publish(log.size(), log.root(), 1_900_000_000)).unwrap();

    // Its own checkpoints agree with it, and vouch for nothing from outside.
    let report = verify(&f.data, &f.verifier, &Anchors::default());
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.coverage.anchored, None);
    assert!(report.coverage.describe(report.entries)[0].contains("nothing checked here"));
    // The witness convicts it.
    let report = check(&f);
    assert_eq!(
        report.first_failing_entry(),
        Some(0),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_missing_witness_is_a_problem_not_an_empty_witness() {
    let f = fixture();
    let gone = f.witness.with_file_name("not-mounted");
    let report = verify(&f.data, &f.verifier, &witnessed(&gone));
    assert!(
        report.problems.iter().any(|p| matches!(
            p,
            Problem::WitnessUnreadable { dir, .. } if *dir == gone
        )),
        "{:?}",
        report.problems
    );
    // An empty one holds nothing signed by the key: nothing outside vouches.
    let empty = f.witness.with_file_name("empty");
    fs::create_dir(&empty).unwrap();
    let report = verify(&f.data, &f.verifier, &witnessed(&empty));
    assert!(
        report.problems.contains(&Problem::Unanchored),
        "{:?}",
        report.problems
    );
}

#[test]
fn coverage_names_what_the_witness_holds_and_what_only_the_log_does() {
    let f = fixture();
    let (mut log, _) = Log::open(&f.data, 1 << 20).unwrap();
    let more = |n: u64| {
        (0..n)
            .map(|i| serde_json::json!({ "kind": "login", "i": i }))
            .collect()
    };
    log.append(more(3), "gw-1", SystemTime::now()).unwrap();
    // A checkpoint the witness never got, then entries no checkpoint covers.
    let signer = Signer::File(checkpoints::load_signer(&f.data, ORIGIN).unwrap());
    let mut p = Publisher::new(&f.data, ORIGIN, signer, None).unwrap();
    block_on(p.publish(log.size(), log.root(), 1_800_000_100)).unwrap();
    log.append(more(2), "gw-1", SystemTime::now()).unwrap();
    let report = check(&f);
    assert!(report.ok(), "{:?}", report.problems);
    let (size, file, source) = report.coverage.anchored.clone().unwrap();
    assert_eq!((size, source), (100, Source::Witness));
    assert!(file.starts_with(&f.witness), "{}", file.display());
    assert_eq!(report.coverage.signed, 103);
    let said = report.coverage.describe(report.entries);
    assert!(
        said[0].starts_with("100 entries (0-99) are covered"),
        "{said:?}"
    );
    assert!(
        said[1].starts_with("3 entries (100-102) are covered only"),
        "{said:?}"
    );
    assert!(
        said[2].starts_with("2 entries (103-104) are after the last checkpoint"),
        "{said:?}"
    );
}

/// The signing key can live away from the data (`signing_key`): the log opens, signs
/// and verifies with it, no key is written beside the data, and a log opened without
/// saying where the key is finds none there.
#[test]
fn the_signing_key_can_live_away_from_the_data() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = tmp.path().join("keys").join("audit-signing.key");
    let verifier = checkpoints::init_key_at(&data, &key, ORIGIN).unwrap();
    assert!(!checkpoints::key_path(&data).exists());
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(key.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let (mut log, _, mut publisher) = block_on(lastmile_audit::open_for_writing(
        &data,
        &KeySource::File(key.clone()),
        ORIGIN,
        None,
    ))
    .unwrap();
    log.append(
        vec![serde_json::json!({"kind": "login"})],
        "gw-1",
        SystemTime::now(),
    )
    .unwrap();
    block_on(publisher.publish(log.size(), log.root(), 1_800_000_000)).unwrap();
    let note = fs::read_dir(checkpoints_dir(&data))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert!(checkpoints::open_note(&fs::read_to_string(note).unwrap(), &verifier).is_ok());
    drop((log, publisher));
    let err = block_on(lastmile_audit::open_for_writing(
        &data,
        &key_file(&data),
        ORIGIN,
        None,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("no signing key at"), "{err}");
}
