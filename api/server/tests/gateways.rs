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
use lastmile_proto::wire::ErrorCode;
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
    assert_eq!(again.code(), Some(&ErrorCode::BadToken));
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
    assert_eq!(e.code(), Some(&ErrorCode::BadCsr));

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
    assert_eq!(e.code(), Some(&ErrorCode::BadCsr));
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
    assert_eq!(e.code(), Some(&ErrorCode::GatewayCertificateRequired));

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
    assert_eq!(e.code(), Some(&ErrorCode::GatewayRevoked));
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

/// A gateway's certificate (same CA, `serverAuth`, a name the client dials) cannot stand
/// in for the API: the client requires the API's own URI, and says what it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_certificate_cannot_stand_in_for_the_api() {
    let api = start(Store::Sqlite, |_| {}).await;
    let admin = api.admin().await;
    let token: GatewayToken = api
        .client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/gateways/tokens",
            Some(&json!({"name": "gw1", "addresses": ["localhost"]})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert: GatewayCertificate = api
        .client
        .post(
            "/v1/gateways/enroll",
            &Enroll {
                token: token.token,
                csr: csr(&key),
            },
        )
        .await
        .unwrap();
    // The API's own certificate names it.
    assert!(sans(&api.app.pki.tls_cert_pem).contains(&format!("URI({})", wire::uri::API)));

    // The gateway's key and certificate, serving TLS on loopback as if it were the API.
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let chain = CertificateDer::pem_slice_iter(cert.certificate.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, der)
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let impostor = ApiClient::new(&format!("https://localhost:{port}"), &api.ca, None).unwrap();
    let e = impostor
        .get::<serde_json::Value>("/v1/ca")
        .await
        .unwrap_err();
    let chain = {
        let mut out = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            out.push_str(&format!(": {s}"));
            src = s.source();
        }
        out
    };
    assert!(chain.contains("is not the lastmile API's"), "{chain}");
    server.abort();
}

/// An API certificate made before the API had a URI of its own is re-issued on load,
/// with its names kept: clients that require the URI go on working after an upgrade.
#[tokio::test]
async fn an_older_api_certificate_is_reissued_with_the_api_uri() {
    let dir = tempfile::tempdir().unwrap();
    let config = lastmile_api::ApiConfig {
        data_dir: dir.path().join("api"),
        ..lastmile_api::ApiConfig::default()
    };
    let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
        .await
        .unwrap();
    let keys = config.keys_dir();
    lastmile_api::pki::Pki::create(&keys, "acme", &["api.internal".to_owned()], &kms)
        .await
        .unwrap();
    // What an older release wrote: the names, no URI.
    let old_key = KeyPair::generate().unwrap();
    let old = CertificateParams::new(vec!["api.internal".to_owned()])
        .unwrap()
        .self_signed(&old_key)
        .unwrap();
    std::fs::write(keys.join("api-tls.crt"), old.pem()).unwrap();
    assert!(!sans(&old.pem()).iter().any(|n| n.contains(wire::uri::API)));

    let pki = lastmile_api::pki::Pki::load(&keys, &kms).await.unwrap();
    let names = sans(&pki.tls_cert_pem);
    assert!(
        names.contains(&format!("URI({})", wire::uri::API)),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("api.internal")),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read_to_string(keys.join("api-tls.crt")).unwrap(),
        pki.tls_cert_pem
    );
}

/// A revoked gateway's certificate stays dead when its name is enrolled again (it used
/// to come back to life: the API knew gateways only by name), and a renewal to a new key
/// retires the old one.
async fn revoked_certificate(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let enroll = |key: KeyPair| {
        let api = &api;
        let admin = &admin;
        async move {
            let token: GatewayToken = api
                .client
                .call(
                    admin,
                    Method::POST,
                    "/v1/admin/gateways/tokens",
                    Some(&json!({"name": "gw1", "addresses": ["127.0.0.1"]})),
                )
                .await
                .unwrap()
                .json()
                .unwrap();
            let cert: GatewayCertificate = api
                .client
                .post(
                    "/v1/gateways/enroll",
                    &Enroll {
                        token: token.token,
                        csr: csr(&key),
                    },
                )
                .await
                .unwrap();
            ApiClient::new(
                &api.base,
                &api.ca,
                Some((&cert.certificate, &key.serialize_pem())),
            )
            .unwrap()
        }
    };
    let key_a = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem_a = key_a.serialize_pem();
    let a = enroll(key_a).await;
    assert!(a.get::<Vec<wire::Resource>>("/v1/resources").await.is_ok());
    let r = api
        .client
        .call(&admin, Method::DELETE, "/v1/admin/gateways/gw1", None)
        .await
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let b = enroll(KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()).await;
    assert!(b.get::<Vec<wire::Resource>>("/v1/resources").await.is_ok());

    // Certificate A, still within its lifetime, is refused everywhere.
    let e = a
        .get::<Vec<wire::Resource>>("/v1/resources")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::GatewayRevoked), "{e}");
    let e = a
        .post::<_, GatewayCertificate>(
            "/v1/gateways/renew",
            &Renew {
                csr: csr(&KeyPair::from_pem(&pem_a).unwrap()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::GatewayRevoked), "{e}");
    let s = a.stream_unsigned("/v1/revocations").await.unwrap();
    assert_eq!(s.status(), 403);
    let body = serde_json::to_vec(&json!({"resource": "x", "recipient": "age1x"})).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(
        &KeyPair::from_pem(&pem_a).unwrap().serialized_der()[16..48]
            .try_into()
            .unwrap(),
    );
    for path in ["/v1/connections/authorize", "/v1/credentials/unlock"] {
        let r = a
            .call_as_gateway("gw1", &key, Method::POST, path, &body)
            .await
            .unwrap();
        assert!(r.body.contains("gateway_revoked"), "{path}: {}", r.body);
    }
    // Key A cannot be enrolled again either.
    let token: GatewayToken = api
        .client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/gateways/tokens",
            Some(&json!({"name": "gw9"})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let e = api
        .client
        .post::<_, GatewayCertificate>(
            "/v1/gateways/enroll",
            &Enroll {
                token: token.token,
                csr: csr(&KeyPair::from_pem(&pem_a).unwrap()),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::GatewayKeyRevoked), "{e}");

    // B renews to key C: B's certificate (key B) is retired with it.
    let key_c = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let renewed: GatewayCertificate = b
        .post("/v1/gateways/renew", &Renew { csr: csr(&key_c) })
        .await
        .unwrap();
    let c = ApiClient::new(
        &api.base,
        &api.ca,
        Some((&renewed.certificate, &key_c.serialize_pem())),
    )
    .unwrap();
    assert!(c.get::<Vec<wire::Resource>>("/v1/resources").await.is_ok());
    let e = b
        .get::<Vec<wire::Resource>>("/v1/resources")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::GatewayRevoked), "{e}");
}
both_stores!(
    a_revoked_gateway_certificate_stays_revoked_after_re_enrollment,
    revoked_certificate
);

/// A node's audit-writer identity: a node token enrolls at `/v1/nodes/enroll` only, once,
/// for a client certificate naming `urn:lastmile:node:NAME`; a gateway token does not
/// enroll a node, nor a node token a gateway. A reader's certificate names
/// `urn:lastmile:audit-reader:NAME`. Each is in the API's audit trail.
async fn node_and_reader_identities(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let node = lastmile_api::nodes::new_token(&api.app, "root", "bastion-1", 600)
        .await
        .unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let enroll = |token: &str| Enroll {
        token: token.to_owned(),
        csr: csr(&key),
    };

    // A node token does not enroll a gateway.
    let err = api
        .client
        .post::<_, GatewayCertificate>("/v1/gateways/enroll", &enroll(&node.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::BadToken), "{err}");

    let cert: wire::NodeCertificate = api
        .client
        .post("/v1/nodes/enroll", &enroll(&node.token))
        .await
        .unwrap();
    assert_eq!(
        sans(&cert.certificate),
        ["URI(urn:lastmile:node:bastion-1)"]
    );
    let der = {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        CertificateDer::from_pem_slice(cert.certificate.as_bytes()).unwrap()
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth, "{eku:?}");
    let ttl = cert.expires_at - api.app.clock.now();
    assert!((89 * 86_400..=90 * 86_400).contains(&ttl), "{ttl}");

    // Once only.
    let err = api
        .client
        .post::<_, wire::NodeCertificate>("/v1/nodes/enroll", &enroll(&node.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::BadToken), "{err}");
    assert!(
        err.to_string().contains("lastmile-api nodes token"),
        "{err}"
    );

    // A gateway token does not enroll a node (and stays good for its gateway).
    let gw: GatewayToken = api
        .client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/gateways/tokens",
            Some(&json!({"name": "gw1", "addresses": ["127.0.0.1"]})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let err = api
        .client
        .post::<_, wire::NodeCertificate>("/v1/nodes/enroll", &enroll(&gw.token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::BadToken), "{err}");
    api.client
        .post::<_, GatewayCertificate>("/v1/gateways/enroll", &enroll(&gw.token))
        .await
        .unwrap();

    let reader = lastmile_api::nodes::issue_reader(&api.app, "root", "sam", &csr(&key), 86_400)
        .await
        .unwrap();
    assert_eq!(
        sans(&reader.certificate),
        ["URI(urn:lastmile:audit-reader:sam)"]
    );
    let bad = lastmile_api::nodes::issue_reader(&api.app, "root", "sam", "not a csr", 86_400)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("PKCS#10"), "{bad}");

    let trail = std::fs::read_to_string(api.app.config.audit_file()).unwrap();
    let changes: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "identity.change")
        .collect();
    let seen: Vec<(&str, &str)> = changes
        .iter()
        .map(|e| {
            (
                e["identity"].as_str().unwrap(),
                e["change"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("urn:lastmile:node:bastion-1", "enrollment token"),
            ("urn:lastmile:node:bastion-1", "enroll"),
            ("urn:lastmile:audit-reader:sam", "issue"),
        ]
    );
}

both_stores!(node_and_reader_identities_in, node_and_reader_identities);
