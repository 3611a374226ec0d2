//! Verifying the audit service without a copy of its data, as a Certificate Transparency
//! monitor checks a log: keep the last checkpoint verified, and at each check ask the
//! service for its newest checkpoint and a consistency proof from the one kept
//! (RFC 9162 §2.1.4). A newest checkpoint that does not extend the one kept — smaller, the
//! same size with another root, or a proof that does not verify — is a fork: the history
//! the monitor saw was rewritten, even if re-signed with the same key. Both notes are
//! the evidence.

use lastmile_audit_log::{
    Checkpoint, Hash, NoteVerifier, leaf_hash, open, verify_consistency, verify_inclusion,
};

use crate::envelope::Envelope;
use serde::{Deserialize, Serialize};

/// What a monitor keeps between checks: the last checkpoint it verified, whole (the
/// signed note is the evidence should the log later disagree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub note: String,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing kept before: this checkpoint is kept from now on (trust on first use,
    /// unless the caller seeded the monitor with a checkpoint it trusts).
    First(Checkpoint),
    /// The newest checkpoint is the one kept.
    Unchanged(Checkpoint),
    /// The log grew, and the proof shows the kept checkpoint's entries are unchanged.
    Extended { from: Checkpoint, to: Checkpoint },
    /// The log's history is not the one kept.
    Fork {
        kept: Checkpoint,
        kept_note: String,
        served: Checkpoint,
        served_note: String,
        why: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot ask the audit service at {url}")]
    Request { url: String, source: reqwest::Error },
    #[error("the audit service at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the audit service's checkpoint does not verify with the pinned key")]
    BadCheckpoint(#[source] lastmile_audit_log::CheckpointError),
    #[error(
        "the checkpoint kept from the last check does not verify with the pinned key (was the key changed?)"
    )]
    BadKept(#[source] lastmile_audit_log::CheckpointError),
    #[error("the audit service's consistency proof is not a list of hashes: {0}")]
    BadProof(String),
}

#[derive(Debug, Deserialize)]
struct ProofBody {
    proof: Vec<String>,
}

fn hash(hex: &str) -> Option<Hash> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Hash(out))
}

/// The hashes of a proof the service answered (`{"proof": ["hex", …]}`).
fn proof_of(body: &str) -> Result<Vec<Hash>, MonitorError> {
    let proof: ProofBody =
        serde_json::from_str(body).map_err(|e| MonitorError::BadProof(e.to_string()))?;
    proof
        .proof
        .iter()
        .map(|h| hash(h).ok_or_else(|| MonitorError::BadProof(format!("`{h}` is not a hash"))))
        .collect()
}

async fn get(client: &reqwest::Client, url: String) -> Result<String, MonitorError> {
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|source| MonitorError::Request {
            url: url.clone(),
            source,
        })?;
    let status = resp.status();
    let body = resp.text().await.map_err(|source| MonitorError::Request {
        url: url.clone(),
        source,
    })?;
    if !status.is_success() {
        return Err(MonitorError::Refused {
            url,
            status: status.as_u16(),
            body,
        });
    }
    Ok(body)
}

/// One check of the service at `base` (e.g. `https://audit.internal:7443`) against what
/// was `kept`; returns what it found and what to keep next (unchanged on a fork: the
/// kept checkpoint stays the evidence).
pub async fn check(
    client: &reqwest::Client,
    base: &str,
    verifier: &NoteVerifier,
    kept: Option<&Kept>,
) -> Result<(Found, Option<Kept>), MonitorError> {
    let base = base.trim_end_matches('/');
    let served_note = get(client, format!("{base}/v1/checkpoint")).await?;
    let served = open(&served_note, verifier).map_err(MonitorError::BadCheckpoint)?;
    let Some(kept) = kept else {
        return Ok((Found::First(served), Some(Kept { note: served_note })));
    };
    let old = open(&kept.note, verifier).map_err(MonitorError::BadKept)?;
    let fork = |why: String| Found::Fork {
        kept: old.clone(),
        kept_note: kept.note.clone(),
        served: served.clone(),
        served_note: served_note.clone(),
        why,
    };
    if served.size < old.size {
        let why = format!(
            "the log now holds {} entries, fewer than the {} it had signed",
            served.size, old.size
        );
        return Ok((fork(why), Some(kept.clone())));
    }
    if served.size == old.size {
        if served.root == old.root {
            return Ok((Found::Unchanged(served), Some(kept.clone())));
        }
        let why = format!(
            "two roots for the same {} entries: {} was signed before, {} now",
            old.size, old.root, served.root
        );
        return Ok((fork(why), Some(kept.clone())));
    }
    let body = get(
        client,
        format!(
            "{base}/v1/proof/consistency?old={}&new={}",
            old.size, served.size
        ),
    )
    .await;
    let body = match body {
        Ok(b) => b,
        // A service that cannot prove the old tree is part of the new one does not hold it.
        Err(MonitorError::Refused { body, .. }) => {
            let why = format!("the service cannot prove the old checkpoint is a prefix: {body}");
            return Ok((fork(why), Some(kept.clone())));
        }
        Err(e) => return Err(e),
    };
    let proof = proof_of(&body)?;
    match verify_consistency(old.size, served.size, &old.root, &served.root, &proof) {
        Ok(()) => Ok((
            Found::Extended {
                from: old,
                to: served,
            },
            Some(Kept { note: served_note }),
        )),
        Err(e) => {
            let why = format!(
                "the consistency proof from {} to {} entries does not verify ({e}): the entries \
                 signed before are not the first of the log now",
                old.size, served.size
            );
            Ok((fork(why), Some(kept.clone())))
        }
    }
}

/// Whether `entry` (an envelope as the log stores it, e.g. a line of `/v1/entries`) is in
/// the log: the newest checkpoint, verified against `verifier`, and an inclusion proof
/// for the entry's position (RFC 9162 §2.1.3). `Ok(Err(why))`: it is not.
pub async fn prove(
    client: &reqwest::Client,
    base: &str,
    verifier: &NoteVerifier,
    entry: &Envelope,
) -> Result<Result<Checkpoint, String>, MonitorError> {
    let base = base.trim_end_matches('/');
    let note = get(client, format!("{base}/v1/checkpoint")).await?;
    let checkpoint = open(&note, verifier).map_err(MonitorError::BadCheckpoint)?;
    if entry.seq >= checkpoint.size {
        return Ok(Err(format!(
            "entry {} is not covered by the newest checkpoint ({} entries) yet",
            entry.seq, checkpoint.size
        )));
    }
    let body = get(
        client,
        format!(
            "{base}/v1/proof/inclusion?index={}&size={}",
            entry.seq, checkpoint.size
        ),
    )
    .await?;
    let proof = proof_of(&body)?;
    let leaf = leaf_hash(&entry.to_canonical());
    Ok(
        match verify_inclusion(&leaf, entry.seq, checkpoint.size, &proof, &checkpoint.root) {
            Ok(()) => Ok(checkpoint),
            Err(e) => Err(format!(
                "entry {} as shown is not the log's entry {} under its signed checkpoint of {} entries ({e}): it was changed, or never logged",
                entry.seq, entry.seq, checkpoint.size
            )),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_read_as_the_service_prints_them() {
        let h = Hash([0xab; 32]);
        assert_eq!(hash(&h.to_string()), Some(h));
        assert_eq!(hash("ab"), None);
        assert_eq!(hash(&"zz".repeat(32)), None);
    }
}
