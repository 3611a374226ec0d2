//! The vault through the API: a credential is released only to a valid gateway carrying
//! a fresh, unused authorization from a live, device-bound session whose user holds an
//! unexpired grant; each refusal has its own error; the secret appears in no response,
//! log line, error or audit event.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use lastmile_proto::wire::ErrorCode;
use std::{
    io::Read as _,
    sync::{Arc, Mutex, OnceLock},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use lastmile_proto::wire::{self, CredentialKind, Unlocked};
use reqwest::Method;
use serde_json::{Value, json};
use support::{Gateway, Store, authorize, start};
use zeroize::Zeroizing;

const SECRET: &str = "pg-Secr3t-9f2c-do-not-leak";

/// Every log line of this test binary, whatever the level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Writer(w.clone()))
            .init();
        buf
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_sealed(u: &Unlocked, identity: &age::x25519::Identity) -> String {
    let bytes = B64.decode(u.sealed.as_ref().unwrap()).unwrap();
    let d = age::Decryptor::new(&bytes[..]).unwrap();
    let mut r = d
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .unwrap();
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    out
}

fn code(a: &lastmile_api_client::Answer) -> String {
    serde_json::from_str::<wire::ErrorBody>(&a.body)
        .map(|e| e.error.to_string())
        .unwrap_or_else(|_| format!("{} {}", a.status, a.body))
}

async fn setup(
    api: &support::Api,
) -> (
    lastmile_api_client::Session,
    lastmile_api_client::Session,
    Gateway,
) {
    support::vault_fixture(api, SECRET).await
}

fn unlock_body(
    resource: &str,
    authz: Option<(wire::UnlockAuthorization, String)>,
    recipient: &str,
) -> Value {
    match authz {
        Some((a, sig)) => {
            json!({"resource": resource, "authorization": a, "authorization_signature": sig, "recipient": recipient})
        }
        None => json!({"resource": resource, "recipient": recipient}),
    }
}

async fn unlock_and_refusals(store: Store) {
    let _ = logs();
    let api = start(store, |_| {}).await;
    let (admin, alice, gw) = setup(&api).await;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();

    // The happy path: the secret comes back sealed to the gateway's recipient, after the
    // decryption was audited.
    let authz = authorize(&alice, "orders-db", "gw1");
    let body = unlock_body("orders-db", Some(authz.clone()), &recipient);
    let a = gw.unlock(&body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let u: Unlocked = a.json().unwrap();
    assert_eq!((u.kind, u.version), (CredentialKind::Password, 1));
    assert_eq!(open_sealed(&u, &identity), SECRET);
    let decrypts = api.audited("credential.decrypt");
    assert_eq!(decrypts.len(), 1);
    assert_eq!(
        decrypts[0]["client_connection"],
        authz.0.connection.as_str()
    );
    assert!(
        decrypts[0]["connection"]
            .as_str()
            .is_some_and(|c| c.starts_with("conn_"))
    );
    assert_eq!(decrypts[0]["gateway"], "gw1");
    assert_eq!(decrypts[0]["user"], "alice");

    // The same authorization again: a replay.
    assert_eq!(code(&gw.unlock(&body).await), "replayed_authorization");
    // A gateway without a user's authorization.
    assert_eq!(
        code(&gw.unlock(&unlock_body("orders-db", None, &recipient)).await),
        "authorization_missing"
    );
    // A user without a gateway identity: alice's session alone, signed and all.
    let a = api
        .client
        .call(
            &alice,
            Method::POST,
            "/v1/credentials/unlock",
            Some(&unlock_body(
                "orders-db",
                Some(authorize(&alice, "orders-db", "gw1")),
                &recipient,
            )),
        )
        .await
        .unwrap();
    assert_eq!(code(&a), "gateway_certificate_required");
    // An authorization for another resource, or another gateway.
    let (mut other, _) = authorize(&alice, "orders-db", "gw1");
    other.resource = lastmile_proto::wire::ResourceName::parse("billing-db").unwrap();
    let forged_sig = authorize(&alice, "billing-db", "gw1").1;
    assert_eq!(
        code(
            &gw.unlock(&unlock_body(
                "orders-db",
                Some((other, forged_sig)),
                &recipient
            ))
            .await
        ),
        "authorization_other_resource"
    );
    assert_eq!(
        code(
            &gw.unlock(&unlock_body(
                "orders-db",
                Some(authorize(&alice, "orders-db", "gw2")),
                &recipient
            ))
            .await
        ),
        "authorization_other_gateway"
    );
    // An authorization whose fields were changed after signing.
    let (mut changed, sig) = authorize(&alice, "orders-db", "gw1");
    changed.connection = "conn-other".into();
    assert_eq!(
        code(
            &gw.unlock(&unlock_body("orders-db", Some((changed, sig)), &recipient))
                .await
        ),
        "bad_authorization_signature"
    );
    // A user with no grant.
    let (bob, _) = api.user("bob").await;
    assert_eq!(
        code(
            &gw.unlock(&unlock_body(
                "orders-db",
                Some(authorize(&bob, "orders-db", "gw1")),
                &recipient
            ))
            .await
        ),
        "no_grant"
    );
    // An expired grant.
    let (carol, _) = api.user("carol").await;
    let g: wire::Grant = api
        .client
        .call(&admin, Method::POST, "/v1/admin/grants", Some(&json!({"resource": "orders-db", "subject": {"user": "carol"}, "expires_at": lastmile_api_client::now() + 1})))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(g.expires_at.is_some());
    // Past its end by the API's clock, without waiting for it.
    api.app.clock.advance(std::time::Duration::from_secs(2));
    assert_eq!(
        code(
            &gw.unlock(&unlock_body(
                "orders-db",
                Some(authorize(&carol, "orders-db", "gw1")),
                &recipient
            ))
            .await
        ),
        "grant_expired"
    );
    // A session from a mismatched device: revoked on the spot.
    let mut stolen = alice.clone();
    stolen.login.device = bob.login.device.clone();
    assert_eq!(
        code(
            &gw.unlock(&unlock_body(
                "orders-db",
                Some(authorize(&stolen, "orders-db", "gw1")),
                &recipient
            ))
            .await
        ),
        "session_device_mismatch"
    );
    // ... so alice's own authorization now meets a revoked session.
    assert_eq!(
        code(
            &gw.unlock(&unlock_body(
                "orders-db",
                Some(authorize(&alice, "orders-db", "gw1")),
                &recipient
            ))
            .await
        ),
        "session_revoked"
    );
    // A revoked gateway.
    api.client
        .call(&admin, Method::DELETE, "/v1/admin/gateways/gw1", None)
        .await
        .unwrap();
    assert_eq!(
        code(
            &gw.unlock(&unlock_body(
                "orders-db",
                Some(authorize(&bob, "orders-db", "gw1")),
                &recipient
            ))
            .await
        ),
        "gateway_revoked"
    );
    // Only the one release was audited as a decryption.
    assert_eq!(api.audited("credential.decrypt").len(), 1);
}
both_stores!(
    unlock_needs_gateway_and_user_and_each_refusal_is_distinct,
    unlock_and_refusals
);

async fn ssh_certificates(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let web = json!({"name": "web-1", "kind": "ssh", "host": "127.0.0.1", "port": 22, "credential": "ssh-certificate", "ssh_principals": ["deploy"]});
    let a = api
        .client
        .call(&admin, Method::PUT, "/v1/admin/resources/web-1", Some(&web))
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let (alice, _) = api.user("alice").await;
    api.client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/grants",
            Some(&json!({"resource": "web-1", "subject": {"user": "alice"}})),
        )
        .await
        .unwrap();
    let gw = Gateway::enroll(&api, &admin, "gw1").await;
    let ephemeral = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(
        &lastmile_api_client::random32().unwrap(),
    ));
    let (a, sig) = authorize(&alice, "web-1", "gw1");
    let body = json!({"resource": "web-1", "authorization": a, "authorization_signature": sig,
        "recipient": age::x25519::Identity::generate().to_public().to_string(),
        "ssh_public_key": ephemeral.public_key().to_openssh().unwrap()});
    let r = gw.unlock(&body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u: Unlocked = r.json().unwrap();
    assert_eq!(u.kind, CredentialKind::SshCertificate);
    assert!(u.sealed.is_none());
    let cert = ssh_key::Certificate::from_openssh(u.ssh_certificate.as_deref().unwrap()).unwrap();
    assert_eq!(cert.valid_principals(), ["deploy".to_owned()]);
    assert_eq!(cert.public_key(), ephemeral.public_key().key_data());
    let ca: wire::CaBundle = api.client.get("/v1/ca").await.unwrap();
    let ca_key = ssh_key::PublicKey::from_openssh(&ca.ssh_user_ca).unwrap();
    assert_eq!(cert.signature_key(), ca_key.key_data());
    let now = u64::try_from(lastmile_api_client::now()).unwrap();
    assert!(cert.valid_before() <= now + 300 && cert.valid_before() > now);
    assert_eq!(cert.extensions().keys().collect::<Vec<_>>(), ["permit-pty"]);
    // Nothing is stored for such a resource.
    let e = lastmile_api::vault::set_credential(
        &api.app,
        "t",
        "web-1",
        CredentialKind::SshCertificate,
        Zeroizing::new(b"x".to_vec()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::NothingToStore);
    // Nor a password, which the resource does not declare.
    let e = lastmile_api::vault::set_credential(
        &api.app,
        "t",
        "web-1",
        CredentialKind::Password,
        Zeroizing::new(b"x".to_vec()),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::CredentialKindMismatch, "{e}");
}
both_stores!(
    ssh_certificate_resources_get_short_lived_certificates_with_their_principals,
    ssh_certificates
);

/// No audit sink, no release: the decryption must be recorded first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_released_when_the_audit_cannot_be_written() {
    let api = start(Store::Sqlite, |_| {}).await;
    let (_, alice, gw) = setup(&api).await;
    let mut config = api.app.config.clone();
    config.audit_file = Some("/dev/full".into());
    let broken = lastmile_api::App::open(config).await.unwrap();
    let authz = authorize(&alice, "orders-db", "gw1");
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    // Call the unlock on an instance whose audit log is full, with the same peer as gw.
    let body = serde_json::to_vec(&unlock_body("orders-db", Some(authz), &recipient)).unwrap();
    let host = "localhost";
    let h = lastmile_proto::httpsig::sign(
        "POST",
        &format!("https://{host}/v1/credentials/unlock"),
        &body,
        lastmile_api_client::now(),
        &lastmile_api_client::nonce().unwrap(),
        &[lastmile_proto::httpsig::Signer {
            label: "gateway",
            keyid: "gw1",
            key: &gw.key,
        }],
    )
    .unwrap();
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("host", host.parse().unwrap());
    headers.insert("content-digest", h.content_digest.parse().unwrap());
    headers.insert("signature-input", h.signature_input.parse().unwrap());
    headers.insert("signature", h.signature.parse().unwrap());
    let peer = lastmile_api::connections::GatewayPeer {
        name: "gw1".into(),
        key: Some(gw.key.verifying_key().to_bytes()),
    };
    let e = lastmile_api::connections::unlock(
        &broken,
        Some(&peer),
        &axum::http::Method::POST,
        &"/v1/credentials/unlock".parse().unwrap(),
        &headers,
        &body,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::AuditUnavailable, "{e}");
    assert!(!e.message.contains(SECRET));
}

/// Every endpoint a user's or a device's key can reach, called with a secret stored, in
/// the ways that succeed and the ways that fail: the secret is in no answer, no log
/// line, no audit event, and not in the database in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_appears_in_no_response_log_or_error() {
    let logs = logs();
    let api = start(Store::Sqlite, |_| {}).await;
    let (admin, alice, gw) = setup(&api).await;
    let mut answers: Vec<String> = Vec::new();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    // The gateway path, which does release it (sealed), and its refusals. (First: the
    // walk below deletes the resource, as an admin may.)
    for _ in 0..2 {
        answers.push(
            gw.unlock(&unlock_body(
                "orders-db",
                Some(authorize(&alice, "orders-db", "gw1")),
                &recipient,
            ))
            .await
            .body,
        );
    }
    answers.push(
        gw.unlock(&unlock_body("orders-db", None, &recipient))
            .await
            .body,
    );
    answers.push(
        gw.unlock(&json!({"resource": "orders-db", "recipient": "not-age"}))
            .await
            .body,
    );
    for session in [&alice, &admin] {
        for (m, path) in lastmile_api::http::ROUTES {
            let path = path
                .replace("{name}", "orders-db")
                .replace("{id}", "x")
                .replace("{action}", "enable");
            if path == "/v1/revocations" || path == "/v1/logout" {
                continue;
            }
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            for body in [
                None,
                Some(unlock_body(
                    "orders-db",
                    Some(authorize(session, "orders-db", "gw1")),
                    &recipient,
                )),
                Some(json!({"secret": SECRET})),
            ] {
                let a = api
                    .client
                    .call(session, method.clone(), &path, body.as_ref())
                    .await
                    .unwrap();
                answers.push(a.body);
                let a = api
                    .client
                    .send(
                        method.clone(),
                        &path,
                        body.map(|b| serde_json::to_vec(&b).unwrap()),
                    )
                    .await
                    .unwrap();
                answers.push(a.body);
            }
        }
    }
    answers.push(format!(
        "{:?}",
        lastmile_api::vault::list_credentials(&api.app)
            .await
            .unwrap()
    ));

    let b64 = B64.encode(SECRET);
    for a in &answers {
        assert!(
            !a.contains(SECRET) && !a.contains(&b64),
            "an answer shows the secret: {a}"
        );
    }
    assert!(answers.len() > 200);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!logged.is_empty());
    assert!(!logged.contains(SECRET), "a log line shows the secret");
    let audit = std::fs::read_to_string(api.app.config.audit_file()).unwrap();
    assert!(audit.contains("credential.decrypt"));
    assert!(!audit.contains(SECRET) && !audit.contains(&b64));
    let db = std::fs::read(api.dir.path().join("api.db")).unwrap();
    let wal = std::fs::read(api.dir.path().join("api.db-wal")).unwrap_or_default();
    for file in [&db, &wal] {
        assert!(!file.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    }
}
