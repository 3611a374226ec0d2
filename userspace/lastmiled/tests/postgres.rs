//! The PostgreSQL last mile end to end: the real `psql` and `pgbench` → `lastmile listen`
//! (the agent's core) → mutual TLS → `lastmiled gateway` → a real PostgreSQL 15, with the
//! credential released by the API's vault for each connection. Statements logged,
//! databases restricted, cancel mapped, TLS upstream verified, hostile input survived.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/stack.rs"]
#[allow(dead_code)]
mod stack;
mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use lastmile_proto::wire::{
    CredentialKind, NewGrant, Resource, ResourceKind, Subject, UpstreamTls,
};
use lastmile_testkit::pg::PgServer;
use stack::{GatewayProcess, Listen, Stack};
use zeroize::Zeroizing;

const SCRAM_PASSWORD: &str = "s3cret-scram-Zq81";
const MD5_PASSWORD: &str = "s3cret-md5-Kx42";
const TLS_PASSWORD: &str = "s3cret-tls-Pw77";

/// Runs the superuser's SQL directly (not through lastmile).
fn admin_sql(pg: &PgServer, sql: &str) -> String {
    let out = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(pg.url())
        .args(["-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Roles for the gateway to log in as: one with a SCRAM verifier, one with an MD5 hash
/// (and a pg_hba line that asks it for md5), both allowed to work in `public`.
fn roles(pg: &PgServer) {
    admin_sql(
        pg,
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE app_scram LOGIN PASSWORD '{SCRAM_PASSWORD}'; \
             SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD '{MD5_PASSWORD}'; \
             GRANT ALL ON SCHEMA public TO app_scram, app_md5; GRANT pg_read_all_stats TO app_scram"
        ),
    );
    let hba = pg.dir().join("data").join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all app_md5 127.0.0.1/32 md5\nhost all app_md5 ::1/128 md5\n{old}"),
    )
    .unwrap();
    admin_sql(pg, "SELECT pg_reload_conf()");
}

async fn pg_resource(
    stack: &Stack,
    name: &str,
    pg: &PgServer,
    user: &str,
    password: &str,
    databases: &[&str],
) {
    lastmile_api::admin::put_resource(
        &stack.app,
        "test",
        Resource {
            name: name.into(),
            kind: ResourceKind::Postgres,
            host: "127.0.0.1".into(),
            port: pg.port(),
            protect: vec![],
            upstream_tls: Some(UpstreamTls::Disable),
            credential: Some(CredentialKind::Password),
            ssh_principals: vec![],
            database_user: Some(user.into()),
            databases: databases.iter().map(|d| (*d).to_owned()).collect(),
            upstream_ca: None,
            ssh_host_ca: vec![],
            ssh_host_keys: vec![],
            ssh_allow_port_forwarding: false,
            names: vec![],
        },
    )
    .await
    .unwrap();
    lastmile_api::vault::set_credential(
        &stack.app,
        "test",
        name,
        CredentialKind::Password,
        Zeroizing::new(password.as_bytes().to_vec()),
    )
    .await
    .unwrap();
}

async fn grant(stack: &Stack, resource: &str, user: &str) {
    lastmile_api::admin::add_grant(
        &stack.app,
        "test",
        NewGrant {
            resource: resource.into(),
            subject: Subject::User(user.into()),
            expires_at: None,
        },
    )
    .await
    .unwrap();
}

/// `psql` against `addr` as a user would run it: no password (lastmile logs in), no
/// TLS asked of the first hop beyond libpq's default.
fn psql(pg: &PgServer, addr: SocketAddr, db: &str, args: &[&str]) -> Output {
    Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "whoever", "-d", db])
        .args(args)
        .env_remove("PGPASSWORD")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pgbench(pg: &PgServer, addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(pg.bin_dir().join("pgbench"))
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-U", "whoever"])
        .args(args)
        .arg("lastmile")
        .env_remove("PGPASSWORD")
        .output()
        .unwrap()
}

fn queries(g: &GatewayProcess) -> Vec<serde_json::Value> {
    g.events()
        .into_iter()
        .filter(|e| e["kind"] == "db.query")
        .collect()
}

/// Everything a user does with psql and pgbench works, each statement is logged once,
/// and the credential is nowhere on the user's side.
#[tokio::test(flavor = "multi_thread")]
async fn psql_and_pgbench_run_through_the_gateway_with_the_credential_injected() {
    let pg = PgServer::start().unwrap();
    roles(&pg);
    let stack = Stack::start().await;
    pg_resource(&stack, "orders", &pg, "app_scram", SCRAM_PASSWORD, &[]).await;
    pg_resource(&stack, "orders-md5", &pg, "app_md5", MD5_PASSWORD, &[]).await;
    let alice = stack.user("alice").await;
    grant(&stack, "orders", "alice").await;
    grant(&stack, "orders-md5", "alice").await;
    let gw = stack.gateway("gw1").await;
    let listen = Listen::start(&alice, "orders");

    // Simple queries, as the resource's database user.
    let out = ok(&psql(
        &pg,
        listen.addr,
        "lastmile",
        &["-c", "select current_user, 40 + 2"],
    ));
    assert_eq!(out.trim(), "app_scram|42");

    // A transaction and \copy both ways.
    let data = std::env::temp_dir().join(format!("lastmile-pg-copy-{}.csv", std::process::id()));
    std::fs::write(
        &data,
        (1..=500)
            .map(|i| format!("{i},item {i}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let out = ok(&psql(
        &pg,
        listen.addr,
        "lastmile",
        &[
            "-c",
            "create table items (id int primary key, name text)",
            "-c",
            &format!("\\copy items from '{}' with (format csv)", data.display()),
            "-c",
            "begin; update items set name = 'changed' where id <= 10; commit",
            "-c",
            &format!(
                "\\copy (select * from items order by id) to '{}.out' with (format csv)",
                data.display()
            ),
            "-c",
            "select count(*) from items where name = 'changed'",
        ],
    ));
    assert!(out.trim_end().ends_with("10"), "{out}");
    let back = std::fs::read_to_string(format!("{}.out", data.display())).unwrap();
    assert_eq!(back.lines().count(), 500);
    let _ = std::fs::remove_file(&data);
    let _ = std::fs::remove_file(format!("{}.out", data.display()));

    // pgbench in every query mode.
    let init = pgbench(&pg, listen.addr, &["-i", "-s", "1", "-q"]);
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    for mode in ["simple", "extended", "prepared"] {
        let run = pgbench(&pg, listen.addr, &["-M", mode, "-c", "2", "-t", "25", "-n"]);
        let text = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success()
                && text.contains("number of transactions actually processed: 50/50"),
            "pgbench -M {mode}: {text}{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }

    // A client that insists on TLS, and verifies the resource's name against the
    // organisation's CA (`lastmile ca --path`), gets TLS from the gateway.
    let (code, ca_path, _) = stack.lastmile(&alice, &["ca", "--path"], "").await;
    assert_eq!(code, 0);
    for mode in ["require", "verify-full"] {
        let out = Command::new(pg.bin_dir().join("psql"))
            .args([
                "-X",
                "-w",
                "-A",
                "-t",
                "-c",
                "\\conninfo",
                "-c",
                "select 'tls ok'",
            ])
            .arg(format!(
                "host=127.0.0.1 port={} dbname=lastmile user=whoever sslmode={mode} sslrootcert={}",
                listen.addr.port(),
                ca_path.trim()
            ))
            .output()
            .unwrap();
        let text = ok(&out);
        assert!(
            text.contains("SSL connection (protocol: TLSv1.3") && text.contains("tls ok"),
            "{mode}: {text}"
        );
    }
    // Another CA as the root: refused by psql itself.
    let (other_ca, _, _) = server_tls();
    let other = std::env::temp_dir().join(format!("lastmile-other-ca-{}.pem", std::process::id()));
    std::fs::write(&other, other_ca).unwrap();
    let out = Command::new(pg.bin_dir().join("psql"))
        .args(["-X", "-w", "-c", "select 1"])
        .arg(format!(
            "host=127.0.0.1 port={} dbname=lastmile user=whoever sslmode=verify-full sslrootcert={}",
            listen.addr.port(),
            other.display()
        ))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&other);
    assert!(
        !out.status.success(),
        "psql accepted a certificate from another CA"
    );

    // An MD5 user works too.
    let md5 = Listen::start(&alice, "orders-md5");
    let out = ok(&psql(
        &pg,
        md5.addr,
        "lastmile",
        &["-c", "select current_user"],
    ));
    assert_eq!(out.trim(), "app_md5");

    // Every statement is one db.query event, with its outcome.
    let simple = gw.wait_event("db.query", |e| {
        e["query"].as_str().is_some_and(|q| q.contains("40 + 2"))
    });
    assert_eq!(simple["protocol"], "simple");
    assert_eq!(simple["outcome"], "ok");
    assert_eq!(simple["tags"][0], "SELECT 1");
    assert_eq!(simple["resource"], "orders");
    assert_eq!(simple["user"], "alice");
    let copy_in = gw.wait_event("db.query", |e| e["copy"] == "in");
    assert_eq!(copy_in["rows"], 500);
    assert!(copy_in["copy_bytes"].as_u64().unwrap() > 5000);
    let copy_out = gw.wait_event("db.query", |e| e["copy"] == "out");
    assert_eq!(copy_out["rows"], 500);
    // pgbench: 50 transactions × 7 statements (BEGIN, 3 UPDATEs, SELECT, INSERT, END) per mode.
    for mode in ["extended"] {
        let _ = mode;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = queries(&gw)
                .iter()
                .filter(|e| {
                    e["protocol"] == "extended"
                        && e["query"]
                            .as_str()
                            .is_some_and(|q| q.contains("pgbench_accounts"))
                })
                .count();
            if n >= 2 * 50 * 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {n} extended pgbench_accounts statements logged"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let close = gw.wait_event("connection.close", |e| {
        e["resource"] == "orders" && e["statements"].as_u64().is_some_and(|n| n >= 5)
    });
    assert_eq!(close["database"], "lastmile");

    // The credential is nowhere on the user's side: the agent's memory, its home, the
    // events. (The password the agent process could have seen is searched in its memory.)
    for secret in [SCRAM_PASSWORD, MD5_PASSWORD] {
        assert!(
            !search_memory(listen.child.id(), secret.as_bytes()),
            "{secret} in the agent's memory"
        );
        assert!(
            !search_memory(md5.child.id(), secret.as_bytes()),
            "{secret} in the agent's memory"
        );
        assert!(
            !search_dir(&alice, secret.as_bytes()),
            "{secret} in LASTMILE_HOME"
        );
        assert!(
            !std::fs::read_to_string(&gw.events)
                .unwrap()
                .contains(secret),
            "{secret} in the gateway's events"
        );
        assert!(!gw.logs().contains(secret), "{secret} in the gateway's log");
        assert!(!listen.stderr().contains(secret));
    }
}

/// Reads every readable mapping of `pid` and looks for `needle`.
fn search_memory(pid: u32, needle: &[u8]) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut searched = 0usize;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap();
        let perms = parts.next().unwrap();
        if !perms.starts_with('r') || line.contains("[vvar") || line.contains("[vsyscall") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; usize::try_from(b - a).unwrap()];
        use std::io::Seek as _;
        if mem.seek(std::io::SeekFrom::Start(a)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        searched += buf.len();
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    assert!(
        searched > 1 << 20,
        "read only {searched} bytes of process {pid}'s memory"
    );
    false
}

fn search_dir(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            search_dir(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

/// A database the resource does not list, a user with no grant, a wrong stored password:
/// each is told why in psql's own terms, and nothing of the first two reaches PostgreSQL.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_explained_in_postgresql_terms() {
    let pg = PgServer::start().unwrap();
    roles(&pg);
    let stack = Stack::start().await;
    pg_resource(
        &stack,
        "orders",
        &pg,
        "app_scram",
        SCRAM_PASSWORD,
        &["lastmile"],
    )
    .await;
    pg_resource(&stack, "wrong", &pg, "app_scram", "not-the-password", &[]).await;
    let alice = stack.user("alice").await;
    let bob = stack.user("bob").await;
    grant(&stack, "orders", "alice").await;
    grant(&stack, "wrong", "alice").await;
    let gw = stack.gateway("gw1").await;

    let listen = Listen::start(&alice, "orders");
    admin_sql(&pg, "CREATE DATABASE other");
    let out = psql(&pg, listen.addr, "other", &["-c", "select 1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("database \"other\" is not reachable through `orders`")
            && err.contains("allows: lastmile"),
        "{err}"
    );
    let refused = gw.wait_event("db.refused", |e| e["code"] == "database_not_allowed");
    assert_eq!(refused["user"], "alice");
    assert_eq!(
        ok(&psql(&pg, listen.addr, "lastmile", &["-c", "select 1"])).trim(),
        "1"
    );

    // Bob's grant goes after his `listen` started (which checks it): the gateway's
    // authorization is what refuses him.
    let bob_grant = lastmile_api::admin::add_grant(
        &stack.app,
        "test",
        NewGrant {
            resource: "orders".into(),
            subject: Subject::User("bob".into()),
            expires_at: None,
        },
    )
    .await
    .unwrap();
    let bobs = Listen::start(&bob, "orders");
    lastmile_api::admin::revoke_grant(&stack.app, "test", &bob_grant.id)
        .await
        .unwrap();
    let out = psql(&pg, bobs.addr, "lastmile", &["-c", "select 1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no_grant"), "{err}");
    gw.wait_event("gateway.refused", |e| e["code"] == "no_grant");
    assert!(
        !gw.events()
            .iter()
            .any(|e| e["kind"] == "db.query" && e["user"] == "bob")
    );

    let wrong = Listen::start(&alice, "wrong");
    let out = psql(&pg, wrong.addr, "lastmile", &["-c", "select 1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("the gateway could not log in to `wrong`"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"));
    gw.wait_event("db.refused", |e| e["code"] == "upstream_login_failed");
}

/// Ctrl-C in psql cancels the statement on the server, through the gateway's own key.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_the_server_within_a_second() {
    let pg = PgServer::start().unwrap();
    roles(&pg);
    let stack = Stack::start().await;
    pg_resource(&stack, "orders", &pg, "app_scram", SCRAM_PASSWORD, &[]).await;
    let alice = stack.user("alice").await;
    grant(&stack, "orders", "alice").await;
    let gw = stack.gateway("gw1").await;
    let listen = Listen::start(&alice, "orders");

    let child = Command::new(pg.bin_dir().join("psql"))
        .args([
            "-X",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            &listen.addr.port().to_string(),
        ])
        .args([
            "-U",
            "whoever",
            "-d",
            "lastmile",
            "-c",
            "select pg_sleep(60)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sleeping = || {
        admin_sql(
            &pg,
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(60)' and state = 'active'",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeping() != "1" {
        assert!(Instant::now() < deadline, "the statement never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let sent = Instant::now();
    while sleeping() != "0" {
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "still running {:?} after SIGINT",
            sent.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
    let cancel = gw.wait_event("db.cancel", |e| e["outcome"] == "forwarded");
    assert!(cancel["cancelled"].as_str().is_some());
    let q = gw.wait_event("db.query", |e| e["query"] == "select pg_sleep(60)");
    assert_eq!(q["sqlstate"], "57014");

    // A revoked session: its open connection is told so in PostgreSQL terms (FATAL
    // 57P01, log in again) within a second, then closed.
    let mut open = logged_in(listen.addr);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(alice.join("session.json")).unwrap())
            .unwrap();
    let session = saved["login"]["session"].as_str().unwrap().to_owned();
    lastmile_api::admin::revoke(&stack.app, "test", &session, Some("test"))
        .await
        .unwrap();
    let revoked = Instant::now();
    let answer = read_all(&mut open);
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.first() == Some(&b'E')
            && text.contains("57P01")
            && text.contains("session revoked")
            && text.contains("lastmile login"),
        "{text}"
    );
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "told after {:?}",
        revoked.elapsed()
    );
    gw.wait_event("connection.close", |e| {
        e["error"]
            .as_str()
            .is_some_and(|s| s.contains("session revoked"))
    });
}

/// Reads what the gateway answers on `s` until it closes (or 10 s pass).
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = (u32::try_from(body.len() + 4).unwrap())
        .to_be_bytes()
        .to_vec();
    out.extend(body);
    out
}

/// Logs in by hand and returns the stream after the first ReadyForQuery.
fn logged_in(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&startup(&[("user", "x"), ("database", "lastmile")]))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed during login: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// Each hostile input ends only its own connection, with an error and an event; the
/// gateway and other connections go on.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_closes_only_its_connection() {
    let pg = PgServer::start().unwrap();
    roles(&pg);
    let stack = Stack::start().await;
    pg_resource(&stack, "orders", &pg, "app_scram", SCRAM_PASSWORD, &[]).await;
    let alice = stack.user("alice").await;
    grant(&stack, "orders", "alice").await;
    let gw = stack.gateway("gw1").await;
    let listen = Listen::start(&alice, "orders");
    let addr = listen.addr;
    // A connection that stays open through all of it.
    let mut bystander = logged_in(addr);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "startup length below 8",
            vec![0, 0, 0, 3, 0, 3, 0, 0],
            "bad_startup",
        ),
        (
            "startup length above the maximum",
            [&0x00ff_ffffu32.to_be_bytes()[..], &[0, 3, 0, 0]].concat(),
            "bad_startup",
        ),
        (
            "10,000 startup parameters",
            startup(&(0..10_000).map(|_| ("k", "v")).collect::<Vec<_>>()),
            "bad_startup",
        ),
        (
            "bytes after SSLRequest before the answer",
            [
                &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..],
                b"Q\0\0\0\x0dselect 1\0",
            ]
            .concat(),
            "protocol_violation",
        ),
        (
            "a message before authentication completes",
            [
                startup(&[("user", "x"), ("database", "lastmile")]),
                b"Q\0\0\0\x0dselect 1\0".to_vec(),
            ]
            .concat(),
            "protocol_violation",
        ),
    ];
    for (what, bytes, code) in &cases {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(bytes);
        let answer = read_all(&mut s);
        assert!(
            answer.first() == Some(&b'E') || answer.first() == Some(&b'N'),
            "{what}: {answer:?}"
        );
        gw.wait_event("db.refused", |e| e["code"] == *code);
    }
    // A cancel with a random key cancels nothing, and is recorded.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    assert!(read_all(&mut s).is_empty());
    gw.wait_event("db.cancel", |e| e["outcome"] == "unknown_key");

    // After login: a length field below 4, one above the maximum, a frame cut short.
    for (what, bytes) in [
        ("length below 4", b"Q\0\0\0\x02".to_vec()),
        ("length above the maximum", b"Q\x7f\xff\xff\xff".to_vec()),
    ] {
        let mut s = logged_in(addr);
        s.write_all(&bytes).unwrap();
        let answer = read_all(&mut s);
        let text = String::from_utf8_lossy(&answer);
        assert!(
            answer.first() == Some(&b'E') && text.contains("invalid message from the client"),
            "{what}: {text}"
        );
    }
    // The client is answered just after its event is queued; the writer may still be
    // gathering the second one, so wait for it (up to 10 s) rather than read once.
    let framing_refusals = || {
        gw.events()
            .iter()
            .filter(|e| e["kind"] == "db.refused" && e["code"] == "protocol_violation")
            .filter(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("invalid message from the client"))
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while framing_refusals() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let after_login = framing_refusals();
    assert_eq!(
        after_login, 2,
        "each framing error after login is an audit event"
    );
    let mut s = logged_in(addr);
    s.write_all(b"Q\0\0\0\x20select").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = read_all(&mut s);
    // A well-framed message of a type not logged (FunctionCall with garbage) goes to the
    // server, which judges it.
    let mut s = logged_in(addr);
    s.write_all(b"F\0\0\0\x08\0\0\0\0").unwrap();
    let answer = read_all(&mut s);
    assert_eq!(
        answer.first(),
        Some(&b'E'),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // The bystander is still there.
    bystander.write_all(b"Q\0\0\0\x0dselect 7\0").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = bystander.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.windows(1).any(|w| w == b"7"));
    assert!(gw.logs().contains("gateway serving tunnels") && !gw.logs().contains("panicked"));
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
fn server_tls() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// An upstream that requires TLS (`hostssl` only) works with `verify-full` against its
/// CA, with SCRAM bound to the TLS channel; a server whose certificate is from another CA
/// is refused, and a `disable` resource is not let through in plaintext.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_upstream_is_verified_and_never_downgraded() {
    let pg = PgServer::start().unwrap();
    let (ca, cert, key) = server_tls();
    let data = pg.dir().join("data");
    std::fs::write(data.join("server.crt"), &cert).unwrap();
    std::fs::write(data.join("server.key"), &key).unwrap();
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let owner = std::fs::metadata(&data).unwrap();
    for f in ["server.crt", "server.key"] {
        std::os::unix::fs::chown(data.join(f), Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    admin_sql(
        &pg,
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE app_tls LOGIN PASSWORD '{TLS_PASSWORD}'"
        ),
    );
    admin_sql(&pg, "ALTER SYSTEM SET ssl = on");
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl all app_tls 127.0.0.1/32 scram-sha-256\nhostnossl all app_tls 127.0.0.1/32 reject\n{old}"),
    )
    .unwrap();
    admin_sql(&pg, "SELECT pg_reload_conf()");

    let stack = Stack::start().await;
    let alice = stack.user("alice").await;
    let (other_ca, _, _) = server_tls();
    for (name, tls, upstream_ca) in [
        ("tls-good", UpstreamTls::VerifyFull, Some(ca.clone())),
        ("tls-other-ca", UpstreamTls::VerifyFull, Some(other_ca)),
        ("tls-plain", UpstreamTls::Disable, None),
    ] {
        pg_resource(&stack, name, &pg, "app_tls", TLS_PASSWORD, &[]).await;
        let mut r = lastmile_api::admin::resource(&stack.app, name)
            .await
            .unwrap();
        r.upstream_tls = Some(tls);
        r.upstream_ca = upstream_ca;
        lastmile_api::admin::put_resource(&stack.app, "test", r)
            .await
            .unwrap();
        grant(&stack, name, "alice").await;
    }
    let gw = stack.gateway("gw1").await;

    let good = Listen::start(&alice, "tls-good");
    let out = ok(&psql(
        &pg,
        good.addr,
        "lastmile",
        &[
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ],
    ));
    assert_eq!(out.trim(), "t");

    let other = Listen::start(&alice, "tls-other-ca");
    let out = psql(&pg, other.addr, "lastmile", &["-c", "select 1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS handshake with the server failed"),
        "{err}"
    );
    gw.wait_event("db.refused", |e| {
        e["resource"] == "tls-other-ca" && e["code"] == "upstream_unreachable"
    });

    let plain = Listen::start(&alice, "tls-plain");
    let out = psql(&pg, plain.addr, "lastmile", &["-c", "select 1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("could not log in"),
        "{err}"
    );
}

/// As root, the real path: psql in a cgroup the node watches dials the protected address;
/// the kernel redirects it to the node, which hands it to alice's agent, which tunnels it
/// to the gateway. Each statement's `db.query` carries the socket cookie of the kernel's
/// `kernel.connect`, reaches the audit service, and `lastmile audit verify` passes on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_the_kernel_is_logged_joined_and_verified() {
    if !support::have_root("psql_through_the_kernel_is_logged_joined_and_verified") {
        return;
    }
    let pg = PgServer::start().unwrap();
    roles(&pg);
    // The audit service, in its own directory; its port is chosen first so that the API
    // can be told where it is. Writers are admitted by role: the organisation's gateways,
    // nodes and API, each with the certificate it enrolled with (none made by hand).
    let service_dir = tempfile::tempdir().unwrap();
    let dir = service_dir.path().to_owned();
    std::fs::create_dir_all(dir.join("witness")).unwrap();
    let (server_ca, server_cert, server_key) = server_tls();
    std::fs::write(dir.join("server-ca.pem"), &server_ca).unwrap();
    std::fs::write(dir.join("server.pem"), &server_cert).unwrap();
    std::fs::write(dir.join("server.key"), &server_key).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let service_url = format!("https://127.0.0.1:{port}");
    let to_service = |spool: &str| lastmile_audit_sink::ServiceConfig {
        url: service_url.clone(),
        ca: dir.join("server-ca.pem"),
        cert: None,
        key: None,
        spool: dir.join(spool),
    };
    let api_service = to_service("api-spool");
    let stack = Stack::start_with(move |c| c.audit.service = Some(api_service)).await;
    let protect = format!("127.0.0.1:{}", pg.port());
    pg_resource(&stack, "orders", &pg, "app_scram", SCRAM_PASSWORD, &[]).await;
    let mut r = lastmile_api::admin::resource(&stack.app, "orders")
        .await
        .unwrap();
    r.protect = vec![protect.clone()];
    lastmile_api::admin::put_resource(&stack.app, "test", r)
        .await
        .unwrap();
    let alice = stack.user("alice").await;
    grant(&stack, "orders", "alice").await;

    let data = dir.join("data");
    let verifier = lastmile_audit::checkpoints::init_key(&data, "pg-test/audit").unwrap();
    let config = lastmile_audit::service::ServeConfig {
        data_dir: data.clone(),
        origin: "pg-test/audit".into(),
        signing_key: None,
        signing_kms: None,
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        witness: Some(dir.join("witness")),
        tls_cert: dir.join("server.pem"),
        tls_key: dir.join("server.key"),
        client_ca: stack.ca.clone(),
        writers: vec!["role:gateway".into(), "role:node".into(), "role:api".into()],
        readers: vec!["role:audit-reader".into()],
        max_events_per_request: 100,
        commit_window_ms: 0,
        metrics_listen: None,
        archive: None,
    };
    let service = tokio::spawn(lastmile_audit::service::serve(config));
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = stack.dir.path().join("gateway-gw1").join("state");
    let gw = stack
        .gateway_with(
            "gw1",
            &format!(
                "[gateway.audit.service]\nurl = \"https://127.0.0.1:{port}\"\nca = {:?}\nspool = {:?}\n",
                dir.join("server-ca.pem"),
                dir.join("gateway-spool"),
            ),
        )
        .await;

    // The node enrolls for its audit-writer identity (`lastmiled node enroll`), then
    // protects what the API lists, for processes in its cgroup, and sends its events to
    // the audit service as `urn:lastmile:node:pg-node`.
    let cgroup = support::TestCgroup::new("pg");
    let api = format!(
        "[api]\nurl = {:?}\nstate_dir = {:?}\n",
        stack.api_url, state
    );
    let node_token = lastmile_api::nodes::new_token(&stack.app, "test", "pg-node", 600)
        .await
        .unwrap();
    let enroll_config = dir.join("node-enroll.toml");
    std::fs::write(&enroll_config, &api).unwrap();
    let out = Command::new(support::lastmiled())
        .args(["node", "enroll", "--config"])
        .arg(&enroll_config)
        .args(["--token", &node_token.token, "--ca"])
        .arg(&stack.ca)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node_service = to_service("node-spool");
    let api = format!(
        "{api}[node.audit.service]\nurl = {:?}\nca = {:?}\nspool = {:?}\n",
        node_service.url, node_service.ca, node_service.spool
    );
    let node = support::TestNode::start(
        "pg",
        &cgroup,
        &api,
        "resources_from_api = true\nresource_refresh = \"200ms\"",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status()["protected_v4"] != 1 {
        assert!(Instant::now() < deadline, "not protected: {}", node.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let uid = 65534;
    let agent = stack::AgentProcess::start(&alice, &node.agent_socket, uid);
    let out = {
        use std::os::unix::process::CommandExt as _;
        cgroup
            .command(pg.bin_dir().join("psql"))
            .args([
                "-X",
                "-w",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port().to_string(),
            ])
            .args(["-U", "whoever", "-d", "lastmile"])
            .args(["-c", "select 'through the kernel'", "-c", "select 40 + 2"])
            .env("HOME", "/nonexistent")
            .env_remove("PGPASSWORD")
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("through the kernel") && text.contains("42"),
        "{text}{}\nagent: {}\ngateway: {}",
        String::from_utf8_lossy(&out.stderr),
        agent.logs(),
        gw.logs()
    );
    let handoff = node.wait_event("handoff", |e| {
        e["kind"] == "node.handoff" && e["uid"] == uid
    });
    let cookie = handoff["sock_cookie"].as_u64().unwrap();
    node.wait_event("kernel", |e| {
        e["kind"] == "kernel.connect" && e["sock_cookie"] == cookie
    });
    for text in ["select 'through the kernel'", "select 40 + 2"] {
        let q = gw.wait_event("db.query", |e| e["query"] == text);
        assert_eq!(q["sock_cookie"], cookie, "{q}");
        assert_eq!(q["user"], "alice");
    }

    // The same statements are in the audit service's log, which verifies against its
    // key and witness.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = lastmile_audit::log::read_entries(&data)
            .map(|e| {
                e.records()
                    .filter_map(|(_, r)| {
                        serde_json::from_slice::<serde_json::Value>(&r.payload).ok()
                    })
                    .filter(|v| {
                        v["event"]["kind"] == "db.query" && v["event"]["sock_cookie"] == cookie
                    })
                    .count()
            })
            .unwrap_or(0);
        if logged == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{logged} db.query events in the audit log\n{}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new(stack::lastmile_bin())
            .args(["audit", "verify", "--data-dir"])
            .arg(&data)
            .args(["--key", &verifier.to_string(), "--witness"])
            .arg(dir.join("witness"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        if out.status.success()
            && !said.contains("not signed yet")
            && !said.contains("covered only by")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "verify: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The security team's view: the connection's story from the kernel's connect to its
    // close, from the audit service's log alone: the node's, the gateway's and the API's
    // events all reached it, each under its enrolled identity.
    let writers: std::collections::BTreeSet<String> = lastmile_audit::log::read_entries(&data)
        .unwrap()
        .records()
        .filter_map(|(_, r)| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
        .filter_map(|v| v["writer"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        writers,
        [
            "urn:lastmile:api",
            "urn:lastmile:gateway:gw1",
            "urn:lastmile:node:pg-node"
        ]
        .map(String::from)
        .into(),
    );
    let trace = |output: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new(stack::lastmile_bin())
                .args(["--output", output, "audit", "trace", "--sock-cookie"])
                .arg(cookie.to_string())
                .arg("--data-dir")
                .arg(&data)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // The close is written when psql has gone; wait for it to reach the log.
            if out.status.success() && text.contains("connection.close") {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "trace: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let text = trace("text");
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {text}"))
    };
    assert!(at("login") < at("kernel.connect"), "{text}");
    assert!(at("kernel.connect") < at("node.handoff"), "{text}");
    assert!(at("node.handoff") < at("connection.open"), "{text}");
    assert!(at("connection.open") < at("credential.decrypt"), "{text}");
    assert!(at("credential.decrypt") < at("db.query"), "{text}");
    assert!(at("db.query") < at("connection.close"), "{text}");
    assert!(text.contains("select 40 + 2 → ok"), "{text}");
    assert!(
        text.contains("(redirected, target orders) by pid"),
        "{text}"
    );
    let json: Vec<serde_json::Value> = serde_json::from_str(&trace("json")).unwrap();
    let opened = json
        .iter()
        .find(|e| e["kind"] == "connection.open")
        .unwrap()["connection"]
        .clone();
    for e in &json {
        assert!(
            ["login", "session.create"].contains(&e["kind"].as_str().unwrap())
                || e["sock_cookie"] == cookie
                || e["connection"] == opened,
            "not this connection's: {e}"
        );
    }
    // A security reader, with a certificate an admin issued for its CSR
    // (`lastmile-api audit-readers issue`), reads the log; it is no writer, and its
    // appends are refused.
    let reader_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&reader_key)
        .unwrap()
        .pem()
        .unwrap();
    let reader = lastmile_api::nodes::issue_reader(&stack.app, "test", "sam", &csr, 86_400)
        .await
        .unwrap();
    std::fs::write(dir.join("sam.pem"), &reader.certificate).unwrap();
    std::fs::write(dir.join("sam.key"), reader_key.serialize_pem()).unwrap();
    let out = Command::new(stack::lastmile_bin())
        .args(["audit", "tail", "-n", "3", "--url", &service_url, "--ca"])
        .arg(dir.join("server-ca.pem"))
        .arg("--cert")
        .arg(dir.join("sam.pem"))
        .arg("--key")
        .arg(dir.join("sam.key"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 3,
        "reader: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut not_a_writer = to_service("reader-spool");
    not_a_writer.cert = Some(dir.join("sam.pem"));
    not_a_writer.key = Some(dir.join("sam.key"));
    let sink = lastmile_audit_sink::SinkConfig {
        service: Some(not_a_writer),
        ..Default::default()
    };
    let delivery = sink
        .writer(None)
        .unwrap()
        .write(serde_json::json!({"v": 1, "kind": "login", "user": "mallory", "device": "d", "session": "s"}))
        .await
        .unwrap();
    assert!(!delivery.service, "{delivery:?}");
    let why = delivery.spooled.unwrap_or_default();
    assert!(
        why.contains("403")
            && why.contains("urn:lastmile:audit-reader:sam is not on this log's writer list"),
        "{why}"
    );
    service.abort();
}

/// When the gateway cannot record statements at all (its event file on a full disk), no
/// further statement runs: the client is told why and the connection ends.
#[tokio::test(flavor = "multi_thread")]
async fn no_statement_runs_when_nothing_can_record_it() {
    let pg = PgServer::start().unwrap();
    roles(&pg);
    let stack = Stack::start().await;
    pg_resource(&stack, "orders", &pg, "app_scram", SCRAM_PASSWORD, &[]).await;
    let alice = stack.user("alice").await;
    grant(&stack, "orders", "alice").await;
    let mut gw = stack.gateway("gw1").await;
    // The disk is full: every write of the event file fails (ENOSPC).
    gw.kill();
    let _ = std::fs::remove_file(&gw.events);
    std::os::unix::fs::symlink("/dev/full", &gw.events).unwrap();
    gw.spawn();
    let listen = Listen::start(&alice, "orders");
    admin_sql(
        &pg,
        "CREATE TABLE ran (n int); GRANT ALL ON ran TO app_scram",
    );
    let out = psql(
        &pg,
        listen.addr,
        "lastmile",
        &[
            "-c",
            "insert into ran values (1)",
            "-c",
            "select pg_sleep(0.5)",
            "-c",
            "insert into ran values (2)",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "every statement ran unrecorded");
    assert!(err.contains("cannot record statements"), "{err}");
    // What ran before the first failed write is all that ran.
    assert_eq!(admin_sql(&pg, "select count(*) from ran where n = 2"), "0");
}
