//! SSH resources at the API: a gateway's SSH host certificate for a resource's protected
//! names, and how the resource says to trust its target's host key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use lastmile_proto::wire::ErrorCode;
use lastmile_proto::wire::{CaBundle, Resource, SshHostCertificate};
use reqwest::Method;
use serde_json::json;
use support::{Gateway, Store, start};

const GATEWAY_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcwKrwYb+slyVnT19lOoUZJGSU1nRhw2irl+40qW96k gateway";

#[tokio::test]
async fn a_gateway_gets_an_ssh_host_certificate_for_the_protected_names() {
    let api = start(Store::Sqlite, |_| {}).await;
    let admin = api.admin().await;
    let web = json!({
        "name": "web-1", "kind": "ssh", "host": "127.0.0.9", "port": 22,
        "protect": ["127.0.0.2:22", "[::1]:2222", "127.8.0.0/16:22", "127.0.0.2:2200"],
        "names": ["web-1.demo.internal"],
        "credential": "ssh-certificate", "ssh_principals": ["deploy"],
        "ssh_host_keys": [GATEWAY_KEY], "ssh_allow_port_forwarding": true,
    });
    // A DNS name is a host name, not an address or anything else.
    for bad in [
        "127.0.0.5",
        "Web.Internal",
        "-web.internal",
        "web..internal",
        "web internal",
    ] {
        let mut r = web.clone();
        r["names"] = json!([bad]);
        let put = api
            .client
            .call(&admin, Method::PUT, "/v1/admin/resources/web-1", Some(&r))
            .await
            .unwrap();
        assert_eq!(put.status, 400, "{bad}: {}", put.body);
        assert!(put.body.contains("is not a DNS name"), "{}", put.body);
    }
    let put = api
        .client
        .call(&admin, Method::PUT, "/v1/admin/resources/web-1", Some(&web))
        .await
        .unwrap();
    assert_eq!(put.status, 204, "{}", put.body);
    // The trust fields come back as saved.
    let listed: Vec<Resource> = api
        .client
        .call(
            &admin,
            Method::GET,
            "/v1/admin/resources",
            None::<&serde_json::Value>,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let saved = listed.iter().find(|r| r.name == "web-1").unwrap();
    assert_eq!(saved.ssh_host_keys, vec![GATEWAY_KEY.to_owned()]);
    assert!(saved.ssh_host_ca.is_empty());
    assert!(saved.ssh_allow_port_forwarding);
    // A key that does not parse is the administrator's error, at once.
    let bad = json!({"name": "web-2", "kind": "ssh", "host": "127.0.0.10", "port": 22,
        "ssh_host_ca": ["ssh-ed25519 not-base64"]});
    let put = api
        .client
        .call(&admin, Method::PUT, "/v1/admin/resources/web-2", Some(&bad))
        .await
        .unwrap();
    assert_eq!(put.status, 400, "{}", put.body);
    assert!(put.body.contains("ssh_host_ca"), "{}", put.body);
    api.client
        .call(
            &admin,
            Method::PUT,
            "/v1/admin/resources/db",
            Some(&json!({"name": "db", "kind": "postgres", "host": "127.0.0.1", "port": 5432})),
        )
        .await
        .unwrap();

    let gw = Gateway::enroll(&api, &admin, "gw1").await;
    let answer = gw
        .post(
            "/v1/gateways/ssh-host-certificate",
            &json!({"resource": "web-1", "public_key": GATEWAY_KEY}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let issued: SshHostCertificate = answer.json().unwrap();
    assert_eq!(
        issued.principals,
        ["web-1", "web-1.demo.internal", "127.0.0.2", "::1"]
    );
    let now = lastmile_api_client::now();
    assert!(
        issued.expires_at > now + 3600 && issued.expires_at <= now + 24 * 3600 + 5,
        "{}",
        issued.expires_at
    );
    let cert = ssh_key::Certificate::from_openssh(&issued.certificate).unwrap();
    assert_eq!(cert.cert_type(), ssh_key::certificate::CertType::Host);
    assert_eq!(cert.valid_principals(), issued.principals.as_slice());
    assert_eq!(
        cert.public_key(),
        ssh_key::PublicKey::from_openssh(GATEWAY_KEY)
            .unwrap()
            .key_data()
    );
    let bundle: CaBundle = api
        .client
        .call(&admin, Method::GET, "/v1/ca", None::<&serde_json::Value>)
        .await
        .unwrap()
        .json()
        .unwrap();
    let host_ca = ssh_key::PublicKey::from_openssh(&bundle.ssh_host_ca).unwrap();
    cert.validate_at(
        u64::try_from(now).unwrap(),
        &[host_ca.fingerprint(ssh_key::HashAlg::Sha256)],
    )
    .unwrap();
    let audited = api.audited("gateway.change");
    assert!(
        audited
            .iter()
            .any(|e| e["change"] == "ssh_host_certificate" && e["resource"] == "web-1"),
        "{audited:?}"
    );

    // Not for a postgres resource, not for a key that is not one, and not without a
    // gateway certificate.
    let e = gw
        .post(
            "/v1/gateways/ssh-host-certificate",
            &json!({"resource": "db", "public_key": GATEWAY_KEY}),
        )
        .await;
    assert_eq!(e.status, 400, "{}", e.body);
    assert!(e.body.contains("not_ssh"), "{}", e.body);
    let e = gw
        .post(
            "/v1/gateways/ssh-host-certificate",
            &json!({"resource": "web-1", "public_key": "ssh-ed25519 AAAA"}),
        )
        .await;
    assert!(e.body.contains("bad_ssh_public_key"), "{}", e.body);
    let e = api
        .client
        .post::<_, SshHostCertificate>(
            "/v1/gateways/ssh-host-certificate",
            &json!({"resource": "web-1", "public_key": GATEWAY_KEY}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&ErrorCode::GatewayCertificateRequired),
        "{e}"
    );
}
