//! `lastmile login | status | resources | logout` against a real API on loopback (TLS,
//! SQLite, local KMS), as a user would run them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::{path::Path, process::Command};

use lastmile_api::{ApiConfig, App, admin};
use lastmile_proto::wire::{NewGrant, NewUser, Resource, ResourceKind, Subject, UpstreamTls};

/// `lastmile` with `home`, run off the async runtime (the API under test runs on it).
fn runner(
    home: &Path,
) -> impl Fn(Vec<String>, String) -> tokio::task::JoinHandle<(i32, String, String)> {
    let home = home.to_owned();
    move |args, stdin| {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lastmile(&home, &args, &stdin)
        })
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn lastmile(home: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let out = lastmile_testkit::run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_lastmile"))
            .args(args)
            .env("LASTMILE_HOME", home)
            // `login` writes ~/.ssh/known_hosts for ssh resources: never the real one.
            .env("HOME", home)
            // The agent `login` starts must not touch a real node on this machine.
            .env("LASTMILE_NODE_SOCKET", home.join("no-node.sock")),
        stdin,
    )
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped by its parent, which exited too) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// `lastmile --output json status`, again until `ok` says so (at most 10 s).
async fn wait_status<F, Fut>(run: &F, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value
where
    F: Fn(Vec<String>, String) -> Fut,
    Fut: std::future::Future<Output = Result<(i32, String, String), tokio::task::JoinError>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, out, _) = run(
            vec!["--output".into(), "json".into(), "status".into()],
            String::new(),
        )
        .await
        .unwrap();
        let status: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if ok(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An organisation `acme` (CA under `dir/api`) with root and alice; alice's one-time
/// password.
async fn api_with_alice(dir: &Path) -> (std::sync::Arc<App>, String) {
    let config = ApiConfig {
        data_dir: dir.join("api"),
        ..ApiConfig::default()
    };
    let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
        .await
        .unwrap();
    lastmile_api::pki::Pki::create(&config.keys_dir(), "acme", &config.names, &kms)
        .await
        .unwrap();
    let app = App::open(config).await.unwrap();
    admin::bootstrap(&app, "root").await.unwrap();
    let otp = admin::add_user(
        &app,
        "test",
        NewUser {
            name: "alice".into(),
            admin: false,
            groups: vec![],
        },
    )
    .await
    .unwrap();
    (app, otp.one_time_password)
}

/// The API on a loopback port: its URL.
async fn serve(app: &std::sync::Arc<App>) -> (String, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    (
        api,
        tokio::spawn(lastmile_api::http::serve(app.clone(), listener)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_status_resources_logout() {
    if lastmile_proto::device::fingerprint(&lastmile_proto::device::MachineFacts::collect())
        .is_err()
    {
        panic!("this machine has no /etc/machine-id: the device fingerprint needs one");
    }
    let dir = tempfile::tempdir().unwrap();
    let (app, otp) = api_with_alice(dir.path()).await;
    let db = Resource {
        name: "orders-db".into(),
        kind: ResourceKind::Postgres,
        host: "127.0.0.1".into(),
        port: 5432,
        protect: vec!["127.0.0.2:5432".into()],
        upstream_tls: Some(UpstreamTls::Disable),
        credential: None,
        ssh_principals: vec![],
        database_user: None,
        databases: vec![],
        upstream_ca: None,
        ssh_host_ca: vec![],
        ssh_host_keys: vec![],
        ssh_allow_port_forwarding: false,
        names: vec![],
    };
    admin::put_resource(&app, "test", db).await.unwrap();
    admin::add_grant(
        &app,
        "test",
        NewGrant {
            resource: "orders-db".into(),
            subject: Subject::User("alice".into()),
            expires_at: None,
        },
    )
    .await
    .unwrap();
    let (api, server) = serve(&app).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, app.pki.ca_pem()).unwrap();
    let home = dir.path().join("home");

    let run = runner(&home);
    let s = strings;

    // Not logged in yet.
    let (code, out, _) = run(s(&["status"]), String::new()).await.unwrap();
    assert_eq!(code, 1);
    assert!(out.contains("not logged in"), "{out}");
    // No CA pinned: refused with what to do.
    let (code, _, err) = run(
        s(&[
            "login",
            "--api",
            &api,
            "--user",
            "alice",
            "--password-stdin",
        ]),
        String::new(),
    )
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("--ca"), "{err}");
    // A wrong password.
    let (code, _, err) = run(
        s(&[
            "login",
            "--api",
            &api,
            "--ca",
            ca.to_str().unwrap(),
            "--user",
            "alice",
            "--password-stdin",
        ]),
        "wrong\n".into(),
    )
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("wrong user name or password"), "{err}");
    // A CA is pinned only by a login that succeeds with it.
    assert!(!home.join("ca.pem").exists());
    // The one-time password, then a new one.
    let stdin = format!("{otp}\na long enough password\n");
    let (code, out, err) = run(
        s(&[
            "--output",
            "json",
            "login",
            "--api",
            &api,
            "--ca",
            ca.to_str().unwrap(),
            "--user",
            "alice",
            "--password-stdin",
        ]),
        stdin,
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let login: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(login["user"], "alice");
    // Login started the agent.
    let first_agent = login["agent_pid"].as_u64().expect("login starts the agent") as i32;
    assert!(alive(first_agent));
    let device = login["device"].as_str().unwrap().to_owned();
    for f in ["device.key", "session.json"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(home.join(f)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }

    let (code, out, _) = run(s(&["--output", "json", "status"]), String::new())
        .await
        .unwrap();
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (status["user"].as_str(), status["device"].as_str()),
        (Some("alice"), Some(device.as_str()))
    );
    // The agent reports itself (once it has written its state), waiting for a node.
    wait_status(&run, |s| {
        s["agent"]["pid"].as_i64() == Some(i64::from(first_agent))
            && s["agent"]["node"]
                .as_str()
                .is_some_and(|n| n.starts_with("not registered"))
    })
    .await;
    let (code, out, _) = run(s(&["--output", "json", "resources"]), String::new())
        .await
        .unwrap();
    assert_eq!(code, 0);
    let list: Vec<Resource> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].protect, ["127.0.0.2:5432"]);

    // Logging in again uses the same device key (remembered API, user and CA).
    let (code, out, err) = run(
        s(&["--output", "json", "login", "--password-stdin"]),
        "a long enough password\n".into(),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["device"], device.as_str());
    assert_ne!(again["session"], login["session"]);
    // The new session's agent replaced the old one.
    let second_agent = again["agent_pid"].as_u64().unwrap() as i32;
    assert_ne!(second_agent, first_agent);
    assert!(!alive(first_agent), "the first agent is still running");
    wait_status(&run, |s| s["agent"]["session"] == again["session"]).await;

    // An admin revokes the session: status says so and what to do.
    admin::revoke(
        &app,
        "test",
        again["session"].as_str().unwrap(),
        Some("test"),
    )
    .await
    .unwrap();
    let (code, out, _) = run(s(&["status"]), String::new()).await.unwrap();
    assert_eq!(code, 1);
    assert!(
        out.contains("no longer valid") && out.contains("lastmile login"),
        "{out}"
    );
    // The agent heard it on the revocation stream and says so too.
    let status = wait_status(&run, |s| s["agent"]["revoked"].is_string()).await;
    assert!(
        status["agent"]["revoked"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{status}"
    );

    let (code, _, err) = run(
        s(&["login", "--password-stdin"]),
        "a long enough password\n".into(),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let third_agent: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(home.join("agent.json")).unwrap_or_else(|_| "{}".into()),
    )
    .unwrap();
    let (code, out, _) = run(s(&["logout"]), String::new()).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("revoked"), "{out}");
    assert!(!home.join("session.json").exists());
    // Logout stopped the agent.
    if let Some(pid) = third_agent["pid"].as_i64() {
        assert!(!alive(pid as i32), "the agent outlived the logout");
    }
    server.abort();
}

/// A login whose CA is not the API's fails the TLS check, says so and what to do, and
/// pins nothing; `logout` keeps the API and user, so the next `login` needs neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_not_pinned_and_logout_keeps_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let (app, otp) = api_with_alice(dir.path()).await;
    let (api, server) = serve(&app).await;
    let ca = dir.path().join("org-ca.pem");
    std::fs::write(&ca, app.pki.ca_pem()).unwrap();
    // Another organisation's CA, made the same way.
    let (other, _) = api_with_alice(&dir.path().join("other")).await;
    let wrong = dir.path().join("other-ca.pem");
    std::fs::write(&wrong, other.pki.ca_pem()).unwrap();
    let home = dir.path().join("home");
    let run = runner(&home);
    let login = |api: Option<&str>, ca: Option<&Path>, user: Option<&str>| {
        let mut args = vec![
            "login".to_owned(),
            "--no-agent".into(),
            "--password-stdin".into(),
        ];
        for (flag, value) in [
            ("--api", api.map(str::to_owned)),
            ("--ca", ca.map(|c| c.display().to_string())),
            ("--user", user.map(str::to_owned)),
        ] {
            if let Some(v) = value {
                args.extend([flag.to_owned(), v]);
            }
        }
        args
    };

    let stdin = format!("{otp}\na long enough password\n");
    let (code, out, err) = run(
        login(Some(&api), Some(&wrong), Some("alice")),
        stdin.clone(),
    )
    .await
    .unwrap();
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains(&format!(
            "the API at {api} has a TLS certificate that was not issued by the CA in {}",
            wrong.display()
        )) && err.contains("pass --ca the organisation's CA certificate")
            && err.contains("the CA was not pinned"),
        "{err}"
    );
    assert!(!home.join("ca.pem").exists(), "the wrong CA was pinned");
    // Nothing pinned: a login without --ca asks for one.
    let (code, _, err) = run(login(Some(&api), None, Some("alice")), stdin.clone())
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("no pinned CA: pass --ca"), "{err}");

    // The right CA: logged in, and now it is pinned.
    let (code, out, err) = run(login(Some(&api), Some(&ca), Some("alice")), stdin)
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("logged in as alice"), "{out}");
    assert_eq!(
        std::fs::read_to_string(home.join("ca.pem")).unwrap(),
        app.pki.ca_pem()
    );
    // A later --ca that is wrong is refused and leaves the pinned one alone.
    let (code, _, err) = run(
        login(None, Some(&wrong), None),
        "a long enough password\n".into(),
    )
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("not issued by the CA in"), "{err}");
    assert_eq!(
        std::fs::read_to_string(home.join("ca.pem")).unwrap(),
        app.pki.ca_pem()
    );

    let (code, out, _) = run(vec!["logout".into()], String::new()).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains("revoked"), "{out}");
    assert!(!home.join("session.json").exists());
    // The help says the API is remembered: after logout, no --api (nor --user) is needed.
    let (_, help, _) = run(vec!["login".into(), "--help".into()], String::new())
        .await
        .unwrap();
    assert!(
        help.contains("remembered after a login, also across `logout`"),
        "{help}"
    );
    let (code, out, err) = run(login(None, None, None), "a long enough password\n".into())
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("logged in as alice"), "{out}");
    let (code, out, _) = run(vec!["status".into()], String::new()).await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("alice"), "{out}");
    server.abort();
}

/// With the API down, `status` still says what this machine knows (the session and
/// certificate from the saved files, the agent, the node link, each gateway) and that
/// the API is unreachable; exit 0 while the agent runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_works_with_the_api_down() {
    let dir = tempfile::tempdir().unwrap();
    let (app, otp) = api_with_alice(dir.path()).await;
    let (api, server) = serve(&app).await;
    let ca = dir.path().join("org-ca.pem");
    std::fs::write(&ca, app.pki.ca_pem()).unwrap();
    let home = dir.path().join("home");
    let run = runner(&home);
    let s = strings;
    let (code, out, err) = run(
        s(&[
            "--output",
            "json",
            "login",
            "--api",
            &api,
            "--ca",
            ca.to_str().unwrap(),
            "--user",
            "alice",
            "--password-stdin",
        ]),
        format!("{otp}\na long enough password\n"),
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let login: serde_json::Value = serde_json::from_str(&out).unwrap();
    let agent = login["agent_pid"].as_u64().expect("login starts the agent") as i32;
    wait_status(&run, |s| {
        s["agent"]["pid"].as_i64() == Some(i64::from(agent))
    })
    .await;

    server.abort();
    let _ = server.await;
    let (code, out, err) = run(s(&["status"]), String::new()).await.unwrap();
    assert_eq!(code, 0, "the agent runs, so status succeeds: {out}{err}");
    assert!(out.starts_with("api:         unreachable"), "{out}");
    assert!(
        out.contains("user:        alice (as saved at login)"),
        "{out}"
    );
    assert!(
        out.contains("session:     ses_") && out.contains("certificate: until 20"),
        "{out}"
    );
    assert!(
        out.contains(&format!("agent:       running (pid {agent})")),
        "{out}"
    );
    // Its node link as the agent last wrote it (here none: `connecting` or `not
    // registered`, as it retries).
    assert!(out.contains("\nnode:        "), "{out}");
    let (code, out, _) = run(s(&["--output", "json", "status"]), String::new())
        .await
        .unwrap();
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["api_reachable"], false, "{status}");
    assert_eq!(status["user"], "alice");
    assert!(
        status["session_expires"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "RFC 3339 beside the epoch: {status}"
    );
    // The agent ends with the test (logout would need the API).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent),
        nix::sys::signal::Signal::SIGTERM,
    );
}
