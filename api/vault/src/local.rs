//! The local KMS: master keys (AES-256) in one JSON file, 0600, in a 0700 directory.
//! Wrapping is AES-256-GCM with the key id and the encryption context as associated
//! data, so a wrapped key opens only under the same key and the same context.
//!
//! Wrapped form: `LMK1`, the key id (one length byte, then bytes), a 12-byte random
//! nonce, then the ciphertext and tag.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Context, DataKey, KmsError};

const MAGIC: &[u8; 4] = b"LMK1";
const FILE: &str = "master-keys.json";

#[derive(Serialize, Deserialize)]
struct OnDisk {
    current: String,
    /// Key id → base64 key.
    keys: BTreeMap<String, String>,
}

type Keys = BTreeMap<String, Zeroizing<[u8; 32]>>;

pub struct LocalKms {
    path: PathBuf,
    current: String,
    keys: Keys,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("path", &self.path)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N], KmsError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| KmsError::Unavailable("the system random number generator failed".into()))?;
    Ok(b)
}

pub(crate) fn aes_key(key: &[u8]) -> Result<LessSafeKey, KmsError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| KmsError::Refused)
}

fn aad(key_id: &str, context: &Context) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(MAGIC);
    a.extend_from_slice(
        &u32::try_from(key_id.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    a.extend_from_slice(key_id.as_bytes());
    a.extend_from_slice(&context.aad());
    a
}

fn new_key_id() -> Result<String, KmsError> {
    Ok(format!(
        "local-{}",
        random::<8>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

impl LocalKms {
    /// Opens the key file in `dir`, creating the directory and a first key if there is none.
    pub fn open(dir: &Path) -> Result<Self, KmsError> {
        let path = dir.join(FILE);
        let store = |why: String| KmsError::Store {
            path: path.clone(),
            why,
        };
        if !path.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| store(e.to_string()))?;
            let id = new_key_id()?;
            let mut keys = BTreeMap::new();
            keys.insert(id.clone(), Zeroizing::new(random::<32>()?));
            write(&path, &id, &keys, true)?;
        }
        let text =
            Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| store(e.to_string()))?);
        let disk: OnDisk = serde_json::from_str(&text)
            .map_err(|e| store(format!("not a lastmile key file: {e}")))?;
        let mut keys = BTreeMap::new();
        for (id, b64) in disk.keys {
            let raw = Zeroizing::new(
                B64.decode(b64)
                    .map_err(|e| store(format!("key {id}: {e}")))?,
            );
            let key: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| store(format!("key {id} is not 32 bytes")))?;
            keys.insert(id, Zeroizing::new(key));
        }
        if !keys.contains_key(&disk.current) {
            return Err(store(format!(
                "the current key `{}` is not in the file",
                disk.current
            )));
        }
        Ok(Self {
            path,
            current: disk.current,
            keys,
        })
    }

    pub fn current_key(&self) -> &str {
        &self.current
    }

    /// Adds a new master key and makes it current (the old ones stay, to unwrap what
    /// they wrapped until everything is re-wrapped). Returns its id. Takes effect for
    /// this process and every process that opens the file afterwards.
    pub fn new_key(&mut self) -> Result<String, KmsError> {
        let id = new_key_id()?;
        self.keys
            .insert(id.clone(), Zeroizing::new(random::<32>()?));
        if let Err(e) = write(&self.path, &id, &self.keys, false) {
            self.keys.remove(&id);
            return Err(e);
        }
        self.current = id.clone();
        Ok(id)
    }

    fn with_key<T>(
        &self,
        id: &str,
        f: impl FnOnce(&LessSafeKey) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| KmsError::NoSuchKey(id.to_owned()))?;
        f(&aes_key(key.as_slice())?)
    }

    fn wrap(&self, key_id: &str, plaintext: &[u8], context: &Context) -> Result<Vec<u8>, KmsError> {
        let id_len =
            u8::try_from(key_id.len()).map_err(|_| KmsError::Config("key id too long".into()))?;
        let nonce = random::<NONCE_LEN>()?;
        let mut buf = plaintext.to_vec();
        self.with_key(key_id, |k| {
            k.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key_id, context)),
                &mut buf,
            )
            .map_err(|_| KmsError::Unavailable("sealing failed".into()))
        })?;
        let mut out = Vec::with_capacity(4 + 1 + key_id.len() + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.push(id_len);
        out.extend_from_slice(key_id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    pub fn generate_data_key(&self, context: &Context) -> Result<DataKey, KmsError> {
        let plaintext = Zeroizing::new(random::<32>()?);
        let wrapped = self.wrap(&self.current, plaintext.as_slice(), context)?;
        Ok(DataKey {
            plaintext,
            wrapped,
            key_id: self.current.clone(),
        })
    }

    pub fn decrypt(
        &self,
        wrapped: &[u8],
        key_id: &str,
        context: &Context,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let rest = wrapped
            .strip_prefix(MAGIC.as_slice())
            .ok_or(KmsError::Refused)?;
        let (&len, rest) = rest.split_first().ok_or(KmsError::Refused)?;
        let (id, rest) = rest
            .split_at_checked(usize::from(len))
            .ok_or(KmsError::Refused)?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or(KmsError::Refused)?;
        if id != key_id.as_bytes() {
            return Err(KmsError::Refused);
        }
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KmsError::Refused)?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let n = self.with_key(key_id, |k| {
            k.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key_id, context)),
                &mut buf,
            )
            .map(|p| p.len())
            .map_err(|_| KmsError::Refused)
        })?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn re_encrypt(
        &self,
        wrapped: &[u8],
        from: &str,
        to: &str,
        context: &Context,
    ) -> Result<Vec<u8>, KmsError> {
        let plain = self.decrypt(wrapped, from, context)?;
        self.wrap(to, &plain, context)
    }
}

/// Writes the key file: a new file when `new`, else atomically replaced (temp file,
/// fsync, rename, fsync the directory), 0600.
fn write(path: &Path, current: &str, keys: &Keys, new: bool) -> Result<(), KmsError> {
    let store = |why: String| KmsError::Store {
        path: path.to_owned(),
        why,
    };
    let disk = OnDisk {
        current: current.to_owned(),
        keys: keys
            .iter()
            .map(|(k, v)| (k.clone(), B64.encode(v.as_slice())))
            .collect(),
    };
    let text =
        Zeroizing::new(serde_json::to_string_pretty(&disk).map_err(|e| store(e.to_string()))?);
    let tmp = path.with_extension("json.new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(if new { path } else { &tmp })
        .map_err(|e| store(e.to_string()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| store(e.to_string()))?;
    f.sync_all().map_err(|e| store(e.to_string()))?;
    if !new {
        std::fs::rename(&tmp, path).map_err(|e| store(e.to_string()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| store(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wraps_open_only_under_the_same_key_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let mut kms = LocalKms::open(&dir.path().join("kms")).unwrap();
        let ctx = Context::credential("acme", "db", 1);
        let dk = kms.generate_data_key(&ctx).unwrap();
        assert_eq!(
            kms.decrypt(&dk.wrapped, &dk.key_id, &ctx)
                .unwrap()
                .as_slice(),
            dk.plaintext.as_slice()
        );
        // Another context.
        assert!(matches!(
            kms.decrypt(
                &dk.wrapped,
                &dk.key_id,
                &Context::credential("acme", "db", 2)
            ),
            Err(KmsError::Refused)
        ));
        // A changed byte anywhere.
        for i in 0..dk.wrapped.len() {
            let mut t = dk.wrapped.clone();
            t[i] ^= 1;
            assert!(kms.decrypt(&t, &dk.key_id, &ctx).is_err(), "byte {i}");
        }
        // Another key.
        let old = dk.key_id.clone();
        let new = kms.new_key().unwrap();
        assert!(matches!(
            kms.decrypt(&dk.wrapped, &new, &ctx),
            Err(KmsError::Refused)
        ));
        // Re-wrapped under the new key, and the file reopened.
        let moved = kms.re_encrypt(&dk.wrapped, &old, &new, &ctx).unwrap();
        let again = LocalKms::open(&dir.path().join("kms")).unwrap();
        assert_eq!(again.current_key(), new);
        assert_eq!(
            again.decrypt(&moved, &new, &ctx).unwrap().as_slice(),
            dk.plaintext.as_slice()
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("kms").join(FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
