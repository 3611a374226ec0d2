//! The control plane end to end, over real TLS, on SQLite and on PostgreSQL.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use lastmile_proto::wire::ErrorCode;
use std::time::{Duration, Instant};

use lastmile_api_client::{ApiClient, Session, new_key, nonce, now};
use lastmile_proto::wire::{self, LoginResponse, Me, Resource, Revocation};
use reqwest::Method;
use serde_json::json;
use support::{Device, PASSWORD, Store, start};

fn san_uris(pem: &str) -> Vec<String> {
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}
use rustls::pki_types::pem::PemObject as _;

async fn code(
    client: &ApiClient,
    s: &Session,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, ErrorCode) {
    let a = client.call(s, method, path, body.as_ref()).await.unwrap();
    let code = serde_json::from_str::<wire::ErrorBody>(&a.body)
        .map_or_else(|_| ErrorCode::Other(a.body.clone()), |e| e.error);
    (a.status, code)
}

async fn enrollment_and_login(store: Store) {
    let api = start(store, |_| {}).await;
    // The one-time password works once, and only to set a new one.
    let device = Device::new();
    let first = api
        .login("admin", "wrong password!!", None, &device)
        .await
        .unwrap_err();
    assert_eq!(first.code(), Some(&ErrorCode::BadCredentials));
    let admin = api.admin().await;
    let me: Me = api
        .client
        .call(&admin, Method::GET, "/v1/me", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(me.admin);
    assert_eq!(me.session, admin.login.session);

    // An admin sets up a user, a resource and a grant through the API.
    let otp: wire::OneTimePassword = api
        .client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/users",
            Some(&json!({"name": "alice", "groups": ["dba"]})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let db = Resource {
        name: "orders-db".into(),
        kind: wire::ResourceKind::Postgres,
        host: "127.0.0.1".into(),
        port: 5432,
        protect: vec!["127.0.0.2:5432".into()],
        upstream_tls: Some(wire::UpstreamTls::Disable),
        credential: None,
        ssh_principals: vec![],
        database_user: None,
        databases: vec![],
        upstream_ca: None,
        ssh_host_ca: vec![],
        ssh_host_keys: vec![],
        ssh_allow_port_forwarding: false,
        names: vec![],
    };
    let put = api
        .client
        .call(
            &admin,
            Method::PUT,
            "/v1/admin/resources/orders-db",
            Some(&serde_json::to_value(&db).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(put.status, 204, "{}", put.body);
    let other = json!({"name": "other", "kind": "tcp", "host": "127.0.0.1", "port": 9});
    api.client
        .call(
            &admin,
            Method::PUT,
            "/v1/admin/resources/other",
            Some(&other),
        )
        .await
        .unwrap();
    let grant: wire::Grant = api
        .client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/grants",
            Some(&json!({"resource": "orders-db", "subject": {"group": "dba"}})),
        )
        .await
        .unwrap()
        .json()
        .unwrap();

    // Alice's first login: device key registered (trust on first use), password changed.
    let laptop = Device::new();
    let e = api
        .login("alice", &otp.one_time_password, None, &laptop)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::PasswordChangeRequired));
    let e = api
        .login("alice", &otp.one_time_password, Some("short"), &laptop)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::WeakPassword));
    let alice = api
        .login("alice", &otp.one_time_password, Some(PASSWORD), &laptop)
        .await
        .unwrap();
    let e = api
        .login("alice", &otp.one_time_password, None, &laptop)
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&ErrorCode::BadCredentials),
        "the one-time password is spent"
    );
    let l: &LoginResponse = &alice.login;
    assert_eq!(
        san_uris(&l.certificate),
        vec![
            wire::uri::user("alice"),
            wire::uri::session(&l.session),
            wire::uri::device(&l.device)
        ]
    );
    assert!(l.certificate_expires_at <= now() + 3600 && l.certificate_expires_at > now());
    assert!(l.session_expires_at >= l.certificate_expires_at);

    // What alice may reach: the granted resource only.
    let mine: Vec<Resource> = api
        .client
        .call(&alice, Method::GET, "/v1/resources", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(mine, vec![db]);
    assert_eq!(
        code(&api.client, &alice, Method::GET, "/v1/admin/users", None).await,
        (403, ErrorCode::NotAdmin)
    );

    // Refresh gives a new certificate for the same session key.
    let r: wire::Refreshed = api
        .client
        .call(&alice, Method::POST, "/v1/session/refresh", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_ne!(r.certificate, l.certificate);
    assert_eq!(san_uris(&r.certificate), san_uris(&l.certificate));

    // Revoking the grant takes the resource away.
    api.client
        .call(
            &admin,
            Method::DELETE,
            &format!("/v1/admin/grants/{}", grant.id),
            None,
        )
        .await
        .unwrap();
    let mine: Vec<Resource> = api
        .client
        .call(&alice, Method::GET, "/v1/resources", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(mine.is_empty());

    // Logout ends the session.
    assert_eq!(
        api.client
            .call(&alice, Method::POST, "/v1/logout", None)
            .await
            .unwrap()
            .status,
        204
    );
    assert_eq!(
        code(&api.client, &alice, Method::GET, "/v1/me", None).await,
        (401, ErrorCode::SessionRevoked)
    );

    // Everything above is in the audit trail, checked against the schema.
    for e in api.audit() {
        lastmile_audit_sink::schema::check(&e).unwrap();
    }
    for kind in [
        "login",
        "login.failed",
        "device.register",
        "session.create",
        "session.revoke",
        "user.change",
        "resource.change",
        "grant.change",
    ] {
        assert!(!api.audited(kind).is_empty(), "no {kind} event");
    }
    assert_eq!(api.audited("grant.change").len(), 2);
    assert_eq!(api.audited("login.failed")[0]["reason"], "bad_credentials");
}
both_stores!(enrollment_and_login_flow, enrollment_and_login);

async fn signed_call_refusals(store: Store) {
    let api = start(store, |_| {}).await;
    let (alice, _) = api.user("alice").await;
    let c = &api.client;
    let body = serde_json::to_vec(&json!({"name": "x"})).unwrap();
    let get = |headers: lastmile_proto::httpsig::SignedHeaders| async move {
        c.send_signed(Method::GET, "/v1/me", &headers, Vec::new())
            .await
    };
    let err = |a: lastmile_api_client::Answer| {
        (
            a.status,
            a.json::<serde_json::Value>()
                .unwrap_err()
                .code()
                .unwrap()
                .to_owned(),
        )
    };

    // A good call works once; the same signed request again is a replay.
    let h = c
        .sign(
            &alice,
            &Method::GET,
            "/v1/me",
            b"",
            now(),
            &nonce().unwrap(),
        )
        .unwrap();
    assert_eq!(get(h.clone()).await.unwrap().status, 200);
    assert_eq!(
        err(get(h.clone()).await.unwrap()),
        (401, ErrorCode::ReplayedNonce)
    );

    // A body changed after signing.
    let h = c
        .sign(
            &alice,
            &Method::POST,
            "/v1/session/refresh",
            &body,
            now(),
            &nonce().unwrap(),
        )
        .unwrap();
    let mut changed = body.clone();
    changed[10] ^= 1;
    assert_eq!(
        err(c
            .send_signed(Method::POST, "/v1/session/refresh", &h, changed)
            .await
            .unwrap()),
        (401, ErrorCode::BodyChanged)
    );

    // Signed for another path or method.
    let h = c
        .sign(
            &alice,
            &Method::GET,
            "/v1/resources",
            b"",
            now(),
            &nonce().unwrap(),
        )
        .unwrap();
    assert_eq!(
        err(get(h.clone()).await.unwrap()),
        (401, ErrorCode::BadSignature)
    );

    // Too old, and too far in the future: the refusal says the clocks differ, by how
    // much and which way.
    for (t, way) in [(now() - 120, "behind"), (now() + 120, "ahead of")] {
        let h = c
            .sign(&alice, &Method::GET, "/v1/me", b"", t, &nonce().unwrap())
            .unwrap();
        let a = get(h.clone()).await.unwrap();
        let body = a.body.clone();
        assert_eq!(err(a), (401, ErrorCode::StaleSignature));
        assert!(
            body.contains("the clocks differ by 12")
                && body.contains(&format!("s {way} the API's")),
            "{body}"
        );
    }

    // No signature at all.
    let a = c.send(Method::GET, "/v1/me", None).await.unwrap();
    assert_eq!(err(a), (401, ErrorCode::SignatureMissing));

    // A session key that is not the session's.
    let forged = Session {
        session_key: new_key().unwrap(),
        ..alice.clone()
    };
    let h = c
        .sign(
            &forged,
            &Method::GET,
            "/v1/me",
            b"",
            now(),
            &nonce().unwrap(),
        )
        .unwrap();
    assert_eq!(
        err(get(h.clone()).await.unwrap()),
        (401, ErrorCode::BadSignature)
    );
    // ... and a device key that is not the device's (same device id).
    let forged = Session {
        device_key: new_key().unwrap(),
        ..alice.clone()
    };
    let h = c
        .sign(
            &forged,
            &Method::GET,
            "/v1/me",
            b"",
            now(),
            &nonce().unwrap(),
        )
        .unwrap();
    assert_eq!(
        err(get(h.clone()).await.unwrap()),
        (401, ErrorCode::BadSignature)
    );

    // An unknown session.
    let mut unknown = alice.clone();
    unknown.login.session = "ses_00000000000000000000000000000000".into();
    let h = c
        .sign(
            &unknown,
            &Method::GET,
            "/v1/me",
            b"",
            now(),
            &nonce().unwrap(),
        )
        .unwrap();
    assert_eq!(
        err(get(h.clone()).await.unwrap()),
        (401, ErrorCode::UnknownSession)
    );

    // None of that harmed the real session.
    assert_eq!(
        c.call(&alice, Method::GET, "/v1/me", None)
            .await
            .unwrap()
            .status,
        200
    );
}
both_stores!(
    signed_call_refusals_each_with_its_own_error,
    signed_call_refusals
);

/// Reads server-sent events until a `revoke` one arrives.
async fn next_revocation(resp: &mut reqwest::Response, buf: &mut String) -> Revocation {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                && event.contains("event: revoke")
            {
                return serde_json::from_str(data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("no revocation within 10 s")
            .unwrap()
            .expect("stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

async fn session_from_another_device(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let (alice, _) = api.user("alice").await;
    // Alice's second machine: a device of her own, registered by logging in there.
    let desktop = Device::new();
    let on_desktop = api.login("alice", PASSWORD, None, &desktop).await.unwrap();

    let mut stream = api.client.stream(&admin, "/v1/revocations").await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut own = api
        .client
        .stream(&on_desktop, "/v1/revocations")
        .await
        .unwrap();
    // Let the subscriptions settle before the revocation.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The laptop session, presented with the desktop's device signature.
    let stolen = Session {
        device_key: desktop.key.clone(),
        login: LoginResponse {
            device: on_desktop.login.device.clone(),
            ..alice.login.clone()
        },
        ..alice.clone()
    };
    let a = api
        .client
        .call(&stolen, Method::GET, "/v1/me", None)
        .await
        .unwrap();
    let decided = Instant::now();
    assert_eq!(a.status, 401);
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::SessionDeviceMismatch)
    );

    let mut buf = String::new();
    let r = next_revocation(&mut stream, &mut buf).await;
    eprintln!(
        "revocation reached the subscriber {:?} after the refusal",
        decided.elapsed()
    );
    assert_eq!(r.session, alice.login.session);
    assert!(r.reason.contains("another device"), "{}", r.reason);
    let mut buf2 = String::new();
    assert_eq!(
        next_revocation(&mut own, &mut buf2).await.session,
        alice.login.session
    );

    // The session is dead on its own device too: log in again.
    let a = api
        .client
        .call(&alice, Method::GET, "/v1/me", None)
        .await
        .unwrap();
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::SessionRevoked)
    );
    // The desktop's own session is untouched.
    assert_eq!(
        api.client
            .call(&on_desktop, Method::GET, "/v1/me", None)
            .await
            .unwrap()
            .status,
        200
    );

    // A subscriber that reconnects with `since` gets what it missed; an admin CLI-style
    // revocation (written straight to the database) reaches the stream too.
    lastmile_api::admin::revoke(&api.app, "test", &on_desktop.login.session, Some("test"))
        .await
        .unwrap();
    let mut late = api
        .client
        .stream(&admin, &format!("/v1/revocations?since={}", r.seq - 1))
        .await
        .unwrap();
    let mut buf3 = String::new();
    assert_eq!(next_revocation(&mut late, &mut buf3).await.seq, r.seq);
    assert_eq!(
        next_revocation(&mut late, &mut buf3).await.session,
        on_desktop.login.session
    );
    assert_eq!(
        next_revocation(&mut stream, &mut buf).await.session,
        on_desktop.login.session
    );
    assert_eq!(api.audited("session.revoke").len(), 2);
}
both_stores!(
    a_session_from_another_device_is_revoked_and_published,
    session_from_another_device
);

async fn expiry(store: Store) {
    let api = start(store, |c| {
        c.session_ttl = Duration::from_secs(2);
        c.certificate_ttl = Duration::from_secs(1);
    })
    .await;
    let (alice, _) = api.user("alice").await;
    assert!(alice.login.session_expires_at <= now() + 2);
    assert_eq!(
        api.client
            .call(&alice, Method::GET, "/v1/me", None)
            .await
            .unwrap()
            .status,
        200
    );
    // Past the session's end by the API's clock, without waiting for it (a few seconds:
    // the client's signatures carry its real time, which must stay within the window).
    api.app.clock.advance(Duration::from_secs(3));
    let a = api
        .client
        .call(&alice, Method::GET, "/v1/me", None)
        .await
        .unwrap();
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::SessionExpired)
    );
}
both_stores!(an_expired_session_is_refused, expiry);

async fn totp_and_devices(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let (_, laptop) = api.user("alice").await;

    // A device key copied to another machine (another fingerprint) is refused, and so is
    // another user's device key.
    let copied = Device {
        key: laptop.key.clone(),
        fingerprint: Device::new().fingerprint,
    };
    let e = api
        .login("alice", PASSWORD, None, &copied)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::DeviceFingerprintMismatch));
    let (_, bobs) = api.user("bob").await;
    let e = api.login("alice", PASSWORD, None, &bobs).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::DeviceOtherUser));

    // TOTP: required once on, each code good once.
    let t: serde_json::Value = api
        .client
        .call(&admin, Method::POST, "/v1/admin/users/alice/totp-on", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    let uri = t["otpauth"].as_str().unwrap();
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let e = api
        .login("alice", PASSWORD, None, &laptop)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::TotpRequired));
    let with_code = |code: String| {
        let (api, laptop) = (&api, &laptop);
        async move {
            let l = lastmile_api_client::Login {
                user: "alice",
                password: PASSWORD,
                totp: Some(&code),
                new_password: None,
                device_key: &laptop.key,
                fingerprint: &laptop.fingerprint,
                device_name: "laptop",
            };
            api.client.login(&l).await
        }
    };
    let current = lastmile_api::secret::totp_now(&secret, now()).unwrap();
    let wrong = format!(
        "{:06}",
        (current.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    assert_eq!(
        with_code(wrong).await.unwrap_err().code(),
        Some(&ErrorCode::TotpInvalid)
    );
    let current = lastmile_api::secret::totp_now(&secret, now()).unwrap();
    with_code(current.clone()).await.unwrap();
    assert_eq!(
        with_code(current).await.unwrap_err().code(),
        Some(&ErrorCode::TotpReplayed)
    );

    // With the approval policy a new device waits for an admin.
    let a = api
        .client
        .call(
            &admin,
            Method::PUT,
            "/v1/admin/org/device-policy",
            Some(&json!({"device_policy": "approval"})),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let otp = lastmile_api::admin::add_user(
        &api.app,
        "test",
        wire::NewUser {
            name: "carol".into(),
            admin: false,
            groups: vec![],
        },
    )
    .await
    .unwrap();
    let phone = Device::new();
    let e = api
        .login("carol", &otp.one_time_password, Some(PASSWORD), &phone)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::DevicePending));
    let e = api
        .login("carol", &otp.one_time_password, Some(PASSWORD), &phone)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::DevicePending));
    let devices: Vec<wire::Device> = api
        .client
        .call(&admin, Method::GET, "/v1/admin/devices", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    let pending = devices.iter().find(|d| d.user == "carol").unwrap();
    assert_eq!(pending.status, wire::DeviceStatus::Pending);
    let a = api
        .client
        .call(
            &admin,
            Method::POST,
            &format!("/v1/admin/devices/{}/approve", pending.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let carol = api
        .login("carol", &otp.one_time_password, Some(PASSWORD), &phone)
        .await
        .unwrap();

    // Revoking the device ends its sessions and its logins.
    let a = api
        .client
        .call(
            &admin,
            Method::POST,
            &format!("/v1/admin/devices/{}/revoke", pending.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let a = api
        .client
        .call(&carol, Method::GET, "/v1/me", None)
        .await
        .unwrap();
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::SessionRevoked)
    );
    let e = api
        .login("carol", PASSWORD, None, &phone)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::DeviceRevoked));
    assert!(!api.audited("device.change").is_empty());
}
both_stores!(
    totp_copied_device_keys_and_device_approval,
    totp_and_devices
);

async fn deleting_a_user(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let (alice, _) = api.user("alice").await;
    let db = json!({"name": "db", "kind": "tcp", "host": "127.0.0.1", "port": 9});
    api.client
        .call(&admin, Method::PUT, "/v1/admin/resources/db", Some(&db))
        .await
        .unwrap();
    api.client
        .call(
            &admin,
            Method::POST,
            "/v1/admin/grants",
            Some(&json!({"resource": "db", "subject": {"user": "alice"}})),
        )
        .await
        .unwrap();
    let mut stream = api.client.stream(&admin, "/v1/revocations").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = api
        .client
        .call(&admin, Method::DELETE, "/v1/admin/users/alice", None)
        .await
        .unwrap();
    assert_eq!(a.status, 204, "{}", a.body);
    let mut buf = String::new();
    let r = next_revocation(&mut stream, &mut buf).await;
    assert_eq!(r.session, alice.login.session);
    assert!(r.reason.contains("deleted"), "{}", r.reason);
    // A new alice does not inherit the old one's grant.
    let (alice2, _) = api.user("alice").await;
    let mine: Vec<Resource> = api
        .client
        .call(&alice2, Method::GET, "/v1/resources", None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(mine.is_empty(), "{mine:?}");
}
both_stores!(
    deleting_a_user_ends_and_publishes_their_sessions_and_drops_their_grants,
    deleting_a_user
);

async fn two_instances(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let (alice, _) = api.user("alice").await;
    let (other, server) = api.another_instance().await;
    // A session made on one instance works on the other, and a revocation decided on the
    // first reaches a subscriber of the second.
    assert_eq!(
        other
            .call(&alice, Method::GET, "/v1/me", None)
            .await
            .unwrap()
            .status,
        200
    );
    let mut stream = other.stream(&admin, "/v1/revocations").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.client
        .call(&alice, Method::POST, "/v1/logout", None)
        .await
        .unwrap();
    let mut buf = String::new();
    let r = next_revocation(&mut stream, &mut buf).await;
    assert_eq!(
        (r.session.as_str(), r.reason.as_str()),
        (alice.login.session.as_str(), "logout")
    );
    // A nonce spent on one instance is spent on both. (Each instance here has its own
    // port, so its own target URI: behind a load balancer they share one.)
    let n = nonce().unwrap();
    let h = api
        .client
        .sign(&admin, &Method::GET, "/v1/me", b"", now(), &n)
        .unwrap();
    assert_eq!(
        api.client
            .send_signed(Method::GET, "/v1/me", &h, Vec::new())
            .await
            .unwrap()
            .status,
        200
    );
    let h = other
        .sign(&admin, &Method::GET, "/v1/me", b"", now(), &n)
        .unwrap();
    let a = other
        .send_signed(Method::GET, "/v1/me", &h, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::ReplayedNonce)
    );
    server.abort();
}
both_stores!(
    two_instances_share_sessions_nonces_and_revocations,
    two_instances
);

/// A captured request replayed with the device signature's keyid changed to another of
/// the user's devices proves nothing about the session key and must not revoke the
/// session (it used to: the mismatch was acted on before any device signature verified).
async fn tampered_keyid(store: Store) {
    let api = start(store, |_| {}).await;
    let (alice, _) = api.user("alice").await;
    let desktop = Device::new();
    let on_desktop = api.login("alice", PASSWORD, None, &desktop).await.unwrap();
    let n = nonce().unwrap();
    let captured = api
        .client
        .sign(&alice, &Method::GET, "/v1/me", b"", now(), &n)
        .unwrap();
    let own = format!("keyid=\"{}\"", alice.login.device);
    assert!(captured.signature_input.contains(&own));
    let mut tampered = captured.clone();
    tampered.signature_input = captured
        .signature_input
        .replace(&own, &format!("keyid=\"{}\"", on_desktop.login.device));
    let a = api
        .client
        .send_signed(Method::GET, "/v1/me", &tampered, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::BadSignature)
    );
    // An unknown device id: the same.
    tampered.signature_input = captured
        .signature_input
        .replace(&own, "keyid=\"no-such-device\"");
    let a = api
        .client
        .send_signed(Method::GET, "/v1/me", &tampered, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::BadSignature)
    );
    // The original goes through (its nonce was not spent by the forgeries), once.
    let a = api
        .client
        .send_signed(Method::GET, "/v1/me", &captured, Vec::new())
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let a = api
        .client
        .send_signed(Method::GET, "/v1/me", &captured, Vec::new())
        .await
        .unwrap();
    assert_eq!(
        a.json::<()>().unwrap_err().code(),
        Some(&ErrorCode::ReplayedNonce)
    );
    // Alice's session lives on.
    let a = api
        .client
        .call(&alice, Method::GET, "/v1/me", None)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(api.audited("session.revoke").is_empty());
}
both_stores!(
    a_changed_device_keyid_is_refused_without_revoking,
    tampered_keyid
);

/// Two revocations in overlapping transactions, the first to draw its `seq` committing
/// last: a subscriber hears both (on PostgreSQL a `seq` drawn first can become visible
/// after a later one, and a tailer that moved past the later one used to skip it).
async fn overlapping(store: Store) {
    use lastmile_api::revocation::{New, append};
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let mut stream = api.client.stream(&admin, "/v1/revocations").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new = |session: &'static str| New {
        session,
        user: "nobody",
        device: "",
        reason: "overlap test",
        at: now(),
        resource: None,
    };
    let backend = api.app.db.backend;
    let mut first = api.app.db.pool.begin().await.unwrap();
    let first_seq = append(&mut first, backend, &new("sess-first"))
        .await
        .unwrap();
    let app = api.app.clone();
    let second = tokio::spawn(async move {
        let mut tx = app.db.pool.begin().await.unwrap();
        let seq = append(&mut tx, backend, &new("sess-second")).await.unwrap();
        tx.commit().await.unwrap();
        app.revocations.nudge();
        seq
    });
    // Long enough for the tailer to read the second one, were it committed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.commit().await.unwrap();
    api.app.revocations.nudge();
    let second_seq = second.await.unwrap();
    assert!(first_seq < second_seq);
    let mut buf = String::new();
    let heard = [
        next_revocation(&mut stream, &mut buf).await.session,
        next_revocation(&mut stream, &mut buf).await.session,
    ];
    assert_eq!(heard, ["sess-first", "sess-second"]);
}
both_stores!(overlapping_revocations_are_all_heard_in_order, overlapping);

async fn lockout(store: Store) {
    let api = start(store, |c| c.max_failed_logins = 3).await;
    let (_, laptop) = api.user("alice").await;
    for _ in 0..3 {
        let e = api
            .login("alice", "not the password", None, &laptop)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::BadCredentials));
    }
    let e = api
        .login("alice", PASSWORD, None, &laptop)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::UserLocked));
    lastmile_api::admin::change_user(
        &api.app,
        "test",
        "alice",
        lastmile_api::admin::UserChange::Enable,
    )
    .await
    .unwrap();
    api.login("alice", PASSWORD, None, &laptop).await.unwrap();
    // An unknown user gets the same answer as a wrong password.
    let e = api
        .login("mallory", PASSWORD, None, &laptop)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::BadCredentials));
}
both_stores!(
    failed_logins_lock_the_user_until_an_admin_enables_them,
    lockout
);

/// A reqwest client trusting the organisation's CA, for looking at raw answers (headers).
fn raw_client(ca: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

/// A complete login request for `user` on `device`, with a fresh challenge.
async fn login_request(
    api: &support::Api,
    user: &str,
    password: &str,
    totp: Option<&str>,
    device: &Device,
) -> wire::LoginRequest {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let device_key = lastmile_api_client::public_b64(&device.key);
    let challenge: wire::Challenge = api
        .client
        .post(
            "/v1/login/challenge",
            &wire::ChallengeRequest {
                user: user.to_owned(),
                device_key: device_key.clone(),
            },
        )
        .await
        .unwrap();
    let session_key = lastmile_api_client::public_b64(&new_key().unwrap());
    let proof = wire::login_proof_message(
        user,
        &challenge.challenge,
        &session_key,
        &device.fingerprint,
    );
    wire::LoginRequest {
        user: user.to_owned(),
        password: password.to_owned(),
        totp: totp.map(str::to_owned),
        new_password: None,
        challenge: challenge.challenge,
        session_key,
        device: wire::DeviceProof {
            public_key: device_key,
            fingerprint: device.fingerprint.clone(),
            name: "test machine".to_owned(),
            signature: base64::engine::general_purpose::STANDARD
                .encode(device.key.sign(&proof).to_bytes()),
        },
    }
}

/// More logins at once than `max_concurrent_logins` are not queued: those past the bound
/// get 429 `too_many_logins` with Retry-After, their challenge unspent; the rest succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_past_the_bound_are_refused_with_retry_after() {
    let api = start(Store::Sqlite, |c| c.max_concurrent_logins = 1).await;
    api.user("alice").await;
    let http = raw_client(&api.ca);
    let mut requests = Vec::new();
    for _ in 0..8 {
        requests.push(login_request(&api, "alice", PASSWORD, None, &Device::new()).await);
    }
    // Every login at once.
    let answers = futures_util::future::join_all(
        requests
            .iter()
            .map(|r| http.post(api.client.url("/v1/login")).json(r).send()),
    )
    .await;
    let mut refused = Vec::new();
    let mut succeeded = 0;
    for (answer, request) in answers.into_iter().zip(&requests) {
        let answer = answer.unwrap();
        match answer.status().as_u16() {
            200 => succeeded += 1,
            429 => {
                assert_eq!(
                    answer
                        .headers()
                        .get("retry-after")
                        .unwrap()
                        .to_str()
                        .unwrap(),
                    "1"
                );
                let body: wire::ErrorBody = answer.json().await.unwrap();
                assert_eq!(body.error, ErrorCode::TooManyLogins, "{}", body.message);
                refused.push(request);
            }
            other => panic!("login answered {other}: {}", answer.text().await.unwrap()),
        }
    }
    eprintln!(
        "{succeeded} logins went through, {} were refused",
        refused.len()
    );
    assert!(succeeded >= 1);
    assert!(!refused.is_empty(), "no login was refused past the bound");
    // The challenge was not spent: the same request goes through after the wait.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for request in refused {
        let a = http
            .post(api.client.url("/v1/login"))
            .json(request)
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 200, "{}", a.text().await.unwrap());
    }
}

/// Turns TOTP on for `user` and returns its base32 secret (from the otpauth URI).
async fn totp_on(api: &support::Api, admin: &Session, user: &str) -> String {
    let t: serde_json::Value = api
        .client
        .call(
            admin,
            Method::POST,
            &format!("/v1/admin/users/{user}/totp-on"),
            None,
        )
        .await
        .unwrap()
        .json()
        .unwrap();
    let uri = t["otpauth"].as_str().unwrap();
    uri.split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned()
}

/// One TOTP code sent by several logins at once: exactly one of them logs in.
async fn totp_code_used_concurrently(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let (_, laptop) = api.user("alice").await;
    let secret = totp_on(&api, &admin, "alice").await;
    // Not too close to the end of a step, so every login sees the same code as current.
    while now() % 30 > 20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let code = lastmile_api::secret::totp_now(&secret, now()).unwrap();
    let login = || {
        let (api, laptop, code) = (&api, &laptop, &code);
        async move {
            api.client
                .login(&lastmile_api_client::Login {
                    user: "alice",
                    password: PASSWORD,
                    totp: Some(code),
                    new_password: None,
                    device_key: &laptop.key,
                    fingerprint: &laptop.fingerprint,
                    device_name: "laptop",
                })
                .await
        }
    };
    let (a, b, c) = tokio::join!(login(), login(), login());
    let results = [a, b, c];
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Some(&ErrorCode::TotpReplayed), "{e}");
        }
    }
}
both_stores!(
    a_totp_code_used_by_concurrent_logins_logs_in_once,
    totp_code_used_concurrently
);

async fn stored_totp(api: &support::Api, user: &str) -> (Option<String>, Option<String>) {
    use sqlx::Row as _;
    let r = sqlx::query("SELECT totp_secret, totp_sealed FROM users WHERE name = $1")
        .bind(user)
        .fetch_one(&api.app.db.pool)
        .await
        .unwrap();
    (r.get("totp_secret"), r.get("totp_sealed"))
}

/// The TOTP seed is stored sealed by the KMS, never as its base32; a seed stored in the
/// clear by an earlier version is sealed when the API starts, and still logs in.
async fn totp_seeds_sealed(store: Store) {
    let api = start(store, |_| {}).await;
    let admin = api.admin().await;
    let (_, laptop) = api.user("alice").await;
    let secret = totp_on(&api, &admin, "alice").await;
    let (clear, sealed) = stored_totp(&api, "alice").await;
    assert_eq!(clear, None);
    let sealed = sealed.unwrap();
    assert!(!sealed.contains(&secret), "{sealed}");
    assert!(!sealed.to_lowercase().contains(&secret.to_lowercase()));
    let login = |code: String| {
        let (api, laptop) = (&api, &laptop);
        async move {
            api.client
                .login(&lastmile_api_client::Login {
                    user: "alice",
                    password: PASSWORD,
                    totp: Some(&code),
                    new_password: None,
                    device_key: &laptop.key,
                    fingerprint: &laptop.fingerprint,
                    device_name: "laptop",
                })
                .await
        }
    };
    login(lastmile_api::secret::totp_now(&secret, now()).unwrap())
        .await
        .unwrap();

    // A clear seed, as an earlier version stored it: sealed at the next start.
    let old = lastmile_api::secret::new_totp_secret().unwrap();
    sqlx::query(
        "UPDATE users SET totp_secret = $1, totp_sealed = NULL, totp_last_step = 0 WHERE name = 'alice'",
    )
    .bind(&old)
    .execute(&api.app.db.pool)
    .await
    .unwrap();
    let _second = api.another_instance().await;
    let (clear, sealed) = stored_totp(&api, "alice").await;
    assert_eq!(clear, None);
    assert!(!sealed.unwrap().contains(&old));
    login(lastmile_api::secret::totp_now(&old, now()).unwrap())
        .await
        .unwrap();
}
both_stores!(totp_seeds_are_stored_sealed, totp_seeds_sealed);

/// The API's metrics count logins by outcome and requests by route and status, and time
/// them; the names are the ones the alert rules use.
async fn metrics_count_logins_and_requests(store: Store) {
    let api = start(store, |_| {}).await;
    let device = Device::new();
    api.login("admin", "wrong password!!", None, &device)
        .await
        .unwrap_err();
    let _admin = api.admin().await;
    let text = lastmile_metrics::render(&api.app.metrics.registry());
    for want in [
        "lastmile_api_logins_total{outcome=\"bad_credentials\"} 1",
        "lastmile_api_requests_total{route=\"/v1/login\",method=\"POST\",status=\"401\"} 1",
        "lastmile_api_request_duration_seconds_count{route=\"/v1/login\"}",
        "# TYPE lastmile_api_audit_spool_events gauge",
        "# TYPE lastmile_api_tls_handshake_failures counter",
        "lastmile_api_audit_writes_total{outcome=\"ok\"}",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("lastmile_api_logins_total{outcome=\"ok\"} ")),
        "{text}"
    );
}
both_stores!(
    metrics_of_logins_and_requests,
    metrics_count_logins_and_requests
);
