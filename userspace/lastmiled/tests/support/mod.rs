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
        let root = lastmiled::cgroup::cgroup2_root().expect("cgroup2 mounted");
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
