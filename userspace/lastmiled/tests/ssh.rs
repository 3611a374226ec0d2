//! The SSH last mile end to end: the real OpenSSH `ssh`, `scp`, `sftp` and `rsync -e ssh`
//! → `lastmile listen` (the agent's core) → mutual TLS → `lastmiled gateway` → a real
//! sshd on loopback that trusts the organisation's SSH user CA and presents a host certificate from its SSH host
//! CA. The user's `ssh` trusts only the known_hosts line `lastmile login` wrote. Needs
//! root (sshd) and OpenSSH; otherwise it says SKIPPED and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/ssh_target.rs"]
#[allow(dead_code)]
mod ssh_target;
#[path = "support/stack.rs"]
#[allow(dead_code)]
mod stack;
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use lastmile_proto::wire::{CredentialKind, NewGrant, Subject};
use ssh_target::{client, free_port, new_user, run, skip_reason, ssh_resource, sshd};
use stack::{Listen, Stack};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn ssh(home: &Path, port: u16, login: &str, command: &str) -> Command {
    let mut cmd = client("ssh", home);
    cmd.args(["-p", &port.to_string()])
        .arg(format!("{login}@127.0.0.1"))
        .arg(command);
    cmd
}

fn session_of(home: &Path) -> String {
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("session.json")).unwrap()).unwrap();
    saved["login"]["session"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_scp_sftp_and_rsync_through_the_gateway_with_a_certificate_login() {
    if let Some(reason) = skip_reason() {
        eprintln!(
            "SKIPPED ssh_scp_sftp_and_rsync_through_the_gateway_with_a_certificate_login: {reason}"
        );
        return;
    }
    let stack = Stack::start().await;
    let dir = stack.dir.path().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let sshd = sshd(&stack, &dir);
    let login_alice = new_user(&stack, "alice").await;
    let port = free_port();
    ssh_resource(&stack, "web", sshd.port, port, vec![], &["alice"]).await;
    // The same target, but the resource pins a key the target does not have.
    let stranger = dir.join("stranger");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&stranger));
    let pinned = std::fs::read_to_string(dir.join("stranger.pub")).unwrap();
    let pinned_port = free_port();
    ssh_resource(
        &stack,
        "web-pinned",
        sshd.port,
        pinned_port,
        vec![pinned.trim().to_owned()],
        &["alice"],
    )
    .await;
    let gw = stack.gateway("gw1").await;
    let alice = login_alice().await;

    // `lastmile login` wrote the @cert-authority block, and only that.
    let known = std::fs::read_to_string(alice.join(".ssh/known_hosts")).unwrap();
    let host_ca = stack.app.pki.bundle().ssh_host_ca;
    let ca_key: Vec<&str> = host_ca.split_whitespace().take(2).collect();
    assert!(
        known.contains(&format!(
            "@cert-authority [127.0.0.1]:{port} {} lastmile:acme:web\n",
            ca_key.join(" ")
        )),
        "{known}"
    );
    assert!(known.starts_with("# lastmile:begin acme\n"), "{known}");

    let listen = Listen::start_on(&alice, "web", port);
    let out = output(ssh(&alice, port, "root", "echo hi; exit 3")).await;
    assert_eq!(
        text(&out.stdout),
        "hi\n",
        "stderr: {}\n{}",
        text(&out.stderr),
        listen.stderr()
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let exec = gw.wait_event("ssh.exec", |e| e["command"]["text"] == "echo hi; exit 3");
    assert_eq!(exec["user"], "alice");
    assert_eq!(exec["resource"], "web");
    assert_eq!(exec["session"], session_of(&alice).as_str());
    let connection = exec["connection"].as_str().unwrap().to_owned();
    let opened = gw.wait_event("ssh.session", |e| {
        e["phase"] == "open" && e["connection"] == connection.as_str()
    });
    assert_eq!(
        (&opened["login"], &opened["principal"]),
        (&"root".into(), &"root".into())
    );
    let closed = gw.wait_event("ssh.session", |e| {
        e["phase"] == "close" && e["connection"] == connection.as_str()
    });
    assert_eq!(closed["exit_status"], 3);
    assert!(closed["bytes_to_user"].as_u64().unwrap() > 0, "{closed}");
    let close = gw.wait_event("connection.close", |e| {
        e["connection"] == connection.as_str()
    });
    assert_eq!(close["principal"], "root");
    for e in gw.events() {
        lastmile_audit_sink::schema::check(&e).unwrap_or_else(|err| panic!("{err}: {e}"));
    }
    // Nothing for the target on the user's side: no key, no certificate.
    for entry in std::fs::read_dir(&alice).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains("cert") && !name.starts_with("id_"), "{name}");
    }

    // scp both ways (sftp mode).
    let local = stack.dir.path().join("up.txt");
    std::fs::write(&local, "payload through lastmile\n").unwrap();
    let remote = dir.join("remote.txt");
    let mut up = client("scp", &alice);
    up.args(["-P", &port.to_string()])
        .arg(&local)
        .arg(format!("root@127.0.0.1:{}", remote.display()));
    let out = output(up).await;
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&remote).unwrap(),
        "payload through lastmile\n"
    );
    std::fs::write(&remote, "and back again\n").unwrap();
    let back = stack.dir.path().join("back.txt");
    let mut down = client("scp", &alice);
    down.args(["-P", &port.to_string()])
        .arg(format!("root@127.0.0.1:{}", remote.display()))
        .arg(&back);
    let out = output(down).await;
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "and back again\n");
    gw.wait_event("ssh.sftp", |e| {
        e["op"] == "open"
            && e["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("remote.txt"))
    });

    // Legacy scp (-O: `scp -t` run on the target), logged as a transfer.
    let mut legacy = client("scp", &alice);
    legacy
        .args(["-O", "-P", &port.to_string()])
        .arg(&local)
        .arg(format!(
            "root@127.0.0.1:{}",
            dir.join("legacy.txt").display()
        ));
    let out = output(legacy).await;
    assert!(out.status.success(), "scp -O: {}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.join("legacy.txt")).unwrap(),
        "payload through lastmile\n"
    );
    gw.wait_event("ssh.exec", |e| !e["command"]["scp"].is_null());
    // sftp put, ls and get in one batch.
    std::fs::write(
        stack.dir.path().join("batch"),
        format!(
            "put {} {}\nls {}\nget {} {}\n",
            local.display(),
            dir.join("via-sftp.txt").display(),
            dir.display(),
            dir.join("via-sftp.txt").display(),
            stack.dir.path().join("via-sftp-back.txt").display()
        ),
    )
    .unwrap();
    let mut sftp = client("sftp", &alice);
    sftp.args(["-P", &port.to_string(), "-b"])
        .arg(stack.dir.path().join("batch"))
        .arg("root@127.0.0.1");
    let out = output(sftp).await;
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("via-sftp.txt"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(stack.dir.path().join("via-sftp-back.txt")).unwrap(),
        "payload through lastmile\n"
    );

    // rsync -e ssh, when rsync is installed.
    if Command::new("rsync").arg("--version").output().is_ok() {
        let tree = stack.dir.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
        std::fs::write(tree.join("sub/b.txt"), vec![b'b'; 300_000]).unwrap();
        let plain = client("ssh", &alice);
        let mut e = vec!["ssh".to_owned()];
        e.extend(plain.get_args().map(|a| a.to_string_lossy().into_owned()));
        e.extend(["-p".to_owned(), port.to_string()]);
        let mut rsync = Command::new("rsync");
        rsync
            .args(["-a", "-e", &e.join(" ")])
            .arg(format!("{}/", tree.display()))
            .arg(format!("root@127.0.0.1:{}/synced/", dir.display()))
            .env("HOME", &alice)
            .stdin(Stdio::null());
        let out = output(rsync).await;
        assert!(out.status.success(), "rsync: {}", text(&out.stderr));
        assert_eq!(
            std::fs::read(dir.join("synced/sub/b.txt")).unwrap().len(),
            300_000
        );
        gw.wait_event("ssh.exec", |e| {
            e["command"]["text"]
                .as_str()
                .is_some_and(|c| c.starts_with("rsync --server"))
        });
    } else {
        eprintln!("rsync part SKIPPED: rsync is not installed (apt-get install rsync)");
    }

    // One host certificate served every connection so far (it lasts a day).
    assert_eq!(host_certificates(&stack), 1);

    // A principal the resource does not list: refused, saying which it does.
    let out = output(ssh(&alice, port, "deploy", "id")).await;
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("root"), "{stderr}");
    gw.wait_event("ssh.refused", |e| {
        e["what"].as_str().is_some_and(|w| w.contains("deploy"))
    });

    // A port forward the resource does not allow (ssh -W opens direct-tcpip at once),
    // and X11: refused, each an event.
    let mut forward = client("ssh", &alice);
    forward.args([
        "-p",
        &port.to_string(),
        "-W",
        "127.0.0.1:9",
        "root@127.0.0.1",
    ]);
    let out = output(forward).await;
    assert_ne!(out.status.code(), Some(0));
    gw.wait_event("ssh.refused", |e| {
        e["what"] == "port forwarding (direct-tcpip) to 127.0.0.1:9"
    });
    let mut x11 = client("ssh", &alice);
    x11.args(["-p", &port.to_string(), "-o", "ForwardX11=yes"])
        .args(["root@127.0.0.1", "echo x11-$((1 + 1))"])
        .env("DISPLAY", "127.0.0.1:99");
    let out = output(x11).await;
    assert_eq!(text(&out.stdout), "x11-2\n", "{}", text(&out.stderr));
    gw.wait_event("ssh.refused", |e| {
        e["what"].as_str().is_some_and(|w| w.contains("X11"))
    });

    // A target whose host key is not the pinned one: refused, and an event.
    let pinned_listen = Listen::start_on(&alice, "web-pinned", pinned_port);
    let mut known_pinned = client("ssh", &alice);
    known_pinned.args([
        "-p",
        &pinned_port.to_string(),
        "root@127.0.0.1",
        "echo never",
    ]);
    let out = output(known_pinned).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).contains("never"));
    assert!(
        text(&out.stderr).contains("host key"),
        "{}",
        text(&out.stderr)
    );
    gw.wait_event("ssh.refused", |e| {
        e["resource"] == "web-pinned" && e["what"] == "target host key"
    });
    gw.wait_event("connection.close", |e| {
        e["resource"] == "web-pinned"
            && e["error"]
                .as_str()
                .is_some_and(|s| s.contains("pinned keys"))
    });
    drop(pinned_listen);

    // A user without a grant never reaches sshd.
    let seen = sshd.connections();
    let bob = stack.user("bob").await;
    // `lastmile listen` itself says no; and past it (a grant gone after listen started)
    // the gateway refuses the stream before dialling the target.
    let (code, _, err) = stack
        .lastmile(&bob, &["listen", "web", "--port", "0"], "")
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("not among your resources"), "{err}");
    let grant = lastmile_api::admin::add_grant(
        &stack.app,
        "test",
        NewGrant {
            resource: "web".into(),
            subject: Subject::User("bob".into()),
            expires_at: None,
        },
    )
    .await
    .unwrap();
    let bob_port = free_port();
    let bob_listen = Listen::start_on(&bob, "web", bob_port);
    lastmile_api::admin::revoke_grant(&stack.app, "test", &grant.id)
        .await
        .unwrap();
    let out = output(ssh(&bob, bob_port, "root", "echo never")).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).contains("never"));
    // Told in SSH terms (a disconnect message ssh prints), not a bare hang-up.
    assert!(
        text(&out.stderr).contains("no grant"),
        "{}",
        text(&out.stderr)
    );
    gw.wait_event("gateway.refused", |e| {
        e["resource"] == "web" && e["user"] == "bob"
    });
    assert_eq!(
        sshd.connections(),
        seen,
        "a user without a grant reached sshd"
    );
    drop(bob_listen);

    // Revocation cuts an interactive session within a second.
    let mut running = client("ssh", &alice);
    running
        .args([
            "-tt",
            "-p",
            &port.to_string(),
            "root@127.0.0.1",
            "echo started; sleep 30",
        ])
        .stdin(Stdio::piped());
    let running = tokio::task::spawn_blocking(move || running.output().unwrap());
    gw.wait_event("ssh.exec", |e| {
        e["command"]["text"] == "echo started; sleep 30"
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    lastmile_api::admin::revoke(&stack.app, "test", &session_of(&alice), Some("test"))
        .await
        .unwrap();
    let revoked = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("ssh still running 5 s after revocation")
        .unwrap();
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_ne!(out.status.code(), Some(0));
    let both = text(&out.stdout) + &text(&out.stderr);
    assert!(
        both.contains("started") && both.contains("session revoked"),
        "stdout: {} stderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    drop(listen);

    // `lastmile logout` takes the block out again.
    let (code, _, err) = stack.lastmile(&alice, &["logout"], "").await;
    assert_eq!(code, 0, "{err}");
    let known = std::fs::read_to_string(alice.join(".ssh/known_hosts")).unwrap();
    assert!(!known.contains("lastmile"), "{known}");
}

/// A tmux server of the test's own (its socket in the test's directory), killed when
/// dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    fn keys(&self, keys: &[&str]) {
        run(self.cmd().args(["send-keys", "-t", "t"]).args(keys));
    }

    fn screen(&self) -> String {
        text(&run(self.cmd().args(["capture-pane", "-p", "-t", "t"])).stdout)
    }

    /// Waits until the screen shows `what` (at most 10 s).
    fn wait_for(&self, what: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self.screen().contains(what) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "never saw {what:?} on:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_shell_through_a_pty_works_and_is_recorded() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED an_interactive_shell_through_a_pty_works_and_is_recorded: {reason}");
        return;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!(
            "SKIPPED an_interactive_shell_through_a_pty_works_and_is_recorded: no tmux (apt-get install tmux)"
        );
        return;
    }
    let stack = Stack::start().await;
    let dir = stack.dir.path().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let sshd = sshd(&stack, &dir);
    let login_alice = new_user(&stack, "alice").await;
    let port = free_port();
    ssh_resource(&stack, "web", sshd.port, port, vec![], &["alice"]).await;
    let gw = stack.gateway("gw1").await;
    let alice = login_alice().await;
    let _listen = Listen::start_on(&alice, "web", port);

    let ssh = client("ssh", &alice);
    let mut line: Vec<String> = vec!["env".into(), format!("HOME={}", alice.display())];
    line.push(ssh.get_program().to_string_lossy().into_owned());
    line.extend(ssh.get_args().map(|a| a.to_string_lossy().into_owned()));
    line.extend([
        "-tt".into(),
        "-p".into(),
        port.to_string(),
        "root@127.0.0.1".into(),
    ]);
    let tmux = Tmux {
        socket: stack.dir.path().join("tmux.sock"),
    };
    run(tmux
        .cmd()
        .args(["new-session", "-d", "-s", "t", "-x", "100", "-y", "30"])
        .args(&line));
    // A prompt, then a command typed and its output seen.
    tmux.keys(&["export PS1='ready> '", "Enter"]);
    tmux.wait_for("ready> ");
    tmux.keys(&["echo typed-$((40 + 2))", "Enter"]);
    tmux.wait_for("typed-42");
    // A resize reaches the target's terminal.
    run(tmux
        .cmd()
        .args(["resize-window", "-t", "t", "-x", "120", "-y", "40"]));
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("40 120");
    // Ctrl-C stops a sleep at once.
    tmux.keys(&["sleep 30; echo not-$((6 * 7))", "Enter"]);
    std::thread::sleep(Duration::from_millis(300));
    tmux.keys(&["C-c"]);
    tmux.keys(&["echo after-ctrl-c", "Enter"]);
    let took = tmux.wait_for("after-ctrl-c");
    assert!(took < Duration::from_secs(5), "Ctrl-C took {took:?}");
    assert!(!tmux.screen().contains("not-42"), "{}", tmux.screen());
    tmux.keys(&["exit", "Enter"]);

    // The recording is on disk, its digest in the log, and it parses as asciicast v2
    // with the output, the typed input and the resize.
    let recorded = gw.wait_event("ssh.recording", |_| true);
    let location = PathBuf::from(recorded["location"].as_str().unwrap());
    assert!(
        location.starts_with(gw.dir.join("state").join("recordings")),
        "{location:?}"
    );
    let bytes = std::fs::read(&location).unwrap();
    assert_eq!(recorded["size"], bytes.len() as u64);
    use sha2::Digest as _;
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(recorded["sha256"], digest.as_str());
    let cast = text(&bytes);
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    let events: Vec<serde_json::Value> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |code: &str| {
        events
            .iter()
            .filter(|e| e[1] == code)
            .map(|e| e[2].as_str().unwrap().to_owned())
            .collect::<String>()
    };
    assert!(of("o").contains("typed-42"), "{cast}");
    assert!(of("i").contains("echo typed"), "{cast}");
    assert!(
        events.iter().any(|e| e[1] == "r" && e[2] == "120x40"),
        "{cast}"
    );
    let dir_mode = std::fs::metadata(location.parent().unwrap()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(dir_mode.permissions().mode() & 0o777, 0o700);
    gw.wait_event("ssh.session", |e| e["phase"] == "close");

    // `lastmile recordings`: listed, played, verified against the log; one changed byte
    // is reported.
    let recordings = location.parent().unwrap().to_owned();
    let id = location.file_stem().unwrap().to_string_lossy().into_owned();
    let cli = |args: &[&str]| {
        let out = Command::new(stack::lastmile_bin())
            .arg("recordings")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir_arg = recordings.to_str().unwrap();
    let events_arg = gw.events.to_str().unwrap();
    let (code, out, err) = cli(&["list", "--dir", dir_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&id), "{out}");
    let (code, out, err) = cli(&["play", &id, "--dir", dir_arg, "--speed", "1000"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("typed-42"), "{out}");
    let (code, out, err) = cli(&["verify", "--dir", dir_arg, "--events", events_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 verified, 0 changed"), "{out}");
    let mut edited = bytes.clone();
    let at = cast.find("typed-42").unwrap();
    edited[at] = b'T';
    std::fs::write(&location, &edited).unwrap();
    let (code, out, err) = cli(&["verify", "--dir", dir_arg, "--events", events_arg]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("CHANGED  {id}")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_through_the_kernel_redirect_reaches_the_target() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED ssh_through_the_kernel_redirect_reaches_the_target: {reason}");
        return;
    }
    let stack = Stack::start().await;
    let dir = stack.dir.path().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let sshd = sshd(&stack, &dir);
    let login_alice = new_user(&stack, "alice").await;
    // The protected address is the target's own: the node redirects what the user's
    // ssh dials there, in the test's cgroup only.
    ssh_resource(&stack, "web", sshd.port, sshd.port, vec![], &["alice"]).await;
    let gw = stack.gateway("gw1").await;
    let alice = login_alice().await;
    let known = std::fs::read_to_string(alice.join(".ssh/known_hosts")).unwrap();
    assert!(
        known.contains(&format!("@cert-authority [127.0.0.1]:{} ", sshd.port)),
        "{known}"
    );

    let cgroup = support::TestCgroup::new("ssh");
    let api = format!(
        "[api]\nurl = {:?}\nstate_dir = {:?}\n",
        stack.api_url,
        gw.dir.join("state")
    );
    let node = support::TestNode::start(
        "ssh",
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
    let before = sshd.connections();
    let out = {
        use std::os::unix::process::CommandExt as _;
        let plain = client("ssh", &alice);
        let mut cmd = cgroup.command("ssh");
        cmd.args(plain.get_args())
            .args([
                "-p",
                &sshd.port.to_string(),
                "root@127.0.0.1",
                "echo hi; exit 3",
            ])
            .env("HOME", &alice)
            .stdin(Stdio::null())
            .uid(uid)
            .gid(uid);
        output(cmd).await
    };
    assert_eq!(
        text(&out.stdout),
        "hi\n",
        "stderr: {}\nagent: {}\ngateway: {}",
        text(&out.stderr),
        agent.logs(),
        gw.logs()
    );
    assert_eq!(out.status.code(), Some(3));
    let handoff = node.wait_event("handoff", |e| {
        e["kind"] == "node.handoff" && e["uid"] == uid
    });
    assert!(handoff["sock_cookie"].as_u64().is_some());
    let exec = gw.wait_event("ssh.exec", |e| e["command"]["text"] == "echo hi; exit 3");
    assert_eq!(exec["user"], "alice");
    // sshd saw one connection: the gateway's, not the user's own.
    assert_eq!(sshd.connections(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_key_resource_logs_in_with_the_vaults_key() {
    if let Some(reason) = skip_reason() {
        eprintln!("SKIPPED an_ssh_key_resource_logs_in_with_the_vaults_key: {reason}");
        return;
    }
    // Host certificates shorter than the gateway's renewal margin (an hour): it asks
    // for a new one for each connection.
    let stack = Stack::start_with(|c| c.ssh_host_certificate_ttl = Duration::from_secs(1800)).await;
    let dir = stack.dir.path().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let sshd = sshd(&stack, &dir);
    // The key the vault holds, and the only one sshd's authorized_keys lists.
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "stored", "-f"])
        .arg(dir.join("stored")));
    std::fs::copy(dir.join("stored.pub"), dir.join("authorized_keys")).unwrap();
    let secret = std::fs::read(dir.join("stored")).unwrap();
    std::fs::remove_file(dir.join("stored")).unwrap();
    let login_alice = new_user(&stack, "alice").await;
    let port = free_port();
    ssh_resource(&stack, "web-key", sshd.port, port, vec![], &["alice"]).await;
    let mut r = lastmile_api::admin::resource(&stack.app, "web-key")
        .await
        .unwrap();
    r.credential = Some(CredentialKind::SshKey);
    lastmile_api::admin::put_resource(&stack.app, "test", r)
        .await
        .unwrap();
    lastmile_api::vault::set_credential(
        &stack.app,
        "test",
        "web-key",
        CredentialKind::SshKey,
        zeroize::Zeroizing::new(secret.clone()),
    )
    .await
    .unwrap();
    let gw = stack.gateway("gw1").await;
    let alice = login_alice().await;
    let _listen = Listen::start_on(&alice, "web-key", port);
    let out = output(ssh(&alice, port, "root", "echo stored-key; exit 7")).await;
    assert_eq!(
        text(&out.stdout),
        "stored-key\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7));
    gw.wait_event("ssh.session", |e| {
        e["phase"] == "open" && e["principal"] == "root"
    });
    assert!(
        String::from_utf8_lossy(&std::fs::read(dir.join("sshd.log")).unwrap())
            .contains("Accepted publickey for root"),
    );
    let out = output(ssh(&alice, port, "root", "true")).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(host_certificates(&stack), 2);
}

/// How many SSH host certificates the API issued (its audit log says).
fn host_certificates(stack: &Stack) -> usize {
    std::fs::read_to_string(stack.dir.path().join("api").join("audit.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"ssh_host_certificate\""))
        .count()
}
