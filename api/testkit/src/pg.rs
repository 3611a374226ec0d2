//! A throwaway PostgreSQL server on loopback.
//!
//! [`PgServer::start`] runs `initdb` into a fresh temp dir, starts the cluster with
//! `pg_ctl -w` listening on `127.0.0.1` only (at a free port, unix socket inside the temp
//! dir, `fsync=off`) and creates the database `lastmile` owned by the superuser
//! `lastmile`, who has a random password. Every connection, TCP or unix socket, needs
//! that password (`scram-sha-256`; `trust` is used nowhere). Dropping the [`PgServer`]
//! stops the server (`pg_ctl stop -m immediate`) and removes the temp dir.
//!
//! The binaries come from `$LASTMILE_PG_BIN` when set, else from the newest
//! `/usr/lib/postgresql/N/bin`. The system cluster is never used or touched.
//!
//! PostgreSQL refuses to run as root: when the process runs as root, `initdb`, `pg_ctl`
//! and `createdb` run as the `postgres` system user (created by the `postgresql`
//! package), and the temp dir is made under `/tmp` and handed to that user.
//!
//! Set `LASTMILE_PG_KEEP=1` to keep the temp dir (data dir and server log) after the
//! server is stopped, for debugging; the server itself is stopped either way.

use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User};
use tempfile::TempDir;

/// Name of the superuser created by `initdb`.
pub const SUPERUSER: &str = "lastmile";
/// Name of the database created by [`PgServer::start`], owned by [`SUPERUSER`].
pub const DATABASE: &str = "lastmile";
/// Environment variable naming the PostgreSQL bin directory to use.
pub const PG_BIN_ENV: &str = "LASTMILE_PG_BIN";
/// Environment variable that, when set to anything but `0` or empty, keeps the temp dir.
pub const KEEP_ENV: &str = "LASTMILE_PG_KEEP";

const PG_LIB_ROOT: &str = "/usr/lib/postgresql";
const REQUIRED_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "createdb"];
const PORT_ATTEMPTS: u32 = 5;
const LOG_TAIL_LINES: usize = 40;
const START_TIMEOUT_SECS: &str = "60";
const STOP_TIMEOUT_SECS: &str = "30";
/// A unix socket path (`<dir>/.s.PGSQL.NNNNN`) must fit in 107 bytes; keep the temp dir
/// well below that.
const MAX_TEMP_BASE_LEN: usize = 64;

/// Why a throwaway PostgreSQL server could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// No `/usr/lib/postgresql/N/bin` with the needed binaries, and no `LASTMILE_PG_BIN`.
    #[error(
        "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: run `cargo xtask setup` \
         (it installs the `postgresql` package), or set LASTMILE_PG_BIN to a directory holding \
         initdb, pg_ctl and createdb"
    )]
    BinariesNotFound,
    /// `LASTMILE_PG_BIN` names a directory without one of the needed binaries.
    #[error(
        "LASTMILE_PG_BIN={} has no executable `{missing}`: point LASTMILE_PG_BIN at a PostgreSQL \
         bin directory (one with initdb, pg_ctl and createdb), or unset it to use the newest \
         /usr/lib/postgresql/*/bin",
        dir.display()
    )]
    BadBinDir {
        /// The directory `LASTMILE_PG_BIN` names.
        dir: PathBuf,
        /// The binary that is not there.
        missing: &'static str,
    },
    /// Running as root, and there is no `postgres` user to run PostgreSQL as.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` \
         system user to run it as: run `cargo xtask setup` (installing the `postgresql` package \
         creates that user), or run as a non-root user"
    )]
    NoPostgresUser,
    /// A file-system or process operation failed.
    #[error("could not {action}")]
    Io {
        /// What was being done, e.g. "create a temp dir under /tmp".
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A PostgreSQL binary exited unsuccessfully.
    #[error("`{command}` failed ({status}):\n{output}{server_log}")]
    Command {
        /// The command line (no secrets: the password goes by file or environment).
        command: String,
        /// How it exited.
        status: String,
        /// Its stdout and stderr.
        output: String,
        /// The tail of the server log, when the server had been started; else empty.
        server_log: String,
    },
    /// Every free port that was picked was taken by someone else before the server bound it.
    #[error(
        "PostgreSQL could not bind a free port on 127.0.0.1 in {attempts} attempts (each port \
         picked was taken before the server bound it): retry, and look for something that grabs \
         many loopback ports{server_log}"
    )]
    PortsTaken {
        /// How many ports were tried.
        attempts: u32,
        /// The tail of the server log.
        server_log: String,
    },
    /// A database name that [`PgServer::create_database`] does not accept.
    #[error(
        "invalid database name {name:?}: use 1 to 63 ASCII letters, digits, `_` or `-`, \
         not starting with `-`"
    )]
    InvalidDatabaseName {
        /// The rejected name.
        name: String,
    },
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> PgError {
    let action = action.into();
    move |source| PgError::Io { action, source }
}

/// A running throwaway PostgreSQL server. Dropping it stops the server and removes its
/// temp dir.
pub struct PgServer {
    cluster: Cluster,
    port: u16,
    password: String,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("dir", &self.cluster.root)
            .field("port", &self.port)
            .field("user", &SUPERUSER)
            .field("password", &"<redacted>")
            .field("bin_dir", &self.cluster.bin)
            .finish()
    }
}

impl PgServer {
    /// Runs `initdb` into a fresh temp dir (superuser `lastmile` with a random password,
    /// `scram-sha-256` for every connection, UTF8, locale C), starts the server with
    /// `pg_ctl -w` on `127.0.0.1` at a free port (unix socket in the temp dir,
    /// `fsync=off`), and creates the database `lastmile` owned by `lastmile`.
    ///
    /// On any failure nothing is left running and the temp dir is removed; errors from
    /// the start itself carry the tail of the server log.
    pub fn start() -> Result<Self, PgError> {
        let bin = find_bin_dir()?;
        let run_as = run_as()?;
        let base = temp_base(run_as.is_some());
        let dir = tempfile::Builder::new()
            .prefix("lastmile-pg-")
            .tempdir_in(&base)
            .map_err(io_error(format!(
                "create a temp dir under {}",
                base.display()
            )))?;
        let root = dir.path().to_path_buf();
        // From here on, dropping `cluster` stops whatever was started and removes the dir.
        let cluster = Cluster {
            data: root.join("data"),
            log: root.join("server.log"),
            root,
            bin,
            run_as,
            dir: Some(dir),
        };
        if let Some(user) = run_as {
            user.chown(&cluster.root)?;
        }
        let password = random_password()?;
        cluster.initdb(&password)?;
        cluster.configure()?;
        let port = cluster.start_on_free_port()?;
        cluster.createdb(port, &password, DATABASE)?;
        Ok(Self {
            cluster,
            port,
            password,
        })
    }

    /// `postgres://lastmile:<password>@127.0.0.1:<port>/lastmile`
    pub fn url(&self) -> String {
        self.database_url(DATABASE)
    }

    /// The URL of database `name` on this server (which need not exist).
    fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// Creates database `name` (owned by `lastmile`) on this server and returns its URL,
    /// for tests that want isolation. `name` is 1 to 63 ASCII letters, digits, `_` or `-`.
    pub fn create_database(&self, name: &str) -> Result<String, PgError> {
        validate_database_name(name)?;
        self.cluster.createdb(self.port, &self.password, name)?;
        Ok(self.database_url(name))
    }

    /// The TCP port the server listens on (on 127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path of the server log (useful in failure messages). It lives in the temp dir, so
    /// it is gone once the server is dropped.
    pub fn log_path(&self) -> PathBuf {
        self.cluster.log.clone()
    }

    /// The superuser name, `lastmile`.
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password (32 hex digits; safe in a URL as is).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The PostgreSQL bin directory in use (for `psql`, `pg_dump`, … of the same version).
    pub fn bin_dir(&self) -> &Path {
        &self.cluster.bin
    }

    /// The temp dir holding the data dir, the server log and the unix socket.
    pub fn dir(&self) -> &Path {
        &self.cluster.root
    }

    /// The directory of the server's unix socket (use it as `host` for socket connections).
    pub fn socket_dir(&self) -> &Path {
        &self.cluster.root
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.cluster.shutdown();
    }
}

/// The user PostgreSQL runs as when this process is root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

impl RunAs {
    fn chown(self, path: &Path) -> Result<(), PgError> {
        std::os::unix::fs::chown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw())).map_err(
            io_error(format!(
                "hand {} to the `postgres` user (chown)",
                path.display()
            )),
        )
    }
}

/// The temp dir and what runs in it; its drop stops the server and removes the dir, so a
/// half-finished [`PgServer::start`] leaves nothing behind.
#[derive(Debug)]
struct Cluster {
    root: PathBuf,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    run_as: Option<RunAs>,
    dir: Option<TempDir>,
}

impl Cluster {
    /// A command for one of the PostgreSQL binaries: run as the right user, in the temp
    /// dir, without stdin, and without any `PG*` variables of ours leaking in (they could
    /// point it at another cluster).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.root)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            .env("HOME", &self.root);
        for (key, _) in std::env::vars_os() {
            if key.as_encoded_bytes().starts_with(b"PG") {
                cmd.env_remove(key);
            }
        }
        if let Some(user) = self.run_as {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd
    }

    /// Runs `cmd`; fails with its output (and the server log's tail when `with_log`)
    /// unless it exits successfully.
    fn run(&self, mut cmd: Command, with_log: bool) -> Result<Output, PgError> {
        let shown = describe(&cmd);
        let out = cmd.output().map_err(io_error(format!("run `{shown}`")))?;
        if out.status.success() {
            return Ok(out);
        }
        Err(PgError::Command {
            command: shown,
            status: out.status.to_string(),
            output: combined_output(&out),
            server_log: if with_log {
                log_section(&self.log)
            } else {
                String::new()
            },
        })
    }

    fn initdb(&self, password: &str) -> Result<(), PgError> {
        let pwfile = self.root.join("pwfile");
        write_private(&pwfile, password, self.run_as)?;
        let mut pwfile_arg = std::ffi::OsString::from("--pwfile=");
        pwfile_arg.push(&pwfile);
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-U")
            .arg(SUPERUSER)
            .arg(pwfile_arg)
            .args([
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]);
        let result = self.run(cmd, false);
        let removed = fs::remove_file(&pwfile).map_err(io_error(format!(
            "delete the password file {}",
            pwfile.display()
        )));
        result?;
        removed
    }

    /// Appends our settings to `postgresql.conf` (the port goes on the command line).
    fn configure(&self) -> Result<(), PgError> {
        let conf = self.data.join("postgresql.conf");
        let settings = format!(
            "\n# lastmile-testkit: a throwaway server on loopback\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            conf_quote(&self.root.to_string_lossy())
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut file| file.write_all(settings.as_bytes()))
            .map_err(io_error(format!("append settings to {}", conf.display())))
    }

    /// Starts the server at a free port, retrying with a new port when the one picked was
    /// taken in between.
    fn start_on_free_port(&self) -> Result<u16, PgError> {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log_before = fs::metadata(&self.log).map_or(0, |m| m.len());
            let mut cmd = self.command("pg_ctl");
            cmd.args(["start", "-w", "-t", START_TIMEOUT_SECS, "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .arg("-o")
                .arg(format!("-p {port}"));
            match self.run(cmd, true) {
                Ok(_) => return Ok(port),
                Err(err) => {
                    // Whatever half-started must be gone before a retry or an error.
                    self.stop();
                    if !port_was_taken(&log_since(&self.log, log_before)) {
                        return Err(err);
                    }
                }
            }
        }
        Err(PgError::PortsTaken {
            attempts: PORT_ATTEMPTS,
            server_log: log_section(&self.log),
        })
    }

    fn createdb(&self, port: u16, password: &str, name: &str) -> Result<(), PgError> {
        let mut cmd = self.command("createdb");
        cmd.arg("-h")
            .arg(&self.root)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", SUPERUSER, "-O", SUPERUSER, "-w", "--", name])
            .env("PGPASSWORD", password);
        self.run(cmd, true).map(drop)
    }

    /// Stops the server if one is running; never fails, never panics.
    fn stop(&self) {
        let pidfile = self.data.join("postmaster.pid");
        if !pidfile.exists() {
            return;
        }
        let mut cmd = self.command("pg_ctl");
        cmd.args([
            "stop",
            "-m",
            "immediate",
            "-w",
            "-t",
            STOP_TIMEOUT_SECS,
            "-D",
        ])
        .arg(&self.data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let stopped = cmd.status().is_ok_and(|status| status.success());
        if !stopped || pidfile.exists() {
            self.kill_postmaster(&pidfile);
        }
    }

    /// Last resort when `pg_ctl stop` did not work: signal the postmaster named in
    /// `postmaster.pid`, but only if that process really is ours (its command line names
    /// our data dir), so a stale pid file never gets a stranger killed.
    fn kill_postmaster(&self, pidfile: &Path) {
        let Some(pid) = fs::read_to_string(pidfile)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            return;
        };
        let pid = Pid::from_raw(pid);
        for signal in [Signal::SIGQUIT, Signal::SIGKILL] {
            if !self.is_our_postmaster(pid) {
                return;
            }
            if kill(pid, signal).is_err() {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.is_our_postmaster(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn is_our_postmaster(&self, pid: Pid) -> bool {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let data = self.data.as_os_str().as_encoded_bytes();
        !data.is_empty() && cmdline.windows(data.len()).any(|window| window == data)
    }

    /// Stops the server and removes the temp dir (unless `LASTMILE_PG_KEEP` is set).
    /// Idempotent; never fails, never panics.
    fn shutdown(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        self.stop();
        if keep_requested() {
            let kept = dir.keep();
            eprintln!(
                "lastmile-testkit: {KEEP_ENV} is set: kept {}",
                kept.display()
            );
        } else if dir.close().is_err() {
            // Best effort: a second try catches files that appeared while removing.
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The PostgreSQL bin directory: `$LASTMILE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/N/bin` that has the needed binaries.
fn find_bin_dir() -> Result<PathBuf, PgError> {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|value| !value.is_empty()) {
        let dir = PathBuf::from(dir);
        if let Some(missing) = REQUIRED_BINARIES
            .into_iter()
            .find(|name| !is_executable(&dir.join(name)))
        {
            return Err(PgError::BadBinDir { dir, missing });
        }
        return Ok(dir);
    }
    let entries = fs::read_dir(PG_LIB_ROOT).map_err(|_| PgError::BinariesNotFound)?;
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(parse_version) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !REQUIRED_BINARIES
            .iter()
            .all(|name| is_executable(&bin.join(name)))
        {
            continue;
        }
        if best.as_ref().is_none_or(|(newest, _)| version > *newest) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin).ok_or(PgError::BinariesNotFound)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `Some(postgres)` when running as root (PostgreSQL refuses root), else `None`.
fn run_as() -> Result<Option<RunAs>, PgError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some(RunAs {
            uid: user.uid,
            gid: user.gid,
        })),
        Ok(None) => Err(PgError::NoPostgresUser),
        Err(errno) => Err(PgError::Io {
            action: "look up the `postgres` system user".to_owned(),
            source: errno.into(),
        }),
    }
}

/// Where to make the temp dir: `/tmp` for root (the `postgres` user can reach it), else
/// the usual temp dir unless its path is too long for a unix socket path.
fn temp_base(as_other_user: bool) -> PathBuf {
    let tmp = PathBuf::from("/tmp");
    if as_other_user {
        return tmp;
    }
    let base = std::env::temp_dir();
    if base.as_os_str().len() > MAX_TEMP_BASE_LEN {
        tmp
    } else {
        base
    }
}

fn keep_requested() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|value| !value.is_empty() && value != "0")
}

/// 16 bytes from `/dev/urandom`, in hex.
fn random_password() -> Result<String, PgError> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(io_error("read 16 random bytes from /dev/urandom"))?;
    let mut hex = String::with_capacity(32);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// Writes `contents` to a new file of mode 0600, owned by `owner` when given.
fn write_private(path: &Path, contents: &str, owner: Option<RunAs>) -> Result<(), PgError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(io_error(format!("write {}", path.display())))?;
    match owner {
        Some(user) => user.chown(path),
        None => Ok(()),
    }
}

fn free_port() -> Result<u16, PgError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_error("pick a free port by binding 127.0.0.1:0"))
}

fn port_was_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not bind IPv4 address")
}

/// Quotes a value for `postgresql.conf` (inside single quotes).
fn conf_quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
}

fn validate_database_name(name: &str) -> Result<(), PgError> {
    let ok = (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(PgError::InvalidDatabaseName {
            name: name.to_owned(),
        })
    }
}

fn describe(cmd: &Command) -> String {
    let mut shown = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

fn combined_output(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = [stdout.trim(), stderr.trim()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    if text.is_empty() {
        "(no output)".to_owned()
    } else {
        text
    }
}

/// What the log gained past byte `offset`.
fn log_since(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
}

/// The last lines of the server log, as a section to append to an error message.
fn log_section(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let tail = lines.get(start..).unwrap_or_default().join("\n");
            format!(
                "\n--- last {} lines of the server log {} (removed with the temp dir unless \
                 {KEEP_ENV}=1) ---\n{tail}",
                lines.len() - start,
                path.display()
            )
        }
        Err(err) => format!("\n--- no server log at {} ({err}) ---", path.display()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("main"), None);
        assert!(parse_version("16").unwrap() > parse_version("9.6").unwrap());
    }

    #[test]
    fn database_names() {
        for good in ["a", "test_1", "bench-2", &"x".repeat(63)] {
            validate_database_name(good).unwrap();
        }
        for bad in ["", "-x", "a b", "a'b", "a/b", "é", &"x".repeat(64)] {
            let err = validate_database_name(bad).unwrap_err();
            assert!(err.to_string().contains("invalid database name"), "{err}");
        }
    }

    #[test]
    fn password_is_32_hex_digits() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn port_taken_is_recognised() {
        assert!(port_was_taken(
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use"
        ));
        assert!(!port_was_taken(
            "FATAL:  data directory has wrong ownership"
        ));
    }

    #[test]
    fn conf_values_are_quoted() {
        assert_eq!(conf_quote("/tmp/a'b\\c"), "/tmp/a''b\\\\c");
    }
}
