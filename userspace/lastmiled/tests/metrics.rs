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

/// The metric names every service registers (from their registries, and the names the
/// node's scrape-time collector serves), as `# TYPE` names.
fn served_names() -> std::collections::BTreeSet<String> {
    let mut gateway = lastmile_metrics::Registry::with_prefix("lastmile_gateway");
    lastmiled::metrics::GatewayMetrics::default().register(&mut gateway);
    lastmiled::events::SinkMetrics::default().register(&mut gateway);
    let mut node = lastmile_metrics::Registry::with_prefix("lastmile_node");
    lastmiled::metrics::NodeMetrics::default().register(&mut node);
    lastmiled::events::SinkMetrics::default().register(&mut node);
    let texts = [
        lastmile_metrics::render(&gateway),
        lastmile_metrics::render(&node),
        lastmile_metrics::render(&lastmile_api::metrics::ApiMetrics::default().registry()),
        lastmile_metrics::render(&lastmile_audit::metrics::AuditMetrics::default().registry()),
    ];
    let mut names: std::collections::BTreeSet<String> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .map(str::to_owned)
        .collect();
    names.extend(
        lastmiled::metrics::NODE_STATE_NAMES
            .iter()
            .map(|n| format!("lastmile_node_{n}")),
    );
    names
}

/// The shipped alert rules are valid, fire when they should and not otherwise
/// (`promtool test rules`), and use only metrics the services serve.
#[test]
fn the_alert_rules_pass_promtool_and_use_served_metrics() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [
        ["check", "rules", "lastmile.rules.yml"],
        ["test", "rules", "lastmile.rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect(
                "promtool (from Debian's prometheus package) is installed by `cargo xtask setup`",
            );
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("lastmile.rules.yml")).unwrap();
    let served = served_names();
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("lastmile_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        let base = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            served.contains(base),
            "the rules use `{name}`, which no service serves; served: {served:#?}"
        );
    }
}
