//! From the kernel to the audit log: a node configured with `[node.audit.service]` sends
//! its events, filtered by its policy, over mutual TLS to a real `lastmile-audit` service,
//! where they verify against the service's signed checkpoints.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{
    net::TcpListener,
    os::unix::process::CommandExt as _,
    time::{Duration, Instant},
};

use lastmile_audit::{
    checkpoints,
    service::ServeConfig,
    verify::{Anchors, verify},
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use support::{TestCgroup, TestNode, have_root, lastmiled};

fn leaf(ca: &CertifiedIssuer<'_, KeyPair>, dns: &[&str], uri: Option<&str>) -> (String, String) {
    let mut params =
        CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "leaf");
    if let Some(uri) = uri {
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
    }
    let key = KeyPair::generate().unwrap();
    (
        params.signed_by(&key, ca).unwrap().pem(),
        key.serialize_pem(),
    )
}

#[test]
fn node_events_reach_the_audit_service_and_verify() {
    if !have_root("node_events_reach_the_audit_service_and_verify") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "org CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca.pem());
    let (c, k) = leaf(&ca, &["localhost"], None);
    write("audit.pem", c);
    write("audit.key", k);
    let (c, k) = leaf(&ca, &[], Some("lastmile://node/test-host"));
    write("node.pem", c);
    write("node.key", k);

    // The audit service, in this process.
    let data = dir.join("audit");
    let verifier = checkpoints::init_key(&data, "node-test/audit").unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = ServeConfig {
        data_dir: data.clone(),
        origin: "node-test/audit".into(),
        signing_key: None,
        signing_kms: None,
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        witness: None,
        tls_cert: dir.join("audit.pem"),
        tls_key: dir.join("audit.key"),
        client_ca: dir.join("ca.pem"),
        writers: vec!["lastmile://node/test-host".into()],
        readers: vec![],
        max_events_per_request: 100,
        commit_window_ms: 0,
        metrics_listen: None,
        archive: None,
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(lastmile_audit::service::serve(config)).unwrap();
    });
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }

    let cgroup = TestCgroup::new("audit");
    let target_port = TcpListener::bind("127.0.0.2:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "[node.audit]\nkinds = [\"kernel.connect\", \"node.refused_no_agent\"]\n\
         [node.audit.service]\nurl = \"https://localhost:{port}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nspool = {:?}\n",
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("spool.jsonl"),
    );
    let targets = format!(
        "[[node.targets]]\nname = \"db\"\nkind = \"tcp\"\nprotect = [\"127.0.0.2:{target_port}\"]\n"
    );
    let node = TestNode::start("audit", &cgroup, &targets, &extra);

    let mut cmd = cgroup.command(lastmiled());
    cmd.args(["probe", &format!("127.0.0.2:{target_port}"), "--send", "x"])
        .uid(65534)
        .gid(65534);
    let _ = cmd.output().unwrap();

    // Both kinds arrive; the agent events the policy leaves out do not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let kinds = loop {
        let kinds: Vec<String> = lastmile_audit::log::read_entries(&data)
            .map(|e| {
                e.records()
                    .map(|(_, r)| serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap())
                    .map(|v| v["event"]["kind"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if kinds.len() >= 2 || Instant::now() > deadline {
            break kinds;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["kernel.connect", "node.refused_no_agent"],
        "{kinds:?}\n{}",
        node.logs()
    );

    // Once a checkpoint covers them, the log verifies.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = verify(&data, &verifier, &Anchors::default());
        if report.ok() && report.entries == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{report:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let entries = lastmile_audit::log::read_entries(&data).unwrap();
    let first: serde_json::Value =
        serde_json::from_slice(&entries.segments[0].1[0].payload).unwrap();
    assert_eq!(first["writer"], "lastmile://node/test-host");
}
