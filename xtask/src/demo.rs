//! `cargo xtask demo`: lastmile's main job on one machine: the node and the hand-off, the
//! audit log, the control plane and vault, a connection carried through an agent's tunnel
//! and a gateway, and the real `psql` reaching a real PostgreSQL through them, the gateway
//! logging in with the vault's password, which the user never sees.
//!
//! It runs `lastmiled node` on its embedded defaults (every process on the host, pins
//! under /sys/fs/bpf/lastmile, agents on /run/lastmile/node.sock) with three protected
//! loopback targets, then shows what a user and a security team see. Nothing listens on
//! the protected addresses, so a connection that were not intercepted would be refused,
//! never sent anywhere.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

mod audit;
mod control_plane;
mod service;
mod stack;
mod targets;

use self::{audit::audit, control_plane::control_plane};
use crate::exec::{cargo, must, step, workspace_root};

const POSTGRES: &str = "127.0.0.2:15432";
/// Port 22, so the user types a plain `ssh web.demo.internal`.
const SSH: &str = "127.0.0.3:22";
/// The names users dial, in /etc/hosts for the demo (`--stop` removes them), and the
/// resources' DNS names, so the gateway's SSH host certificate names them too.
const PG_NAME: &str = "db.demo.internal";
const SSH_NAME: &str = "web.demo.internal";
const TCP: &str = "127.0.0.2:17000";
const TCP_HOST: &str = "127.0.0.2";
const TCP_PORT: &str = "17000";
/// The first part's user: `nobody`, so that what it sees is what any unprivileged user sees.
const USER: u32 = 65534;
/// The control-plane part's end user (alice's Linux account, made for the demo and removed
/// after it): `ssh` and `psql` read `~/.ssh` and `~/.pgpass` from the account's home,
/// which `nobody` does not have. It is also the account alice logs in as on the ssh target.
const DEMO_ACCOUNT: &str = "lastmile-demo";

/// `cargo xtask demo --stop`: removes what a demo left running.
pub fn stop() -> anyhow::Result<()> {
    if !crate::exec::is_root() {
        bail!(
            "stopping the demo removes its account and eBPF pins: run `sudo cargo xtask demo --stop`"
        );
    }
    step(&format!("stop the demo stack under {}", stack::STATE_DIR));
    stack::stop()
}

/// A child stopped with SIGTERM (then SIGKILL) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run() -> anyhow::Result<()> {
    if !crate::exec::is_root() {
        bail!("the demo loads eBPF programs and needs root: run `sudo cargo xtask demo`");
    }
    crate::setup::run()?;
    step(
        "build lastmiled (with its eBPF programs), the API, the audit service, the client and the example agent",
    );
    // One invocation, so every crate is compiled with one feature set (two, with different
    // package sets, compiled a dozen crates twice).
    must(cargo().args([
        "build",
        "--release",
        "-p",
        "lastmiled",
        "-p",
        "lastmile-audit",
        "-p",
        "lastmile",
        "-p",
        "lastmile-api",
        "--bins",
        "--example",
        "echo_agent",
    ]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    step(&format!(
        "a lasting stack under {} (an earlier demo's is stopped first)",
        stack::STATE_DIR
    ));
    let mut lasting = stack::Stack::fresh()?;
    let dir = PathBuf::from(stack::STATE_DIR);
    // The binaries the stack runs, copied so that it (and `--stop`) outlives a rebuild or
    // a `cargo clean`; readable by alice, whose agent runs `lastmile`.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for name in ["lastmiled", "lastmile-audit", "lastmile", "lastmile-api"] {
        std::fs::copy(target_dir.join("release").join(name), bin.join(name))
            .with_context(|| format!("copying {name} to {}", bin.display()))?;
    }
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let lastmiled = bin.join("lastmiled");
    let agent = target_dir.join("release/examples/echo_agent");
    let config = dir.join("lastmiled.toml");
    let events = dir.join("events.jsonl");
    std::fs::write(
        &config,
        format!(
            "[node]\nevents = {events:?}\n\n\
             [[node.targets]]\nname = \"orders-db\"\nkind = \"postgres\"\nprotect = [\"{POSTGRES}\"]\n\n\
             [[node.targets]]\nname = \"web-1\"\nkind = \"ssh\"\nprotect = [\"{SSH}\"]\n\n\
             [[node.targets]]\nname = \"metrics\"\nkind = \"tcp\"\nprotect = [\"{TCP}\"]\n"
        ),
    )
    .context("writing the demo config")?;
    lasting.node(&config)?;
    let result = demo(&lastmiled, &agent, &config, &events)
        .and_then(|()| audit(&bin, &dir, &events))
        .and_then(|()| control_plane(&bin, &dir, &mut lasting));
    if let Err(e) = result {
        step("the demo failed: the end of each service's log, then removing what it set up");
        for name in ["audit", "api", "gateway", "node"] {
            let log = dir.join(format!("{name}.log"));
            if let Ok(text) = std::fs::read_to_string(&log) {
                eprintln!("--- {}", log.display());
                let lines: Vec<&str> = text.lines().collect();
                for line in lines.iter().skip(lines.len().saturating_sub(15)) {
                    eprintln!("    {line}");
                }
            }
        }
        let _ = stack::stop();
        return Err(e);
    }
    let (_, pg_port) = POSTGRES.split_once(':').context("POSTGRES is HOST:PORT")?;
    let d = dir.display();
    eprintln!(
        "\nThe stack keeps running under {d}: the API, the gateway, the node, a PostgreSQL\n\
         and an sshd, and alice ({DEMO_ACCOUNT}) logged in with her agent. By hand, as her:\n\
         \n  runuser -l {DEMO_ACCOUNT} -c 'psql -h {PG_NAME} -p {pg_port} -U alice -d orders'   # no password asked\n\
         \x20 runuser -l {DEMO_ACCOUNT} -c 'ssh {SSH_NAME}'          # no key of hers, no host-key prompt\n\
         \x20 runuser -l {DEMO_ACCOUNT} -c '{d}/bin/lastmile status'\n\
         \nWhat the security team reads: the audit service's log (every event of the API, the\n\
         gateway and the node), as the reader `security`:\n\
         \n  {d}/bin/lastmile audit tail -n 20 --url https://localhost:17443 --ca {d}/audit-service/tls/ca.pem \\\n\
         \x20     --cert {d}/audit-service/reader/security.pem --key {d}/audit-service/reader/security.key\n\
         \x20 {d}/bin/lastmile audit search --text orders --url … (the same --ca, --cert, --key)\n\
         \x20 {d}/bin/lastmile audit verify --key \"$(cat {d}/audit-service/verifier)\" --witness {d}/audit-service/witness \\\n\
         \x20     --data-dir {d}/audit-service/data\n\
         \nand the components' own copies: {d}/node-events.jsonl, {d}/gateway-events.jsonl,\n\
         {d}/api/audit.jsonl, {d}/gateway-state/recordings (ssh sessions, asciicast v2);\n\
         logs: {d}/{{api,gateway,node,audit}}.log, {d}/sshd/sshd.log.\n\
         \nStop it, leaving nothing behind: cargo xtask demo --stop"
    );
    Ok(())
}

fn demo(lastmiled: &Path, agent: &Path, config: &Path, events: &Path) -> anyhow::Result<()> {
    step(&format!(
        "start `lastmiled node run`: protect {POSTGRES} (postgres), {SSH} (ssh), {TCP} (tcp)"
    ));
    let socket = Path::new("/run/lastmile/node.sock");
    let _ = std::fs::remove_file(socket);
    let node = Running(
        Command::new(lastmiled)
            .args(["node", "run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .spawn()
            .context("starting lastmiled node")?,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("lastmiled did not come up within 15 s");
        }
        thread::sleep(Duration::from_millis(50));
    }

    step(&format!(
        "user `nobody` runs psql against {POSTGRES} without a lastmile session"
    ));
    let (host, port) = POSTGRES.split_once(':').context("address")?;
    let out = Command::new("psql")
        .args([
            "-h", host, "-p", port, "-U", "alice", "-d", "orders", "-w", "-c", "select 1",
        ])
        .env("PGCONNECT_TIMEOUT", "5")
        .uid(USER)
        .gid(USER)
        .output()
        .context("running psql")?;
    eprintln!("    {}", String::from_utf8_lossy(&out.stderr).trim());

    step("user `nobody` starts an agent (the example echo agent) and connects again");
    let agent = Running(
        Command::new(agent)
            .arg(socket)
            .uid(USER)
            .gid(USER)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the example agent")?,
    );
    thread::sleep(Duration::from_millis(300));
    let out = Command::new(lastmiled)
        .args(["probe", TCP, "--send", "hello"])
        .uid(USER)
        .gid(USER)
        .output()?;
    eprintln!("    {}", String::from_utf8_lossy(&out.stdout).trim());
    let report = String::from_utf8_lossy(&out.stdout);
    if !report.contains("agent-65534: hello") || !report.contains(&format!("\"peer\":\"{TCP}\"")) {
        bail!(
            "the connection to {TCP} did not reach nobody's agent: {report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("    (the kernel redirected it, lastmiled handed the socket to nobody's agent,");
    eprintln!("     and the application still sees {TCP} as its peer)");
    drop(agent);

    step("`lastmiled node status`");
    must(
        Command::new(lastmiled)
            .args(["node", "status", "--config"])
            .arg(config),
    )?;

    step(&format!(
        "what the security team reads ({})",
        events.display()
    ));
    thread::sleep(Duration::from_millis(200));
    for line in std::fs::read_to_string(events).unwrap_or_default().lines() {
        eprintln!("    {line}");
    }
    drop(node);
    Ok(())
}
