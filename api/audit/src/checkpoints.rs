//! Signing and publishing checkpoints.
//!
//! Each checkpoint note goes to `<data>/checkpoints/<size>.note` and, when configured, to
//! a witness directory meant for storage the log's host cannot rewrite (another host, a
//! bucket with object lock). A witness copy is created once and never replaced: finding a
//! note of the same size for another tree there is a fork, and publishing stops (the same
//! tree signed twice, as a crash between the two copies leaves it, is not: the witness's
//! note stands). So does a witness that no longer holds the last note it was given: an
//! unmounted witness must not be written to its empty mount point.
//!
//! With `[audit.archive]`, each note is also written, first, to an S3 bucket with Object
//! Lock ([`crate::archive`]), by the same rules: a different note of that size there is a
//! fork, and an archive that lacks the last note it was given stops publishing (an
//! archive with no checkpoint at all is new, and is given the newest note).

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use std::time::Duration;

use lastmile_audit_log::{
    Checkpoint, CheckpointError, Hash, NoteSigner, NoteVerifier, attach_signature, sign,
};
use lastmile_vault::{AwsConfig, AwsKms, KmsError};

use crate::archive::{Archive, ArchiveError, Written};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot sign the checkpoint")]
    Sign(#[from] CheckpointError),
    #[error(
        "FORK: the witness already holds a different checkpoint of size {size} ({}); \
         publishing stops until an operator investigates",
        path.display()
    )]
    Fork { size: u64, path: PathBuf },
    #[error(
        "the witness {} no longer holds checkpoint {size}, which it was given: it is unmounted, \
         replaced or was written elsewhere; publishing stops until it is back (if the witness \
         is new, copy {} into it)",
        witness.display(),
        local.display()
    )]
    WitnessLost {
        witness: PathBuf,
        size: u64,
        local: PathBuf,
    },
    #[error(
        "the archive no longer holds checkpoint {size} ({url}), which it was given: the \
         bucket or prefix changed, or the object is gone despite its lock; publishing stops \
         until it is back (to start a new archive, point [audit.archive] at an empty prefix: \
         it is given {} then)",
        local.display()
    )]
    ArchiveLost {
        url: String,
        size: u64,
        local: PathBuf,
    },
    #[error("cannot publish the checkpoint to the object-lock archive")]
    Archive(#[from] ArchiveError),
    #[error("{}: not a 32-byte Ed25519 signing key", .0.display())]
    BadKey(PathBuf),
    #[error("no signing key at {}: run `lastmile-audit init` first", .0.display())]
    NoKey(PathBuf),
    #[error("the KMS that holds the signing key failed")]
    Kms(#[from] KmsError),
    #[error(
        "{} already names another verifier key ({existing}); this data directory belongs to \
         a log signed by that key",
        path.display()
    )]
    OtherVerifier { path: PathBuf, existing: String },
}

/// How long a KMS has to sign one checkpoint. Past it the attempt fails like any other
/// failure to publish (appends are refused until one succeeds); the log is never held
/// longer than this by a slow KMS.
pub const KMS_SIGN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the log's signing key is.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// An Ed25519 key in a file, made by `lastmile-audit init`.
    File(PathBuf),
    /// An `ECC_NIST_P256` `SIGN_VERIFY` key held by a KMS (AWS KMS or a server that
    /// speaks its API): each checkpoint is signed by the KMS (ECDSA, signed-note type
    /// 0x02) and the private key never reaches this host.
    Kms(AwsConfig),
}

/// What signs checkpoints.
#[derive(Debug)]
pub enum Signer {
    File(NoteSigner),
    Kms { kms: AwsKms, verifier: NoteVerifier },
}

impl Signer {
    /// The signer of `source`, with key name `origin`. A file key is read; a KMS key's
    /// public half is fetched, which also checks that the KMS answers and that the key is
    /// a P-256 signing key.
    pub async fn load(source: &KeySource, origin: &str) -> Result<Self, PublishError> {
        match source {
            KeySource::File(path) => Ok(Self::File(load_signer_at(path, origin)?)),
            KeySource::Kms(config) => {
                let kms = AwsKms::new(config)?;
                let spki = tokio::time::timeout(KMS_SIGN_TIMEOUT, kms.p256_public_key())
                    .await
                    .map_err(|_| kms_timeout("GetPublicKey"))??;
                let verifier = NoteVerifier::ecdsa_p256(origin, &spki)?;
                Ok(Self::Kms { kms, verifier })
            }
        }
    }

    /// The key that opens this signer's notes.
    pub fn verifier(&self) -> NoteVerifier {
        match self {
            Self::File(s) => s.verifier(),
            Self::Kms { verifier, .. } => verifier.clone(),
        }
    }

    /// The signed note of `checkpoint`. A KMS's signature is checked against the key's
    /// public half before it is used.
    async fn sign(&self, checkpoint: &Checkpoint) -> Result<String, PublishError> {
        match self {
            Self::File(s) => Ok(sign(checkpoint, s)?),
            Self::Kms { kms, verifier } => {
                let body = checkpoint.body();
                let signature =
                    tokio::time::timeout(KMS_SIGN_TIMEOUT, kms.sign_ecdsa_p256(body.as_bytes()))
                        .await
                        .map_err(|_| kms_timeout("Sign"))??;
                Ok(attach_signature(checkpoint, verifier, &signature)?)
            }
        }
    }
}

fn kms_timeout(call: &str) -> KmsError {
    KmsError::Unavailable(format!(
        "no answer to {call} within {} s",
        KMS_SIGN_TIMEOUT.as_secs()
    ))
}

/// Records a KMS-held key's verifier in `data_dir` (`verifier.vkey`) for a new log, as
/// `init` does for a file key; a data directory already recording another key is
/// refused, the same key again is not (so `init` can be run twice).
pub fn init_verifier(data_dir: &Path, verifier: &NoteVerifier) -> Result<(), PublishError> {
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    let path = verifier_path(data_dir);
    let text = format!("{verifier}\n");
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut f) => f
            .write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&path)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let existing = fs::read_to_string(&path).map_err(io(&path))?;
            if existing == text {
                Ok(())
            } else {
                Err(PublishError::OtherVerifier {
                    path,
                    existing: existing.trim().to_owned(),
                })
            }
        }
        Err(e) => Err(io(&path)(e)),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn checkpoints_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoints")
}

/// Where the signing key is when no other place is configured. Deployments should set
/// one on another filesystem than the data (`signing_key`): a key beside the log lets
/// whoever can rewrite the log re-sign it.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("signing.key")
}

pub fn verifier_path(data_dir: &Path) -> PathBuf {
    data_dir.join("verifier.vkey")
}

fn note_name(size: u64) -> String {
    format!("{size:020}.note")
}

/// Creates the log's signing key (`signing.key` in the data directory, mode 0600) and
/// writes its public half (`verifier.vkey`). Refuses to replace an existing key.
pub fn init_key(data_dir: &Path, name: &str) -> Result<NoteVerifier, PublishError> {
    init_key_at(data_dir, &key_path(data_dir), name)
}

/// [`init_key`] with the key at `path` (its directory is created, mode 0700).
pub fn init_key_at(data_dir: &Path, path: &Path, name: &str) -> Result<NoteVerifier, PublishError> {
    fs::create_dir_all(data_dir).map_err(io(data_dir))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode_0700()
            .create(parent)
            .map_err(io(parent))?;
    }
    let signer = NoteSigner::generate(name)?;
    let path = path.to_owned();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(&path)
        .map_err(io(&path))?;
    f.write_all(&signer.to_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&path))?;
    let verifier = signer.verifier();
    let vpath = verifier_path(data_dir);
    fs::write(&vpath, format!("{verifier}\n")).map_err(io(&vpath))?;
    Ok(verifier)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

trait Mode0700 {
    fn mode_0700(&mut self) -> &mut Self;
}

impl Mode0700 for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

pub fn load_signer(data_dir: &Path, name: &str) -> Result<NoteSigner, PublishError> {
    load_signer_at(&key_path(data_dir), name)
}

/// Whether `a` and `b` are on the same filesystem (`None`: one cannot be looked at).
pub fn same_filesystem(a: &Path, b: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt as _;
    Some(fs::metadata(a).ok()?.dev() == fs::metadata(b).ok()?.dev())
}

/// The signing key at `path`.
pub fn load_signer_at(path: &Path, name: &str) -> Result<NoteSigner, PublishError> {
    let path = path.to_owned();
    let bytes = fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PublishError::NoKey(path.clone()),
        _ => PublishError::Io {
            path: path.clone(),
            source: e,
        },
    })?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| PublishError::BadKey(path.clone()))?;
    Ok(NoteSigner::from_bytes(name, key)?)
}

/// Publishes signed checkpoints of one log.
#[derive(Debug)]
pub struct Publisher {
    signer: Signer,
    origin: String,
    dir: PathBuf,
    witness: Option<PathBuf>,
    archive: Option<Archive>,
    /// Whether the archive was found to hold the last note (checked once: a bucket is not
    /// unmounted like a directory).
    archive_checked: bool,
    last_size: Option<u64>,
}

/// What a witness holds under one name.
enum WitnessCopy {
    /// The note we gave it, or one it held already for the same tree.
    Same(String),
    /// Nothing.
    Missing,
    /// Another tree, or not a note of this log.
    Other,
}

impl Publisher {
    pub fn new(
        data_dir: &Path,
        origin: &str,
        signer: Signer,
        witness: Option<PathBuf>,
    ) -> Result<Self, PublishError> {
        let dir = checkpoints_dir(data_dir);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        if let Some(w) = &witness {
            fs::create_dir_all(w).map_err(io(w))?;
        }
        let last_size = latest_size(&dir)?;
        Ok(Self {
            signer,
            origin: origin.to_owned(),
            dir,
            witness,
            archive: None,
            archive_checked: false,
            last_size,
        })
    }

    /// This publisher, writing every note to `archive` too (before anywhere else).
    pub fn with_archive(mut self, archive: Archive) -> Self {
        self.archive = Some(archive);
        self.archive_checked = false;
        self
    }

    /// The size of the newest published checkpoint.
    pub fn last_size(&self) -> Option<u64> {
        self.last_size
    }

    /// The newest note in the log's own directory and in the witness, as (file, text):
    /// what the log must still match before it appends.
    pub fn latest_notes(&self) -> Result<Vec<(PathBuf, String)>, PublishError> {
        let mut notes: Vec<_> = latest_note(&self.dir)?.into_iter().collect();
        if let Some(w) = &self.witness {
            notes.extend(latest_note(w)?);
        }
        Ok(notes)
    }

    /// The key that opens this publisher's notes.
    pub fn verifier(&self) -> NoteVerifier {
        self.signer.verifier()
    }

    /// Signs and publishes a checkpoint of (`size`, `root`) unless one of that size exists.
    /// Returns the note when one was published.
    pub async fn publish(
        &mut self,
        size: u64,
        root: Hash,
        time: u64,
    ) -> Result<Option<String>, PublishError> {
        if self.last_size.is_some_and(|last| size <= last) {
            return Ok(None);
        }
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            time,
        };
        let mut note = self.signer.sign(&checkpoint).await?;
        // The archive first, then the witness: if either shows a fork, publish nothing
        // locally either.
        if let Some(a) = &self.archive {
            if !self.archive_checked {
                self.check_archive_holds_last(a).await?;
            }
            note = archive_once(a, &note, &checkpoint, &self.signer.verifier()).await?;
        }
        self.archive_checked = self.archive.is_some();
        if let Some(w) = &self.witness {
            self.check_witness_holds_last(w)?;
            note = write_once(
                w,
                &note_name(size),
                &note,
                &checkpoint,
                &self.signer.verifier(),
            )?;
        }
        write_atomically(&self.dir, &note_name(size), &note)?;
        self.last_size = Some(size);
        Ok(Some(note))
    }

    /// An archive that lacks the last note is another bucket or prefix than the one the
    /// log wrote to, unless it holds no checkpoint at all: then it is new, and is given
    /// the last note (which vouches for every entry before it).
    async fn check_archive_holds_last(&self, archive: &Archive) -> Result<(), PublishError> {
        let Some(size) = self.last_size else {
            return Ok(());
        };
        let local = self.dir.join(note_name(size));
        let text = fs::read_to_string(&local).map_err(io(&local))?;
        let verifier = self.signer.verifier();
        let checkpoint = open_note(&text, &verifier)?;
        let name = archived_note(size);
        match archive.get(&name).await? {
            Some(bytes) if same_tree(&bytes, &checkpoint, &verifier) => Ok(()),
            Some(_) => Err(PublishError::Fork {
                size,
                path: PathBuf::from(archive.url(&name)),
            }),
            None if archive.checkpoint_names().await?.is_empty() => {
                archive_once(archive, &text, &checkpoint, &verifier).await?;
                tracing::info!(
                    size,
                    archive = %archive.url(&name),
                    "the archive held no checkpoint: gave it the newest"
                );
                Ok(())
            }
            None => Err(PublishError::ArchiveLost {
                url: archive.url(&name),
                size,
                local,
            }),
        }
    }

    /// A witness that lost the last note it was given is not the storage it was (an
    /// unmounted mount point, say): notes written there now would vouch for nothing.
    fn check_witness_holds_last(&self, witness: &Path) -> Result<(), PublishError> {
        let Some(size) = self.last_size else {
            return Ok(());
        };
        let local = self.dir.join(note_name(size));
        let text = fs::read_to_string(&local).map_err(io(&local))?;
        let checkpoint = open_note(&text, &self.signer.verifier())?;
        match witness_copy(
            witness,
            &note_name(size),
            &checkpoint,
            &self.signer.verifier(),
        )? {
            WitnessCopy::Same(_) => Ok(()),
            WitnessCopy::Missing => Err(PublishError::WitnessLost {
                witness: witness.to_owned(),
                size,
                local,
            }),
            WitnessCopy::Other => Err(PublishError::Fork {
                size,
                path: witness.join(note_name(size)),
            }),
        }
    }
}

/// The archive's name for the note of `size`.
fn archived_note(size: u64) -> String {
    format!("checkpoints/{}", note_name(size))
}

/// Whether `bytes` is a note of this log for the same tree as `checkpoint`.
fn same_tree(bytes: &[u8], checkpoint: &Checkpoint, verifier: &NoteVerifier) -> bool {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| open_note(t, verifier).ok())
        .is_some_and(|c| c.size == checkpoint.size && c.root == checkpoint.root)
}

/// Writes `note` to the archive once; returns the note now there. A note of that size
/// for another tree is a fork; the same tree signed again is not (the archive's stands).
async fn archive_once(
    archive: &Archive,
    note: &str,
    checkpoint: &Checkpoint,
    verifier: &NoteVerifier,
) -> Result<String, PublishError> {
    let name = archived_note(checkpoint.size);
    match archive.put_once(&name, note.as_bytes()).await? {
        Written::Created => Ok(note.to_owned()),
        Written::Exists(bytes) if same_tree(&bytes, checkpoint, verifier) => {
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        Written::Exists(_) => Err(PublishError::Fork {
            size: checkpoint.size,
            path: PathBuf::from(archive.url(&name)),
        }),
    }
}

/// What `dir/name` holds, compared with `checkpoint`.
fn witness_copy(
    dir: &Path,
    name: &str,
    checkpoint: &Checkpoint,
    verifier: &NoteVerifier,
) -> Result<WitnessCopy, PublishError> {
    let path = dir.join(name);
    let existing = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WitnessCopy::Missing),
        Err(e) => return Err(PublishError::Io { path, source: e }),
    };
    // The same tree signed at another time (a crash between the witness's copy and ours,
    // then a restart) is no fork: the witness's note stands.
    Ok(match open_note(&existing, verifier) {
        Ok(c) if c.size == checkpoint.size && c.root == checkpoint.root => {
            WitnessCopy::Same(existing)
        }
        _ => WitnessCopy::Other,
    })
}

/// Creates `dir/name` with `text` unless it exists; returns the note now there. An
/// existing note for another tree is a fork.
fn write_once(
    dir: &Path,
    name: &str,
    text: &str,
    checkpoint: &Checkpoint,
    verifier: &NoteVerifier,
) -> Result<String, PublishError> {
    let path = dir.join(name);
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut f) => {
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io(&path))?;
            sync_dir(dir)?;
            Ok(text.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match witness_copy(dir, name, checkpoint, verifier)? {
                WitnessCopy::Same(existing) => Ok(existing),
                WitnessCopy::Missing | WitnessCopy::Other => Err(PublishError::Fork {
                    size: checkpoint.size,
                    path,
                }),
            }
        }
        Err(e) => Err(PublishError::Io { path, source: e }),
    }
}

fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), PublishError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}

/// Syncs a directory, so that a file just made or renamed in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// The notes in `dir`, as (file, text), in file-name order.
pub fn read_notes(dir: &Path) -> Result<Vec<(PathBuf, String)>, PublishError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(PublishError::Io {
                path: dir.to_owned(),
                source: e,
            });
        }
    };
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("note") {
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            out.push((path, text));
        }
    }
    out.sort();
    Ok(out)
}

fn latest_size(dir: &Path) -> Result<Option<u64>, PublishError> {
    Ok(latest_note_path(dir)?.map(|(size, _)| size))
}

/// The note in `dir` named for the largest size, found by its name alone.
fn latest_note_path(dir: &Path) -> Result<Option<(u64, PathBuf)>, PublishError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(PublishError::Io {
                path: dir.to_owned(),
                source: e,
            });
        }
    };
    let mut latest = None;
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("note") {
            continue;
        }
        let Some(size) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if latest.as_ref().is_none_or(|(l, _)| size > *l) {
            latest = Some((size, path));
        }
    }
    Ok(latest)
}

/// The newest note in `dir` (by the size in its name), as (file, text).
pub fn latest_note(dir: &Path) -> Result<Option<(PathBuf, String)>, PublishError> {
    match latest_note_path(dir)? {
        Some((_, path)) => {
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            Ok(Some((path, text)))
        }
        None => Ok(None),
    }
}

/// Opens a note with `verifier`; a helper for callers that only need the checkpoint.
pub fn open_note(text: &str, verifier: &NoteVerifier) -> Result<Checkpoint, CheckpointError> {
    lastmile_audit_log::open(text, verifier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lastmile_audit_log::leaf_hash;

    const ORIGIN: &str = "test.lastmile/audit";

    /// A publisher of the log in `tmp/data` (its key made on first use), witness `tmp/witness`.
    fn publisher(tmp: &Path) -> Publisher {
        let data = tmp.join("data");
        if !key_path(&data).exists() {
            init_key(&data, ORIGIN).unwrap();
        }
        let signer = Signer::File(load_signer(&data, ORIGIN).unwrap());
        Publisher::new(&data, ORIGIN, signer, Some(tmp.join("witness"))).unwrap()
    }

    #[tokio::test]
    async fn the_same_tree_signed_again_after_a_crash_is_no_fork() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = publisher(tmp.path());
        let root = leaf_hash(b"one");
        let first = p.publish(1, root, 100).await.unwrap().unwrap();
        // The crash: the witness got its copy, the data directory did not.
        fs::remove_file(checkpoints_dir(&tmp.path().join("data")).join(note_name(1))).unwrap();
        let mut p = publisher(tmp.path());
        assert_eq!(
            p.publish(1, root, 200).await.unwrap(),
            Some(first),
            "the witness's note stands"
        );
        let err = p.publish(2, leaf_hash(b"two"), 300).await.map(|_| ());
        assert!(err.is_ok(), "{err:?}");
    }

    #[tokio::test]
    async fn a_witness_that_lost_the_last_note_stops_publishing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut p = publisher(tmp.path());
        p.publish(1, leaf_hash(b"one"), 100).await.unwrap();
        // Unmounted: the mount point is an empty directory again.
        fs::rename(tmp.path().join("witness"), tmp.path().join("witness.real")).unwrap();
        fs::create_dir(tmp.path().join("witness")).unwrap();
        let err = p.publish(2, leaf_hash(b"two"), 200).await.unwrap_err();
        assert!(
            matches!(err, PublishError::WitnessLost { size: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("unmounted"), "{err}");
        assert!(!tmp.path().join("witness").join(note_name(2)).exists());
    }
}
