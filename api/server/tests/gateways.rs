//! Gateway identities: one-time enrollment, renewal over mutual TLS, the revocation
//! stream by certificate, and the certificates the API must refuse.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use lastmile_api_client::ApiClient;
use lastmile_proto::wire::{self, Enroll, GatewayCertificate, GatewayToken, Renew};
use rcgen::{CertificateParams, Issuer, KeyPair, SanType};
use reqwest::Method;
use serde_json::json;
use support::{Store, start};

fn csr(key: &KeyPair) -> String {
    // The gateway asks for a name it should not get: only its key is used.
    CertificateParams::new(vec!["evil.example".to_owned()])
        .unwrap()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

fn sans(pem: &str) -> Vec<String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect()
}

async fn gateway_lifecycle(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let token: GatewayToken = api
        .client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/gateways/tokens",
            Some(&json!({"name": "gw1", "addresses": ["gw1.internal", "127.0.0.1"]})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();

    // Enrollment: the key is the gateway's own; the names are the admin's.
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert: GatewayCertificate = api
        .client
        .post(
            "/v1/gateways/enroll",
            &Enroll {
                token: token.token.clone(),
                csr: csr(&key),
            },
        )
        .await
        .unwrap();
    let names = sans(&cert.certificate);
    assert!(
        names.iter().any(|n| n.contains("urn:lastmile:gateway:gw1")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("gw1.internal")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("evil")), "{names:?}");

    // The token is spent; a made-up one is refused; a CSR not signed by its key is refused.
    let again = api
        .client
        .post::<_, GatewayCertificate>(
            "/v1/gateways/enroll",
            &Enroll {
                token: token.token.clone(),
                csr: csr(&key),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(again.code(), Some("bad_token"));
    let t2: GatewayToken = api
        .client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/gateways/tokens",
            Some(&json!({"name": "gw2"})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let mut bad = csr(&key);
    bad.replace_range(100..104, "AAAA");
    let e = api
        .client
        .post::<_, GatewayCertificate>(
            "/v1/gateways/enroll",
            &Enroll {
                token: t2.token.clone(),
                csr: bad,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_csr"));

    // A gateway key must be Ed25519 (it signs the gateway's requests too).
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let e = api
        .client
        .post::<_, GatewayCertificate>(
            "/v1/gateways/enroll",
            &Enroll {
                token: t2.token.clone(),
                csr: csr(&p256),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("bad_csr"));
    assert!(e.to_string().contains("Ed25519"), "{e}");

    // Renewal over mutual TLS with the current certificate, for a new key.
    let gw = ApiClient::new(
        &api.base,
        &api.ca,
        Some((&cert.certificate, &key.serialize_pem())),
    )
    .unwrap();
    let key2 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let renewed: GatewayCertificate = gw
        .post("/v1/gateways/renew", &Renew { csr: csr(&key2) })
        .await
        .unwrap();
    assert_eq!(sans(&renewed.certificate), names);
    let e = api
        .client
        .post::<_, GatewayCertificate>("/v1/gateways/renew", &Renew { csr: csr(&key2) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("gateway_certificate_required"));

    // The revocation stream, authenticated by the gateway certificate alone.
    let gw2 = ApiClient::new(
        &api.base,
        &api.ca,
        Some((&renewed.certificate, &key2.serialize_pem())),
    )
    .unwrap();
    let mut stream = gw2.stream_unsigned("/v1/revocations").await.unwrap();
    assert_eq!(stream.status(), 200);
    let (alice, _) = api.user("alice").await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r: wire::Revocation = api
        .client
        .call(
            &admin,
            Method::POST,
            &format!("/v1/admin/sessions/{}/revoke", alice.login.session),
            None,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut text = String::new();
        while !text.contains("\n\n") || !text.contains("event: revoke") {
            text.push_str(std::str::from_utf8(&stream.chunk().await.unwrap().unwrap()).unwrap());
        }
        text
    })
    .await
    .unwrap();
    assert!(chunk.contains(&format!("id: {}", r.seq)), "{chunk}");
    assert!(chunk.contains(&alice.login.session), "{chunk}");
    // Without a certificate or a signature, no stream.
    let a = api
        .client
        .send(Method::GET, "/v1/revocations", None)
        .await
        .unwrap();
    assert_eq!(a.status, 401);

    // Certificates the API must refuse at the handshake: expired, and from another CA.
    let ca_pem = lastmile_api::pki::open_key(
        &api.app.config.keys_dir(),
        "ca.key.sealed",
        &api.app.kms,
        "acme",
    )
    .await
    .unwrap();
    let ca_key = KeyPair::from_pem(&ca_pem).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&api.ca, ca_key).unwrap();
    let old_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(wire::uri::gateway("gw1").try_into().unwrap())];
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = p.signed_by(&old_key, &issuer).unwrap();
    let with_expired = ApiClient::new(
        &api.base,
        &api.ca,
        Some((&expired.pem(), &old_key.serialize_pem())),
    )
    .unwrap();
    let e = with_expired
        .post::<_, GatewayCertificate>("/v1/gateways/renew", &Renew { csr: csr(&old_key) })
        .await
        .unwrap_err();
    assert!(
        matches!(e, lastmile_api_client::ClientError::Transport(_)),
        "{e}"
    );

    let other_ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = Issuer::new(ca, other_ca_key);
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(wire::uri::gateway("gw1").try_into().unwrap())];
    let foreign_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let foreign = p.signed_by(&foreign_key, &other).unwrap();
    let with_foreign = ApiClient::new(
        &api.base,
        &api.ca,
        Some((&foreign.pem(), &foreign_key.serialize_pem())),
    )
    .unwrap();
    let e = with_foreign
        .post::<_, GatewayCertificate>(
            "/v1/gateways/renew",
            &Renew {
                csr: csr(&foreign_key),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, lastmile_api_client::ClientError::Transport(_)),
        "{e}"
    );

    // A revoked gateway cannot renew, even with a valid certificate.
    let a = api
        .client
        .call(&admin, Method::DELETE, "/v1/admin/gateways/gw1", None)
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let e = gw2
        .post::<_, GatewayCertificate>("/v1/gateways/renew", &Renew { csr: csr(&key2) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("gateway_revoked"));
    assert_eq!(
        api.audited("gateway.change").len(),
        5,
        "{:?}",
        api.audited("gateway.change")
    );
}
both_stores!(
    gateways_enroll_once_renew_and_bad_certificates_are_refused,
    gateway_lifecycle
);
