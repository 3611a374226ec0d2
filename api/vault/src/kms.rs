//! The KMS: master keys that never leave it; data keys generated, wrapped and unwrapped
//! under an encryption context.

use std::path::PathBuf;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{AwsConfig, Context, LocalKms, aws::AwsKms};

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The KMS would not unwrap: the context differs, the key differs, or the ciphertext
    /// was changed. (KMSs do not say which, on purpose.)
    #[error(
        "the KMS refused to decrypt: the encryption context or the key differs from the ones it was wrapped under, or the ciphertext was changed"
    )]
    Refused,
    #[error(
        "the KMS denied access ({0}): check that this key's policy lets lastmile-api use it, and that it is the key the secret was wrapped under"
    )]
    Denied(String),
    #[error("the KMS key `{0}` does not exist or is not usable")]
    NoSuchKey(String),
    #[error("the KMS cannot be reached or failed: {0}")]
    Unavailable(String),
    #[error("{path}: {why}")]
    Store { path: PathBuf, why: String },
    #[error("the KMS configuration is not usable: {0}")]
    Config(String),
}

/// A new data key: the plaintext to use once and forget, and its wrapped form to store.
#[derive(Debug)]
pub struct DataKey {
    pub plaintext: Zeroizing<[u8; 32]>,
    pub wrapped: Vec<u8>,
    pub key_id: String,
}

/// `[api.kms]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KmsConfig {
    /// Master keys in a 0600 file under `dir` (default `<data_dir>/kms`).
    #[default]
    Local,
    /// AWS KMS, or any server speaking its API.
    Aws(AwsConfig),
}

/// A KMS.
#[derive(Debug)]
pub enum Kms {
    Local(LocalKms),
    Aws(AwsKms),
}

impl Kms {
    /// Opens the configured KMS; a local one lives in `local_dir` (created on first use).
    pub async fn open(config: &KmsConfig, local_dir: &std::path::Path) -> Result<Self, KmsError> {
        Ok(match config {
            KmsConfig::Local => Self::Local(LocalKms::open(local_dir)?),
            KmsConfig::Aws(c) => Self::Aws(AwsKms::new(c)?),
        })
    }

    /// The key new data keys are wrapped under.
    pub fn current_key(&self) -> &str {
        match self {
            Self::Local(k) => k.current_key(),
            Self::Aws(k) => k.key_id(),
        }
    }

    pub async fn generate_data_key(&self, context: &Context) -> Result<DataKey, KmsError> {
        match self {
            Self::Local(k) => k.generate_data_key(context),
            Self::Aws(k) => k.generate_data_key(context).await,
        }
    }

    /// Unwraps a data key. Fails with [`KmsError::Refused`] under another context or key,
    /// or when the wrapped key was changed.
    pub async fn decrypt(
        &self,
        wrapped: &[u8],
        key_id: &str,
        context: &Context,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        match self {
            Self::Local(k) => k.decrypt(wrapped, key_id, context),
            Self::Aws(k) => k.decrypt(wrapped, key_id, context).await,
        }
    }

    /// Wraps a data key under another master key without it leaving the KMS (AWS
    /// `ReEncrypt`; the local KMS unwraps and wraps inside this process).
    pub async fn re_encrypt(
        &self,
        wrapped: &[u8],
        from: &str,
        to: &str,
        context: &Context,
    ) -> Result<Vec<u8>, KmsError> {
        match self {
            Self::Local(k) => k.re_encrypt(wrapped, from, to, context),
            Self::Aws(k) => k.re_encrypt(wrapped, from, to, context).await,
        }
    }
}
