//! What the demo's users reach: a PostgreSQL, a TCP service and an sshd on protected
//! loopback addresses, and alice's Linux account. The PostgreSQL, the sshd and the account
//! outlive the demo (recorded in its stack); the TCP service ends with it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{DEMO_ACCOUNT, TCP, stack::Stack};
use crate::exec::must;

/// A throwaway PostgreSQL (stopped when dropped) with the role `orders` (password
/// `demo-password`, SCRAM) owning a database `orders`: what the orders-db resource logs in
/// to with the password the vault holds.
pub(super) fn orders_database() -> anyhow::Result<lastmile_testkit::PgServer> {
    let pg = lastmile_testkit::PgServer::start().context("starting PostgreSQL")?;
    must(
        Command::new(pg.bin_dir().join("psql"))
            .arg(pg.url())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-c",
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE orders LOGIN PASSWORD 'demo-password'",
                "-c",
                "CREATE DATABASE orders OWNER orders",
            ]),
    )?;
    Ok(pg)
}

/// The `metrics` resource: a server on its protected address that answers one line. Only
/// the gateway's marked connection reaches it; everyone else's connect is redirected.
pub(super) fn metrics_server() -> anyhow::Result<std::thread::JoinHandle<()>> {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind(TCP).with_context(|| format!("binding {TCP}"))?;
    Ok(thread::spawn(move || {
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            if let Ok(n) = conn.read(&mut buf) {
                let asked = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
                let _ = conn.write_all(format!("metrics for alice's {asked}").as_bytes());
            }
        }
    }))
}

/// Alice's Linux account, made for the demo (a home under the demo's directory, `/bin/sh`);
/// `cargo xtask demo --stop` removes it, with any process left under it.
pub(super) struct DemoAccount {
    pub(super) uid: u32,
    pub(super) home: PathBuf,
}

impl DemoAccount {
    pub(super) fn create(dir: &Path) -> anyhow::Result<Self> {
        // A leftover from a demo that was killed.
        Self::remove();
        let home = dir.join("alice-home");
        must(
            Command::new("useradd")
                // Password `*`: none to log in with, but not locked (`!`), which sshd
                // without PAM refuses even for certificate logins.
                .args(["--system", "--user-group", "--password", "*"])
                .args(["--shell", "/bin/sh", "--home-dir"])
                .arg(&home)
                .args(["--create-home", DEMO_ACCOUNT]),
        )?;
        let id = crate::exec::output(Command::new("id").args(["-u", DEMO_ACCOUNT]))
            .context("the demo account has no uid")?;
        let uid = id
            .trim()
            .parse()
            .with_context(|| format!("`id -u {DEMO_ACCOUNT}` said {id:?}"))?;
        Ok(Self { uid, home })
    }

    fn remove() {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", DEMO_ACCOUNT])
            .status();
        let _ = Command::new("userdel")
            .arg(DEMO_ACCOUNT)
            .stderr(Stdio::null())
            .status();
    }
}

/// The ssh target: a real sshd on a free 127.0.0.1 port that trusts the organisation's
/// SSH user CA for the demo account (AuthorizedPrincipalsFile), as the README tells an ops
/// team to set one up. Stopped when dropped.
pub(super) struct TargetSshd {
    pub(super) port: u16,
    pub(super) host_public_key: PathBuf,
}

impl TargetSshd {
    pub(super) fn start(dir: &Path, user_ca: &str, stack: &mut Stack) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("principals"))?;
        let host_key = dir.join("host_key");
        must(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "demo target", "-f"])
                .arg(&host_key),
        )?;
        std::fs::write(dir.join("user_ca.pub"), format!("{user_ca}\n"))?;
        std::fs::write(
            dir.join("principals").join(DEMO_ACCOUNT),
            format!("{DEMO_ACCOUNT}\n"),
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                 TrustedUserCAKeys {d}/user_ca.pub\nAuthorizedPrincipalsFile {d}/principals/%u\n\
                 AuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin no\nPidFile none\n\
                 Subsystem sftp internal-sftp\n"
            ),
        )?;
        std::fs::create_dir_all("/run/sshd")?;
        stack
            .spawn(
                "the target's sshd",
                Command::new("/usr/sbin/sshd")
                    .args(["-D", "-e", "-f"])
                    .arg(dir.join("sshd_config")),
                &dir.join("sshd.log"),
            )
            .context("`cargo xtask setup` installs openssh-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "sshd did not start: {}",
                    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            port,
            host_public_key: host_key.with_extension("pub"),
        })
    }
}
