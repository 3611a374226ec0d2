//! The kernel redirect, end to end: a process in a cgroup with lastmile's programs attached
//! connects to a protected loopback address and lands on the listener instead.

// Tests fail by panicking; the workspace lints against it are for product code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    thread,
    time::Duration,
};

use lastmiled::{
    intercept::{Interceptor, TargetId},
    target::ProtectedTarget,
};
use support::{TestCgroup, have_root, lastmiled};

/// Serves one connection on `listener`: reads the probe's line, answers with `reply`.
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

fn probe(cgroup: &TestCgroup, target: &str) -> serde_json::Value {
    let out = cgroup
        .command(lastmiled())
        .args(["probe", target, "--send", "ping"])
        .output()
        .expect("run lastmiled probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe prints JSON")
}

#[test]
fn connect_to_protected_ipv4_target_reaches_the_listener() {
    if !have_root("connect_to_protected_ipv4_target_reaches_the_listener") {
        return;
    }
    let cgroup = TestCgroup::new("redirect");
    // The listener stands in for lastmiled's; nothing listens on the protected address,
    // so a connection that was not redirected is refused instead of reaching it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind listener");
    let listener_addr = listener.local_addr().expect("addr");
    let protected: ProtectedTarget = format!("127.0.0.2:{}", listener_addr.port() ^ 1)
        .parse()
        .unwrap();

    let mut interceptor = Interceptor::load().expect("load eBPF");
    interceptor.attach(cgroup.path()).expect("attach");
    interceptor
        .set_listener(listener_addr, 0)
        .expect("set listener");
    interceptor
        .protect(&protected, TargetId(7))
        .expect("protect");

    let served = serve_once(listener, "pong");
    let result = probe(&cgroup, &protected.to_string());
    let (peer, got) = served.join().expect("listener thread");

    assert_eq!(result["received"], "pong", "probe: {result}");
    assert_eq!(got, "ping");
    assert_eq!(peer.to_string(), result["local"].as_str().unwrap());
    let counts = interceptor.counts().expect("counts");
    assert_eq!(counts.redirected, 1, "{counts:?}");
}

#[test]
fn unprotected_destinations_and_other_cgroups_are_left_alone() {
    if !have_root("unprotected_destinations_and_other_cgroups_are_left_alone") {
        return;
    }
    let cgroup = TestCgroup::new("passthrough");
    let elsewhere = TestCgroup::new("elsewhere");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind listener");
    let listener_addr = listener.local_addr().expect("addr");
    // A real server on the unprotected address, answering differently from the listener.
    let direct = TcpListener::bind("127.0.0.3:0").expect("bind direct server");
    let direct_addr = direct.local_addr().expect("addr");
    let protected: ProtectedTarget = format!("127.0.0.2:{}", direct_addr.port()).parse().unwrap();

    let mut interceptor = Interceptor::load().expect("load eBPF");
    interceptor.attach(cgroup.path()).expect("attach");
    interceptor
        .set_listener(listener_addr, 0)
        .expect("set listener");
    interceptor
        .protect(&protected, TargetId(1))
        .expect("protect");

    // Same port, other address: not protected.
    let served = serve_once(direct, "direct");
    let result = probe(&cgroup, &direct_addr.to_string());
    assert_eq!(result["received"], "direct", "probe: {result}");
    served.join().expect("direct server");

    // The protected address, from a cgroup without the programs: refused, not redirected.
    let out = elsewhere
        .command(lastmiled())
        .args(["probe", &protected.to_string(), "--send", "ping"])
        .output()
        .expect("run probe");
    assert!(
        !out.status.success(),
        "connect outside the cgroup was redirected"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));

    // Removing the target stops the redirect at once, without detaching anything.
    interceptor.unprotect(&protected).expect("unprotect");
    let out = cgroup
        .command(lastmiled())
        .args(["probe", &protected.to_string(), "--send", "ping"])
        .output()
        .expect("run probe");
    assert!(
        !out.status.success(),
        "unprotected target was still redirected"
    );
    let counts = interceptor.counts().expect("counts");
    assert_eq!(counts.redirected, 0, "{counts:?}");
    assert!(counts.unprotected >= 2, "{counts:?}");
    drop(listener);
}
