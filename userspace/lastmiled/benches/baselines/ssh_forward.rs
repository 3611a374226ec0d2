//! The OpenSSH baseline the benches measure lastmile against: a private sshd on loopback
//! (its own host key, config and user key in a temp dir) and one `ssh -N -L` through it.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// `ssh -N -L` forwards to `targets`, through a private sshd; both stopped when dropped.
pub struct SshForward {
    _dir: tempfile::TempDir,
    sshd: Child,
    ssh: Child,
    /// The local end of each forward, in the order of the targets.
    pub local: Vec<SocketAddr>,
}

impl Drop for SshForward {
    fn drop(&mut self) {
        let _ = self.ssh.kill();
        let _ = self.ssh.wait();
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

impl SshForward {
    /// Starts sshd and the forwards; returns once every local end accepts (ssh binds them
    /// only after it has logged in).
    pub fn start(targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host"));
        keygen(&d.join("user"));
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nAllowTcpForwarding yes\nPidFile {}\n",
                d.join("host").display(),
                d.join("authorized_keys").display(),
                d.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd (apt install openssh-server; `cargo xtask setup` does)");
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let local: Vec<SocketAddr> = targets
            .iter()
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let mut ssh = Command::new("ssh");
        ssh.args(["-N", "-p", &port.to_string(), "-i"])
            .arg(d.join("user"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
            ]);
        for (l, t) in local.iter().zip(targets) {
            ssh.args(["-L", &format!("{l}:{t}")]);
        }
        let ssh = ssh
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let fwd = Self {
            _dir: dir,
            sshd,
            ssh,
            local,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for l in &fwd.local {
            while TcpStream::connect(l).is_err() {
                assert!(Instant::now() < deadline, "ssh -L did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        fwd
    }

    /// The `ssh` client's pid.
    pub fn ssh_pid(&self) -> u32 {
        self.ssh.id()
    }

    /// The listening sshd's pid; its session processes are its descendants.
    pub fn sshd_pid(&self) -> u32 {
        self.sshd.id()
    }
}
