//! The gateway's and the API's Prometheus metrics count what really passed: a stream
//! carried, one refused, the tunnel, the events written, the authorizations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/stack.rs"]
#[allow(dead_code)] // shared with the other tests, which use other parts
mod stack;
mod support;

use std::time::{Duration, Instant};

use stack::{Listen, Stack, echo_server, echo_through};

use lastmile_testkit::metrics::{free_port, sample, try_scrape};

/// `(series, value)` pairs, all to hold within 10 s.
async fn wait_for(port: u16, want: &[(&'static str, f64)]) -> String {
    let want = want.to_vec();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = try_scrape(([127, 0, 0, 1], port).into()).unwrap_or_default();
            if want.iter().all(|(s, v)| sample(&text, s) == Some(*v)) {
                return text;
            }
            assert!(Instant::now() < deadline, "want {want:?} in\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_and_the_api_count_streams_refusals_and_authorizations() {
    let stack = Stack::start().await;
    let upstream = echo_server("127.0.0.1:0");
    let alice = stack.user("alice").await;
    stack.resource("echo", upstream, &[], &["alice"]).await;
    stack.resource("revoked", upstream, &[], &["alice"]).await;
    let port = free_port();
    let _gw = stack
        .gateway_with("gw1", &format!("metrics_listen = \"127.0.0.1:{port}\""))
        .await;
    let listen = Listen::start(&alice, "echo");
    assert_eq!(echo_through(listen.addr, b"counted").unwrap(), b"counted");
    // Refused by the API (the grant is gone): the client sees its connection closed.
    let refused = Listen::start(&alice, "revoked");
    let grants = lastmile_api::admin::list_grants(&stack.app).await.unwrap();
    let grant = grants.iter().find(|g| g.resource == "revoked").unwrap();
    lastmile_api::admin::revoke_grant(&stack.app, "test", &grant.id)
        .await
        .unwrap();
    let _ = echo_through(refused.addr, b"x");

    let text = wait_for(
        port,
        &[
            ("lastmile_gateway_streams_total{kind=\"tcp\"}", 1.0),
            ("lastmile_gateway_streams_open{kind=\"tcp\"}", 0.0),
            ("lastmile_gateway_refusals_total{code=\"no_grant\"}", 1.0),
        ],
    )
    .await;
    // Two agents' tunnels (one per `listen`), both still up.
    assert_eq!(
        sample(&text, "lastmile_gateway_tunnels_open"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lastmile_gateway_tls_handshake_failures_total"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "lastmile_gateway_events_written_total{outcome=\"ok\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "lastmile_gateway_events_dropped_total"),
        Some(0.0)
    );
    // A handshake that is not TLS is counted as a failure.
    let tunnel = lastmile_api::gateways::endpoints(&stack.app)
        .await
        .unwrap()
        .into_iter()
        .find(|g| g.name == "gw1")
        .unwrap()
        .tunnel;
    let mut junk = std::net::TcpStream::connect(tunnel).unwrap();
    std::io::Write::write_all(&mut junk, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    drop(junk);
    wait_for(
        port,
        &[("lastmile_gateway_tls_handshake_failures_total", 1.0)],
    )
    .await;

    // The API saw one authorization allowed and one refused.
    let api = lastmile_metrics::render(&stack.app.metrics.registry());
    for want in [
        "lastmile_api_authorizations_total{call=\"connection\",outcome=\"ok\"} 1",
        "lastmile_api_authorizations_total{call=\"connection\",outcome=\"no_grant\"} 1",
        "lastmile_api_requests_total{route=\"/v1/connections/authorize\",method=\"POST\",status=\"200\"} 1",
    ] {
        assert!(api.contains(want), "no `{want}` in\n{api}");
    }
}

/// The node counts what it did with each redirected connection (to an agent, refused for
/// want of one, a direct dial) and serves the kernel programs' own counters and the
/// agents registered.
#[test]
fn the_node_counts_handoffs_and_serves_the_kernels_counters() {
    if !support::have_root("the_node_counts_handoffs_and_serves_the_kernels_counters") {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let cgroup = support::TestCgroup::new("metrics");
    let port = std::net::TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_port = free_port();
    let node = support::TestNode::start(
        "metrics",
        &cgroup,
        &format!(
            "[[node.targets]]\nname = \"echo\"\nkind = \"tcp\"\nprotect = [\"127.0.0.2:{port}\"]\n"
        ),
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let _agent = support::EchoAgent::start(&node.agent_socket, 65534);
    let probe = |uid: u32| {
        cgroup
            .command(support::lastmiled())
            .args(["probe", &format!("127.0.0.2:{port}"), "--send", "hi"])
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    assert!(probe(65534).status.success(), "{}", node.logs());
    let _ = probe(65532);
    let listener = node.status()["redirect"]["listener_v4"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(std::net::TcpStream::connect(&listener).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = [
        ("lastmile_node_handoffs_total{outcome=\"handed_over\"}", 1.0),
        ("lastmile_node_handoffs_total{outcome=\"no_agent\"}", 1.0),
        ("lastmile_node_handoffs_total{outcome=\"direct_dial\"}", 1.0),
        ("lastmile_node_agents", 1.0),
        ("lastmile_node_kernel_events_dropped_total", 0.0),
        ("lastmile_node_kernel_records_dropped_total", 0.0),
    ];
    let text = loop {
        let text = try_scrape(([127, 0, 0, 1], metrics_port).into()).unwrap_or_default();
        if want.iter().all(|(s, v)| sample(&text, s) == Some(*v)) {
            break text;
        }
        assert!(Instant::now() < deadline, "want {want:?} in\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        sample(
            &text,
            "lastmile_node_kernel_connects_total{decision=\"redirected\"}"
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        sample(&text, "lastmile_node_events_written_total{outcome=\"ok\"}")
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// The agent serves its connection counts, whether the API answers it, and whether its
/// session is gone; revoking the session shows at the next scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_state_as_metrics() {
    let stack = Stack::start().await;
    let alice = stack.user("alice").await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = std::process::Command::new(stack::lastmile_bin())
        .args(["agent", "--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("LASTMILE_HOME", &alice)
        // No node here: the agent keeps trying to register, and serves meanwhile.
        .env("LASTMILE_NODE_SOCKET", dir.path().join("no-node.sock"))
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let text = wait_for(
        port,
        &[
            ("lastmile_agent_connections_total{outcome=\"carried\"}", 0.0),
            ("lastmile_agent_connections_total{outcome=\"refused\"}", 0.0),
            ("lastmile_agent_api_reachable", 1.0),
            ("lastmile_agent_session_revoked", 0.0),
        ],
    )
    .await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(alice.join("session.json")).unwrap())
            .unwrap();
    let session = saved["login"]["session"].as_str().unwrap();
    lastmile_api::auth::revoke_session(&stack.app, session, "a test", "test")
        .await
        .unwrap();
    wait_for(port, &[("lastmile_agent_session_revoked", 1.0)]).await;
    let _ = agent.kill();
    let _ = agent.wait();
}
