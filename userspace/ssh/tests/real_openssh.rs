//! The bridge between the real OpenSSH client and a real sshd, both on loopback.
//!
//! Each test starts its own sshd (trusting a throwaway SSH user CA, presenting a host
//! certificate from a throwaway host CA) and a bridge on a loopback listener, then runs
//! `ssh`, `scp` or `sftp` against the bridge. Needs root (sshd) and OpenSSH installed;
//! otherwise it says SKIPPED and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lastmile_ssh::bridge::{
    self, GatewaySession, HostIdentity, HostTrust, SshResource, UpstreamLogin,
};
use lastmile_ssh::events::{ConnectionId, EventSink, SshEvent};
use lastmile_ssh::policy::ChannelPolicy;
use lastmile_ssh::recording::{LocalDirStore, cast};
use lastmile_ssh::sftp_log::SftpOp;
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Collected(Mutex<Vec<SshEvent>>);

impl EventSink for Collected {
    fn event(&self, event: SshEvent) {
        if let Ok(mut all) = self.0.lock() {
            all.push(event);
        }
    }
}

impl Collected {
    fn all(&self) -> Vec<SshEvent> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    bridge_port: u16,
    sshd_port: u16,
    user: String,
    events: Arc<Collected>,
    _sshd: Sshd,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(path));
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn skip_reason() -> Option<&'static str> {
    if !nix_is_root() {
        return Some("not root: sshd needs root");
    }
    if !Path::new("/usr/sbin/sshd").exists() || Command::new("ssh").arg("-V").output().is_err() {
        return Some("OpenSSH is not installed (apt-get install openssh-server openssh-client)");
    }
    None
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

async fn fixture(policy: ChannelPolicy) -> Option<Fixture> {
    fixture_with_revocation(policy, Arc::new(tokio::sync::Notify::new())).await
}

async fn fixture_with_revocation(
    policy: ChannelPolicy,
    revoke: Arc<tokio::sync::Notify>,
) -> Option<Fixture> {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED: {reason}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let user = String::from_utf8_lossy(&run(&mut Command::new("whoami")).stdout)
        .trim()
        .to_owned();
    for name in ["user_ca", "host_ca", "target_host", "gateway_host", "conn"] {
        keygen(&d.join(name));
    }
    // The target's host certificate, and the gateway's, both from the host CA.
    for (key, id) in [("target_host", "target"), ("gateway_host", "gateway")] {
        run(Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(d.join("host_ca"))
            .args(["-I", id, "-h", "-n", "127.0.0.1", "-V", "-5m:+1h"])
            .arg(d.join(format!("{key}.pub"))));
    }
    // What the API would sign: a 5-minute user certificate for the per-connection key.
    run(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(d.join("user_ca"))
        .args(["-I", "lastmile-test", "-n", &user, "-V", "-1m:+5m"])
        .arg(d.join("conn.pub")));

    let sshd_port = free_port();
    let config = format!(
        "Port {sshd_port}\nListenAddress 127.0.0.1\nHostKey {d}/target_host\n\
         HostCertificate {d}/target_host-cert.pub\nTrustedUserCAKeys {d}/user_ca.pub\n\
         AuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPidFile none\n\
         Subsystem sftp internal-sftp\nAllowTcpForwarding yes\nLogLevel VERBOSE\n\
         MaxSessions 200\n",
        d = d.display()
    );
    std::fs::write(d.join("sshd_config"), config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("{e}"));
    let sshd = Sshd(
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap_or_else(|e| panic!("{e}")))
            .spawn()
            .unwrap_or_else(|e| panic!("sshd: {e}")),
    );
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", sshd_port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let load = |name: &str| {
        russh::keys::load_secret_key(d.join(name), None).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let cert = |name: &str| {
        russh::keys::load_openssh_certificate(d.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let host = HostIdentity {
        key: load("gateway_host"),
        certificate: Some(cert("gateway_host-cert.pub")),
    };
    let host_ca = russh::keys::ssh_key::PublicKey::read_openssh_file(d.join("host_ca.pub"))
        .unwrap_or_else(|e| panic!("{e}"));
    let events = Arc::new(Collected::default());
    std::fs::create_dir(d.join("recordings")).unwrap_or_else(|e| panic!("{e}"));
    let session = GatewaySession {
        connection: ConnectionId::from("conn"),
        resource: SshResource {
            name: "web-1".to_owned(),
            ssh_principals: vec![user.clone()],
            policy,
            host_trust: HostTrust::CertificateAuthority {
                authorities: vec![host_ca.clone()],
                host_name: "127.0.0.1".to_owned(),
            },
        },
        login: UpstreamLogin {
            key: Arc::new(load("conn")),
            certificate: Some(cert("conn-cert.pub")),
        },
        recordings: Some(Arc::new(LocalDirStore::new(d.join("recordings")))),
        events: events.clone(),
    };

    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bridge_port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let accept = tokio::spawn(async move {
        let mut n = 0;
        while let Ok((user_stream, _)) = listener.accept().await {
            n += 1;
            let Ok(target) = TcpStream::connect(("127.0.0.1", sshd_port)).await else {
                continue;
            };
            let mut session = session.clone();
            session.connection = ConnectionId::from(format!("conn{n}"));
            let host = host.clone();
            let revoke = revoke.clone();
            tokio::spawn(async move {
                let ending = async move {
                    revoke.notified().await;
                    "your session was revoked".to_owned()
                };
                let _ = bridge::serve(user_stream, target, &host, session, ending).await;
            });
        }
    });
    let known_hosts = format!(
        "@cert-authority * {}\n",
        host_ca.to_openssh().unwrap_or_else(|e| panic!("{e}"))
    );
    std::fs::write(d.join("known_hosts"), known_hosts).unwrap_or_else(|e| panic!("{e}"));
    Some(Fixture {
        dir,
        bridge_port,
        sshd_port,
        user,
        events,
        _sshd: sshd,
        accept,
    })
}

impl Fixture {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Our own upstream client, pointed at the bridge: it trusts the same host CA.
    async fn russh_client(&self) -> russh::client::Handle<bridge::upstream::Upstream> {
        let host_ca =
            russh::keys::ssh_key::PublicKey::read_openssh_file(self.path("host_ca.pub")).unwrap();
        let stream = TcpStream::connect(("127.0.0.1", self.bridge_port))
            .await
            .unwrap();
        let principal =
            lastmile_ssh::principal::choose(&self.user, std::slice::from_ref(&self.user)).unwrap();
        let login = UpstreamLogin {
            key: Arc::new(russh::keys::load_secret_key(self.path("conn"), None).unwrap()),
            certificate: None,
        };
        let trust = HostTrust::CertificateAuthority {
            authorities: vec![host_ca],
            host_name: "127.0.0.1".to_owned(),
        };
        bridge::upstream::connect(stream, trust, &principal, &login)
            .await
            .unwrap()
    }

    /// Options every client gets: no config, no agent, trust only the CA line.
    fn client_options(&self, tool: &str) -> Command {
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
            self.path("known_hosts").display()
        ))
        .args(["-o", "ConnectTimeout=10"]);
        cmd
    }

    async fn ssh_async(&self, login: &str, extra: &[&str], command: &str) -> Output {
        let mut cmd = self.client_options("ssh");
        cmd.args(["-p", &self.bridge_port.to_string()])
            .args(extra)
            .arg(format!("{login}@127.0.0.1"))
            .arg(command)
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("ssh: {e}"))
    }

    async fn blocking(&self, mut cmd: Command) -> Output {
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("command: {e}"))
    }

    /// Events arrive from tasks that may still be finishing after the client exits.
    async fn wait_for(&self, what: &str, found: impl Fn(&SshEvent) -> bool) -> Vec<SshEvent> {
        for _ in 0..100 {
            let all = self.events.all();
            if all.iter().any(&found) {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {what} event in {:#?}", self.events.all());
    }
}

/// What `command` prints on `channel`, run to its end.
async fn exec_output(channel: russh::Channel<russh::client::Msg>, command: &str) -> String {
    channel.exec(true, command).await.unwrap();
    let mut out = Vec::new();
    let mut reader = channel.into_stream();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut out)
        .await
        .unwrap();
    text(&out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_prints_and_exits_with_the_targets_status() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let out = fx.ssh_async(&fx.user, &[], "echo hi; exit 3").await;
    assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let events = fx
        .wait_for("session closed", |e| {
            matches!(e, SshEvent::SessionClosed { .. })
        })
        .await;
    assert!(events.iter().any(|e| matches!(e,
        SshEvent::Exec { command, .. } if command.text == "echo hi; exit 3")));
    assert!(
        events.iter().any(|e| matches!(e,
        SshEvent::SessionClosed { exit_status: Some(3), principal: Some(p), .. } if *p == fx.user))
    );
    let _ = fx.sshd_port;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_the_resource_does_not_allow_is_refused_with_the_allowed_ones() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let out = fx.ssh_async("nobody-here", &[], "id").await;
    assert_eq!(out.status.code(), Some(255));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is not a login allowed on this resource") && stderr.contains(&fx.user),
        "{stderr}"
    );
    fx.wait_for(
        "refusal",
        |e| matches!(e, SshEvent::Refused { what, .. } if what.contains("nobody-here")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forwarding_is_refused_unless_the_resource_allows_it() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    // `-W` opens a direct-tcpip channel, as `-J` through this host would.
    let target = format!("127.0.0.1:{}", fx.sshd_port);
    let out = fx.ssh_async(&fx.user, &["-W", &target], "").await;
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("administratively prohibited"),
        "{}",
        text(&out.stderr)
    );
    fx.wait_for(
        "refusal",
        |e| matches!(e, SshEvent::Refused { what, .. } if what.contains("direct-tcpip")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_both_ways_in_sftp_mode_and_legacy_mode() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(fx.path("local.bin"), &payload).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(fx.path("remote")).unwrap_or_else(|e| panic!("{e}"));
    for (mode, name) in [(None, "up.bin"), (Some("-O"), "legacy.bin")] {
        let remote = format!(
            "{}@127.0.0.1:{}",
            fx.user,
            fx.path("remote").join(name).display()
        );
        let mut up = fx.client_options("scp");
        up.args(["-P", &fx.bridge_port.to_string()])
            .args(mode)
            .arg(fx.path("local.bin"))
            .arg(&remote);
        let out = fx.blocking(up).await;
        assert!(
            out.status.success(),
            "scp {mode:?} up: {}",
            text(&out.stderr)
        );
        let back = fx.path(&format!("back-{name}"));
        let mut down = fx.client_options("scp");
        down.args(["-P", &fx.bridge_port.to_string()])
            .args(mode)
            .arg(&remote)
            .arg(&back);
        let out = fx.blocking(down).await;
        assert!(
            out.status.success(),
            "scp {mode:?} down: {}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&back).unwrap_or_default(),
            payload,
            "{mode:?}"
        );
    }
    let uploaded = fx.path("remote").join("up.bin").display().to_string();
    let events = fx
        .wait_for("sftp upload", |e| {
            matches!(e,
            SshEvent::Sftp { op: SftpOp::Transfer { path, bytes_written, .. }, .. }
                if *path == uploaded && *bytes_written == 300_000)
        })
        .await;
    assert!(
        events.iter().any(|e| matches!(e,
        SshEvent::Exec { command, .. } if command.scp.is_some())),
        "legacy scp is an scp exec"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_batch_put_get_ls() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    std::fs::write(fx.path("a.txt"), b"alpha\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir(fx.path("srv")).unwrap_or_else(|e| panic!("{e}"));
    let batch = format!(
        "put {a} {srv}/a.txt\nls {srv}\nget {srv}/a.txt {b}\nmkdir {srv}/sub\nrename {srv}/a.txt {srv}/sub/c.txt\n",
        a = fx.path("a.txt").display(),
        srv = fx.path("srv").display(),
        b = fx.path("b.txt").display()
    );
    std::fs::write(fx.path("batch"), batch).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = fx.client_options("sftp");
    cmd.args(["-P", &fx.bridge_port.to_string(), "-b"])
        .arg(fx.path("batch"))
        .arg(format!("{}@127.0.0.1", fx.user));
    let out = fx.blocking(cmd).await;
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("a.txt"),
        "ls output: {}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read(fx.path("b.txt")).unwrap_or_default(),
        b"alpha\n"
    );
    assert!(fx.path("srv/sub/c.txt").exists());
    fx.wait_for("sftp rename", |e| {
        matches!(e,
        SshEvent::Sftp { op: SftpOp::Rename { to, .. }, .. } if to.ends_with("sub/c.txt"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_session_is_recorded_as_asciicast() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let out = fx
        .ssh_async(&fx.user, &["-tt"], "echo recorded-$((40+2))")
        .await;
    assert!(
        text(&out.stdout).contains("recorded-42"),
        "{}",
        text(&out.stderr)
    );
    let events = fx
        .wait_for("recording", |e| {
            matches!(e, SshEvent::RecordingFinished { .. })
        })
        .await;
    let Some(SshEvent::RecordingFinished { recording, .. }) = events
        .iter()
        .find(|e| matches!(e, SshEvent::RecordingFinished { .. }))
    else {
        unreachable!()
    };
    let bytes = std::fs::read(&recording.location).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bytes.len() as u64, recording.size);
    let cast = cast::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(cast.events.iter().any(|e| e.data.contains("recorded-42")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_hops_offer_strict_key_exchange() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let out = fx.ssh_async(&fx.user, &["-vvv"], "true").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    // The gateway's KEXINIT as the client logs it (OpenSSH 9.2 with the Terrapin fix).
    let server_kex = stderr
        .lines()
        .skip_while(|l| !l.contains("peer server KEXINIT proposal"))
        .find(|l| l.contains("KEX algorithms"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        server_kex.contains("kex-strict-s-v00@openssh.com"),
        "{server_kex}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_cuts_a_running_session_within_a_second_and_says_why() {
    let revoke = Arc::new(tokio::sync::Notify::new());
    let Some(fx) = fixture_with_revocation(ChannelPolicy::default(), revoke.clone()).await else {
        return;
    };
    let running = {
        let mut cmd = fx.client_options("ssh");
        cmd.args(["-p", &fx.bridge_port.to_string()])
            .arg(format!("{}@127.0.0.1", fx.user))
            .arg("echo started; sleep 30")
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output())
    };
    fx.wait_for("exec", |e| matches!(e, SshEvent::Exec { .. }))
        .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let revoked_at = std::time::Instant::now();
    revoke.notify_waiters();
    let out = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("ssh still running 5 s after revocation")
        .unwrap()
        .unwrap();
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "started\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("your session was revoked"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_beyond_the_limit_are_refused_and_audited() {
    let policy = ChannelPolicy {
        max_channels: 8,
        ..ChannelPolicy::default()
    };
    let Some(fx) = fixture(policy).await else {
        return;
    };
    let handle = fx.russh_client().await;
    let mut opened = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        match handle.channel_open_session().await {
            Ok(channel) => opened.push(channel),
            Err(_) => refused += 1,
        }
    }
    assert_eq!((opened.len(), refused), (8, 12));
    fx.wait_for(
        "too many channels",
        |e| matches!(e, SshEvent::Refused { reason, .. } if reason.contains("too many channels")),
    )
    .await;
    // The connection itself still works.
    let channel = opened.pop().unwrap();
    assert_eq!(
        exec_output(channel, "echo still-here").await,
        "still-here\n"
    );
}

/// One SSH binary packet in the clear (RFC 4253 section 6, before the first NEWKEYS):
/// length, padding length, payload, at least 4 bytes of padding to a multiple of 8.
fn plain_packet(payload: &[u8]) -> Vec<u8> {
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let length = u32::try_from(1 + payload.len() + padding).unwrap();
    let mut out = length.to_be_bytes().to_vec();
    out.push(u8::try_from(padding).unwrap());
    out.extend_from_slice(payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    out
}

/// A KEXINIT (RFC 4253 section 7.1) that offers strict key exchange as a client.
fn strict_client_kexinit() -> Vec<u8> {
    let mut p = vec![20u8];
    p.extend_from_slice(&[7u8; 16]);
    for list in [
        "curve25519-sha256,kex-strict-c-v00@openssh.com",
        "ssh-ed25519",
        "chacha20-poly1305@openssh.com",
        "chacha20-poly1305@openssh.com",
        "hmac-sha2-256",
        "hmac-sha2-256",
        "none",
        "none",
        "",
        "",
    ] {
        p.extend_from_slice(&u32::try_from(list.len()).unwrap().to_be_bytes());
        p.extend_from_slice(list.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&[0u8; 4]);
    p
}

/// A raw client: sends its version line, reads the gateway's, then sends `bytes`, and
/// returns once the gateway has closed the connection (or panics after 10 s).
async fn raw_client_is_cut_off(port: u16, bytes: &[u8]) {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"SSH-2.0-hostile_0.1\r\n")
        .await
        .unwrap();
    let mut version = String::new();
    stream.read_line(&mut version).await.unwrap();
    assert!(version.starts_with("SSH-2.0-"), "{version:?}");
    stream.get_mut().write_all(bytes).await.unwrap();
    let mut sink = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the gateway kept a hostile connection open");
}

/// Hostile input closes only the connection it came on, with an audit event that
/// says why: a client that offers strict key exchange but sends a message before its
/// KEXINIT (the CVE-2023-48795 prefix), and a packet far over the size limit. Real
/// `ssh` through the same gateway meanwhile works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_closes_only_that_connection_and_is_audited() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let closed_with = |needle: &'static str| {
        move |e: &SshEvent| {
            matches!(e, SshEvent::SessionClosed { reason, .. }
                if reason.starts_with("connection closed: ") && reason.contains(needle))
        }
    };

    // SSH_MSG_IGNORE (2) first, then a KEXINIT offering kex-strict-c: under strict kex
    // the KEXINIT must be the first packet (sequence number 0).
    let mut bytes = plain_packet(&[2, 0, 0, 0, 0]);
    bytes.extend(plain_packet(&strict_client_kexinit()));
    raw_client_is_cut_off(fx.bridge_port, &bytes).await;
    fx.wait_for("strict kex violation", closed_with("strict key exchange"))
        .await;

    // A packet length of 256 MiB (the limit is 256 KiB and some headroom).
    let mut bytes = (256u32 << 20).to_be_bytes().to_vec();
    bytes.extend_from_slice(&[4u8; 60]);
    raw_client_is_cut_off(fx.bridge_port, &bytes).await;
    fx.wait_for("oversized packet", closed_with("packet size"))
        .await;

    let out = fx.ssh_async(&fx.user, &[], "echo unaffected").await;
    assert_eq!(text(&out.stdout), "unaffected\n", "{}", text(&out.stderr));
}

/// A thousand channel opens on one connection: the policy's limit (64 by default) are
/// opened, every other one is refused and audited, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_channels_on_one_connection_are_bounded() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let limit = ChannelPolicy::default().max_channels;
    let handle = fx.russh_client().await;
    let mut opened = Vec::new();
    let mut refused = 0usize;
    for _ in 0..1000 {
        match handle.channel_open_session().await {
            Ok(channel) => opened.push(channel),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(opened.len(), limit);
    assert_eq!(refused, 1000 - opened.len());
    let refusals = fx
        .wait_for("too many channels", |e| {
            matches!(e, SshEvent::Refused { reason, .. } if reason.contains("too many channels"))
        })
        .await;
    assert_eq!(
        refusals
            .iter()
            .filter(
                |e| matches!(e, SshEvent::Refused { reason, .. } if reason.contains("too many channels"))
            )
            .count(),
        1000 - limit,
        "each refusal is audited"
    );
    let channel = opened.pop().unwrap();
    assert_eq!(
        exec_output(channel, "echo still-here").await,
        "still-here\n"
    );
}

/// Requests of types the gateway does not relay are refused, audited, and leave the
/// connection working: a `break` channel request (RFC 4335, real ssh's `~B` escape),
/// an unknown global request, and a session opened after `no-more-sessions@openssh.com`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_unknown_types_are_refused_and_audited() {
    let Some(fx) = fixture(ChannelPolicy::default()).await else {
        return;
    };
    let refused = |needle: &'static str| move |e: &SshEvent| matches!(e, SshEvent::Refused { what, .. } if what.contains(needle));

    // `~B` at the start of a line makes ssh send a "break" channel request (want_reply 0).
    let mut cmd = fx.client_options("ssh");
    cmd.args([
        "-tt",
        "-o",
        "EscapeChar=~",
        "-p",
        &fx.bridge_port.to_string(),
    ])
    .arg(format!("{}@127.0.0.1", fx.user))
    .arg("sleep 2; echo after-break")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("ssh: {e}"));
        let mut stdin = child.stdin.take().unwrap_or_else(|| unreachable!());
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(b"~B").unwrap_or_else(|e| panic!("{e}"));
        std::thread::sleep(Duration::from_millis(500));
        drop(stdin);
        child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text(&out.stdout).contains("after-break"),
        "stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    fx.wait_for("break refused", refused("channel request \"break\""))
        .await;

    let handle = fx.russh_client().await;
    let reply = handle
        .send_global_request("x-unknown@lastmile.invalid", b"", true)
        .await;
    assert!(
        reply.is_err(),
        "an unknown global request is refused: {reply:?}"
    );
    fx.wait_for(
        "global request refused",
        refused("global request \"x-unknown@lastmile.invalid\""),
    )
    .await;

    let channel = handle
        .channel_open_session()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    handle
        .no_more_sessions(false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(handle.channel_open_session().await.is_err());
    fx.wait_for(
        "no more sessions",
        |e| matches!(e, SshEvent::Refused { reason, .. } if reason.contains("no-more-sessions")),
    )
    .await;
    assert_eq!(
        exec_output(channel, "echo still-here").await,
        "still-here\n"
    );
}
