//! AWS KMS, or any server that speaks its API (moto in tests), through `aws-sdk-kms`.
//!
//! The client is built from explicit settings rather than `aws-config`'s provider chain:
//! the endpoint, region and key come from lastmile's config, credentials from it or
//! from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`. (That keeps
//! the dependency tree small; instance roles would need `aws-config`.) HTTPS is rustls
//! with ring, like the rest of lastmile.

use aws_sdk_kms::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    error::{DisplayErrorContext, ProvideErrorMetadata},
    primitives::Blob,
    types::{DataKeySpec, KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec},
};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{Context, DataKey, KmsError};

/// `[api.kms]` with `kind = "aws"`, and the audit log's `[audit.signing_kms]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// e.g. `https://kms.eu-west-1.amazonaws.com`, or a KMS-compatible server. Default:
    /// the region's AWS endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub region: String,
    /// The master key: key id, ARN, or `alias/…`.
    pub key_id: String,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AwsKms {
    client: Client,
    key_id: String,
}

fn failure<E>(e: aws_sdk_kms::error::SdkError<E>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e.code() {
        Some("InvalidCiphertextException" | "IncorrectKeyException") => KmsError::Refused,
        Some("NotFoundException" | "DisabledException" | "KMSInvalidStateException") => {
            KmsError::NoSuchKey(e.message().unwrap_or("unknown key").to_owned())
        }
        Some("AccessDeniedException") => {
            KmsError::Denied(e.message().unwrap_or("AccessDeniedException").to_owned())
        }
        _ => KmsError::Unavailable(DisplayErrorContext(&e).to_string()),
    }
}

/// The part of a key reference that names the key: `arn:…:key/ID` and `ID` compare equal.
fn key_tail(k: &str) -> &str {
    k.rsplit_once("key/").map_or(k, |(_, id)| id)
}

impl AwsKms {
    pub fn new(c: &AwsConfig) -> Result<Self, KmsError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let access = c.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = c
            .secret_access_key
            .clone()
            .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let (Some(access), Some(secret)) = (access, secret) else {
            return Err(KmsError::Config(
                "no AWS credentials: set access_key_id and secret_access_key in the KMS settings ([api.kms] or [audit.signing_kms]), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            ));
        };
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut b = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(c.region.clone()))
            .credentials_provider(Credentials::new(
                access,
                secret,
                env("AWS_SESSION_TOKEN"),
                None,
                "lastmile-config",
            ))
            .http_client(http);
        if let Some(e) = &c.endpoint {
            b = b.endpoint_url(e);
        }
        Ok(Self {
            client: Client::from_conf(b.build()),
            key_id: c.key_id.clone(),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The SDK client, for what this type does not wrap (tests disable a key with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Makes a new symmetric master key (for tests and first setup); returns its id.
    pub async fn create_key(&self, description: &str) -> Result<String, KmsError> {
        self.new_key(description, None).await
    }

    /// CreateKey: a symmetric key, or one of `spec` for `usage`.
    async fn new_key(
        &self,
        description: &str,
        kind: Option<(KeySpec, KeyUsageType)>,
    ) -> Result<String, KmsError> {
        let mut call = self.client.create_key().description(description);
        if let Some((spec, usage)) = kind {
            call = call.key_spec(spec).key_usage(usage);
        }
        let out = call.send().await.map_err(failure)?;
        out.key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| KmsError::Unavailable("CreateKey returned no key".into()))
    }

    /// The same KMS with another master key.
    pub fn with_key(&self, key_id: &str) -> Self {
        Self {
            client: self.client.clone(),
            key_id: key_id.to_owned(),
        }
    }

    pub async fn generate_data_key(&self, context: &Context) -> Result<DataKey, KmsError> {
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context.to_map()))
            .send()
            .await
            .map_err(failure)?;
        let plain = out
            .plaintext()
            .ok_or_else(|| KmsError::Unavailable("GenerateDataKey returned no plaintext".into()))?;
        let plaintext: [u8; 32] = plain.as_ref().try_into().map_err(|_| {
            KmsError::Unavailable("GenerateDataKey returned a key that is not 32 bytes".into())
        })?;
        let wrapped = out
            .ciphertext_blob()
            .ok_or_else(|| KmsError::Unavailable("GenerateDataKey returned no ciphertext".into()))?
            .as_ref()
            .to_vec();
        Ok(DataKey {
            plaintext: Zeroizing::new(plaintext),
            wrapped,
            key_id: out
                .key_id()
                .map_or_else(|| self.key_id.clone(), str::to_owned),
        })
    }

    pub async fn decrypt(
        &self,
        wrapped: &[u8],
        key_id: &str,
        context: &Context,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let out = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .key_id(key_id)
            .set_encryption_context(Some(context.to_map()))
            .send()
            .await
            .map_err(failure)?;
        // AWS refuses a KeyId that is not the ciphertext's (IncorrectKeyException); check
        // it here too, so a KMS-compatible server that ignores KeyId cannot unwrap under
        // another key than the one recorded.
        if let Some(used) = out.key_id()
            && !key_id.starts_with("alias/")
            && key_tail(used) != key_tail(key_id)
        {
            return Err(KmsError::Refused);
        }
        let plain = out
            .plaintext()
            .ok_or_else(|| KmsError::Unavailable("Decrypt returned no plaintext".into()))?;
        Ok(Zeroizing::new(plain.as_ref().to_vec()))
    }

    pub async fn re_encrypt(
        &self,
        wrapped: &[u8],
        from: &str,
        to: &str,
        context: &Context,
    ) -> Result<Vec<u8>, KmsError> {
        let out = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped))
            .source_key_id(from)
            .destination_key_id(to)
            .set_source_encryption_context(Some(context.to_map()))
            .set_destination_encryption_context(Some(context.to_map()))
            .send()
            .await
            .map_err(failure)?;
        Ok(out
            .ciphertext_blob()
            .ok_or_else(|| KmsError::Unavailable("ReEncrypt returned no ciphertext".into()))?
            .as_ref()
            .to_vec())
    }

    /// Makes a new ECC_NIST_P256 signing key (for tests and first setup); returns its id.
    pub async fn create_signing_key(&self, description: &str) -> Result<String, KmsError> {
        self.new_key(
            description,
            Some((KeySpec::EccNistP256, KeyUsageType::SignVerify)),
        )
        .await
    }

    /// The DER SubjectPublicKeyInfo of this KMS's key, which must be an `ECC_NIST_P256`
    /// key for `SIGN_VERIFY` (what [`Self::sign_ecdsa_p256`] uses); any other key is
    /// refused with what to create instead.
    pub async fn p256_public_key(&self) -> Result<Vec<u8>, KmsError> {
        let out = self
            .client
            .get_public_key()
            .key_id(&self.key_id)
            .send()
            .await
            .map_err(failure)?;
        // `KeySpec`, or the older `CustomerMasterKeySpec` that AWS still returns beside it
        // (and that some KMS-compatible servers return alone).
        #[allow(deprecated)]
        let spec = out.key_spec().or(match out.customer_master_key_spec() {
            Some(aws_sdk_kms::types::CustomerMasterKeySpec::EccNistP256) => {
                Some(&KeySpec::EccNistP256)
            }
            _ => None,
        });
        let usage = out.key_usage();
        if spec != Some(&KeySpec::EccNistP256) || usage != Some(&KeyUsageType::SignVerify) {
            return Err(KmsError::Config(format!(
                "KMS key `{}` is a {} key for {}; signing needs an ECC_NIST_P256 key for \
                 SIGN_VERIFY (create one with key spec ECC_NIST_P256 and key usage SIGN_VERIFY)",
                self.key_id,
                spec.map_or("(unknown spec)", KeySpec::as_str),
                usage.map_or("(unknown usage)", KeyUsageType::as_str),
            )));
        }
        out.public_key()
            .map(|k| k.as_ref().to_vec())
            .ok_or_else(|| KmsError::Unavailable("GetPublicKey returned no key".into()))
    }

    /// Signs `message` (at most 4096 bytes, the KMS's limit for a raw message) with
    /// ECDSA_SHA_256: the KMS hashes it and returns the ASN.1 DER signature.
    pub async fn sign_ecdsa_p256(&self, message: &[u8]) -> Result<Vec<u8>, KmsError> {
        if message.len() > 4096 {
            return Err(KmsError::Config(format!(
                "a {}-byte message is over the KMS's 4096-byte limit for signing",
                message.len()
            )));
        }
        let out = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(failure)?;
        out.signature()
            .map(|s| s.as_ref().to_vec())
            .ok_or_else(|| KmsError::Unavailable("Sign returned no signature".into()))
    }
}
