//! The demo's lasting stack: what `cargo xtask demo` leaves running for a person to use by
//! hand, recorded as it starts in `STATE_DIR/stack.json`, so that `cargo xtask demo --stop`
//! (and a later `demo`, which stops the earlier one first) removes all of it, even after a
//! demo that was killed half way.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::DEMO_ACCOUNT;

/// Where the lasting demo lives: its configs, data, logs and recordings.
pub(super) const STATE_DIR: &str = "/var/lib/lastmile-demo";

/// What is running or configured, written whenever it grows.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Stack {
    /// Processes the demo started.
    processes: Vec<Process>,
    /// A PostgreSQL cluster's directory (its `data/postmaster.pid` names the postmaster).
    postgres: Option<PathBuf>,
    /// The node configuration whose pins `lastmiled node detach` removes.
    node_config: Option<PathBuf>,
    /// Whether the Linux account [`DEMO_ACCOUNT`] was made.
    account: bool,
}

/// What ends each line the demo adds to `/etc/hosts`, so that `--stop` removes exactly
/// those.
const HOSTS_MARK: &str = "# lastmile-demo";

/// Adds `ADDRESS NAME` lines to /etc/hosts (after removing an earlier demo's). Written in
/// place, not renamed over: in a container /etc/hosts is often a mount.
pub(super) fn add_hosts(entries: &[(&str, &str)]) -> anyhow::Result<()> {
    remove_hosts()?;
    let mut text = std::fs::read_to_string("/etc/hosts").context("reading /etc/hosts")?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    for (address, name) in entries {
        text.push_str(&format!("{address} {name} {HOSTS_MARK}\n"));
    }
    std::fs::write("/etc/hosts", text).context("writing /etc/hosts")
}

/// Removes the lines [`add_hosts`] added; whether there were any.
fn remove_hosts() -> anyhow::Result<bool> {
    let Ok(text) = std::fs::read_to_string("/etc/hosts") else {
        return Ok(false);
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_end().ends_with(HOSTS_MARK))
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(false);
    }
    let mut out = kept.join("\n");
    out.push('\n');
    std::fs::write("/etc/hosts", out).context("writing /etc/hosts")?;
    Ok(true)
}

/// A process the demo started: what it is, its pid, and its program's file name (checked
/// against `/proc/PID/cmdline` before it is signalled, so a pid reused since is left alone).
#[derive(Debug, Serialize, Deserialize)]
struct Process {
    what: String,
    pid: u32,
    program: String,
}

fn file() -> PathBuf {
    Path::new(STATE_DIR).join("stack.json")
}

impl Stack {
    fn save(&self) -> anyhow::Result<()> {
        let path = file();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts `cmd` in a process group of its own (a Ctrl-C meant for the demo, or the
    /// terminal closing, does not reach it), its output to `log`, and records it.
    pub(super) fn spawn(
        &mut self,
        what: &str,
        cmd: &mut Command,
        log: &Path,
    ) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt as _;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child: Child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let pid = child.id();
        // Not waited for: it outlives the demo; `stop` ends it by its pid.
        drop(child);
        let program = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.processes.push(Process {
            what: what.to_owned(),
            pid,
            program,
        });
        self.save()?;
        Ok(pid)
    }

    pub(super) fn postgres(&mut self, cluster: &Path) -> anyhow::Result<()> {
        self.postgres = Some(cluster.to_owned());
        self.save()
    }

    pub(super) fn node(&mut self, config: &Path) -> anyhow::Result<()> {
        self.node_config = Some(config.to_owned());
        self.save()
    }

    pub(super) fn account(&mut self) -> anyhow::Result<()> {
        self.account = true;
        self.save()
    }

    /// An empty record in a fresh state directory, after stopping what an earlier demo
    /// left.
    pub(super) fn fresh() -> anyhow::Result<Self> {
        stop()?;
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let stack = Self::default();
        stack.save()?;
        Ok(stack)
    }
}

/// Stops and removes everything the record names (best effort for each, in the order
/// that leaves nothing half up: the user's agent, then the services, then the node's
/// interception, then the account and the directory). Saying what it removed.
pub(super) fn stop() -> anyhow::Result<()> {
    if remove_hosts()? {
        eprintln!("    removed the demo's lines from /etc/hosts");
    }
    let Ok(text) = std::fs::read(file()) else {
        if Path::new(STATE_DIR).exists() {
            std::fs::remove_dir_all(STATE_DIR).with_context(|| format!("removing {STATE_DIR}"))?;
        }
        return Ok(());
    };
    let stack: Stack = serde_json::from_slice(&text).unwrap_or_default();
    if stack.account {
        // The agent `lastmile login` started, and anything else of hers.
        let _ = Command::new("pkill")
            .args(["-TERM", "-u", DEMO_ACCOUNT])
            .status();
    }
    for p in stack.processes.iter().rev() {
        let ours = std::fs::read(format!("/proc/{}/cmdline", p.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&p.program));
        if ours && end(p.pid, libc::SIGTERM) {
            eprintln!("    stopped {} (pid {})", p.what, p.pid);
        }
    }
    if let Some(cluster) = &stack.postgres {
        let pidfile = cluster.join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        // SIGINT: PostgreSQL's fast shutdown.
        if let Some(pid) = pid
            && end(pid, libc::SIGINT)
        {
            eprintln!("    stopped PostgreSQL (pid {pid})");
        }
        let _ = std::fs::remove_dir_all(cluster);
    }
    if let Some(config) = &stack.node_config {
        let lastmiled = Path::new(STATE_DIR).join("bin/lastmiled");
        let detached = Command::new(&lastmiled)
            .args(["node", "detach", "--force", "--config"])
            .arg(config)
            .stderr(Stdio::null())
            .status();
        if detached.is_ok_and(|s| s.success()) {
            eprintln!("    detached lastmiled node's interception");
        }
        let _ = std::fs::remove_file("/run/lastmile/node.sock");
        // The node's runtime directory, when nothing else is in it.
        let _ = std::fs::remove_dir("/run/lastmile");
    }
    if stack.account {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", DEMO_ACCOUNT])
            .status();
        let _ = Command::new("userdel")
            .arg(DEMO_ACCOUNT)
            .stderr(Stdio::null())
            .status();
        eprintln!("    removed the Linux account {DEMO_ACCOUNT}");
    }
    std::fs::remove_dir_all(STATE_DIR).with_context(|| format!("removing {STATE_DIR}"))?;
    eprintln!("    removed {STATE_DIR}");
    Ok(())
}

/// Sends `signal` to `pid`, then SIGKILL if it is still there after 5 s; whether it was
/// running.
fn end(pid: u32, signal: libc::c_int) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let alive = || Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid);
    if !alive() {
        return false;
    }
    // SAFETY: kill(2) with a pid the demo recorded for a process it started.
    unsafe { libc::kill(raw, signal) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if alive() {
        // SAFETY: as above.
        unsafe { libc::kill(raw, libc::SIGKILL) };
    }
    true
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}
