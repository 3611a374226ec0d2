//! What the root tests share: skipping visibly when not root, and a cgroup of their own
//! that is removed afterwards.

#![allow(dead_code)]

use std::{
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Returns false, after saying so on stderr, when the test cannot run here.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // Written to the stderr handle, not through eprintln!, so that the test harness's
    // output capture does not swallow it: a skip must be visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs root (eBPF and cgroups); run `sudo cargo xtask test`"
    );
    false
}

/// A cgroup v2 directory made for one test and removed when dropped.
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = lastmiled::mounts::cgroup2_root().expect("cgroup2 mounted");
        let path = root.join(format!(
            "lastmile-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).expect("create test cgroup");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command whose process joins this cgroup before it runs (so its very first
    /// connect is already seen by programs attached here).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .expect("open cgroup.procs");
        let mut cmd = Command::new(program);
        // SAFETY: the closure only calls write(2) on an already-open fd, which is
        // async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Writing "0" moves the writing process itself.
                (&procs).write_all(b"0")
            });
        }
        cmd
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once its processes are gone; give stragglers a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            if let Ok(procs) = fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The lastmiled binary under test.
pub fn lastmiled() -> &'static str {
    env!("CARGO_BIN_EXE_lastmiled")
}

/// The cgroup v2 id of a cgroup directory: its inode number.
pub fn cgroup_id(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).expect("stat cgroup").ino()
}

/// A network namespace made for one test (`ip netns add`), deleted when dropped.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "lm-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        run_ok(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Self { name }
    }

    /// Runs `f` on a thread that has entered this namespace (namespaces are per thread).
    pub fn on_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let ns = fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

pub fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

use std::thread;

/// A `lastmiled node run` process of a test's own: own cgroup, pin directory, agent socket
/// and event file. Dropping it stops the process and detaches everything it pinned.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub agent_socket: PathBuf,
    pub events: PathBuf,
    child: Option<std::process::Child>,
}

impl TestNode {
    /// Writes a config for `cgroup` with `targets` (TOML `[[node.targets]]` tables) and
    /// starts lastmiled.
    pub fn start(name: &str, cgroup: &TestCgroup, targets: &str, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lastmile-test-")
            .tempdir()
            .expect("tempdir");
        // Agents run as other users and must reach the socket inside.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/lastmile-test-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let agent_socket = dir.path().join("node.sock");
        let events = dir.path().join("events.jsonl");
        let config = dir.path().join("lastmiled.toml");
        fs::write(
            &config,
            format!(
                "[node]\nlisten_v4 = \"127.0.0.1:0\"\nlisten_v6 = \"[::1]:0\"\n\
                 agent_socket = {agent_socket:?}\nevents = {events:?}\npin_dir = {pin_dir:?}\n\
                 cgroup = {:?}\n{extra}\n{targets}\n",
                cgroup.path()
            ),
        )
        .unwrap();
        let mut node = Self {
            dir,
            config,
            pin_dir,
            agent_socket,
            events,
            child: None,
        };
        node.spawn();
        node
    }

    /// Starts (again) the lastmiled process and waits until agents can register.
    pub fn spawn(&mut self) {
        let _ = fs::remove_file(&self.agent_socket);
        let log = fs::File::create(self.dir.path().join(format!(
            "lastmiled-{}.log",
            Instant::now().elapsed().as_nanos()
        )))
        .unwrap();
        let child = Command::new(lastmiled())
            .args(["node", "run", "--config"])
            .arg(&self.config)
            .stderr(log)
            .spawn()
            .expect("start lastmiled");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.agent_socket.exists() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("lastmiled exited early ({status}): {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "lastmiled did not come up: {}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process (SIGTERM) and waits for it; the pins stay.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }

    /// Sends SIGHUP (reload the configuration).
    pub fn hangup(&self) {
        if let Some(child) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                out.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    /// The events written so far, parsed.
    pub fn events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("event lines are JSON"))
            .collect()
    }

    /// Waits until an event satisfying `pred` was written.
    pub fn wait_event(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event in {:#?}\nlogs: {}",
                self.events(),
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The actual IPv4 listener port, from the kernel's pinned redirect config (the
    /// config asks for port 0).
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(lastmiled())
            .args(["node", "status", "--output", "json", "--config"])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new(lastmiled())
            .args(["node", "detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

/// An example agent (`examples/echo_agent.rs`) running as `uid`, killed when dropped.
pub struct EchoAgent {
    child: std::process::Child,
    pub stdout: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl EchoAgent {
    pub fn start(socket: &Path, uid: u32) -> Self {
        // Examples are built next to the test binaries: target/<profile>/examples/.
        let exe = std::env::current_exe().unwrap();
        let path = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples/echo_agent");
        let mut cmd = Command::new(&path);
        cmd.arg(socket)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let agent = Self { child, stdout: rx };
        let first = agent.next();
        assert_eq!(first["registered"], uid, "{first}");
        agent
    }

    pub fn next(&self) -> serde_json::Value {
        self.stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("agent output")
    }
}

impl Drop for EchoAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
