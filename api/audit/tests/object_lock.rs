//! The object-lock archive against moto's S3 (`moto_server`, on loopback): checkpoints
//! and sealed segments land in a bucket with Object Lock, locked in compliance mode;
//! what S3 refuses there; and `verify` with the bucket finding what the log's host lost
//! or changed.
//!
//! What moto (5.2) enforces of Object Lock, and so what these tests can show: deleting a
//! locked version (DeleteObject with its VersionId) is refused (AccessDenied), and a
//! PutObject with `If-None-Match: *` on a taken key is refused (PreconditionFailed); a
//! PutObject without it adds a version above the locked one, as S3 does. What moto does
//! not enforce: it accepts a PutObjectRetention that shortens a compliance-mode
//! retention or changes it to governance mode (AWS refuses both for compliance mode), so
//! that refusal is not tested here; the tests check instead that each object is written
//! with mode COMPLIANCE and a retain-until date of now + retention.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_s3::{
    primitives::ByteStream,
    types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    },
};
use lastmile_audit::{
    archive::{Archive, ArchiveConfig, Written, archive_sealed_segments},
    checkpoints::{self, PublishError, Publisher, Signer, checkpoints_dir},
    log::{Log, segments_dir},
    segment::list_segments,
    verify::{Anchors, Problem, Source, verify},
};
use lastmile_audit_log::{Checkpoint, NoteVerifier, leaf_hash, sign};
use lastmile_testkit::moto::MotoServer;

const ORIGIN: &str = "test.lastmile/audit";
const BUCKET: &str = "lastmile-audit-archive";
const RETENTION_DAYS: u32 = 30;

fn config(moto: &MotoServer, prefix: &str) -> ArchiveConfig {
    ArchiveConfig {
        bucket: BUCKET.into(),
        region: "us-east-1".into(),
        endpoint: Some(moto.endpoint()),
        prefix: prefix.into(),
        retention_days: RETENTION_DAYS,
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    }
}

/// The bucket, created with Object Lock and a default retention of COMPLIANCE, 1 day.
async fn bucket(moto: &MotoServer) -> Archive {
    let archive = Archive::new(&config(moto, "audit/prod")).unwrap();
    let s3 = archive.client();
    s3.create_bucket()
        .bucket(BUCKET)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    s3.put_object_lock_configuration()
        .bucket(BUCKET)
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(
                            DefaultRetention::builder()
                                .mode(ObjectLockRetentionMode::Compliance)
                                .days(1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    archive.check_object_lock().await.unwrap();
    archive
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    verifier: NoteVerifier,
    publisher: Publisher,
}

/// A log of 120 events in small segments (about 2 KiB each), in six batches with a
/// checkpoint after each (sizes 20, 40, …, 120), published to the archive, and its
/// sealed segments archived.
async fn fixture(archive: &Archive) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let verifier = checkpoints::init_key(&data, ORIGIN).unwrap();
    let (mut log, _) = Log::open(&data, 2048).unwrap();
    let signer = Signer::File(checkpoints::load_signer(&data, ORIGIN).unwrap());
    let mut publisher = Publisher::new(&data, ORIGIN, signer, None)
        .unwrap()
        .with_archive(archive.clone());
    for batch in 0..6u64 {
        let events = (0..20)
            .map(|i| serde_json::json!({ "kind": "query", "n": batch * 20 + i }))
            .collect();
        log.append(events, "gw-1", SystemTime::now()).unwrap();
        publisher
            .publish(log.size(), log.root(), 1_800_000_000 + batch)
            .await
            .unwrap()
            .unwrap();
    }
    let done = archive_sealed_segments(archive, &segments_dir(&data), &mut None)
        .await
        .unwrap();
    let local = list_segments(&segments_dir(&data)).unwrap();
    assert!(local.len() >= 3, "{local:?}");
    assert_eq!(done.len(), local.len() - 1, "every segment but the newest");
    Fixture {
        _tmp: tmp,
        data,
        verifier,
        publisher,
    }
}

/// The archive as `verify`'s only anchor.
async fn with_archive(archive: &Archive) -> Anchors {
    Anchors {
        archive: Some(archive.read().await.unwrap()),
        ..Anchors::default()
    }
}

fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_str().unwrap().to_owned()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Checks that the object is locked in compliance mode until now + the retention.
async fn assert_locked(archive: &Archive, name: &str) {
    let head = archive
        .client()
        .head_object()
        .bucket(BUCKET)
        .key(archive.key(name))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.object_lock_mode().map(|m| m.as_str()),
        Some("COMPLIANCE"),
        "{name}"
    );
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let expected = now_secs() + i64::from(RETENTION_DAYS) * 86_400;
    assert!(
        (expected - until).abs() < 120,
        "{name} is locked until {until}, expected about {expected}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_and_sealed_segments_land_in_the_bucket_locked() {
    let moto = MotoServer::start().unwrap();
    let archive = bucket(&moto).await;
    let f = fixture(&archive).await;

    let notes = checkpoints::read_notes(&checkpoints_dir(&f.data)).unwrap();
    assert_eq!(notes.len(), 6);
    for (path, text) in &notes {
        let name = format!("checkpoints/{}", name_of(path));
        assert_eq!(
            archive.get(&name).await.unwrap().as_deref(),
            Some(text.as_bytes()),
            "{name}"
        );
        assert!(archive.key(&name).starts_with("audit/prod/checkpoints/"));
        assert_locked(&archive, &name).await;
    }

    let local = list_segments(&segments_dir(&f.data)).unwrap();
    let (newest, sealed) = local.split_last().unwrap();
    for (_, path) in sealed {
        let name = format!("segments/{}", name_of(path));
        let bytes = fs::read(path).unwrap();
        assert_eq!(archive.get(&name).await.unwrap(), Some(bytes.clone()));
        let sum = archive
            .get(&format!("{name}.sha256"))
            .await
            .unwrap()
            .unwrap();
        let digest: String = <sha2::Sha256 as sha2::Digest>::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            String::from_utf8(sum).unwrap(),
            format!("{digest}  {}\n", name_of(path))
        );
        assert_locked(&archive, &name).await;
    }
    let open = format!("segments/{}", name_of(&newest.1));
    assert_eq!(
        archive.get(&open).await.unwrap(),
        None,
        "the segment still appended to is not archived"
    );
    // Archiving again finds nothing new to do.
    let again = archive_sealed_segments(&archive, &segments_dir(&f.data), &mut None)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn overwriting_or_deleting_an_archived_object_is_refused() {
    let moto = MotoServer::start().unwrap();
    let archive = bucket(&moto).await;
    let f = fixture(&archive).await;
    let name = format!("checkpoints/{:020}.note", 40);
    let key = archive.key(&name);
    let original = archive.get(&name).await.unwrap().unwrap();

    // Written once: a second write of other bytes is refused and shows the first.
    assert_eq!(
        archive.put_once(&name, b"forged").await.unwrap(),
        Written::Exists(original.clone())
    );

    // A plain PutObject adds a version above the locked one; DeleteObject without a
    // version adds a delete marker. Neither touches the first version.
    let s3 = archive.client();
    let versions = s3
        .list_object_versions()
        .bucket(BUCKET)
        .prefix(&key)
        .send()
        .await
        .unwrap();
    let first = versions.versions()[0].version_id().unwrap().to_owned();
    s3.put_object()
        .bucket(BUCKET)
        .key(&key)
        .body(ByteStream::from_static(b"forged"))
        .send()
        .await
        .unwrap();
    s3.delete_object()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap();
    // Deleting the locked version itself is refused, bypass header or not.
    for bypass in [false, true] {
        let err = s3
            .delete_object()
            .bucket(BUCKET)
            .key(&key)
            .version_id(&first)
            .bypass_governance_retention(bypass)
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            aws_sdk_s3::error::ProvideErrorMetadata::code(&err),
            Some("AccessDenied"),
            "{err:?}"
        );
    }
    let kept = s3
        .get_object()
        .bucket(BUCKET)
        .key(&key)
        .version_id(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(kept.body.collect().await.unwrap().into_bytes(), original);

    // verify reads the first version, so the log still verifies against it, and names
    // the key that was written over.
    let copy = archive.read().await.unwrap();
    let report = verify(
        &f.data,
        &f.verifier,
        &Anchors {
            archive: Some(copy),
            ..Anchors::default()
        },
    );
    assert_eq!(
        report.problems,
        [Problem::ArchiveRewritten {
            url: archive.url(&name),
            versions: 2,
            delete_markers: 1,
        }]
    );
    assert!(
        report.problems[0]
            .to_string()
            .contains("overwritten or deleted")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_with_the_bucket_finds_a_removed_checkpoint_and_an_edited_segment() {
    let moto = MotoServer::start().unwrap();
    let archive = bucket(&moto).await;
    let f = fixture(&archive).await;

    let report = verify(&f.data, &f.verifier, &with_archive(&archive).await);
    assert!(report.ok(), "{:?}", report.problems);
    let (size, _, source) = report.coverage.anchored.clone().unwrap();
    assert_eq!((size, source), (120, Source::Archive));

    // A checkpoint removed from the log's host.
    let own = checkpoints_dir(&f.data);
    fs::remove_file(own.join(format!("{:020}.note", 60))).unwrap();
    // One the archive never got, signed with the log's own key (which its host holds).
    let signer = checkpoints::load_signer(&f.data, ORIGIN).unwrap();
    let (log, _) = Log::open(&f.data, 2048).unwrap();
    let extra = Checkpoint {
        origin: ORIGIN.into(),
        size: 50,
        root: lastmile_audit_log::root_from_leaves(&log.leaves()[..50]),
        time: 1_800_000_002,
    };
    drop(log);
    fs::write(
        own.join(format!("{:020}.note", 50)),
        sign(&extra, &signer).unwrap(),
    )
    .unwrap();
    // A sealed segment edited after it was archived.
    let edited = list_segments(&segments_dir(&f.data)).unwrap()[1].1.clone();
    let mut bytes = fs::read(&edited).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    fs::write(&edited, bytes).unwrap();

    let report = verify(&f.data, &f.verifier, &with_archive(&archive).await);
    let lost = Problem::CheckpointLost {
        size: 60,
        archived: PathBuf::from(format!(
            "s3://{BUCKET}/audit/prod/checkpoints/{:020}.note",
            60
        )),
        dir: own.clone(),
    };
    let not_archived = Problem::NotArchived {
        file: own.join(format!("{:020}.note", 50)),
        size: 50,
    };
    let differs = Problem::SegmentDiffers {
        segment: edited.clone(),
        archived: archive.url(&format!("segments/{}", name_of(&edited))),
    };
    for p in [&lost, &not_archived, &differs] {
        assert!(
            report.problems.contains(p),
            "{p} not in {:?}",
            report.problems
        );
    }
    assert!(
        differs.to_string().contains(&edited.display().to_string()),
        "{differs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_note_in_the_bucket_is_a_fork_and_stops_publishing() {
    let moto = MotoServer::start().unwrap();
    let archive = bucket(&moto).await;
    let mut f = fixture(&archive).await;
    // The bucket already holds a note of size 121 for another tree.
    let signer = checkpoints::load_signer(&f.data, ORIGIN).unwrap();
    let other = Checkpoint {
        origin: ORIGIN.into(),
        size: 121,
        root: leaf_hash(b"another history"),
        time: 1_800_000_100,
    };
    let name = format!("checkpoints/{:020}.note", 121);
    archive
        .put_once(&name, sign(&other, &signer).unwrap().as_bytes())
        .await
        .unwrap();
    let err = f
        .publisher
        .publish(121, leaf_hash(b"ours"), 1_800_000_101)
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Fork { size: 121, .. }), "{err}");
    assert!(err.to_string().contains(&archive.url(&name)), "{err}");
    assert!(
        !checkpoints_dir(&f.data)
            .join(format!("{:020}.note", 121))
            .exists(),
        "nothing is published locally after a fork"
    );

    // An archive that cannot be reached fails the publish too (the service then refuses
    // appends with a 503 until it can).
    drop(moto);
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        f.publisher.publish(122, leaf_hash(b"later"), 1_800_000_102),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, PublishError::Archive(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_archive_is_given_the_newest_checkpoint_first() {
    let moto = MotoServer::start().unwrap();
    let archive = bucket(&moto).await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    checkpoints::init_key(&data, ORIGIN).unwrap();
    let signer = || Signer::File(checkpoints::load_signer(&data, ORIGIN).unwrap());
    let mut p = Publisher::new(&data, ORIGIN, signer(), None).unwrap();
    p.publish(1, leaf_hash(b"one"), 100).await.unwrap();
    p.publish(
        2,
        lastmile_audit_log::root_from_leaves(&[leaf_hash(b"one"), leaf_hash(b"two")]),
        200,
    )
    .await
    .unwrap();
    // The archive is configured later, on a log that has checkpoints.
    let mut p = Publisher::new(&data, ORIGIN, signer(), None)
        .unwrap()
        .with_archive(archive.clone());
    p.publish(3, leaf_hash(b"three"), 300).await.unwrap();
    let mut names = archive.checkpoint_names().await.unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            format!("checkpoints/{:020}.note", 2),
            format!("checkpoints/{:020}.note", 3)
        ]
    );
}
