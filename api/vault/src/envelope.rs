//! Envelope encryption: a fresh data key from the KMS per secret, the secret sealed with
//! it (AES-256-GCM, the encryption context as associated data), and only the wrapped data
//! key stored beside it.

use ring::aead::{Aad, NONCE_LEN, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{
    Context, Kms, KmsError,
    local::{aes_key, random},
};

/// A sealed secret, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The master key the data key is wrapped under.
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    /// The secret and its GCM tag.
    pub ciphertext: Vec<u8>,
}

/// Seals `secret` under a new data key bound to `context`.
pub async fn seal(kms: &Kms, context: &Context, secret: &[u8]) -> Result<Sealed, KmsError> {
    let dk = kms.generate_data_key(context).await?;
    let nonce = random::<NONCE_LEN>()?;
    let mut buf = secret.to_vec();
    aes_key(dk.plaintext.as_slice())?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.aad()),
            &mut buf,
        )
        .map_err(|_| KmsError::Unavailable("sealing failed".into()))?;
    Ok(Sealed {
        key_id: dk.key_id,
        wrapped_key: dk.wrapped,
        nonce,
        ciphertext: buf,
    })
}

/// Opens a sealed secret: the KMS unwraps its data key under `context`, which must also
/// be the context it was sealed with.
pub async fn open(
    kms: &Kms,
    context: &Context,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let key = kms
        .decrypt(&sealed.wrapped_key, &sealed.key_id, context)
        .await?;
    let mut buf = Zeroizing::new(sealed.ciphertext.clone());
    let n = aes_key(&key)?
        .open_in_place(
            Nonce::assume_unique_for_key(sealed.nonce),
            Aad::from(context.aad()),
            &mut buf,
        )
        .map_err(|_| KmsError::Refused)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// The same secret with its data key wrapped under master key `to`: the secret itself is
/// never decrypted, and with AWS KMS neither is the data key outside the KMS.
pub async fn rewrap(
    kms: &Kms,
    context: &Context,
    sealed: &Sealed,
    to: &str,
) -> Result<Sealed, KmsError> {
    let wrapped_key = kms
        .re_encrypt(&sealed.wrapped_key, &sealed.key_id, to, context)
        .await?;
    Ok(Sealed {
        key_id: to.to_owned(),
        wrapped_key,
        ..sealed.clone()
    })
}
