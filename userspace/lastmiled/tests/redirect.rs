//! The kernel programs, driven in-process: a process in a cgroup with lastmile's programs
//! attached connects to protected loopback addresses; where its connections land, what it
//! sees as its peer, and what the kernel records are checked.

// Tests fail by panicking; the workspace lints against it are for product code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod kernel_version;
mod support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    process::Stdio,
    thread,
    time::Duration,
};

use kernel_version::can_run;
use lastmile_ebpf_common::ConnectRecord;
use lastmiled::{
    events::{comm, decision_name, orig_dst},
    intercept::{Interceptor, RedirectPolicy, TargetId, record_from_event},
    target::ProtectedTarget,
};
use support::{TestCgroup, TestNetns, cgroup_id, lastmiled};

const EXEMPT_MARK: u32 = 0x4c4d_0001;

/// Serves one connection on `listener`: reads the probe's text, answers with `reply`.
fn serve_once(
    listener: TcpListener,
    reply: &'static str,
) -> thread::JoinHandle<(SocketAddr, String)> {
    thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).expect("read");
        conn.write_all(reply.as_bytes()).expect("write");
        (peer, String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// Runs `lastmiled probe` in `cgroup` with extra args; returns (success, JSON or stderr).
fn probe_with(
    cgroup: &TestCgroup,
    target: &str,
    extra: &[&str],
    uid: Option<u32>,
) -> (bool, String) {
    let mut cmd = cgroup.command(lastmiled());
    cmd.args(["probe", target]).args(extra);
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
    }
    let out = cmd.output().expect("run lastmiled probe");
    if out.status.success() {
        (true, String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        (false, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn probe(cgroup: &TestCgroup, target: &str) -> serde_json::Value {
    let (ok, out) = probe_with(cgroup, target, &["--send", "ping"], None);
    assert!(ok, "probe failed: {out}");
    serde_json::from_str(&out).expect("probe prints JSON")
}

/// An interceptor attached to `cgroup`, redirecting to the given listeners.
fn interceptor(
    cgroup: &TestCgroup,
    v4: Option<SocketAddr>,
    v6: Option<SocketAddr>,
    enforce: bool,
) -> Interceptor {
    let mut i = Interceptor::load().expect("load eBPF");
    i.set_policy(&RedirectPolicy {
        listener_v4: v4,
        listener_v6: v6,
        exempt_mark: EXEMPT_MARK,
        enforce,
    })
    .expect("policy");
    i.attach(cgroup.path()).expect("attach");
    i
}

/// A port nobody on 127.0.0.2 listens on, for a protected target that is refused unless
/// redirected.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn drain_events(i: &mut Interceptor) -> Vec<ConnectRecord> {
    let mut ring = i.take_events().expect("events");
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(record_from_event(&item).expect("a whole record"));
    }
    out
}

#[test]
fn ipv4_target_is_redirected_recorded_and_keeps_its_peer_name() {
    if !can_run("ipv4_target_is_redirected_recorded_and_keeps_its_peer_name") {
        return;
    }
    let cgroup = TestCgroup::new("v4");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = listener.local_addr().unwrap();
    let protected: ProtectedTarget = format!("127.0.0.2:{}", free_port()).parse().unwrap();
    let mut i = interceptor(&cgroup, Some(listen), None, false);
    i.protect(&protected, TargetId(7)).unwrap();

    // A connection held open by an interactive probe, running as nobody.
    let mut cmd = cgroup.command(lastmiled());
    cmd.args(["probe", &protected.to_string(), "--interactive"])
        .uid(65534)
        .gid(65534);
    let mut probe = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut server_side, client) = listener.accept().unwrap();
    let mut report = String::new();
    BufReader::new(probe.stdout.take().unwrap())
        .read_line(&mut report)
        .unwrap();
    let result: serde_json::Value = serde_json::from_str(&report).unwrap();
    // getpeername in the client: the target it asked for, not the listener.
    assert_eq!(result["peer"], protected.to_string());
    assert_eq!(result["local"], client.to_string());

    // What lastmiled finds on accept, by the client's address.
    let record = i
        .record_for(client)
        .unwrap()
        .expect("a kernel record for the client");
    assert_eq!(record.uid, 65534);
    assert_eq!(record.gid, 65534);
    assert_eq!(record.pid, result["pid"].as_u64().unwrap() as u32);
    assert_eq!(comm(&record), "lastmiled");
    assert_eq!(record.cgroup_id, cgroup_id(cgroup.path()));
    assert_eq!(record.target_id, 7);
    assert_eq!(orig_dst(&record).to_string(), protected.to_string());

    let events = drain_events(&mut i);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(decision_name(events[0].decision), "redirected");
    assert_eq!(events[0].sock_cookie, record.sock_cookie);
    assert_ne!(record.sock_cookie, 0);
    assert_eq!(events[0].pid, record.pid);
    let c = i.counters().unwrap();
    assert_eq!(
        (c.redirected, c.events_dropped, c.records_dropped),
        (1, 0, 0),
        "{c:?}"
    );

    // Once both ends close, the record goes with the client's socket.
    drop(probe.stdin.take());
    probe.wait().unwrap();
    server_side.write_all(b"bye").ok();
    drop(server_side);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while i.record_for(client).unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the record outlived its socket"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ipv6_and_v4_mapped_targets_are_redirected() {
    if !can_run("ipv6_and_v4_mapped_targets_are_redirected") {
        return;
    }
    let cgroup = TestCgroup::new("v6");
    let listener4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let listener6 = TcpListener::bind("[::1]:0").unwrap();
    let (l4, l6) = (
        listener4.local_addr().unwrap(),
        listener6.local_addr().unwrap(),
    );
    let port = free_port();
    let mut i = interceptor(&cgroup, Some(l4), Some(l6), false);
    // IPv6: a port on ::1 nobody listens on.
    let unused6 = TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let v6: ProtectedTarget = format!("[::1]:{unused6}").parse().unwrap();
    i.protect(&v6, TargetId(1)).unwrap();
    i.protect(
        &format!("127.0.0.0/24:{port}").parse().unwrap(),
        TargetId(2),
    )
    .unwrap();

    let served = serve_once(listener6, "six");
    let result = probe(&cgroup, &v6.to_string());
    assert_eq!(result["received"], "six");
    assert_eq!(result["peer"], v6.to_string());
    served.join().unwrap();

    // A dual-stack socket dialing ::ffff:127.0.0.2 is IPv4 on the wire: the prefix target
    // catches it, the IPv4 listener gets it, and the peer name stays v4-mapped.
    let mapped = format!("[::ffff:127.0.0.2]:{port}");
    let served = serve_once(listener4, "mapped");
    let result = probe(&cgroup, &mapped);
    assert_eq!(result["received"], "mapped");
    assert_eq!(result["peer"], mapped);
    served.join().unwrap();
    let events = drain_events(&mut i);
    let record = events
        .iter()
        .find(|e| e.target_id == 2)
        .expect("an event for the mapped connect");
    assert_eq!(orig_dst(record).to_string(), mapped);
    assert_eq!(decision_name(record.decision), "redirected");
    assert_eq!(i.counters().unwrap().redirected, 2);
}

#[test]
fn unprotected_destinations_and_other_cgroups_are_left_alone() {
    if !can_run("unprotected_destinations_and_other_cgroups_are_left_alone") {
        return;
    }
    let cgroup = TestCgroup::new("passthrough");
    let elsewhere = TestCgroup::new("elsewhere");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // A real server on an unprotected address, answering differently from the listener.
    let direct = TcpListener::bind("127.0.0.3:0").unwrap();
    let direct_addr = direct.local_addr().unwrap();
    let protected: ProtectedTarget = format!("127.0.0.2:{}", direct_addr.port()).parse().unwrap();
    let mut i = interceptor(&cgroup, Some(listener.local_addr().unwrap()), None, false);
    i.protect(&protected, TargetId(1)).unwrap();

    // Same port, other address: not protected.
    let served = serve_once(direct, "direct");
    assert_eq!(
        probe(&cgroup, &direct_addr.to_string())["received"],
        "direct"
    );
    served.join().unwrap();

    // The protected address from a cgroup without the programs: refused, not redirected.
    let (ok, err) = probe_with(&elsewhere, &protected.to_string(), &["--send", "x"], None);
    assert!(!ok && err.contains("refused"), "{err}");

    // Removing the target stops the redirect at once, without detaching anything.
    i.unprotect(&protected).unwrap();
    let (ok, err) = probe_with(&cgroup, &protected.to_string(), &["--send", "x"], None);
    assert!(
        !ok && err.contains("refused"),
        "unprotected target still redirected: {err}"
    );
    let c = i.counters().unwrap();
    assert_eq!(c.redirected, 0, "{c:?}");
    assert!(c.unprotected >= 2, "{c:?}");
    drop(listener);
}

#[test]
fn other_network_namespaces_are_untouched() {
    if !can_run("other_network_namespaces_are_untouched") {
        return;
    }
    let cgroup = TestCgroup::new("netns");
    let netns = TestNetns::new("redirect");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let protected: ProtectedTarget = format!("127.0.0.2:{port}").parse().unwrap();
    let mut i = interceptor(&cgroup, Some(listener.local_addr().unwrap()), None, false);
    i.protect(&protected, TargetId(1)).unwrap();

    // Inside the namespace a server really listens on the protected address.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = netns.on_thread(move || {
        let l = TcpListener::bind(format!("127.0.0.2:{port}")).unwrap();
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        let mut buf = [0u8; 16];
        let _ = c.read(&mut buf).unwrap();
        c.write_all(b"netns").unwrap();
    });
    ready_rx.recv().unwrap();
    let out = cgroup
        .command("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            lastmiled(),
            "probe",
            &protected.to_string(),
            "--send",
            "ping",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        result["received"], "netns",
        "the namespace's own server answered"
    );
    server.join().unwrap();
    let c = i.counters().unwrap();
    assert_eq!((c.redirected, c.other_netns), (0, 1), "{c:?}");
    drop(listener);
}

/// With `enforce`, a process of the cgroup in another network namespace (a container
/// with a network of its own) cannot reach a protected target: its connect is refused,
/// not passed through, since it cannot be redirected there.
#[test]
fn with_enforce_other_network_namespaces_are_refused() {
    if !can_run("with_enforce_other_network_namespaces_are_refused") {
        return;
    }
    let cgroup = TestCgroup::new("netns-enforce");
    let netns = TestNetns::new("enforce");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_port();
    let protected: ProtectedTarget = format!("127.0.0.2:{port}").parse().unwrap();
    let mut i = interceptor(&cgroup, Some(listener.local_addr().unwrap()), None, true);
    i.protect(&protected, TargetId(1)).unwrap();
    // A server in the namespace, on the protected address, that must never be reached.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = netns.on_thread(move || {
        let l = TcpListener::bind(format!("127.0.0.2:{port}")).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        l.accept().is_ok()
    });
    ready_rx.recv().unwrap();
    let out = cgroup
        .command("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            lastmiled(),
            "probe",
            &protected.to_string(),
            "--send",
            "ping",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the connect went through");
    assert!(err.contains("EPERM"), "{err}");
    assert!(
        !server.join().unwrap(),
        "the namespace's server was reached"
    );
    let c = i.counters().unwrap();
    assert_eq!((c.refused, c.other_netns, c.redirected), (1, 1, 0), "{c:?}");
    // And logged: the kernel's event for it says refused.
    let events = drain_events(&mut i);
    assert_eq!(
        events
            .iter()
            .map(|e| decision_name(e.decision))
            .collect::<Vec<_>>(),
        ["refused"]
    );
    drop(listener);
}

#[test]
fn marked_connections_are_exempt() {
    if !can_run("marked_connections_are_exempt") {
        return;
    }
    let cgroup = TestCgroup::new("mark");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let real = TcpListener::bind("127.0.0.2:0").unwrap();
    let protected: ProtectedTarget = format!("{}", real.local_addr().unwrap()).parse().unwrap();
    let mut i = interceptor(&cgroup, Some(listener.local_addr().unwrap()), None, false);
    i.protect(&protected, TargetId(1)).unwrap();

    let served = serve_once(real, "upstream");
    let mark = EXEMPT_MARK.to_string();
    let (ok, out) = probe_with(
        &cgroup,
        &protected.to_string(),
        &["--send", "x", "--mark", &mark],
        None,
    );
    assert!(ok, "{out}");
    assert!(out.contains("\"received\":\"upstream\""), "{out}");
    served.join().unwrap();
    let events = drain_events(&mut i);
    assert_eq!(
        events
            .iter()
            .map(|e| decision_name(e.decision))
            .collect::<Vec<_>>(),
        ["exempt"]
    );
    assert_eq!(i.counters().unwrap().exempt, 1);

    // A user without CAP_NET_ADMIN cannot put the exempt mark on a socket (setsockopt
    // SO_MARK is refused: socket(7)), so cannot dial the target past the node; the
    // connection it makes instead, unmarked, is redirected like any other.
    let (ok, err) = probe_with(
        &cgroup,
        &protected.to_string(),
        &["--send", "x", "--mark", &mark],
        Some(65534),
    );
    assert!(!ok && err.contains("SO_MARK needs CAP_NET_ADMIN"), "{err}");
    let c = i.counters().unwrap();
    assert_eq!(
        (c.exempt, c.redirected, c.refused),
        (1, 0, 0),
        "no connect was attempted: {c:?}"
    );
    drop(listener);
}

#[test]
fn enforcement_refuses_what_cannot_be_redirected_and_drops_are_counted() {
    if !can_run("enforcement_refuses_what_cannot_be_redirected_and_drops_are_counted") {
        return;
    }
    let cgroup = TestCgroup::new("enforce");
    let real = TcpListener::bind("127.0.0.2:0").unwrap();
    let protected: ProtectedTarget = format!("{}", real.local_addr().unwrap()).parse().unwrap();

    // No listener, enforcement off: the connection goes to the target itself.
    let mut i = interceptor(&cgroup, None, None, false);
    i.protect(&protected, TargetId(1)).unwrap();
    let served = serve_once(real.try_clone().unwrap(), "through");
    assert_eq!(
        probe(&cgroup, &protected.to_string())["received"],
        "through"
    );
    served.join().unwrap();
    drop(i);

    // No listener, enforcement on: EPERM in the kernel.
    let mut i = interceptor(&cgroup, None, None, true);
    i.protect(&protected, TargetId(1)).unwrap();
    let (ok, err) = probe_with(&cgroup, &protected.to_string(), &["--send", "x"], None);
    assert!(!ok && err.contains("denied by policy"), "{err}");

    // Nobody reads the ring buffer: after it fills, lost events are counted.
    let (ok, out) = probe_with(&cgroup, &protected.to_string(), &["--count", "4000"], None);
    assert!(ok, "{out}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["denied"], 4000);
    let c = i.counters().unwrap();
    assert_eq!(c.refused, 4001, "{c:?}");
    assert!(c.events_dropped > 0, "{c:?}");
    let events = drain_events(&mut i);
    assert_eq!(events.len() as u64 + c.events_dropped, 4001);
}

#[test]
fn maps_pinned_with_another_layout_are_refused() {
    if !can_run("maps_pinned_with_another_layout_are_refused") {
        return;
    }
    let dir = |name: &str| {
        std::path::PathBuf::from(format!(
            "/sys/fs/bpf/lastmile-test-{name}-{}",
            std::process::id()
        ))
    };
    let (good, bad) = (dir("layout-good"), dir("layout-bad"));
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&good);
        let _ = std::fs::remove_dir_all(&bad);
    };
    let first = Interceptor::load_pinned(&good).expect("load pinned");
    // An older lastmiled's REDIRECT map, say, of another shape: here the counters map
    // (per-CPU array of 8 u64) pinned under that name.
    std::fs::create_dir_all(bad.join("maps")).unwrap();
    aya::maps::MapData::from_pin(good.join("maps").join("STATS"))
        .unwrap()
        .pin(bad.join("maps").join("REDIRECT"))
        .unwrap();
    let refused = Interceptor::load_pinned(&bad);
    // Maps pinned by this same build load again.
    let again = Interceptor::load_pinned(&good);
    drop(first);
    cleanup();
    let message = refused
        .expect_err("an incompatible pin is refused")
        .to_string();
    assert!(
        message.contains("maps/REDIRECT")
            && message.contains("(4, 8, 8)")
            && message.contains("(4, 40, 1)")
            && message.contains("lastmiled node detach"),
        "{message}"
    );
    again.expect("this build's own pins are reused");
}
