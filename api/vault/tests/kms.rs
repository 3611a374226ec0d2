//! Envelope encryption against both KMSs: the local one, and the AWS KMS API served by
//! moto on loopback. The same checks run against each.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use lastmile_testkit::MotoServer;
use lastmile_vault::{AwsConfig, Context, Kms, KmsConfig, KmsError, envelope};

const SECRET: &[u8] = b"correct horse battery staple";

/// AWS answers a wrong context or a changed ciphertext with InvalidCiphertextException
/// (`Refused`); moto with AccessDeniedException for some (`Denied`). Both refuse.
fn refused(e: &KmsError) -> bool {
    matches!(e, KmsError::Refused | KmsError::Denied(_))
}

/// Seals, opens, and every way opening must fail; then rotation to `new_key`.
async fn envelope_checks(kms: &Kms, new_key: &str) {
    let ctx = Context::credential("acme", "orders-db", 1);
    let sealed = envelope::seal(kms, &ctx, SECRET).await.unwrap();
    assert!(!sealed.ciphertext.windows(SECRET.len()).any(|w| w == SECRET));
    assert_eq!(
        envelope::open(kms, &ctx, &sealed).await.unwrap().as_slice(),
        SECRET
    );

    // A wrong encryption context: another resource, another version, another org.
    for wrong in [
        Context::credential("acme", "billing-db", 1),
        Context::credential("acme", "orders-db", 2),
        Context::credential("evil", "orders-db", 1),
    ] {
        let e = envelope::open(kms, &wrong, &sealed).await.unwrap_err();
        assert!(refused(&e), "{e}");
    }
    // A different key.
    let other = lastmile_vault::Sealed {
        key_id: new_key.to_owned(),
        ..sealed.clone()
    };
    let e = envelope::open(kms, &ctx, &other).await.unwrap_err();
    assert!(refused(&e) || matches!(e, KmsError::NoSuchKey(_)), "{e}");
    // A tampered ciphertext, and a tampered wrapped key.
    let mut t = sealed.clone();
    t.ciphertext[3] ^= 0x40;
    assert!(matches!(
        envelope::open(kms, &ctx, &t).await.unwrap_err(),
        KmsError::Refused
    ));
    let mut t = sealed.clone();
    let last = t.wrapped_key.len() - 1;
    t.wrapped_key[last] ^= 1;
    let e = envelope::open(kms, &ctx, &t).await.unwrap_err();
    assert!(refused(&e), "{e}");

    // Rotation: re-wrapped under the new key without opening the secret; it opens under
    // the new key, and no longer claims the old one.
    let moved = envelope::rewrap(kms, &ctx, &sealed, new_key).await.unwrap();
    assert_eq!(moved.ciphertext, sealed.ciphertext);
    assert_ne!(moved.wrapped_key, sealed.wrapped_key);
    assert_eq!(
        envelope::open(kms, &ctx, &moved).await.unwrap().as_slice(),
        SECRET
    );
    let stale = lastmile_vault::Sealed {
        key_id: sealed.key_id.clone(),
        ..moved.clone()
    };
    assert!(envelope::open(kms, &ctx, &stale).await.is_err());
    // Rotation keeps the context binding.
    assert!(
        envelope::rewrap(kms, &Context::credential("acme", "x", 1), &sealed, new_key)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn local_kms() {
    let dir = tempfile::tempdir().unwrap();
    let mut local = lastmile_vault::LocalKms::open(dir.path()).unwrap();
    let first = local.current_key().to_owned();
    let new_key = local.new_key().unwrap();
    // Seal under the first key: reopen with it current.
    let kms = Kms::Local(lastmile_vault::LocalKms::open(dir.path()).unwrap());
    assert_eq!(kms.current_key(), new_key);
    assert_ne!(first, new_key);
    envelope_checks(&kms, &first).await;
}

#[tokio::test]
async fn aws_kms_api_on_moto() {
    let moto = MotoServer::start().unwrap();
    let config = |key: &str| AwsConfig {
        endpoint: Some(moto.endpoint()),
        region: "eu-west-1".into(),
        key_id: key.into(),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    };
    let Kms::Aws(bootstrap) = Kms::open(
        &KmsConfig::Aws(config("none")),
        std::path::Path::new("/nonexistent"),
    )
    .await
    .unwrap() else {
        panic!("not aws")
    };
    let a = bootstrap.create_key("lastmile test A").await.unwrap();
    let b = bootstrap.create_key("lastmile test B").await.unwrap();
    let kms = Kms::open(
        &KmsConfig::Aws(config(&a)),
        std::path::Path::new("/nonexistent"),
    )
    .await
    .unwrap();
    envelope_checks(&kms, &b).await;
    // A key that does not exist.
    let missing = Kms::open(
        &KmsConfig::Aws(config("00000000-0000-0000-0000-000000000000")),
        std::path::Path::new("/nonexistent"),
    )
    .await
    .unwrap();
    let e = envelope::seal(&missing, &Context::credential("acme", "db", 1), SECRET)
        .await
        .unwrap_err();
    assert!(matches!(e, KmsError::NoSuchKey(_)), "{e}");
}

#[tokio::test]
async fn a_dead_kms_is_said_to_be_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kms = Kms::open(
        &KmsConfig::Aws(AwsConfig {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: "eu-west-1".into(),
            key_id: "k".into(),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
        }),
        std::path::Path::new("/nonexistent"),
    )
    .await
    .unwrap();
    let e = envelope::seal(&kms, &Context::credential("acme", "db", 1), SECRET)
        .await
        .unwrap_err();
    assert!(matches!(e, KmsError::Unavailable(_)), "{e}");
}
