//! lastmile's credential vault.
//!
//! - [`Kms`]: the key management service that holds the master keys and never lets them
//!   out: AWS KMS (or any server speaking its API, such as moto) through `aws-sdk-kms`,
//!   or a local file-backed KMS, the embedded default.
//! - [`Context`]: the encryption context (organisation, resource, version) every wrap is
//!   bound to; the KMS refuses to unwrap under any other.
//! - [`envelope`]: a data key per secret from the KMS, the secret sealed with it
//!   (AES-256-GCM, the same context as associated data), and re-wrapping under a new
//!   master key without the secret ever being decrypted.

mod aws;
mod context;
pub mod envelope;
mod kms;
mod local;

pub use aws::{AwsConfig, AwsKms};
pub use context::Context;
pub use envelope::Sealed;
pub use kms::{DataKey, Kms, KmsConfig, KmsError};
pub use local::LocalKms;
