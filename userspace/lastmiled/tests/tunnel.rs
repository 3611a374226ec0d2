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
#[allow(dead_code)] // shared with benches/tunnel.rs, which uses other parts
mod stack;
// The kernel's interception needs 5.19 (see kernel_version/mod.rs): the tests through it
// skip visibly below that, as the redirect suite does (vm-tests boots 5.10).
mod kernel_version;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use lastmile_api_client::{ApiClient, Session};
use lastmile_tunnel::{ConnectError, client::Tunnel};
use reqwest::Method;
use stack::{AgentProcess, Listen, Stack, echo_server, echo_through};

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
    let gw1 = stack.gateway("gw1").await;
    let gw2 = stack.gateway("gw2").await;
    let listen = Listen::start(&alice, "echo");

    // Bytes flow both ways, in order, through one of the gateways.
    let back = echo_through(listen.addr, b"hello").unwrap();
    assert_eq!(back, b"hello", "{}", listen.stderr());
    let bulk = pattern(8 << 20);
    let back = echo_through(listen.addr, &bulk).unwrap();
    assert!(
        back == bulk,
        "8 MiB came back changed ({} bytes)",
        back.len()
    );
    // The agent picks its gateway (an order of its session's own); find which.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut first, second) = loop {
        let carried = |g: &stack::GatewayProcess| {
            g.events()
                .iter()
                .any(|e| e["kind"] == "connection.close" && e["bytes_up"] == 8 << 20)
        };
        if carried(&gw1) {
            break (gw1, gw2);
        }
        if carried(&gw2) {
            break (gw2, gw1);
        }
        assert!(Instant::now() < deadline, "no gateway recorded the 8 MiB");
        std::thread::sleep(Duration::from_millis(20));
    };
    let close = first.wait_event("connection.close", |e| e["bytes_up"] == 8 << 20);
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
    // A port open to the network would share alice's session: refused.
    let out = stack
        .lastmile(&alice, &["listen", "echo", "--bind", "0.0.0.0"], "")
        .await;
    assert_ne!(out.0, 0);
    assert!(out.2.contains("not a loopback address"), "{out:?}");

    // Kill that gateway: new connections go through the other within 2 seconds.
    first.kill();
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
    eprintln!(
        "failover: first connection carried {took:?} after {} was killed",
        first.name
    );
    second.wait_event("connection.close", |e| e["bytes_up"] == 14);

    // An open connection, then the session is presented from a second device: the API
    // revokes it and the gateway cuts the connection within a second.
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
    let close = second.wait_event("connection.close", |e| {
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
        matches!(err, ConnectError::Tls { .. } | ConnectError::H2(_)),
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
        matches!(err, ConnectError::Tls { .. } | ConnectError::H2(_)),
        "{err}"
    );

    // A gateway's own certificate names no session: refused too.
    let logs = gw.logs();
    assert!(logs.contains("tunnel handshake refused"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_renews_its_certificate_and_keeps_serving() {
    let stack = Stack::start().await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    // Asking for renewal 24 h early renews right away (certificates last 24 h).
    let gw = stack.gateway_with("gw1", "renew_before = \"24h\"").await;
    // Read before the gateway started: renewal may come before `gateway_with` returns.
    let enrolled = gw.enrolled_certificate.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("gateway certificate renewed") {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let renewed = std::fs::read_to_string(gw.dir.join("state/gateway.pem")).unwrap();
    assert_ne!(renewed, enrolled);
    let audit = std::fs::read_to_string(stack.app.config.audit_file()).unwrap();
    assert!(
        audit.contains("\"change\":\"renew"),
        "no renewal in the audit log"
    );
    // New tunnels get the new certificate, and the API takes the gateway's calls with it.
    let listen = Listen::start(&alice, "echo");
    assert_eq!(
        echo_through(listen.addr, b"renewed").unwrap(),
        b"renewed",
        "{}",
        listen.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_its_session_certificate_before_it_ends() {
    // Certificates of 302 s: the agent renews 5 minutes before the end, i.e. at once
    // (after its 10 s minimum wait).
    let stack = Stack::start_with(|c| c.certificate_ttl = Duration::from_secs(302)).await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    let mut gw = stack.gateway("gw1").await;
    let saved = |home: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(home.join("session.json")).unwrap()).unwrap()
    };
    let before = saved(&alice)["login"]["certificate"].clone();
    let listen = Listen::start(&alice, "echo");
    assert_eq!(echo_through(listen.addr, b"one").unwrap(), b"one");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listen.stderr().contains("session certificate renewed") {
        assert!(Instant::now() < deadline, "{}", listen.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = saved(&alice);
    assert_ne!(after["login"]["certificate"], before);
    assert_eq!(after["login"]["session"], saved(&alice)["login"]["session"]);
    // A new tunnel (the gateway restarted) is made with the renewed certificate.
    gw.kill();
    gw.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo_through(listen.addr, b"two")
        .map(|b| b != b"two")
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "agent:\n{}\ngateway:\n{}",
            listen.stderr(),
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_explained_to_psql_in_its_own_protocol() {
    let stack = Stack::start().await;
    let alice = stack.user("alice").await;
    // A postgres resource whose grant goes after `listen` started: the gateway refuses
    // the stream (the API says no grant), and the agent tells psql why as an
    // ErrorResponse.
    stack
        .resource_of(
            lastmile_proto::wire::ResourceKind::Postgres,
            "orders-db",
            "127.0.0.1:9".parse().unwrap(),
            &[],
            &["alice"],
        )
        .await;
    let _gw = stack.gateway("gw1").await;
    let listen = Listen::start(&alice, "orders-db");
    for g in lastmile_api::admin::list_grants(&stack.app).await.unwrap() {
        lastmile_api::admin::revoke_grant(&stack.app, "test", &g.id)
            .await
            .unwrap();
    }
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &listen.addr.port().to_string()])
        .args(["-U", "alice", "-d", "orders", "-w", "-c", "select 1"])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable")
        .output()
        .expect("psql (apt install postgresql-client; `cargo xtask setup` does)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the gateway refused this connection") && err.contains("no_grant"),
        "psql said: {err}"
    );
    // Where a raw TCP client (which sees only a close) finds the reason: `lastmile why`,
    // and the last ones in `lastmile status`.
    let (code, why, _) = stack.lastmile(&alice, &["why"], "").await;
    assert_eq!(code, 0, "{why}");
    let first = why.lines().next().unwrap_or_default();
    assert!(
        first.contains("orders-db: the gateway refused this connection")
            && first.contains("no_grant"),
        "{why}"
    );
    assert!(why.contains("→ ask your admin for a grant"), "{why}");
    let (_, json, _) = stack
        .lastmile(&alice, &["--output", "json", "why"], "")
        .await;
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list[0]["resource"], "orders-db", "{json}");
    assert_eq!(list[0]["code"], "no_grant", "{json}");
    let (_, status, _) = stack.lastmile(&alice, &["status"], "").await;
    assert!(
        status.contains("refused:") && status.contains("orders-db: the gateway refused"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_serves_only_its_own_user() {
    if !support::have_root("listen_serves_only_its_own_user") {
        return;
    }
    let stack = Stack::start().await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    let _gw = stack.gateway("gw1").await;
    // alice's `listen` runs as root here; another user of the host connects to its port.
    let listen = Listen::start(&alice, "echo");
    let other = {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new(support::lastmiled())
            .args(["probe", &listen.addr.to_string(), "--send", "may I?"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let out = String::from_utf8_lossy(&other.stdout);
    assert!(
        !out.contains("may I?"),
        "another user rode alice's session: {out}"
    );
    assert!(
        listen.stderr().contains("connection from another user"),
        "{}",
        listen.stderr()
    );
    assert_eq!(echo_through(listen.addr, b"mine").unwrap(), b"mine");
}

/// A tunnel the gateway refused: either the handshake fails, or (TLS 1.3 sends the
/// client's certificate after the client considers the handshake done) the first use.
fn refused(r: Result<Tunnel, ConnectError>) -> ConnectError {
    match r {
        Err(e) => e,
        Ok(t) => {
            let rt = tokio::runtime::Handle::current();
            let t = Arc::new(t);
            let result = tokio::task::block_in_place(|| {
                rt.block_on(async {
                    let echo = lastmile_proto::wire::ResourceName::parse("echo").unwrap();
                    let h = lastmile_tunnel::header::StreamHeader {
                        resource: echo.clone(),
                        authorization: lastmile_proto::wire::UnlockAuthorization {
                            session: "s".into(),
                            device: "d".into(),
                            resource: echo,
                            gateway: lastmile_proto::wire::GatewayName::parse("gw1").unwrap(),
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

/// `lastmiled probe TARGET --send TEXT` in `cgroup` as `uid`: its JSON report, or its
/// error text.
fn probe(
    cgroup: &support::TestCgroup,
    uid: u32,
    target: &str,
    text: &str,
) -> Result<serde_json::Value, String> {
    use std::os::unix::process::CommandExt as _;
    let out = cgroup
        .command(support::lastmiled())
        .args(["probe", target, "--send", text])
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_connection_goes_through_agent_tunnel_and_gateway() {
    if !kernel_version::can_run("a_redirected_connection_goes_through_agent_tunnel_and_gateway") {
        return;
    }
    let stack = Stack::start().await;
    // The resource lives at its protected address: only the gateway's marked connection
    // reaches it; everyone else's connect is redirected.
    let upstream = echo_server("127.0.0.2:0");
    let protect = upstream.to_string();
    let alice = stack.user("alice").await;
    stack
        .resource("echo", upstream, &[&protect], &["alice"])
        .await;
    let gw = stack.gateway("gw1").await;

    // The node takes its targets from the API, with the gateway's identity.
    let cgroup = support::TestCgroup::new("tunnel");
    let api = format!(
        "[api]\nurl = {:?}\nstate_dir = {:?}\n",
        stack.api_url,
        gw.dir.join("state")
    );
    let node = support::TestNode::start(
        "tunnel",
        &cgroup,
        &api,
        "resources_from_api = true\nresource_refresh = \"200ms\"",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status()["protected_v4"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the API's resource was never protected: {}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Alice's agent runs as uid 65534; a process of hers connects to the target.
    let alice_uid = 65534;
    let agent = AgentProcess::start(&alice, &node.agent_socket, alice_uid);
    let report = probe(&cgroup, alice_uid, &protect, "hello through the tunnel")
        .unwrap_or_else(|e| panic!("{e}\nagent: {}\ngateway: {}", agent.logs(), gw.logs()));
    assert_eq!(report["received"], "hello through the tunnel", "{report}");
    // The application sees the address it asked for.
    assert_eq!(report["peer"], protect.as_str());
    let handoff = node.wait_event("handoff", |e| {
        e["kind"] == "node.handoff" && e["uid"] == alice_uid
    });
    let cookie = handoff["sock_cookie"].as_u64().unwrap();
    // Joined end to end by the socket cookie: kernel event, node, gateway, API.
    node.wait_event("kernel", |e| {
        e["kind"] == "kernel.connect" && e["sock_cookie"] == cookie
    });
    let close = gw.wait_event("connection.close", |e| {
        e["client_connection"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("sock-{cookie}-")))
            && e["sock_cookie"] == cookie
    });
    assert_eq!(close["user"], "alice");
    assert_eq!(close["bytes_up"], 24);
    assert!(
        std::fs::read_to_string(stack.app.config.audit_file())
            .unwrap()
            .contains(close["connection"].as_str().unwrap())
    );

    // Another user on this host, without a session: refused by the node, never tunnelled.
    let other = probe(&cgroup, 65533, &protect, "let me in");
    let received = other
        .as_ref()
        .map(|r| r["received"].clone())
        .unwrap_or_default();
    assert!(received.is_null() || received == "", "{other:?}");
    node.wait_event("refusal", |e| {
        e["kind"] == "node.refused_no_agent" && e["uid"] == 65533
    });
    assert_eq!(
        gw.events()
            .iter()
            .filter(|e| e["kind"] == "connection.close")
            .count(),
        1
    );

    // `lastmile status` shows the agent, the node and the gateway (the agent writes its
    // state at most every 200 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.state()["gateways"][0]["state"] != "up" {
        assert!(Instant::now() < deadline, "{}", agent.state());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out, err) = stack.lastmile(&alice, &["status"], "").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("agent:       running"), "{out}");
    assert!(out.contains("registered for uid 65534"), "{out}");
    assert!(out.contains("gateway:     gw1 at 127.0.0.1:"), "{out}");
    assert!(out.contains(": up"), "{out}");
}

/// Strangers who open TCP connections and never finish a TLS handshake cannot pin the
/// gateway: each is closed when `handshake_timeout` runs out, those past
/// `max_handshakes` at once, and users' tunnels go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_handshakes_are_bounded_in_time_and_number() {
    let stack = Stack::start().await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    let gw = stack
        .gateway_with("gw1", "handshake_timeout = \"1s\"\nmax_handshakes = 20")
        .await;
    let address = lastmile_api::gateways::endpoints(&stack.app).await.unwrap()[0]
        .tunnel
        .clone();
    let opened = Instant::now();
    // Those past the bound are closed at once; the first 20 when their second is up.
    let waits: Vec<_> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(&address).unwrap();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = [0u8; 1];
                let n = s.read(&mut b).unwrap_or(0);
                assert_eq!(n, 0, "the gateway sent bytes to a stranger");
                opened.elapsed()
            })
        })
        .collect();
    let mut closed_at: Vec<Duration> = waits.into_iter().map(|w| w.join().unwrap()).collect();
    closed_at.sort();
    assert!(
        closed_at[19] < Duration::from_millis(900),
        "connections past max_handshakes were not closed at once: {closed_at:?}"
    );
    assert!(
        closed_at[39] >= Duration::from_millis(900) && closed_at[39] < Duration::from_secs(3),
        "idle handshakes were not cut at handshake_timeout: {closed_at:?}"
    );
    assert!(gw.logs().contains("handshake timed out"), "{}", gw.logs());
    // A user's tunnel works all along.
    let listen = Listen::start(&alice, "echo");
    assert_eq!(
        echo_through(listen.addr, b"still here").unwrap(),
        b"still here"
    );
}

/// Waits until the open connection `s` is closed by the gateway; how long it took.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(limit + Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
}

/// Open connections end within a second when the access they rest on does: a grant
/// revoked, the user leaving the group a grant is for, and a grant's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_end_with_the_access_they_rest_on() {
    let stack = Stack::start().await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    let gw = stack.gateway("gw1").await;
    let listen = Listen::start(&alice, "echo");
    let open = || {
        let mut s = TcpStream::connect(listen.addr).unwrap();
        s.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s
    };

    // A revoked grant.
    let mut s = open();
    let grant = lastmile_api::admin::list_grants(&stack.app).await.unwrap()[0]
        .id
        .clone();
    lastmile_api::admin::revoke_grant(&stack.app, "test", &grant)
        .await
        .unwrap();
    let took = closed_within(&mut s, Duration::from_secs(1));
    assert!(
        took < Duration::from_secs(1),
        "grant revoked: cut after {took:?}"
    );
    gw.wait_event("connection.close", |e| {
        e["error"]
            .as_str()
            .is_some_and(|s| s.contains("access revoked"))
    });

    // A grant to a group alice leaves; a second grant (direct, then revoked) first shows
    // that a connection another grant still covers is left alone.
    lastmile_api::admin::change_user(
        &stack.app,
        "test",
        "alice",
        lastmile_api::admin::UserChange::JoinGroup("dba".into()),
    )
    .await
    .unwrap();
    let group_grant = lastmile_api::admin::add_grant(
        &stack.app,
        "test",
        lastmile_proto::wire::NewGrant {
            resource: "echo".into(),
            subject: lastmile_proto::wire::Subject::Group("dba".into()),
            expires_at: None,
        },
    )
    .await
    .unwrap();
    let direct = lastmile_api::admin::add_grant(
        &stack.app,
        "test",
        lastmile_proto::wire::NewGrant {
            resource: "echo".into(),
            subject: lastmile_proto::wire::Subject::User("alice".into()),
            expires_at: None,
        },
    )
    .await
    .unwrap();
    let mut s = open();
    lastmile_api::admin::revoke_grant(&stack.app, "test", &direct.id)
        .await
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.write_all(b"pong").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(
        &b, b"pong",
        "a connection the group's grant still covers was cut"
    );
    lastmile_api::admin::change_user(
        &stack.app,
        "test",
        "alice",
        lastmile_api::admin::UserChange::LeaveGroup("dba".into()),
    )
    .await
    .unwrap();
    let took = closed_within(&mut s, Duration::from_secs(1));
    assert!(
        took < Duration::from_secs(1),
        "left the group: cut after {took:?}"
    );
    lastmile_api::admin::revoke_grant(&stack.app, "test", &group_grant.id)
        .await
        .unwrap();

    // A grant that expires in 2 seconds.
    lastmile_api::admin::add_grant(
        &stack.app,
        "test",
        lastmile_proto::wire::NewGrant {
            resource: "echo".into(),
            subject: lastmile_proto::wire::Subject::User("alice".into()),
            expires_at: Some(lastmile_api_client::now() + 2),
        },
    )
    .await
    .unwrap();
    let mut s = open();
    let took = closed_within(&mut s, Duration::from_secs(3));
    assert!(
        took < Duration::from_secs(3),
        "grant expiry: cut after {took:?}"
    );
    gw.wait_event("connection.close", |e| e["error"] == "grant expired");
}

/// A listener that counts the connections it accepts, and drops them.
fn counting_listener(addr: &str) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU32>) {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let at = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            if s.is_ok() {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (at, count)
}

/// Restarting a node never opens a window where a protected target is reached directly:
/// not on a normal restart, not on a start that fails (no identity), not on a start with
/// the API down (the API's last list is remembered). A local process connects in a loop
/// throughout, and the target sees none of its connections. Without enforcement, what
/// the pinned programs redirect while no node listens is refused by the kernel (nothing
/// listens there); with it, the same, and a connect the programs cannot redirect is
/// refused outright (EPERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_never_leave_a_protected_target_reachable() {
    if !kernel_version::can_run("restarts_never_leave_a_protected_target_reachable") {
        return;
    }
    restarts_leave_nothing_reachable(false).await;
}

/// The same with `enforce = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_never_leave_a_protected_target_reachable_with_enforcement() {
    if !kernel_version::can_run(
        "restarts_never_leave_a_protected_target_reachable_with_enforcement",
    ) {
        return;
    }
    restarts_leave_nothing_reachable(true).await;
}

async fn restarts_leave_nothing_reachable(enforce: bool) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let stack = Stack::start().await;
    let (target, reached) = counting_listener("127.0.0.2:0");
    let protect = target.to_string();
    stack.resource("db", target, &[&protect], &[]).await;
    let gw = stack.gateway("gw1").await;
    let cgroup = Arc::new(support::TestCgroup::new("restart"));
    let api_conf = |url: &str, state: &std::path::Path| {
        format!("[api]\nurl = {url:?}\nstate_dir = {state:?}\n")
    };
    let state = gw.dir.join("state");
    let mut node = support::TestNode::start(
        "restart",
        &cgroup,
        &api_conf(&stack.api_url, &state),
        &format!("resources_from_api = true\nresource_refresh = \"200ms\"\nenforce = {enforce}"),
    );
    let protected = |node: &support::TestNode| node.status()["protected_v4"] == 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !protected(&node) {
        assert!(
            Instant::now() < deadline,
            "never protected: {}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The gateway dials the target itself (marked); stop it so every connection the
    // target sees is a leak.
    drop(gw);

    // uid 65533 has no agent: every redirected connect is refused by the node (or, while
    // no node runs, by the kernel: nothing listens where it redirects).
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let looping = {
        let (stop, attempts, protect, cgroup) = (
            stop.clone(),
            attempts.clone(),
            protect.clone(),
            cgroup.clone(),
        );
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt as _;
            while !stop.load(SeqCst) {
                let out = cgroup
                    .command(support::lastmiled())
                    .args(["probe", &protect, "--count", "50", "--timeout-ms", "500"])
                    .uid(65533)
                    .gid(65533)
                    .output()
                    .unwrap();
                let report: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                attempts.fetch_add(report["attempts"].as_u64().unwrap_or(0) as u32, SeqCst);
            }
        })
    };

    // 1. A plain restart.
    node.stop();
    node.spawn();
    assert!(protected(&node), "{}", node.logs());

    // 2. A start that fails: no identity. It must exit, leaving the pins as they were.
    node.stop();
    let empty = tempfile::tempdir().unwrap();
    let good_config = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        good_config.replace(&format!("{state:?}"), &format!("{:?}", empty.path())),
    )
    .unwrap();
    let out = std::process::Command::new(support::lastmiled())
        .args(["node", "run", "--config"])
        .arg(&node.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs this host's identity"), "{err}");
    assert!(protected(&node), "a failed start emptied the protected set");

    // 3. A start with the API down: the remembered list is protected from the start.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("https://localhost:{}", dead.local_addr().unwrap().port());
    drop(dead);
    std::fs::write(
        &node.config,
        good_config.replace(&format!("{:?}", stack.api_url), &format!("{dead_url:?}")),
    )
    .unwrap();
    node.spawn();
    assert!(protected(&node), "{}", node.logs());
    std::thread::sleep(Duration::from_millis(600));
    assert!(protected(&node), "{}", node.logs());
    assert!(
        node.logs().contains("protecting the API's last list"),
        "{}",
        node.logs()
    );

    stop.store(true, SeqCst);
    looping.join().unwrap();
    assert!(attempts.load(SeqCst) > 50, "the connect loop barely ran");
    assert_eq!(
        reached.load(SeqCst),
        0,
        "the protected target was reached directly during a restart"
    );
}

/// A TCP proxy on loopback that can be stopped (every connection cut, the port closed)
/// and started again on the same port: the API going away and coming back, as the
/// gateway sees it.
struct Outage {
    port: u16,
    to: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Outage {
    fn new(to: std::net::SocketAddr) -> Self {
        let mut o = Self {
            port: 0,
            to,
            task: None,
        };
        o.start();
        o
    }

    fn start(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], self.port)))
            .unwrap();
        let listener = socket.listen(64).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let to = self.to;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut a, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        }));
    }

    /// Cuts every connection (the JoinSet goes with the task) and closes the port.
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Revocations made while a gateway cannot reach the API are applied when it comes
/// back: the gateway resumes its revocation stream from the position the API gave it
/// (it used to resume "from now" when it had seen no revocation yet, and the open
/// connection lived on until its session ended). An access revocation is used because
/// the user's agent, which follows its own session's revocations directly, would cut a
/// revoked session's connections itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_made_while_the_api_is_unreachable_are_applied_on_its_return() {
    let stack = Stack::start().await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    let mut gw = stack.gateway("gw1").await;
    // The gateway reaches the API through a proxy the test can stop.
    let api_port: u16 = stack.api_url.rsplit(':').next().unwrap().parse().unwrap();
    let mut outage = Outage::new(std::net::SocketAddr::from(([127, 0, 0, 1], api_port)));
    gw.kill();
    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        config.replace(
            &format!("{:?}", stack.api_url),
            &format!("\"https://localhost:{}\"", outage.port),
        ),
    )
    .unwrap();
    gw.spawn();
    let listen = Listen::start(&alice, "echo");
    let mut s = TcpStream::connect(listen.addr).unwrap();
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    // Let the gateway's revocation stream start.
    std::thread::sleep(Duration::from_millis(300));

    outage.stop();
    let grant = lastmile_api::admin::list_grants(&stack.app).await.unwrap()[0]
        .id
        .clone();
    lastmile_api::admin::revoke_grant(&stack.app, "test", &grant)
        .await
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"pong").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong", "cut while the API was unreachable?");

    outage.start();
    let took = closed_within(&mut s, Duration::from_secs(5));
    eprintln!("cut {took:?} after the API came back");
    assert!(
        took < Duration::from_millis(1500),
        "cut {took:?} after the API's return ({})",
        gw.logs()
    );
    gw.wait_event("connection.close", |e| {
        e["error"]
            .as_str()
            .is_some_and(|s| s.contains("access revoked"))
    });
}
