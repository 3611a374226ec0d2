//! The README's first hour, run as written: the commands between `<!-- first-hour:begin -->`
//! and `<!-- first-hour:end -->` in README.md, in order, in an empty directory, with the
//! workspace's binaries on PATH. So the README cannot drift from the programs: a renamed
//! flag, a changed default or a new prompt fails this test.
//!
//! The only liberties taken are those a person at a terminal takes: a value written `…`
//! is copied from an earlier output (the gateway token); `lastmile login`'s prompts are
//! answered (through `--password-stdin`, since there is no terminal); a command started
//! with `&` is waited for until it listens before the next one runs; `kill %…` stops the
//! background commands.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::have_root;

/// Alice's own password, chosen at her first login.
const NEW_PASSWORD: &str = "correct horse battery staple";

/// The commands of the README's first hour, comments dropped and continuations joined.
fn readme_commands() -> Vec<String> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let begin = text
        .find("<!-- first-hour:begin -->")
        .expect("README.md has no first-hour:begin marker");
    let end = text
        .find("<!-- first-hour:end -->")
        .expect("README.md has no first-hour:end marker");
    let block = &text[begin..end];
    let body = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(body, _)| body)
        .expect("the first hour is one ```sh block");
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in body.lines() {
        let line = line.trim_end();
        if pending.is_empty() && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => pending.push_str(head),
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    commands
}

/// What ran so far, for the failure messages and for values copied from outputs.
#[derive(Default)]
struct Transcript(String);

impl Transcript {
    /// The last word that starts with `prefix` in the outputs so far.
    fn last_word(&self, prefix: &str) -> Option<String> {
        self.0
            .split(|c: char| c.is_whitespace() || c == '`' || c == ',')
            .rfind(|w| w.starts_with(prefix) && w.len() > prefix.len())
            .map(str::to_owned)
    }

    /// The text after the last `marker` up to the end of its line.
    fn after_last(&self, marker: &str) -> Option<String> {
        let at = self.0.rfind(marker)? + marker.len();
        self.0[at..].lines().next().map(|l| l.trim().to_owned())
    }
}

/// The background commands, stopped (and the agent login started) however the test ends.
struct Jobs {
    children: Vec<(String, Child)>,
    agent: Option<i32>,
}

impl Jobs {
    fn stop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for (_, child) in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Jobs {
    fn drop(&mut self) {
        self.stop();
        if let Some(pid) = self.agent.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether process `pid` has a listening TCP socket.
fn listens(pid: u32) -> bool {
    let out = Command::new("ss").args(["-Htlnp"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("pid={pid},"))
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Where `cargo test --workspace` put the binaries: next to the test's own directory.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_owned();
    for bin in ["lastmile", "lastmile-api", "lastmiled"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run the tests with `cargo test --workspace`",
            dir.join(bin).display()
        );
    }
    dir
}

#[test]
fn the_readme_first_hour_runs_as_written() {
    if !have_root("the_readme_first_hour_runs_as_written") {
        return;
    }
    for port in [8443, 8000, 7000, 15443] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} on 127.0.0.1 is taken: the README's first hour uses it"
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("lastmile-first-hour-")
        .tempdir()
        .unwrap();
    let home = dir.path().join("home");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let shell = |command: &str| {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(command)
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("LASTMILE_HOME", &home)
            // `login` writes ~/.ssh/known_hosts for ssh resources: never the real one.
            .env("HOME", &home)
            // The agent must not register with a node another test left on this machine.
            .env("LASTMILE_NODE_SOCKET", dir.path().join("no-node.sock"));
        c
    };
    let commands = readme_commands();
    assert!(commands.len() > 10, "{commands:?}");
    let mut log = Transcript::default();
    let mut jobs = Jobs {
        children: Vec::new(),
        agent: None,
    };
    for command in &commands {
        let mut command = command.clone();
        if command.contains("lmgw_…") {
            let token = log.last_word("lmgw_").unwrap_or_else(|| {
                panic!("no gateway token printed before `{command}`:\n{}", log.0)
            });
            command = command.replace("lmgw_…", &token);
        }
        assert!(
            !command.contains('…'),
            "the README's first hour has a value the test does not know how to fill: `{command}`"
        );
        log.0.push_str(&format!("$ {command}\n"));
        if command.starts_with("kill %") {
            jobs.stop();
            continue;
        }
        if let Some(background) = command.strip_suffix('&') {
            // Its output would go to the terminal; here, to a file shown on failure.
            let out = std::fs::File::create(
                dir.path()
                    .join(format!("job-{}.out", jobs.children.len() + 1)),
            )
            .unwrap();
            let child = shell(&format!("exec {background}"))
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            let pid = child.id();
            jobs.children.push((command.clone(), child));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !listens(pid) {
                let (_, child) = jobs.children.last_mut().unwrap();
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "`{command}` ended ({status}) before it listened:\n{}",
                        log.0
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "`{command}` never listened:\n{}",
                    log.0
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        let (command, stdin) = if command.starts_with("lastmile login ") {
            // A person types the one-time password `users add` printed, then their own.
            let otp = log
                .after_last("one-time password (shown once): ")
                .unwrap_or_else(|| panic!("no one-time password printed before login:\n{}", log.0));
            (
                format!("{command} --password-stdin"),
                format!("{otp}\n{NEW_PASSWORD}\n"),
            )
        } else {
            (command, String::new())
        };
        let out = lastmile_testkit::run_with_stdin(&mut shell(&command), &stdin).unwrap();
        log.0.push_str(&String::from_utf8_lossy(&out.stdout));
        log.0.push_str(&String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "`{command}` failed ({}):\n{}",
            out.status,
            log.0
        );
        if command.starts_with("lastmile login ") {
            jobs.agent = log
                .after_last("agent started (pid ")
                .and_then(|rest| rest.split(')').next()?.parse().ok());
        }
    }
    // What the background commands printed, as a terminal would have shown it.
    for n in 1..=commands.iter().filter(|c| c.ends_with('&')).count() {
        let out =
            std::fs::read_to_string(dir.path().join(format!("job-{n}.out"))).unwrap_or_default();
        log.0.push_str(&format!("[job {n}]\n{out}"));
    }
    let text = &log.0;
    // What the README's comments promise, checked where it matters.
    assert!(text.contains("hello from web-1"), "{text}");
    assert!(text.contains("logged in as alice"), "{text}");
    assert!(text.contains("use: lastmile listen web-1"), "{text}");
    // The resource as a user writes it: its kind by name, HOST:PORT, no empty `protect:`.
    assert!(
        text.lines().any(|l| l.starts_with("web-1 ")
            && l.contains(" tcp ")
            && l.trim_end().ends_with("127.0.0.1:8000")),
        "{text}"
    );
    // `listen` says where it listens to people only: no JSON unless asked for.
    assert!(text.contains("carries connections to `web-1`"), "{text}");
    assert!(!text.contains("{\"listening\""), "{text}");
    assert!(
        text.contains("gw1 at 127.0.0.1:15443"),
        "status names the gateway: {text}"
    );
    assert!(text.contains("logged out; session ses_"), "{text}");
    let agent = jobs.agent.expect("login said which pid its agent has");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(agent) {
        assert!(
            Instant::now() < deadline,
            "logout left the agent running:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    jobs.agent = None;
    let events = std::fs::read_to_string(dir.path().join("gw-events.jsonl")).unwrap();
    assert!(
        events.contains("\"connection.close\"") && events.contains("web-1"),
        "{events}"
    );
    let audit = std::fs::read_to_string(dir.path().join("api-data/audit.jsonl")).unwrap();
    assert!(audit.contains("\"connection.open\""), "{audit}");
}
