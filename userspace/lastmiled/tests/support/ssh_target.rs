//! A real sshd on loopback, set up as the README tells an ops team to set one up (it trusts
//! the organisation's SSH user CA and presents a host certificate from its SSH host CA),
//! an `ssh` resource for it, and OpenSSH clients as a lastmile user runs them. Shared by
//! `tests/ssh.rs` and `benches/ssh.rs`; the including crate declares `mod stack`.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use lastmile_proto::wire::{CredentialKind, NewGrant, Resource, ResourceKind, Subject};

use crate::stack::{self, Stack};

pub fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: sshd needs root");
    }
    if !Path::new("/usr/sbin/sshd").exists() || Command::new("ssh").arg("-V").output().is_err() {
        return Some("OpenSSH is not installed (apt-get install openssh-server openssh-client)");
    }
    None
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub struct Sshd {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// Connections sshd has seen so far.
    pub fn connections(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Connection from")
            .count()
    }
}

/// A real sshd on 127.0.0.1 trusting the organisation's SSH user CA for root (through
/// AuthorizedPrincipalsFile), presenting a host certificate from its SSH host CA for
/// 127.0.0.1: what the README tells an ops team to set up.
pub fn sshd(stack: &Stack, dir: &Path) -> Sshd {
    let bundle = stack.app.pki.bundle();
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "target", "-f"])
        .arg(dir.join("host_key")));
    let public = ssh_key::PublicKey::read_openssh_file(&dir.join("host_key.pub")).unwrap();
    let certificate = stack
        .app
        .pki
        .ssh_host_certificate(
            &public,
            &["127.0.0.1".to_owned()],
            "test target",
            lastmile_api_client::now() + 3600,
        )
        .unwrap();
    std::fs::write(dir.join("host_key-cert.pub"), certificate).unwrap();
    std::fs::write(dir.join("user_ca.pub"), format!("{}\n", bundle.ssh_user_ca)).unwrap();
    std::fs::create_dir_all(dir.join("principals")).unwrap();
    std::fs::write(dir.join("principals/root"), "root\n").unwrap();
    let port = free_port();
    let d = dir.display();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nHostCertificate {d}/host_key-cert.pub\n\
             TrustedUserCAKeys {d}/user_ca.pub\nAuthorizedPrincipalsFile {d}/principals/%u\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPidFile none\n\
             Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let log = dir.join("sshd.log");
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sshd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Sshd { child, log, port }
}

pub async fn ssh_resource(
    stack: &Stack,
    name: &str,
    sshd_port: u16,
    protect_port: u16,
    pinned: Vec<String>,
    users: &[&str],
) {
    lastmile_api::admin::put_resource(
        &stack.app,
        "test",
        Resource {
            name: name.into(),
            kind: ResourceKind::Ssh,
            host: "127.0.0.1".into(),
            port: sshd_port,
            protect: vec![format!("127.0.0.1:{protect_port}")],
            upstream_tls: None,
            credential: Some(CredentialKind::SshCertificate),
            ssh_principals: vec!["root".into()],
            database_user: None,
            databases: vec![],
            upstream_ca: None,
            ssh_host_ca: vec![],
            ssh_host_keys: pinned,
            ssh_allow_port_forwarding: false,
            names: vec![],
        },
    )
    .await
    .unwrap();
    for u in users {
        lastmile_api::admin::add_grant(
            &stack.app,
            "test",
            NewGrant {
                resource: name.into(),
                subject: Subject::User((*u).into()),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    }
}

/// `tool` as the user runs it: no config, no agent, no key of their own, and only the
/// known_hosts file `lastmile login` wrote in their (test) home.
pub fn client(tool: &str, home: &Path) -> Command {
    let mut cmd = Command::new(tool);
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentityAgent=none",
    ])
    .args([
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
    ])
    .arg("-o")
    .arg(format!(
        "UserKnownHostsFile={}",
        home.join(".ssh/known_hosts").display()
    ))
    .args(["-o", "ConnectTimeout=10"])
    .env("HOME", home)
    .stdin(Stdio::null());
    cmd
}

/// Makes user `name`; `login` logs them in from their (test) home.
pub async fn new_user(stack: &Stack, name: &str) -> impl AsyncFnOnce() -> PathBuf {
    let otp = lastmile_api::admin::add_user(
        &stack.app,
        "test",
        lastmile_proto::wire::NewUser {
            name: name.into(),
            admin: false,
            groups: vec![],
        },
    )
    .await
    .unwrap();
    let home = stack.dir.path().join(format!("home-{name}"));
    let name = name.to_owned();
    async move || {
        stack
            .login(
                &home,
                &name,
                &format!("{}\n{}\n", otp.one_time_password, stack::PASSWORD),
            )
            .await;
        home
    }
}
