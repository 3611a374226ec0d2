//! The demo's control-plane part: the API with a user, resources and grants, the vault,
//! a gateway and the node taking the API's list; then alice, a Linux account, logs in and
//! her TCP client, `psql` and `ssh` reach their targets through the kernel
//! redirect, the agent, the tunnel and the gateway.

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    DEMO_ACCOUNT, PG_NAME, POSTGRES, SSH, SSH_NAME, TCP, TCP_HOST, TCP_PORT,
    stack::Stack,
    targets::{DemoAccount, TargetSshd, metrics_server, orders_database},
};
use crate::exec::{must, step};

/// The control plane on its embedded defaults (SQLite, keys on local disk): an
/// organisation, a user, a resource, a grant and a gateway token, made with the admin CLI
/// against a running API; then what the API says to calls that are not signed.
pub(super) fn control_plane(bin: &Path, dir: &Path, stack: &mut Stack) -> anyhow::Result<()> {
    let (pg_ip, _) = POSTGRES.split_once(':').context("POSTGRES is HOST:PORT")?;
    let (ssh_ip, _) = SSH.split_once(':').context("SSH is HOST:PORT")?;
    step(&format!(
        "the names users dial, in /etc/hosts: {PG_NAME} → {pg_ip}, {SSH_NAME} → {ssh_ip} (protected addresses; `--stop` removes the lines)"
    ));
    super::stack::add_hosts(&[(pg_ip, PG_NAME), (ssh_ip, SSH_NAME)])?;
    let data = dir.join("api");
    let config = dir.join("api.toml");
    let listen = "127.0.0.1:18443";
    std::fs::write(
        &config,
        format!("[api]\ndata_dir = {data:?}\nlisten = \"{listen}\"\n"),
    )?;
    let api = |args: &[&str]| {
        let mut c = Command::new(bin.join("lastmile-api"));
        c.arg("--config").arg(&config).args(args);
        c
    };
    step(
        "`lastmile-api init`: an organisation's CAs (X.509, SSH user, SSH host), TLS, database, first admin",
    );
    must(&mut api(&["init", "--org", "demo", "--admin", "admin"]))?;
    let ca = data.join("keys/ca.crt");
    let audit = super::service::start(bin, dir, &ca, stack)?;
    // The API writes to it as `urn:lastmile:api`, with a certificate it makes in memory.
    std::fs::write(
        &config,
        format!(
            "[api]\ndata_dir = {data:?}\nlisten = \"{listen}\"\n{}",
            audit.section("api")
        ),
    )?;
    step(&format!(
        "`lastmile-api serve` on {listen} (TLS 1.3, SQLite)"
    ));
    stack.spawn(
        "lastmile-api serve",
        &mut api(&["serve"]),
        &dir.join("api.log"),
    )?;
    let curl = |path: &str| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--cacert"])
            .arg(&ca)
            .arg(format!("https://localhost:18443{path}"));
        c
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !curl("/v1/health").output()?.status.success() {
        if Instant::now() > deadline {
            bail!("lastmile-api serve did not answer within 10 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    step(
        "admin CLI: a user in group dba, a resource, an 8-hour grant to dba, a gateway enrollment token",
    );
    let added = api(&[
        "--output", "json", "users", "add", "alice", "--group", "dba",
    ])
    .output()?;
    if !added.status.success() {
        bail!(
            "lastmile-api users add failed: {}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    let alice_otp = one_time_password(&String::from_utf8_lossy(&added.stdout))?;
    eprintln!("    alice's one-time password (shown once): {alice_otp}");
    step(
        "a real PostgreSQL (throwaway, on loopback) with a database `orders` and its role `orders`",
    );
    let pg = orders_database()?;
    let pg_port = pg.port().to_string();
    let pg_bin = pg.bin_dir().to_owned();
    // It outlives the demo: `--stop` (or a failure) ends it by its pid file.
    stack.postgres(pg.dir())?;
    std::mem::forget(pg);
    must(&mut api(&[
        "resources",
        "put",
        "orders-db",
        "--kind",
        "postgres",
        "--host",
        "127.0.0.1",
        "--port",
        &pg_port,
        // The throwaway server has no TLS; a real one would keep the default (require).
        "--upstream-tls",
        "disable",
        "--protect",
        POSTGRES,
        "--dns-name",
        PG_NAME,
        "--credential",
        "password",
        "--database-user",
        "orders",
    ]))?;
    step(
        "the vault: a password from standard input, sealed under the local KMS; listed without it",
    );
    {
        use std::io::Write as _;
        let mut child = api(&["credentials", "set", "orders-db"])
            .stdin(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(b"demo-password\n")?;
        if !child.wait()?.success() {
            bail!("lastmile-api credentials set failed");
        }
    }
    must(&mut api(&["credentials", "list"]))?;
    must(&mut api(&[
        "grants",
        "add",
        "orders-db",
        "--group",
        "dba",
        "--expires-in",
        "8h",
    ]))?;
    must(&mut api(&[
        "resources",
        "put",
        "metrics",
        "--kind",
        "tcp",
        "--host",
        TCP_HOST,
        "--port",
        TCP_PORT,
        "--protect",
        TCP,
    ]))?;
    must(&mut api(&["grants", "add", "metrics", "--group", "dba"]))?;
    step(&format!(
        "a real sshd (on 127.0.0.1) trusting the organisation's SSH user CA, protected as {SSH} (web-1, ssh)"
    ));
    stack.account()?;
    let account = DemoAccount::create(dir)?;
    let ca_bundle: serde_json::Value = serde_json::from_slice(
        &curl("/v1/ca")
            .output()
            .context("asking the API for its CAs")?
            .stdout,
    )
    .context("/v1/ca did not answer JSON")?;
    let user_ca = ca_bundle
        .get("ssh_user_ca")
        .and_then(serde_json::Value::as_str)
        .context("/v1/ca gave no ssh_user_ca")?;
    let sshd = TargetSshd::start(&dir.join("sshd"), user_ca, stack)?;
    let sshd_port = sshd.port.to_string();
    // The gateway checks the target's host key against this pinned key: never trust on
    // first use (a host CA, `--ssh-host-ca`, is the other choice).
    must(&mut api(&[
        "resources",
        "put",
        "web-1",
        "--kind",
        "ssh",
        "--host",
        "127.0.0.1",
        "--port",
        &sshd_port,
        "--protect",
        SSH,
        "--dns-name",
        SSH_NAME,
        "--credential",
        "ssh-certificate",
        "--ssh-principal",
        DEMO_ACCOUNT,
        "--ssh-host-keys",
        &sshd.host_public_key.display().to_string(),
    ]))?;
    must(&mut api(&["grants", "add", "web-1", "--group", "dba"]))?;
    let token = api(&[
        "--output",
        "json",
        "gateways",
        "token",
        "gw-1",
        "--address",
        "127.0.0.1",
    ])
    .output()?;
    if !token.status.success() {
        bail!(
            "lastmile-api gateways token failed: {}",
            String::from_utf8_lossy(&token.stderr)
        );
    }
    let token: serde_json::Value = serde_json::from_slice(&token.stdout)?;
    let token = token
        .get("token")
        .and_then(serde_json::Value::as_str)
        .context("gateways token gave no token")?
        .to_owned();
    eprintln!("    gateway gw-1's one-time enrollment token: {token}");
    let node_token = api(&["--output", "json", "nodes", "token", "demo-node"]).output()?;
    if !node_token.status.success() {
        bail!(
            "lastmile-api nodes token failed: {}",
            String::from_utf8_lossy(&node_token.stderr)
        );
    }
    let node_token: serde_json::Value = serde_json::from_slice(&node_token.stdout)?;
    let node_token = node_token
        .get("token")
        .and_then(serde_json::Value::as_str)
        .context("nodes token gave no token")?
        .to_owned();
    must(&mut api(&["--output", "json", "resources", "list"]))?;
    gateway_and_node(bin, dir, &ca, (&token, &node_token), &audit, stack)?;
    step(&format!(
        "alice (Linux account `{DEMO_ACCOUNT}`): `lastmile login` (one-time password, then her own; a device key made here; her agent starts; known_hosts trusts the host CA), `resources`"
    ));
    let home = account.home.clone();
    // `lastmile`'s default state directory for her: ~/.config/lastmile.
    let lastmile_home = home.join(".config/lastmile");
    // What an admin hands a user: the copy of the organisation's CA certificate (public)
    // that `lastmile-api init` wrote next to its config.
    let org_ca = dir.join("org-ca.pem");
    let as_alice = |program: &Path| {
        let mut c = Command::new(program);
        c.env("HOME", &home)
            .env("USER", DEMO_ACCOUNT)
            .env("LOGNAME", DEMO_ACCOUNT)
            .uid(account.uid)
            .gid(account.uid);
        c
    };
    let user = |args: &[&str]| {
        let mut c = as_alice(&bin.join("lastmile"));
        c.args(args);
        c
    };
    {
        use std::io::Write as _;
        let mut child = user(&["login", "--api", "https://localhost:18443", "--ca"])
            .arg(&org_ca)
            .args(["--user", "alice", "--password-stdin"])
            .stdin(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(format!("{alice_otp}\nalice's own passphrase\n").as_bytes())?;
        if !child.wait()?.success() {
            bail!("lastmile login failed");
        }
    }
    must(&mut user(&["resources"]))?;
    let upstream = metrics_server()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(lastmile_home.join("agent.json"))
        .unwrap_or_default()
        .contains("registered for uid")
    {
        if Instant::now() > deadline {
            bail!(
                "alice's agent did not register with the node: {}",
                std::fs::read_to_string(lastmile_home.join("agent.log")).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    step(&format!(
        "alice's process connects to {TCP}: kernel redirect → node → her agent → TLS 1.3 tunnel → gateway → the server"
    ));
    let out = as_alice(&bin.join("lastmiled"))
        .args(["probe", TCP, "--send", "GET /metrics"])
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("    {}", report.trim());
    if !report.contains("metrics for alice's GET /metrics") {
        bail!(
            "the connection did not come through the tunnel: {report}{}\nagent: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(lastmile_home.join("agent.log")).unwrap_or_default()
        );
    }
    drop(upstream);
    step(&format!(
        "alice's psql connects to {POSTGRES} (orders-db) with no password: the gateway logs in to PostgreSQL as `orders` with the vault's password and logs each statement"
    ));
    let (_, pg_port) = POSTGRES.split_once(':').context("POSTGRES is HOST:PORT")?;
    let out = as_alice(&pg_bin.join("psql"))
        .args([
            "-h", PG_NAME, "-p", pg_port, "-U", "alice", "-d", "orders", "-w", "-X",
        ])
        .args([
            "-c",
            "create table if not exists notes (note text, written_by text default current_user)",
            "-c",
            "insert into notes (note) values ('hello from alice')",
            "-c",
            "select note, written_by, current_user as logged_in_as from notes",
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .output()
        .context("running psql")?;
    let said = String::from_utf8_lossy(&out.stdout);
    for line in said.lines() {
        eprintln!("    {line}");
    }
    if !out.status.success() || !said.contains("hello from alice") {
        bail!(
            "psql did not get through: {}{}\nagent: {}",
            said,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(lastmile_home.join("agent.log")).unwrap_or_default()
        );
    }
    step(&format!(
        "alice's plain `ssh {SSH_NAME}`: no key of her own, no host-key prompt; the gateway logs in to sshd with a 5-minute certificate"
    ));
    let out = as_alice(Path::new("ssh"))
        .args(["-o", "BatchMode=yes", SSH_NAME])
        .arg("echo \"hello from $(id -un) on the target\"; exit 3")
        .stdin(Stdio::null())
        .output()
        .context("running ssh")?;
    let said = String::from_utf8_lossy(&out.stdout);
    for line in said.lines() {
        eprintln!("    {line}");
    }
    eprintln!("    (exit status {:?}, the target's)", out.status.code());
    if out.status.code() != Some(3) || !said.contains(&format!("hello from {DEMO_ACCOUNT}")) {
        bail!(
            "ssh did not get through: {}{}\nsshd: {}\nagent: {}",
            said,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("sshd/sshd.log")).unwrap_or_default(),
            std::fs::read_to_string(lastmile_home.join("agent.log")).unwrap_or_default()
        );
    }
    step("an interactive `ssh -tt` session: recorded by the gateway as asciicast v2");
    let out = as_alice(Path::new("ssh"))
        .args(["-tt", "-o", "BatchMode=yes", SSH_NAME])
        .arg("echo this terminal session is recorded")
        .stdin(Stdio::null())
        .output()
        .context("running ssh -tt")?;
    eprintln!("    {}", String::from_utf8_lossy(&out.stdout).trim());
    let recordings = dir.join("gateway-state/recordings");
    thread::sleep(Duration::from_millis(500));
    step("`lastmile recordings list`, and `recordings verify` against the gateway's events");
    must(
        Command::new(bin.join("lastmile"))
            .args(["recordings", "list", "--dir"])
            .arg(&recordings),
    )?;
    must(
        Command::new(bin.join("lastmile"))
            .args(["recordings", "verify", "--dir"])
            .arg(&recordings)
            .arg("--events")
            .arg(dir.join("gateway-events.jsonl")),
    )?;
    step("`lastmile status`: the session, the agent, the node, the gateway");
    thread::sleep(Duration::from_millis(300));
    must(&mut user(&["status"]))?;
    step("the gateway's record of the connection, and the API's");
    thread::sleep(Duration::from_millis(200));
    for line in std::fs::read_to_string(dir.join("gateway-events.jsonl"))
        .unwrap_or_default()
        .lines()
    {
        eprintln!("    {line}");
    }
    for line in std::fs::read_to_string(data.join("audit.jsonl"))?
        .lines()
        .filter(|l| l.contains("connection.open"))
    {
        eprintln!("    {line}");
    }
    step(
        "the security team's view: `lastmile audit trace` of alice's psql connection, from the kernel's connect to the close",
    );
    // The connection is found by its last statement; its socket cookie joins the kernel's
    // event, the node's hand-off, the API's authorization and the gateway's events.
    let cookie = std::fs::read_to_string(dir.join("gateway-events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e.get("kind").and_then(serde_json::Value::as_str) == Some("db.query")
                && e.get("query")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|q| q.starts_with("select note"))
        })
        .find_map(|e| e.get("sock_cookie").and_then(serde_json::Value::as_u64))
        .context("no db.query of alice's psql in the gateway's events")?;
    // From the audit service alone: the node's, the gateway's and the API's events all
    // went there, each under its enrolled identity. The close is written when psql has
    // gone; wait for it to reach the log.
    let reader = audit.reader(&api)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut trace = Command::new(bin.join("lastmile"));
        trace.args(["audit", "trace", "--sock-cookie", &cookie.to_string()]);
        let out = audit.as_reader(&mut trace, &reader).output()?;
        let said = String::from_utf8_lossy(&out.stdout);
        if out.status.success()
            && said.contains("kernel.connect")
            && said.contains("connection.close")
        {
            for line in said.lines() {
                eprintln!("    {line}");
            }
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the trace from the audit service is incomplete: {said}{}\naudit service: {}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(300));
    }
    audit.verify(bin, &reader)?;
    step(
        "an unsigned call to a signed endpoint, and a malformed login: each refused with its reason",
    );
    must(&mut curl("/v1/me"))?;
    eprintln!();
    must(curl("/v1/login").args(["-d", "{\"user\": 7}"]))?;
    eprintln!();
    step("the API's audit trail (every admin change)");
    let trail = std::fs::read_to_string(data.join("audit.jsonl"))?;
    for line in trail.lines() {
        eprintln!("    {line}");
    }
    Ok(())
}

/// Enrolls gateway gw-1, starts it, and starts the node again, now taking its protected
/// targets from the API (as gw-1's identity).
fn gateway_and_node(
    bin: &Path,
    dir: &Path,
    ca: &Path,
    (token, node_token): (&str, &str),
    audit: &super::service::AuditService,
    stack: &mut Stack,
) -> anyhow::Result<()> {
    let config = dir.join("lastmiled-api.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nurl = \"https://localhost:18443\"\nstate_dir = {:?}\n\n\
             [gateway]\nlisten = \"127.0.0.1:15443\"\nevents = {:?}\n\n{}\n\
             [node]\nevents = {:?}\nresources_from_api = true\nresource_refresh = \"1s\"\n\n{}",
            dir.join("gateway-state"),
            dir.join("gateway-events.jsonl"),
            audit.section("gateway"),
            dir.join("node-events.jsonl"),
            audit.section("node"),
        ),
    )?;
    let lastmiled = bin.join("lastmiled");
    step(
        "`lastmiled gateway enroll` with the token, then `lastmiled gateway run` on 127.0.0.1:15443",
    );
    must(
        Command::new(&lastmiled)
            .args(["gateway", "enroll", "--config"])
            .arg(&config)
            .args(["--token", token, "--ca"])
            .arg(ca),
    )?;
    stack.spawn(
        "lastmiled gateway run",
        Command::new(&lastmiled)
            .args(["gateway", "run", "--config"])
            .arg(&config),
        &dir.join("gateway.log"),
    )?;
    step(
        "`lastmiled node enroll` with a node token: the node's certificate (urn:lastmile:node:demo-node), its identity with the audit service",
    );
    must(
        Command::new(&lastmiled)
            .args(["node", "enroll", "--config"])
            .arg(&config)
            .args(["--token", node_token, "--ca"])
            .arg(ca),
    )?;
    step("`lastmiled node run` again, its protected targets now from the API's resources");
    let socket = Path::new("/run/lastmile/node.sock");
    let _ = std::fs::remove_file(socket);
    stack.node(&config)?;
    stack.spawn(
        "lastmiled node run",
        Command::new(&lastmiled)
            .args(["node", "run", "--config"])
            .arg(&config),
        &dir.join("node.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("lastmiled node did not come up within 15 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    // The first refresh from the API.
    thread::sleep(Duration::from_millis(1500));
    Ok(())
}

/// The one-time password in `lastmile-api --output json users add`'s answer.
fn one_time_password(json: &str) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(json).context("users add did not answer JSON")?;
    v.get("one_time_password")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .context("users add gave no one-time password")
}
