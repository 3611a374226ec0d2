//! The tunnel end to end: a user's connection goes (kernel redirect → lastmiled →) agent
//! → mutual TLS → gateway → the resource, with the real `lastmile` and `lastmiled`
//! binaries and the API on loopback. Failover between gateways, revocation cutting open
//! connections, and the certificates a gateway refuses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/stack.rs"]
mod stack;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use lastmile_api_client::{ApiClient, Session};
use lastmile_tunnel::{TunnelError, client::Tunnel};
use reqwest::Method;
use stack::{Listen, Stack, echo_server, echo_through};

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// The saved session of `home`, presented by the device of `other` (alice's second
/// machine): the session key was copied to another device.
fn stolen_session(home: &std::path::Path, other: &std::path::Path) -> (ApiClient, Session) {
    let other_saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other.join("session.json")).unwrap())
            .unwrap();
    let other_device: String = other_saved["login"]["device"].as_str().unwrap().to_owned();
    let device_seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(
            std::fs::read_to_string(other.join("device.key"))
                .unwrap()
                .trim(),
        )
        .unwrap()
        .try_into()
        .unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("session.json")).unwrap()).unwrap();
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(saved["session_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let mut login: lastmile_proto::wire::LoginResponse =
        serde_json::from_value(saved["login"].clone()).unwrap();
    login.device = other_device;
    let client = ApiClient::new(
        saved["api"].as_str().unwrap(),
        &std::fs::read_to_string(home.join("ca.pem")).unwrap(),
        None,
    )
    .unwrap();
    let session = Session {
        device_key: ed25519_dalek::SigningKey::from_bytes(&device_seed),
        session_key: ed25519_dalek::SigningKey::from_bytes(&seed),
        login,
    };
    (client, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_carries_bytes_fails_over_and_is_cut_on_revocation() {
    let stack = Stack::start().await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    let bob = stack.user("bob").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    let mut gw1 = stack.gateway("gw1").await;
    let gw2 = stack.gateway("gw2").await;
    let listen = Listen::start(&alice, "echo");

    // Bytes flow both ways, in order, through gw1 (the first by name).
    let back = echo_through(listen.addr, b"hello").unwrap();
    assert_eq!(back, b"hello", "{}", listen.stderr());
    let bulk = pattern(8 << 20);
    let back = echo_through(listen.addr, &bulk).unwrap();
    assert!(
        back == bulk,
        "8 MiB came back changed ({} bytes)",
        back.len()
    );
    let close = gw1.wait_event("connection.close", |e| e["bytes_up"] == 8 << 20);
    assert_eq!(close["bytes_down"], 8 << 20);
    assert_eq!(close["resource"], "echo");
    assert_eq!(close["user"], "alice");
    assert!(close["error"].is_null(), "{close}");
    let opened = std::fs::read_to_string(stack.app.config.audit_file()).unwrap();
    assert!(
        opened.contains(&format!("\"connection\":{}", close["connection"])),
        "the API recorded no connection.open for {}",
        close["connection"]
    );

    // Bob has no grant: his `listen` is refused before it starts.
    let out = stack
        .lastmile(&bob, &["listen", "echo", "--port", "0"], "")
        .await;
    assert_ne!(out.0, 0);
    assert!(out.2.contains("not among your resources"), "{out:?}");

    // Kill gw1: new connections go through gw2 within 2 seconds.
    gw1.kill();
    let killed = Instant::now();
    let mut carried = false;
    while killed.elapsed() < Duration::from_secs(2) {
        if echo_through(listen.addr, b"after failover").is_ok_and(|b| b == b"after failover") {
            carried = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    assert!(carried, "no failover within 2 s: {}", listen.stderr());
    eprintln!("failover: first connection carried {took:?} after gw1 was killed");
    gw2.wait_event("connection.close", |e| e["bytes_up"] == 14);

    // An open connection, then the session is presented from a second device: the API
    // revokes it and gw2 cuts the connection within a second.
    let mut open = TcpStream::connect(listen.addr).unwrap();
    open.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let laptop = stack.dir.path().join("home-alice-laptop");
    stack
        .login(&laptop, "alice", &format!("{}\n", stack::PASSWORD))
        .await;
    let (client, thief) = stolen_session(&alice, &laptop);
    let answer = client
        .call(&thief, Method::GET, "/v1/me", None)
        .await
        .unwrap();
    assert!(
        answer.body.contains("session_device_mismatch"),
        "{}",
        answer.body
    );
    let revoked = Instant::now();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = open.read(&mut buf).unwrap_or(0);
    let cut = revoked.elapsed();
    assert_eq!(
        n, 0,
        "the connection still carried bytes after the revocation"
    );
    assert!(cut < Duration::from_secs(1), "cut only after {cut:?}");
    eprintln!("revocation: open connection cut {cut:?} after the API revoked the session");
    let close = gw2.wait_event("connection.close", |e| {
        e["error"].as_str().is_some_and(|s| s.contains("revoked"))
    });
    assert_eq!(close["bytes_up"], 4);
    // New connections are refused, and the user is told to log in again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = echo_through(listen.addr, b"again")
            .map(|b| b.is_empty())
            .unwrap_or(true);
        if refused && listen.stderr().contains("run `lastmile login`") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", listen.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_expired_and_foreign_certificates() {
    let stack = Stack::start().await;
    let gw = stack.gateway("gw1").await;
    let tunnel = lastmile_api::gateways::endpoints(&stack.app).await.unwrap();
    let address = tunnel[0].tunnel.clone();
    let ca = stack.app.pki.ca_pem().to_owned();
    let key = lastmile_api_client::new_key().unwrap();
    let seed = key.to_bytes();
    let now = lastmile_api_client::now();

    // A good certificate gets through (the handshake and the ALPN).
    let good = stack
        .app
        .pki
        .session_certificate(
            "alice",
            "ses_x",
            "dev_x",
            key.verifying_key().to_bytes(),
            now + 600,
        )
        .unwrap();
    let config = lastmile_tunnel::tls::agent_config(&ca, &good, &seed).unwrap();
    Tunnel::connect(config, "gw1", &address).await.unwrap();

    // Expired: refused at the handshake.
    let expired = stack
        .app
        .pki
        .session_certificate(
            "alice",
            "ses_x",
            "dev_x",
            key.verifying_key().to_bytes(),
            now - 10,
        )
        .unwrap();
    let config = lastmile_tunnel::tls::agent_config(&ca, &expired, &seed).unwrap();
    let err = refused(Tunnel::connect(config, "gw1", &address).await);
    assert!(
        matches!(err, TunnelError::Tls { .. } | TunnelError::H2(_)),
        "{err}"
    );

    // Another CA's certificate with the same names: refused.
    let other_ca = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(params, other_ca);
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = [
        "urn:lastmile:user:alice",
        "urn:lastmile:session:ses_x",
        "urn:lastmile:device:dev_x",
    ]
    .into_iter()
    .map(|u| rcgen::SanType::URI(u.try_into().unwrap()))
    .collect();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf_key =
        rcgen::KeyPair::try_from(lastmile_tunnel::tls::ed25519_pkcs8(&seed).as_slice()).unwrap();
    let foreign = leaf.signed_by(&leaf_key, &issuer).unwrap().pem();
    let config = lastmile_tunnel::tls::agent_config(&ca, &foreign, &seed).unwrap();
    let err = refused(Tunnel::connect(config, "gw1", &address).await);
    assert!(
        matches!(err, TunnelError::Tls { .. } | TunnelError::H2(_)),
        "{err}"
    );

    // A gateway's own certificate names no session: refused too.
    let logs = gw.logs();
    assert!(logs.contains("tunnel handshake refused"), "{logs}");
}

/// A tunnel the gateway refused: either the handshake fails, or (TLS 1.3 sends the
/// client's certificate after the client considers the handshake done) the first use.
fn refused(r: Result<Tunnel, TunnelError>) -> TunnelError {
    match r {
        Err(e) => e,
        Ok(t) => {
            let rt = tokio::runtime::Handle::current();
            let t = Arc::new(t);
            let result = tokio::task::block_in_place(|| {
                rt.block_on(async {
                    let h = lastmile_tunnel::header::StreamHeader {
                        resource: "echo".into(),
                        authorization: lastmile_proto::wire::UnlockAuthorization {
                            session: "s".into(),
                            device: "d".into(),
                            resource: "echo".into(),
                            gateway: "gw1".into(),
                            connection: "c".into(),
                            created: 0,
                            nonce: "n".repeat(20),
                        },
                        signature: base64::engine::general_purpose::STANDARD.encode([0u8; 64]),
                    };
                    t.open(&h).await
                })
            });
            match result {
                Ok(_) => panic!("the gateway accepted a stream over a refused certificate"),
                Err(e) => e,
            }
        }
    }
}
