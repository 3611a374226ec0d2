//! The `lastmile-api` binary: init prints the one-time admin password once, the admin
//! commands change the database with `--output json`, and a bad config (or none at the
//! path given) says what is wrong.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

fn api(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    api_stdin(config, args, "")
}

fn api_stdin(config: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let out = lastmile_testkit::run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_lastmile-api"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn"),
        stdin,
    )
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A data directory and the config naming it (the directory lives as long as its guard).
fn data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("api.toml");
    std::fs::write(
        &config,
        format!("[api]\ndata_dir = \"{}\"\n", dir.path().display()),
    )
    .unwrap();
    (dir, config)
}

/// The same, after `init --org acme --admin root`.
fn initialized() -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, config) = data_dir();
    let (ok, _, err) = api(&config, &["init", "--org", "acme", "--admin", "root"]);
    assert!(ok, "{err}");
    (dir, config)
}

#[test]
fn init_and_admin_commands() {
    let (dir, config) = data_dir();

    let (ok, out, err) = api(
        &config,
        &[
            "--output", "json", "init", "--org", "acme", "--admin", "root",
        ],
    );
    assert!(ok, "{err}");
    let init: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(init["admin"], "root");
    assert_eq!(init["one_time_password"].as_str().unwrap().len(), 20);
    let key = dir.path().join("keys/ca.key.sealed");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions())
            & 0o777,
        0o600
    );
    // A copy of the CA certificate everyone may read, next to the config, named in the
    // output: what users and hosts are given for `--ca`.
    let ca_copy = dir.path().join("org-ca.pem");
    assert_eq!(init["ca_certificate"], ca_copy.display().to_string());
    assert_eq!(
        std::fs::read(&ca_copy).unwrap(),
        std::fs::read(dir.path().join("keys/ca.crt")).unwrap()
    );
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&ca_copy).unwrap().permissions()
        ) & 0o777,
        0o644
    );
    // Never twice.
    let (ok, _, err) = api(&config, &["init", "--org", "acme"]);
    assert!(!ok);
    assert!(err.contains("already"), "{err}");

    let (ok, out, err) = api(
        &config,
        &[
            "--output", "json", "users", "add", "alice", "--group", "dba",
        ],
    );
    assert!(ok, "{err}");
    let otp: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(otp["user"], "alice");
    let (ok, _, err) = api(
        &config,
        &[
            "resources",
            "put",
            "orders",
            "--kind",
            "postgres",
            "--host",
            "127.0.0.1",
            "--port",
            "5432",
            "--protect",
            "127.0.0.2:5432",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = api(
        &config,
        &[
            "resources",
            "put",
            "bad",
            "--kind",
            "tcp",
            "--host",
            "h",
            "--port",
            "1",
            "--protect",
            "127.0.0.2",
        ],
    );
    assert!(!ok);
    assert!(err.contains("`127.0.0.2` has no port"), "{err}");
    let (ok, out, err) = api(
        &config,
        &[
            "--output",
            "json",
            "grants",
            "add",
            "orders",
            "--group",
            "dba",
            "--expires-in",
            "8h",
        ],
    );
    assert!(ok, "{err}");
    let grant: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(grant["expires_at"].as_i64().unwrap() > 0);
    let (ok, out, _) = api(&config, &["--output", "json", "users", "list"]);
    assert!(ok);
    let users: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 2);
    assert_eq!(users[0]["groups"][0], "dba");
    let (ok, out, _) = api(
        &config,
        &["gateways", "token", "gw1", "--address", "gw1.internal"],
    );
    assert!(ok);
    assert!(out.contains("lmgw_"), "{out}");
    let (ok, _, err) = api(&config, &["users", "disable", "nobody"]);
    assert!(!ok);
    assert!(err.contains("there is no user `nobody`"), "{err}");

    // The organisation's private keys are not on disk in the clear: each is sealed by the KMS.
    for f in std::fs::read_dir(dir.path().join("keys")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
    // A credential from standard input, listed without its secret, then every data key
    // (and the organisation's keys) re-wrapped under a new master key.
    let (ok, _, err) = api(
        &config,
        &[
            "resources",
            "put",
            "orders",
            "--kind",
            "postgres",
            "--host",
            "127.0.0.1",
            "--port",
            "5432",
            "--credential",
            "password",
        ],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = api_stdin(
        &config,
        &["--output", "json", "credentials", "set", "orders"],
        "pg-secret-cli\n",
    );
    assert!(ok, "{err}");
    assert!(!out.contains("pg-secret-cli"));
    let (ok, _, err) = api_stdin(
        &config,
        &["credentials", "set", "orders", "--kind", "ssh-key"],
        "not a key",
    );
    assert!(!ok);
    assert!(err.contains("not an OpenSSH private key"), "{err}");
    let (ok, out, err) = api(&config, &["--output", "json", "credentials", "rotate"]);
    assert!(ok, "{err}");
    let rotated: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            rotated["rewrapped"].as_u64(),
            rotated["organisation_keys"].as_u64()
        ),
        (Some(1), Some(4))
    );
    let (ok, out, _) = api(&config, &["--output", "json", "credentials", "list"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        list[0]["kms_key"].as_str().or(list[0]["key_id"].as_str()),
        rotated["kms_key"].as_str()
    );
    // Everything still opens under the new key.
    let (ok, _, err) = api(&config, &["users", "list"]);
    assert!(ok, "{err}");

    // Every change is in the audit trail, and names its actor.
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let kinds: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .inspect(|e| assert!(e["actor"].as_str().is_some_and(|a| !a.is_empty())))
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "user.change",
            "user.change",
            "resource.change",
            "grant.change",
            "gateway.change",
            "resource.change",
            "credential.change",
            "credential.change"
        ]
    );

    // A config with a typo is refused with the file and the field named.
    std::fs::write(&config, "[api]\nsesion_ttl = \"1h\"\n").unwrap();
    let (ok, _, err) = api(&config, &["users", "list"]);
    assert!(!ok);
    assert!(
        err.contains("sesion_ttl") && err.contains("api.toml"),
        "{err}"
    );
    // A duration without its unit says the form it takes.
    std::fs::write(&config, "[api]\nsession_ttl = 5\n").unwrap();
    let (ok, _, err) = api(&config, &["users", "list"]);
    assert!(!ok);
    assert!(
        err.contains("session_ttl = 5")
            && err.contains("expected a duration in quotes with its unit, such as \"5s\""),
        "{err}"
    );
}

#[test]
fn a_missing_config_is_named_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("api.toml");
    let stderr = lastmile_testkit::reports_missing_file(
        Command::new(env!("CARGO_BIN_EXE_lastmile-api"))
            .arg("--config")
            .arg(&missing)
            .args(["users", "list"])
            .env("RUST_LOG", "off"),
        &missing,
    )
    .unwrap();
    assert!(
        stderr.starts_with(&format!(
            "lastmile-api: cannot read {}: ",
            missing.display()
        )),
        "{stderr}"
    );
}

/// What the admin CLI prints is what a person writes: kinds and statuses by their flag
/// names, `[::1]:5432` for an IPv6 address, `group dba` for a grant's subject, a refusal
/// by its reason (no HTTP status, no error code), no colour and no backtrace through a pipe.
#[test]
fn human_output_has_no_debug_formatting_or_http_jargon() {
    let (_dir, config) = initialized();
    let (ok, _, err) = api(
        &config,
        &[
            "resources",
            "put",
            "db6",
            "--kind",
            "postgres",
            "--host",
            "::1",
            "--port",
            "5432",
            "--protect",
            "[::1]:15432",
        ],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = api(&config, &["grants", "add", "db6", "--group", "dba"]);
    assert!(ok, "{err}");

    let (ok, out, err) = api(&config, &["resources", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("db6 "), "{out}");
    assert!(
        out.contains(" postgres ") && out.contains(" [::1]:5432 protect=[[::1]:15432]"),
        "{out}"
    );
    let (ok, out, err) = api(&config, &["grants", "list"]);
    assert!(ok, "{err}");
    assert!(out.contains(" group dba"), "{out}");
    assert!(!out.contains("Group("), "{out}");

    let out = Command::new(env!("CARGO_BIN_EXE_lastmile-api"))
        .arg("--config")
        .arg(&config)
        .args([
            "resources",
            "put",
            "bad",
            "--kind",
            "tcp",
            "--host",
            "127.0.0.1",
            "--port",
            "1",
            "--protect",
            "bogus",
        ])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        err.trim_end(),
        "lastmile-api: protect: `bogus` has no port: write ADDRESS:PORT, [IPV6]:PORT, or NETWORK/BITS:PORT"
    );
    for jargon in ["Bad Request", "400", "bad_resource", "backtrace", "\u{1b}["] {
        assert!(!err.contains(jargon), "{jargon:?} in {err}");
    }
}

/// `upstream_tls` is a postgres field: `tcp` and `ssh` resources refuse it, saying so,
/// and are listed without it, also when a row an earlier version saved holds one.
#[test]
fn upstream_tls_is_refused_and_not_listed_where_it_has_no_effect() {
    let (dir, config) = initialized();
    let put = |name: &str, kind: &str, port: &str, more: &[&str]| {
        let mut args = vec![
            "--output",
            "json",
            "resources",
            "put",
            name,
            "--kind",
            kind,
            "--host",
            "127.0.0.1",
            "--port",
            port,
        ];
        args.extend_from_slice(more);
        api(&config, &args)
    };

    let (ok, out, err) = put("web", "tcp", "8443", &["--upstream-tls", "require"]);
    assert!(!ok, "{out}");
    assert_eq!(
        err.trim_end(),
        "lastmile-api: upstream_tls applies to postgres resources only (the gateway carries a \
         tcp resource's bytes as they are, so a TLS service's own TLS goes end to end to the \
         client): leave upstream_tls (--upstream-tls) out for a tcp resource"
    );
    let (ok, _, err) = put("box", "ssh", "22", &["--upstream-tls", "disable"]);
    assert!(!ok);
    assert!(
        err.contains("upstream_tls applies to postgres resources only")
            && err.contains("out for a ssh resource"),
        "{err}"
    );
    let (ok, _, err) = api(&config, &["--output", "json", "resources", "list"]);
    assert!(ok, "{err}");
    assert_eq!(err, "");

    // Without the flag: tcp and ssh have none, postgres gets the default.
    let (ok, out, err) = put("web", "tcp", "8443", &[]);
    assert!(ok, "{err}");
    let saved: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(saved.get("upstream_tls").is_none(), "{saved}");
    let (ok, _, err) = put("box", "ssh", "22", &[]);
    assert!(ok, "{err}");
    let (ok, out, err) = put("db", "postgres", "5432", &[]);
    assert!(ok, "{err}");
    let saved: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(saved["upstream_tls"], "require", "{saved}");

    // Rows saved before the refusal held a value for every kind: ignored, not shown.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let app = lastmile_api::App::open(lastmile_api::ApiConfig {
            data_dir: dir.path().to_owned(),
            ..lastmile_api::ApiConfig::default()
        })
        .await
        .unwrap();
        sqlx::query("UPDATE resources SET upstream_tls = 'verify-full' WHERE name <> 'db'")
            .execute(&app.db.pool)
            .await
            .unwrap();
    });
    let (ok, out, err) = api(&config, &["--output", "json", "resources", "list"]);
    assert!(ok, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let tls: Vec<(&str, Option<&str>)> = list
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap(),
                r.get("upstream_tls").map(|t| t.as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        tls,
        [("box", None), ("db", Some("require")), ("web", None)],
        "{out}"
    );
    let (ok, out, err) = api(&config, &["resources", "list"]);
    assert!(ok, "{err}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .to_owned()
    };
    assert!(line("db").ends_with(" upstream_tls=require"), "{out}");
    for name in ["box", "web"] {
        assert!(!line(name).contains("upstream_tls"), "{out}");
    }
}
