#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use lastmile_testkit::PgServer;

fn start() -> PgServer {
    let begun = Instant::now();
    let server = PgServer::start().unwrap_or_else(|err| panic!("PgServer::start: {err:?}"));
    eprintln!("PgServer::start took {:?}", begun.elapsed());
    server
}

/// `psql` from the server's own bin dir, with no password prompt and no `PG*` leaking in.
fn psql(server: &PgServer, url: &str, sql: &str) -> Output {
    let mut cmd = Command::new(server.bin_dir().join("psql"));
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "-w",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn query(server: &PgServer, url: &str, sql: &str) -> String {
    let out = psql(server, url, sql);
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}\nserver log: {}",
        String::from_utf8_lossy(&out.stderr),
        server.log_path().display()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

#[test]
fn select_1_over_the_url() {
    let server = start();
    let url = server.url();
    assert_eq!(
        url,
        format!(
            "postgres://lastmile:{}@127.0.0.1:{}/lastmile",
            server.password(),
            server.port()
        )
    );
    assert_eq!(query(&server, &url, "select 1"), "1");
    assert_eq!(
        query(
            &server,
            &url,
            "select current_user || ' ' || current_database()"
        ),
        "lastmile lastmile"
    );
    assert_eq!(
        query(
            &server,
            &url,
            "select pg_catalog.pg_get_userbyid(datdba) from pg_database where datname = 'lastmile'"
        ),
        "lastmile"
    );
    assert_eq!(query(&server, &url, "show fsync"), "off");
    assert_eq!(query(&server, &url, "show listen_addresses"), "127.0.0.1");
    assert_eq!(query(&server, &url, "show server_encoding"), "UTF8");
    // `trust` is used nowhere.
    assert_eq!(
        query(
            &server,
            &url,
            "select count(*) from pg_hba_file_rules where auth_method = 'trust'"
        ),
        "0"
    );
    // The unix socket lives in the temp dir, and asks for the password too.
    let socket_url = format!(
        "postgresql://lastmile:{}@/lastmile?host={}&port={}",
        server.password(),
        server.socket_dir().display(),
        server.port()
    );
    assert_eq!(query(&server, &socket_url, "select 2"), "2");
    let no_password = format!(
        "postgresql://lastmile@/lastmile?host={}&port={}",
        server.socket_dir().display(),
        server.port()
    );
    assert!(!psql(&server, &no_password, "select 1").status.success());
    assert!(server.log_path().is_file());
    // The password never shows in Debug.
    assert!(!format!("{server:?}").contains(server.password()));
}

#[test]
fn wrong_password_is_refused() {
    let server = start();
    let wrong = server.url().replace(server.password(), "not-the-password");
    let out = psql(&server, &wrong, "select 1");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "unexpected psql error: {stderr}"
    );
}

#[test]
fn two_servers_get_different_ports() {
    let a = start();
    let b = start();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert_eq!(query(&a, &a.url(), "select 'a'"), "a");
    assert_eq!(query(&b, &b.url(), "select 'b'"), "b");
    // Each has its own password: a's does not open b.
    let crossed = b.url().replace(b.password(), a.password());
    assert!(!psql(&b, &crossed, "select 1").status.success());
}

#[test]
fn drop_stops_the_server_and_removes_the_dir() {
    let server = start();
    let port = server.port();
    let dir = server.dir().to_path_buf();
    assert!(accepts(port));
    assert!(dir.is_dir());
    drop(server);
    assert!(!accepts(port), "port {port} still accepts after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[test]
fn create_database_gives_an_isolated_database() {
    let server = start();
    let url = server.create_database("isolated_1").unwrap();
    assert!(
        url.ends_with(&format!(":{}/isolated_1", server.port())),
        "{url}"
    );
    assert_eq!(
        query(&server, &url, "select current_database()"),
        "isolated_1"
    );
    query(
        &server,
        &url,
        "create table t (x int); insert into t values (7)",
    );
    assert_eq!(query(&server, &url, "select x from t"), "7");
    // The main database does not see it.
    assert!(
        !psql(&server, &server.url(), "select x from t")
            .status
            .success()
    );

    let err = server.create_database("isolated_1").unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = server.create_database("bad name").unwrap_err();
    assert!(err.to_string().contains("invalid database name"), "{err}");
}

#[test]
fn runs_as_a_non_root_user() {
    let server = start();
    // The data dir belongs to whoever runs the postmaster; never root.
    let data = query(&server, &server.url(), "show data_directory");
    assert!(
        data.starts_with(&server.dir().display().to_string()),
        "{data}"
    );
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&data).unwrap());
    assert_ne!(owner, 0, "the data dir is owned by root");
}
