//! A whole lastmile on loopback for the tunnel tests: the API in this process (TLS,
//! SQLite, local KMS), gateways as `lastmiled gateway run` processes, users logged in with
//! the real `lastmile` binary, and an echo server as the resource.

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lastmile_api::{ApiConfig, App, admin};
use lastmile_proto::wire::{
    NewGatewayToken, NewGrant, NewUser, Resource, ResourceKind, Subject, UpstreamTls,
};

/// Every test user's password after their first login.
pub const PASSWORD: &str = "correct horse battery staple";

/// The `lastmile` binary, built by `cargo test --workspace` next to lastmiled.
pub fn lastmile_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("lastmile");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p lastmile` first)",
        path.display()
    );
    path
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub app: std::sync::Arc<App>,
    pub api_url: String,
    pub ca: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The same, with the API's configuration changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut ApiConfig)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lastmile-tunnel-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut config = ApiConfig {
            data_dir: dir.path().join("api"),
            ..ApiConfig::default()
        };
        tweak(&mut config);
        let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
            .await
            .unwrap();
        lastmile_api::pki::Pki::create(&config.keys_dir(), "acme", &config.names, &kms)
            .await
            .unwrap();
        let app = App::open(config).await.unwrap();
        admin::bootstrap(&app, "root").await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let server = tokio::spawn({
            let app = app.clone();
            async move {
                let _ = lastmile_api::http::serve(app, listener).await;
            }
        });
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, app.pki.ca_pem()).unwrap();
        Self {
            dir,
            app,
            api_url,
            ca,
            server,
        }
    }

    /// A `tcp` resource at `upstream`, protecting `protect`, granted to `users`.
    pub async fn resource(
        &self,
        name: &str,
        upstream: SocketAddr,
        protect: &[&str],
        users: &[&str],
    ) {
        self.resource_of(ResourceKind::Tcp, name, upstream, protect, users)
            .await;
    }

    /// A resource of `kind`.
    pub async fn resource_of(
        &self,
        kind: ResourceKind,
        name: &str,
        upstream: SocketAddr,
        protect: &[&str],
        users: &[&str],
    ) {
        admin::put_resource(
            &self.app,
            "test",
            Resource {
                name: name.into(),
                kind,
                host: upstream.ip().to_string(),
                port: upstream.port(),
                protect: protect.iter().map(|p| (*p).to_owned()).collect(),
                // upstream_tls is a postgres field (other kinds refuse it).
                upstream_tls: (kind == ResourceKind::Postgres).then_some(UpstreamTls::Disable),
                credential: None,
                ssh_principals: vec![],
                database_user: None,
                databases: vec![],
                upstream_ca: None,
                ssh_host_ca: vec![],
                ssh_host_keys: vec![],
                ssh_allow_port_forwarding: false,
                names: vec![],
            },
        )
        .await
        .unwrap();
        for u in users {
            admin::add_grant(
                &self.app,
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

    /// Makes user `name` and logs them in with `lastmile login --no-agent`; their
    /// LASTMILE_HOME.
    pub async fn user(&self, name: &str) -> PathBuf {
        let otp = admin::add_user(
            &self.app,
            "test",
            NewUser {
                name: name.into(),
                admin: false,
                groups: vec![],
            },
        )
        .await
        .unwrap();
        let home = self.dir.path().join(format!("home-{name}"));
        self.login(
            &home,
            name,
            &format!("{}\n{PASSWORD}\n", otp.one_time_password),
        )
        .await;
        home
    }

    /// Logs `name` in (again) from `home`, a device of its own.
    pub async fn login(&self, home: &Path, name: &str, stdin: &str) {
        let out = self
            .lastmile(
                home,
                &[
                    "login",
                    "--api",
                    &self.api_url,
                    "--ca",
                    self.ca.to_str().unwrap(),
                    "--user",
                    name,
                    "--password-stdin",
                    "--no-agent",
                ],
                stdin,
            )
            .await;
        assert!(out.0 == 0, "login failed: {out:?}");
    }

    /// Runs `lastmile ARGS` with `home`, feeding `stdin`.
    pub async fn lastmile(&self, home: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
        let home = home.to_owned();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let stdin = stdin.to_owned();
        tokio::task::spawn_blocking(move || {
            let out = lastmile_testkit::run_with_stdin(
                Command::new(lastmile_bin())
                    .args(&args)
                    .env("LASTMILE_HOME", &home)
                    // `lastmile login` writes ~/.ssh/known_hosts: never the real one.
                    .env("HOME", &home),
                &stdin,
            )
            .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }

    /// Enrolls gateway `name` (certificate address 127.0.0.1) and starts it.
    pub async fn gateway(&self, name: &str) -> GatewayProcess {
        self.gateway_with(name, "").await
    }

    /// The same, with more `[gateway]` settings.
    pub async fn gateway_with(&self, name: &str, extra: &str) -> GatewayProcess {
        let token = lastmile_api::gateways::new_token(
            &self.app,
            "test",
            NewGatewayToken {
                name: name.into(),
                addresses: vec!["127.0.0.1".into()],
                ttl: None,
            },
        )
        .await
        .unwrap();
        let dir = self.dir.path().join(format!("gateway-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("lastmiled.toml");
        let events = dir.join("events.jsonl");
        std::fs::write(
            &config,
            format!(
                "[api]\nurl = {:?}\nstate_dir = {:?}\n[gateway]\nlisten = \"127.0.0.1:0\"\nevents = {events:?}\n{extra}\n",
                self.api_url,
                dir.join("state")
            ),
        )
        .unwrap();
        let out = Command::new(crate::support::lastmiled())
            .args(["gateway", "enroll", "--config"])
            .arg(&config)
            .args(["--token", &token.token, "--ca"])
            .arg(&self.ca)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "enroll: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut g = GatewayProcess {
            name: name.into(),
            enrolled_certificate: std::fs::read_to_string(dir.join("state/gateway.pem")).unwrap(),
            dir,
            config,
            events,
            child: None,
        };
        g.spawn();
        g
    }
}

/// A `lastmiled gateway run` process.
pub struct GatewayProcess {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub events: PathBuf,
    /// The certificate enrollment stored, read before the gateway first ran (it may
    /// renew it at once).
    pub enrolled_certificate: String,
    child: Option<Child>,
}

impl GatewayProcess {
    pub fn spawn(&mut self) {
        // The log is appended to across restarts: wait for this start's own line.
        let started = |logs: &str| logs.matches("gateway serving tunnels").count();
        let before = started(&self.logs());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))
            .unwrap();
        let child = Command::new(crate::support::lastmiled())
            .args(["gateway", "run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,h2=warn,rustls=warn")
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while started(&self.logs()) == before {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("gateway {} exited ({status}): {}", self.name, self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "gateway {} did not start: {}",
                self.name,
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the gateway dies as a crashed host would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits for an event of `kind` matching `pred`.
    pub fn wait_event(
        &self,
        kind: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .find(|e| e["kind"] == kind && pred(e))
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event at {}: {:#?}\n{}",
                self.name,
                self.events(),
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An echo server on `addr` (threads; each connection echoes until EOF, then closes).
pub fn echo_server(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap();
    let local = listener.local_addr().unwrap();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    local
}

/// `lastmile listen RESOURCE --port 0`: the process and the address it listens on.
pub struct Listen {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Listen {
    pub fn start(home: &Path, resource: &str) -> Self {
        Self::start_on(home, resource, 0)
    }

    /// The same on `port` (0: any).
    pub fn start_on(home: &Path, resource: &str, port: u16) -> Self {
        let mut child = Command::new(lastmile_bin())
            .args([
                "--output",
                "json",
                "listen",
                resource,
                "--port",
                &port.to_string(),
            ])
            .env("LASTMILE_HOME", home)
            .env("RUST_LOG", "info,h2=warn,rustls=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "listen printed {line:?}; stderr: {}",
                stderr.lock().unwrap()
            )
        });
        Self {
            child,
            addr: v["listening"].as_str().unwrap().parse().unwrap(),
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `data` on a fresh connection to `addr` and reads the echo back.
pub fn echo_through(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = s.try_clone()?;
    let data = data.to_vec();
    let sender = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back)?;
    sender.join().unwrap()?;
    Ok(back)
}

/// Makes `dir` and everything in it `uid`'s (the agent runs as that user).
pub fn chown_tree(dir: &std::path::Path, uid: u32) {
    let id = Some(nix::unistd::Uid::from_raw(uid));
    let gid = Some(nix::unistd::Gid::from_raw(uid));
    nix::unistd::chown(dir, id, gid).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        nix::unistd::chown(&entry.path(), id, gid).unwrap();
    }
}

/// `lastmile agent` as `uid`, for `home`, registered with `socket`; killed when dropped.
pub struct AgentProcess {
    child: std::process::Child,
    home: std::path::PathBuf,
}

impl AgentProcess {
    pub fn start(home: &std::path::Path, socket: &std::path::Path, uid: u32) -> Self {
        use std::os::unix::process::CommandExt as _;
        chown_tree(home, uid);
        let log = std::fs::File::create(home.join("agent.log")).unwrap();
        nix::unistd::chown(
            &home.join("agent.log"),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
        )
        .unwrap();
        let child = std::process::Command::new(lastmile_bin())
            .arg("agent")
            .env("LASTMILE_HOME", home)
            .env("LASTMILE_NODE_SOCKET", socket)
            .env("RUST_LOG", "info,h2=warn,rustls=warn")
            .uid(uid)
            .gid(uid)
            .stderr(log)
            .spawn()
            .unwrap();
        let agent = Self {
            child,
            home: home.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.state()["node"]
            .as_str()
            .is_some_and(|n| n.starts_with("registered"))
        {
            assert!(
                Instant::now() < deadline,
                "the agent did not register: {}\n{}",
                agent.state(),
                agent.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    pub fn state(&self) -> serde_json::Value {
        std::fs::read_to_string(self.home.join("agent.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.home.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
