//! The object-lock archive (`[audit.archive]`): an S3 bucket with Object Lock that holds
//! a copy of every signed checkpoint and of every sealed segment, each locked in
//! compliance mode for `retention_days`, so that nobody, the bucket's own account
//! included, can overwrite or delete it before then.
//!
//! Keys, under the configured `prefix`: `checkpoints/<size>.note` (the size zero-padded
//! to 20 digits, as in the data directory), `segments/<name>.seg` and beside it
//! `segments/<name>.seg.sha256` (its SHA-256 in `sha256sum` form; the segment's upload
//! also carries it as `x-amz-checksum-sha256`, which S3 checks and keeps).
//!
//! Every object is written once (`If-None-Match: *`): finding the key taken by the same
//! bytes (or, for a checkpoint, by a note for the same tree) is fine; anything else is a
//! fork. A PutObject without that condition would not replace a locked object but add a
//! version above it; [`Archive::read`] therefore reads each key's first version and names
//! the keys that have others or delete markers.
//!
//! The bucket should belong to another AWS account than the log's host and its KMS key,
//! with credentials that may only put and read objects there: whoever controls the
//! account that owns the bucket can change its policy and default retention for new
//! objects, or close the account, which the lock does not survive.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    error::{DisplayErrorContext, ProvideErrorMetadata},
    primitives::{ByteStream, DateTime},
    types::{ObjectLockEnabled, ObjectLockMode},
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::segment::{self, SegmentError};

/// `[audit.archive]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// The bucket; it must have Object Lock enabled.
    pub bucket: String,
    pub region: String,
    /// An S3-compatible server instead of the region's AWS endpoint (addressed
    /// path-style, `<endpoint>/<bucket>/<key>`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Where in the bucket this log's objects go, e.g. `audit/prod/`. Default: the top.
    #[serde(default)]
    pub prefix: String,
    /// How long each object is locked (compliance mode), in days. Default 2557 (7 years).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Credentials of the account that owns the bucket, not of the log's host or its
    /// KMS; default `LASTMILE_ARCHIVE_ACCESS_KEY_ID` / `LASTMILE_ARCHIVE_SECRET_ACCESS_KEY`
    /// (and `LASTMILE_ARCHIVE_SESSION_TOKEN`). The `AWS_*` variables are never used, so
    /// the KMS's credentials cannot end up writing the archive.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

fn default_retention_days() -> u32 {
    2557
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "no credentials for the archive: set access_key_id and secret_access_key in \
         [audit.archive], or LASTMILE_ARCHIVE_ACCESS_KEY_ID and \
         LASTMILE_ARCHIVE_SECRET_ACCESS_KEY (credentials of the account that owns the \
         bucket, not the AWS_* ones of this host)"
    )]
    NoCredentials,
    #[error(
        "bucket {bucket} has no Object Lock: enable it on the bucket (with versioning), or \
         create the bucket with Object Lock enabled; copies that can be deleted vouch for \
         nothing"
    )]
    NoObjectLock { bucket: String },
    #[error("S3 {call} {url} failed: {detail}")]
    S3 {
        call: &'static str,
        url: String,
        detail: String,
    },
    #[error(
        "the archive already holds {url} with other bytes than {}: that segment changed \
         after it was archived, or another log writes to the same prefix; run \
         `lastmile audit verify` with the archive and investigate",
        local.display()
    )]
    SegmentDiffers { url: String, local: PathBuf },
    #[error("cannot read the sealed segments")]
    Local(#[from] SegmentError),
}

/// What a write-once put found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// The object is ours.
    Created,
    /// The key was taken already, by these bytes (its current version).
    Exists(Vec<u8>),
}

/// An S3 bucket with Object Lock, as the log's archive.
#[derive(Debug, Clone)]
pub struct Archive {
    client: Client,
    bucket: String,
    prefix: String,
    retention: Duration,
}

fn sdk_detail<E>(e: &aws_sdk_s3::error::SdkError<E>) -> String
where
    E: std::error::Error + 'static,
{
    DisplayErrorContext(e).to_string()
}

/// A segment's checksum object: `<hex>  <name>\n`, as `sha256sum` writes it.
fn checksum_text(digest: &[u8], name: &str) -> String {
    format!("{}  {name}\n", hex(digest))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Archive {
    pub fn new(c: &ArchiveConfig) -> Result<Self, ArchiveError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let access = c
            .access_key_id
            .clone()
            .or_else(|| env("LASTMILE_ARCHIVE_ACCESS_KEY_ID"));
        let secret = c
            .secret_access_key
            .clone()
            .or_else(|| env("LASTMILE_ARCHIVE_SECRET_ACCESS_KEY"));
        let (Some(access), Some(secret)) = (access, secret) else {
            return Err(ArchiveError::NoCredentials);
        };
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(c.region.clone()))
            .credentials_provider(Credentials::new(
                access,
                secret,
                env("LASTMILE_ARCHIVE_SESSION_TOKEN"),
                None,
                "lastmile-archive-config",
            ))
            .http_client(http);
        if let Some(e) = &c.endpoint {
            b = b.endpoint_url(e).force_path_style(true);
        }
        let mut prefix = c.prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            client: Client::from_conf(b.build()),
            bucket: c.bucket.clone(),
            prefix,
            retention: Duration::from_secs(u64::from(c.retention_days) * 86_400),
        })
    }

    /// The SDK client, for what this type does not wrap (tests try to delete with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of `name` (`checkpoints/…`, `segments/…`).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `s3://bucket/key` of `name`, for messages and reports.
    pub fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    /// Checks that the bucket answers and has Object Lock enabled.
    pub async fn check_object_lock(&self) -> Result<(), ArchiveError> {
        let out = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        match out {
            Ok(o)
                if o.object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled) =>
            {
                Ok(())
            }
            Ok(_) => Err(ArchiveError::NoObjectLock {
                bucket: self.bucket.clone(),
            }),
            Err(e) if e.code() == Some("ObjectLockConfigurationNotFoundError") => {
                Err(ArchiveError::NoObjectLock {
                    bucket: self.bucket.clone(),
                })
            }
            Err(e) => Err(ArchiveError::S3 {
                call: "GetObjectLockConfiguration",
                url: format!("s3://{}", self.bucket),
                detail: sdk_detail(&e),
            }),
        }
    }

    /// The current version of `name`, if there is one.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        self.get_version(name, None).await
    }

    async fn get_version(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<Vec<u8>>, ArchiveError> {
        let failed = |detail| ArchiveError::S3 {
            call: "GetObject",
            url: self.url(name),
            detail,
        };
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .set_version_id(version.map(str::to_owned))
            .send()
            .await;
        match out {
            Ok(o) => {
                let body = o.body.collect().await.map_err(|e| failed(e.to_string()))?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(failed(sdk_detail(&e))),
        }
    }

    /// Creates `name` with `bytes`, locked in compliance mode until now + retention,
    /// unless the key is taken; then returns what holds it.
    pub async fn put_once(&self, name: &str, bytes: &[u8]) -> Result<Written, ArchiveError> {
        let until = SystemTime::now() + self.retention;
        let until = until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let sha = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            Sha256::digest(bytes),
        );
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .if_none_match("*")
            .object_lock_mode(ObjectLockMode::Compliance)
            .object_lock_retain_until_date(DateTime::from_secs(until))
            // S3 requires Content-MD5 or x-amz-sdk-checksum-algorithm on a PutObject
            // with a retention (Object Lock, "Uploading objects"); the SHA-256 is the
            // checksum S3 then checks and keeps.
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(sha)
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(Written::Created),
            Err(e) if e.code() == Some("PreconditionFailed") => match self.get(name).await? {
                Some(existing) => Ok(Written::Exists(existing)),
                // Taken, yet nothing to read: a delete marker above it. Not ours to judge
                // here; `verify` reads every version.
                None => Err(ArchiveError::S3 {
                    call: "PutObject",
                    url: self.url(name),
                    detail: "the key is taken but its current version cannot be read".into(),
                }),
            },
            Err(e) => Err(ArchiveError::S3 {
                call: "PutObject",
                url: self.url(name),
                detail: sdk_detail(&e),
            }),
        }
    }

    /// The names (without the prefix) of every key under `dir` (`checkpoints/`, …), with
    /// their versions newest first and whether each is a delete marker.
    async fn versions(&self, dir: &str) -> Result<BTreeMap<String, Vec<Version>>, ArchiveError> {
        let mut out: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(self.key(dir))
                .set_key_marker(markers.0.take())
                .set_version_id_marker(markers.1.take())
                .send()
                .await
                .map_err(|e| ArchiveError::S3 {
                    call: "ListObjectVersions",
                    url: self.url(dir),
                    detail: sdk_detail(&e),
                })?;
            let name = |key: Option<&str>| {
                key.and_then(|k| k.strip_prefix(&self.prefix))
                    .map(str::to_owned)
            };
            // S3 lists each key's versions newest first; markers and versions come in two
            // lists, so order them again by time, the listing's order breaking ties.
            for v in page.versions() {
                if let Some(n) = name(v.key()) {
                    out.entry(n).or_default().push(Version {
                        id: v.version_id().map(str::to_owned),
                        modified: v.last_modified().map(DateTime::secs),
                        deleted: false,
                    });
                }
            }
            for m in page.delete_markers() {
                if let Some(n) = name(m.key()) {
                    out.entry(n).or_default().push(Version {
                        id: m.version_id().map(str::to_owned),
                        modified: m.last_modified().map(DateTime::secs),
                        deleted: true,
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            markers = (
                page.next_key_marker().map(str::to_owned),
                page.next_version_id_marker().map(str::to_owned),
            );
            if markers.0.is_none() {
                break;
            }
        }
        for versions in out.values_mut() {
            // Stable: equal times keep the listing's newest-first order.
            versions.sort_by_key(|v| std::cmp::Reverse(v.modified));
        }
        Ok(out)
    }

    /// The names of the checkpoint notes the archive holds (`checkpoints/…`).
    pub async fn checkpoint_names(&self) -> Result<Vec<String>, ArchiveError> {
        Ok(self.versions("checkpoints/").await?.into_keys().collect())
    }

    /// The names of the segments the archive holds with their checksum.
    pub async fn archived_segments(&self) -> Result<BTreeSet<String>, ArchiveError> {
        let keys = self.versions("segments/").await?;
        Ok(keys
            .iter()
            .filter(|(n, v)| n.ends_with(".seg") && v.first().is_some_and(|v| !v.deleted))
            .filter(|(n, _)| keys.contains_key(&format!("{n}.sha256")))
            .filter_map(|(n, _)| n.strip_prefix("segments/").map(str::to_owned))
            .collect())
    }

    /// Archives one sealed segment (`name`, its bytes) and its checksum.
    pub async fn put_segment(
        &self,
        name: &str,
        bytes: &[u8],
        local: &Path,
    ) -> Result<(), ArchiveError> {
        let digest = Sha256::digest(bytes);
        let key = format!("segments/{name}");
        let sum_key = format!("{key}.sha256");
        let sum = checksum_text(&digest, name);
        for (k, b) in [(&key, bytes), (&sum_key, sum.as_bytes())] {
            if let Written::Exists(existing) = self.put_once(k, b).await?
                && existing != b
            {
                return Err(ArchiveError::SegmentDiffers {
                    url: self.url(k),
                    local: local.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Reads everything the archive holds for `verify`: each key's first version (the
    /// one written once), and the keys that have others.
    pub async fn read(&self) -> Result<ArchiveCopy, ArchiveError> {
        let mut copy = ArchiveCopy {
            location: format!("s3://{}/{}", self.bucket, self.prefix),
            ..ArchiveCopy::default()
        };
        let mut sums = BTreeMap::new();
        let mut checkpoints = self.versions("checkpoints/").await?;
        checkpoints.append(&mut self.versions("segments/").await?);
        for (name, versions) in checkpoints {
            let Some(first) = versions.iter().rev().find(|v| !v.deleted) else {
                continue;
            };
            if versions.len() > 1 {
                copy.rewritten.push(Rewritten {
                    url: self.url(&name),
                    versions: versions.iter().filter(|v| !v.deleted).count(),
                    delete_markers: versions.iter().filter(|v| v.deleted).count(),
                });
            }
            let Some(bytes) = self.get_version(&name, first.id.as_deref()).await? else {
                continue;
            };
            if let Some(note) = name
                .strip_prefix("checkpoints/")
                .filter(|n| n.ends_with(".note"))
            {
                copy.checkpoints.push((
                    note.to_owned(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            } else if let Some(seg) = name
                .strip_prefix("segments/")
                .filter(|n| n.ends_with(".seg"))
            {
                copy.segments.push(ArchivedSegment {
                    name: seg.to_owned(),
                    sha256: Sha256::digest(&bytes).into(),
                    recorded: None,
                });
            } else if let Some(seg) = name
                .strip_prefix("segments/")
                .and_then(|n| n.strip_suffix(".sha256"))
            {
                let text = String::from_utf8_lossy(&bytes);
                sums.insert(
                    seg.to_owned(),
                    text.split_whitespace().next().unwrap_or("").to_owned(),
                );
            }
        }
        for s in &mut copy.segments {
            s.recorded = sums.remove(&s.name);
        }
        Ok(copy)
    }
}

/// One version of a key.
#[derive(Debug, Clone)]
struct Version {
    id: Option<String>,
    modified: Option<i64>,
    deleted: bool,
}

/// What the archive holds, read once by [`Archive::read`] for [`crate::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveCopy {
    /// `s3://bucket/prefix`.
    pub location: String,
    /// (file name, note text): `00000000000000000012.note`, ….
    pub checkpoints: Vec<(String, String)>,
    pub segments: Vec<ArchivedSegment>,
    /// Keys that were overwritten or deleted after their first version.
    pub rewritten: Vec<Rewritten>,
}

impl ArchiveCopy {
    /// Where the archive keeps checkpoint `name`, as a path for reports.
    pub fn checkpoint_file(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("{}checkpoints/{name}", self.location))
    }

    /// Where the archive keeps segment `name`.
    pub fn segment_url(&self, name: &str) -> String {
        format!("{}segments/{name}", self.location)
    }
}

/// A segment as archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedSegment {
    /// Its file name, `00000000000000000000.seg`.
    pub name: String,
    /// The SHA-256 of the archived bytes.
    pub sha256: [u8; 32],
    /// The checksum archived beside it (hex), if any.
    pub recorded: Option<String>,
}

impl ArchivedSegment {
    /// Whether the archived bytes match the checksum archived with them.
    pub fn matches_recorded(&self) -> bool {
        self.recorded.as_deref() == Some(hex(&self.sha256).as_str())
    }
}

/// A key with more than its first version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub url: String,
    /// Versions with content (the first included).
    pub versions: usize,
    pub delete_markers: usize,
}

/// The sealed segments in `segments_dir` that `archived` lacks, as (name, path): every
/// segment but the newest, which the log still appends to.
pub fn pending(local: &[(u64, PathBuf)], archived: &BTreeSet<String>) -> Vec<(String, PathBuf)> {
    let sealed = local.len().saturating_sub(1);
    local
        .iter()
        .take(sealed)
        .filter_map(|(_, p)| {
            let name = p.file_name()?.to_str()?.to_owned();
            (!archived.contains(&name)).then(|| (name, p.clone()))
        })
        .collect()
}

/// Archives every sealed segment of `segments_dir` not in `archived` yet (listed from
/// the bucket on the first call), adding each to it; returns the names archived now.
pub async fn archive_sealed_segments(
    archive: &Archive,
    segments_dir: &Path,
    archived: &mut Option<BTreeSet<String>>,
) -> Result<Vec<String>, ArchiveError> {
    let known = match archived {
        Some(k) => k,
        None => archived.insert(archive.archived_segments().await?),
    };
    let local = segment::list_segments(segments_dir)?;
    let mut done = Vec::new();
    for (name, path) in pending(&local, known) {
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| SegmentError::Io {
                path: path.clone(),
                source,
            })?;
        archive.put_segment(&name, &bytes, &path).await?;
        known.insert(name.clone());
        done.push(name);
    }
    Ok(done)
}

/// How often the service looks for sealed segments to archive, and retries a failure.
pub const SEGMENTS_EVERY: Duration = Duration::from_secs(10);

/// Archives sealed segments for as long as the service runs. A failure is logged as an
/// error (`alert = "audit_archive_behind"`) and retried [`SEGMENTS_EVERY`] later; it does
/// not stop appends (the checkpoints, which do, vouch for the entries meanwhile).
pub async fn keep_segments_archived(archive: Archive, segments_dir: PathBuf) {
    let mut archived = None;
    let mut failing = false;
    loop {
        match archive_sealed_segments(&archive, &segments_dir, &mut archived).await {
            Ok(done) => {
                for name in done {
                    tracing::info!(segment = %name, "sealed segment archived");
                }
                if std::mem::take(&mut failing) {
                    tracing::info!("sealed segments are archived again");
                }
            }
            Err(e) => {
                failing = true;
                tracing::error!(
                    alert = "audit_archive_behind",
                    error = %lastmile_audit_sink::error_chain(&e),
                    retry_in_s = SEGMENTS_EVERY.as_secs(),
                    "a sealed segment is not archived; retrying"
                );
            }
        }
        tokio::time::sleep(SEGMENTS_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_segment_but_the_newest_is_sealed() {
        let local: Vec<(u64, PathBuf)> = [0u64, 40, 90]
            .iter()
            .map(|i| (*i, segment::segment_path(Path::new("s"), *i)))
            .collect();
        let archived = BTreeSet::from(["00000000000000000000.seg".to_owned()]);
        let names: Vec<String> = pending(&local, &archived)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["00000000000000000040.seg"]);
        assert!(pending(&local[..1], &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_checksum_reads_like_sha256sum() {
        let s = ArchivedSegment {
            name: "x.seg".into(),
            sha256: Sha256::digest(b"abc").into(),
            recorded: None,
        };
        let text = checksum_text(&s.sha256, "x.seg");
        assert_eq!(
            text,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  x.seg\n"
        );
        let recorded = ArchivedSegment {
            recorded: text.split_whitespace().next().map(str::to_owned),
            ..s
        };
        assert!(recorded.matches_recorded());
    }
}
