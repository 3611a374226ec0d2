//! `lastmiled node run` as a process: hand-off to the right user's agent, refusals in the
//! user's own tool, direct dials, events, and a restart under an open connection.

// Tests fail by panicking; the workspace lints against it are for product code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    process::Stdio,
    time::Duration,
};

use support::{EchoAgent, TestCgroup, TestNode, have_root, lastmiled};

/// A port nobody on 127.0.0.2 listens on: if the redirect failed, the connect is refused.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tcp_target(name: &str, port: u16) -> String {
    format!(
        "[[node.targets]]\nname = \"{name}\"\nkind = \"tcp\"\nprotect = [\"127.0.0.2:{port}\"]\n"
    )
}

/// `lastmiled probe TARGET --send hi` in `cgroup` as `uid`: (exit ok, stdout or stderr).
fn probe_as(cgroup: &TestCgroup, uid: u32, target: &str) -> (bool, String) {
    let mut cmd = cgroup.command(lastmiled());
    cmd.args(["probe", target, "--send", "hi"])
        .uid(uid)
        .gid(uid);
    let out = cmd.output().unwrap();
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[test]
fn sockets_go_only_to_the_agent_of_the_callers_uid() {
    if !have_root("sockets_go_only_to_the_agent_of_the_callers_uid") {
        return;
    }
    let cgroup = TestCgroup::new("handoff");
    let port = free_port();
    let node = TestNode::start("handoff", &cgroup, &tcp_target("echo", port), "");
    let alice = EchoAgent::start(&node.agent_socket, 65534);
    let bob = EchoAgent::start(&node.agent_socket, 65533);
    let target = format!("127.0.0.2:{port}");

    let (ok, out) = probe_as(&cgroup, 65534, &target);
    assert!(ok, "{out}\n{}", node.logs());
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(result["received"], "agent-65534: hi");
    assert_eq!(
        result["peer"], target,
        "the application sees the target as its peer"
    );
    let handoff = alice.next();
    assert_eq!(handoff["uid"], 65534);
    assert_eq!(handoff["orig_dst"], target);
    assert_eq!(handoff["target"]["name"], "echo");
    assert_eq!(handoff["comm"], "lastmiled");

    let (ok, out) = probe_as(&cgroup, 65533, &target);
    assert!(ok, "{out}");
    assert!(out.contains("\"received\":\"agent-65533: hi\""), "{out}");
    assert_eq!(bob.next()["uid"], 65533);

    // No agent for uid 65532: a tcp target is closed without a word, never given to
    // another user's agent.
    let (_, out) = probe_as(&cgroup, 65532, &target);
    assert!(
        !out.contains("agent-"),
        "uid 65532's connection reached an agent: {out}"
    );
    assert!(
        alice
            .stdout
            .recv_timeout(Duration::from_millis(300))
            .is_err()
    );
    assert!(bob.stdout.recv_timeout(Duration::from_millis(300)).is_err());

    // The events join: the kernel's record and the node's hand-off share the socket cookie.
    let handed = node.wait_event("handoff", |e| {
        e["kind"] == "node.handoff" && e["uid"] == 65534
    });
    let cookie = handed["sock_cookie"].clone();
    // The hand-off's wire name for the socket cookie (kept for agents of other versions).
    assert_eq!(cookie, handoff["connection_id"]);
    let kernel = node.wait_event("kernel connect", |e| {
        e["kind"] == "kernel.connect" && e["sock_cookie"] == cookie
    });
    assert_eq!(kernel["decision"], "redirected");
    assert_eq!(kernel["uid"], 65534);
    assert_eq!(kernel["orig_dst"], target);
    assert_eq!(kernel["target"], "echo");
    assert!(
        kernel["exe"].as_str().unwrap().ends_with("lastmiled"),
        "{kernel}"
    );
    assert_eq!(kernel["pid"], result["pid"]);
    let refused = node.wait_event("refusal", |e| e["kind"] == "node.refused_no_agent");
    assert_eq!(refused["uid"], 65532);
    assert_eq!(refused["protocol"], "tcp");

    // Dialing the listener itself, not through the redirect: refused, and logged.
    let listener = node.status()["redirect"]["listener_v4"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut direct = TcpStream::connect(&listener).unwrap();
    direct
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        direct.read(&mut buf).unwrap_or(0),
        0,
        "a direct dial must get nothing"
    );
    let e = node.wait_event("direct dial", |e| e["kind"] == "node.refused_direct_dial");
    assert_eq!(e["listener"], listener);

    // Every event the node wrote follows the audit event schema.
    for event in node.events() {
        lastmile_audit_sink::schema::check(&event).unwrap_or_else(|e| panic!("{e}: {event}"));
    }
}

#[test]
fn psql_and_ssh_without_a_session_are_told_to_log_in() {
    if !have_root("psql_and_ssh_without_a_session_are_told_to_log_in") {
        return;
    }
    let cgroup = TestCgroup::new("refusal");
    let (pg, ssh) = (free_port(), free_port());
    let targets = format!(
        "[[node.targets]]\nname = \"orders-db\"\nkind = \"postgres\"\nprotect = [\"127.0.0.2:{pg}\"]\n\
         [[node.targets]]\nname = \"web-1\"\nkind = \"ssh\"\nprotect = [\"127.0.0.2:{ssh}\"]\n"
    );
    let node = TestNode::start("refusal", &cgroup, &targets, "");

    let out = cgroup
        .command("psql")
        .args([
            "-h",
            "127.0.0.2",
            "-p",
            &pg.to_string(),
            "-U",
            "alice",
            "-d",
            "orders",
            "-w",
            "-c",
            "select 1",
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .uid(65532)
        .gid(65532)
        .output()
        .expect("psql is installed (cargo xtask setup)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("FATAL") && stderr.contains("run `lastmile login`"),
        "psql said: {stderr}"
    );

    let out = cgroup
        .command("ssh")
        .args([
            "-p",
            &ssh.to_string(),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "alice@127.0.0.2",
            "true",
        ])
        // ssh wants a passwd entry for its user: nobody has one.
        .uid(65534)
        .gid(65534)
        .env("HOME", node.dir.path())
        .output()
        .expect("ssh is installed (cargo xtask setup)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("run `lastmile login`"),
        "ssh said: {stderr}"
    );

    // The sink writes in batches: wait for both refusals.
    let refused = || {
        node.events()
            .iter()
            .filter(|e| e["kind"] == "node.refused_no_agent")
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while refused() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kinds: Vec<String> = node
        .events()
        .iter()
        .filter(|e| e["kind"] == "node.refused_no_agent")
        .map(|e| e["protocol"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["postgres", "ssh"]);
    let uids: Vec<u64> = node
        .events()
        .iter()
        .filter(|e| e["kind"] == "node.refused_no_agent")
        .map(|e| e["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(uids, [65532, 65534]);
}

#[test]
fn restart_keeps_open_connections_and_interception() {
    if !have_root("restart_keeps_open_connections_and_interception") {
        return;
    }
    let cgroup = TestCgroup::new("restart");
    let port = free_port();
    let mut node = TestNode::start("restart", &cgroup, &tcp_target("echo", port), "");
    let agent = EchoAgent::start(&node.agent_socket, 65534);
    let target = format!("127.0.0.2:{port}");
    let ids = |status: serde_json::Value, field: &str| -> Vec<serde_json::Value> {
        status["programs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[field].clone())
            .collect()
    };
    let links_before = ids(node.status(), "link_id");
    let programs_before = ids(node.status(), "program_id");

    // An interactive connection, open across the restart.
    let mut cmd = cgroup.command(lastmiled());
    cmd.args(["probe", &target, "--interactive"])
        .uid(65534)
        .gid(65534);
    let mut session = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = session.stdin.take().unwrap();
    let mut output = BufReader::new(session.stdout.take().unwrap());
    // The connect report comes first.
    let mut report = String::new();
    output.read_line(&mut report).unwrap();
    assert!(
        report.contains(&format!("\"peer\":\"{target}\"")),
        "{report}"
    );
    let mut say = |text: &str| -> String {
        writeln!(input, "{text}").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        line
    };
    assert!(say("one").contains("agent-65534: one"));
    agent.next();

    node.stop();
    // Its log (a file, not a terminal) reads as text: no colour codes, no Rust Debug.
    let logs = node.logs();
    assert!(
        logs.contains("stopping; interception stays pinned") && logs.contains(" redirected, "),
        "{logs}"
    );
    assert!(logs.contains("listen_v6=[::1]:"), "{logs}");
    for debug in ["Some(", "Counters {", "\u{1b}["] {
        assert!(!logs.contains(debug), "{debug:?} in the log: {logs}");
    }
    let status = node.status();
    assert!(
        status["programs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["attached"] == true),
        "{status}"
    );
    assert!(
        say("two").contains("agent-65534: two"),
        "the open connection survives lastmiled's exit"
    );

    node.spawn();
    assert_eq!(
        agent.next()["registered"],
        65534,
        "the agent registers again"
    );
    let (ok, out) = probe_as(&cgroup, 65534, &target);
    assert!(
        ok && out.contains("agent-65534: hi"),
        "{out}\n{}",
        node.logs()
    );
    assert!(say("three").contains("agent-65534: three"));
    assert_eq!(
        links_before,
        ids(node.status(), "link_id"),
        "the same links stayed attached"
    );
    // ... and run the new lastmiled's programs (an upgrade brings its programs along).
    let programs_after = ids(node.status(), "program_id");
    for (before, after) in programs_before.iter().zip(&programs_after) {
        assert!(
            before.is_u64() && after.is_u64() && before != after,
            "{programs_before:?} -> {programs_after:?}"
        );
    }
    drop(input);
    let _ = session.wait();
}

#[test]
fn sighup_changes_the_protected_set_without_detaching() {
    if !have_root("sighup_changes_the_protected_set_without_detaching") {
        return;
    }
    let cgroup = TestCgroup::new("reload");
    let (old, new) = (free_port(), free_port());
    let node = TestNode::start("reload", &cgroup, &tcp_target("old", old), "");
    let _agent = EchoAgent::start(&node.agent_socket, 65534);
    let links_before = node.status()["programs"].clone();
    assert!(
        probe_as(&cgroup, 65534, &format!("127.0.0.2:{old}"))
            .1
            .contains("agent-65534")
    );

    // A config with a mistake is refused and the running one kept.
    let good = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        good.replace("kind = \"tcp\"", "kind = \"mysql\""),
    )
    .unwrap();
    node.hangup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        probe_as(&cgroup, 65534, &format!("127.0.0.2:{old}"))
            .1
            .contains("agent-65534")
    );
    assert!(node.logs().contains("reload refused"), "{}", node.logs());

    let text = good.replace(&format!("127.0.0.2:{old}"), &format!("127.0.0.2:{new}"));
    std::fs::write(&node.config, text).unwrap();
    node.hangup();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !node.logs().contains("configuration reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", node.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, out) = probe_as(&cgroup, 65534, &format!("127.0.0.2:{new}"));
    assert!(
        out.contains("agent-65534"),
        "the new target is intercepted: {out}"
    );
    let (ok, out) = probe_as(&cgroup, 65534, &format!("127.0.0.2:{old}"));
    assert!(
        !ok && out.contains("refused"),
        "the old target is no longer intercepted: {out}"
    );
    assert_eq!(
        node.status()["programs"],
        links_before,
        "nothing was detached or re-attached"
    );
}

#[test]
fn a_changed_cgroup_moves_interception_there() {
    if !have_root("a_changed_cgroup_moves_interception_there") {
        return;
    }
    let (old, new) = (TestCgroup::new("move-old"), TestCgroup::new("move-new"));
    let port = free_port();
    let mut node = TestNode::start("move", &old, &tcp_target("echo", port), "");
    let agent = EchoAgent::start(&node.agent_socket, 65534);
    let target = format!("127.0.0.2:{port}");
    assert!(probe_as(&old, 65534, &target).1.contains("agent-65534"));
    agent.next();

    node.stop();
    let config = std::fs::read_to_string(&node.config).unwrap();
    let (from, to) = (format!("{:?}", old.path()), format!("{:?}", new.path()));
    assert!(config.contains(&from), "{config}");
    std::fs::write(&node.config, config.replace(&from, &to)).unwrap();
    node.spawn();
    assert_eq!(
        agent.next()["registered"],
        65534,
        "the agent registers again"
    );

    let (ok, out) = probe_as(&new, 65534, &target);
    assert!(
        ok && out.contains("agent-65534: hi"),
        "{out}\n{}",
        node.logs()
    );
    // The old cgroup is no longer intercepted: the connect goes to 127.0.0.2, where
    // nothing listens.
    let (ok, out) = probe_as(&old, 65534, &target);
    assert!(!ok && !out.contains("agent-65534"), "{out}");
    let new_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(new.path()).unwrap());
    let status = node.status();
    for p in status["programs"].as_array().unwrap() {
        assert_eq!(p["attached"], true, "{status}");
        assert_eq!(p["cgroup_id"], new_id, "{status}");
    }
}

/// For operators: `detach` under a running node is refused unless `--force`, and says
/// what to do; `status` after a detach says "not attached" and exits non-zero; a node
/// whose interception was removed under it does not claim on exit that it stays pinned.
#[test]
fn detach_under_a_running_node_needs_force_and_status_says_not_attached() {
    if !have_root("detach_under_a_running_node_needs_force_and_status_says_not_attached") {
        return;
    }
    let cgroup = TestCgroup::new("detach");
    let port = free_port();
    let mut node = TestNode::start("detach", &cgroup, &tcp_target("echo", port), "");
    let lastmiled_node = |args: &[&str]| {
        std::process::Command::new(lastmiled())
            .arg("node")
            .args(args)
            .arg("--config")
            .arg(&node.config)
            .output()
            .unwrap()
    };
    // Status names each protected target, its address and where it comes from.
    let out = lastmiled_node(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains(&format!("127.0.0.2:{port}")))
        .unwrap_or_else(|| panic!("no line for the target: {text}"));
    assert!(
        line.trim_start().starts_with("echo")
            && line.contains("tcp")
            && line.ends_with("from config"),
        "{line}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&lastmiled_node(&["status", "--output", "json"]).stdout).unwrap();
    assert_eq!(json["targets"][0]["name"], "echo", "{json}");
    assert_eq!(json["targets"][0]["source"], "config", "{json}");
    assert_eq!(json["targets"][0]["in_kernel"], true, "{json}");

    let out = lastmiled_node(&["detach"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is running here") && err.contains("detach --force"),
        "{err}"
    );
    assert!(node.pin_dir.join("links").exists(), "nothing was removed");

    let out = lastmiled_node(&["detach", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lastmiled_node(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.starts_with("lastmiled: not attached: "), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("127.0.0.2:{port}")) && l.contains("NOT intercepted")),
        "{text}"
    );

    node.stop();
    let logs = node.logs();
    assert!(
        logs.contains("interception was removed while running")
            && !logs.contains("interception stays pinned"),
        "{logs}"
    );
}
