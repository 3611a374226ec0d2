//! `lastmile login | logout | status | resources`: the user's identity on this machine.
//!
//! State lives in `$LASTMILE_HOME` (default `$XDG_CONFIG_HOME/lastmile`, else
//! `~/.config/lastmile`), a 0700 directory:
//! - `device.key`: the device key's seed (Ed25519), 0600, made on first use and never
//!   sent anywhere; only its signatures leave the machine.
//! - `ca.pem`: the organisation's CA, pinned by the first login that succeeds with it
//!   (`--ca`); a login that fails keeps the CA pinned before it.
//! - `session.json`: the current session (its key seed, ids, certificate), 0600.
//! - `login.json`: the API URL and user name of the last login, kept by `logout`, so the
//!   next `login` needs neither `--api` nor `--user`.

use lastmile_proto::wire::ErrorCode;
use std::{
    io::{BufRead as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use clap::{Args, ValueEnum};
use ed25519_dalek::SigningKey;
use lastmile_api_client::{ApiClient, ClientError, Login, Session};
use lastmile_proto::wire::{LoginResponse, Resource};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The API, e.g. https://lastmile.example.org:8443 (remembered after a login, also
    /// across `logout`).
    #[arg(long)]
    api: Option<String>,
    /// The organisation's CA certificate (PEM), from your admin: pinned once a login with
    /// it succeeds.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Your user name (default: the last login's, else $USER).
    #[arg(long)]
    user: Option<String>,
    /// Read the password (and, if the API asks for one, a new password on the next line)
    /// from standard input instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    /// The current TOTP code, if your user has TOTP (else you are asked when needed).
    #[arg(long)]
    totp: Option<String>,
    /// Do not start the agent (`lastmile agent`) after logging in.
    #[arg(long)]
    no_agent: bool,
}

/// The session as kept on disk.
#[derive(Serialize, Deserialize)]
struct Saved {
    api: String,
    session_key: String,
    login: LoginResponse,
}

/// What the next `login` takes by default: the last login's API and user (`login.json`).
#[derive(Serialize, Deserialize)]
struct Remembered {
    api: String,
    user: String,
}

const REMEMBERED: &str = "login.json";

/// The last login's API and user: `login.json`, else (a home from before it existed) the
/// saved session.
fn remembered(home: &Path) -> Option<Remembered> {
    let read = |f: &str| std::fs::read_to_string(home.join(f)).ok();
    if let Some(r) = read(REMEMBERED).and_then(|t| serde_json::from_str(&t).ok()) {
        return Some(r);
    }
    let text = Zeroizing::new(read("session.json")?);
    let saved: Saved = serde_json::from_str(&text).ok()?;
    Some(Remembered {
        api: saved.api,
        user: saved.login.user,
    })
}

fn remember(home: &Path, api: &str, user: &str) -> anyhow::Result<()> {
    let r = Remembered {
        api: api.to_owned(),
        user: user.to_owned(),
    };
    write_private(&home.join(REMEMBERED), &serde_json::to_vec(&r)?)
}

pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("LASTMILE_HOME") {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("lastmile"));
    }
    let home = std::env::var_os("HOME")
        .context("neither LASTMILE_HOME, XDG_CONFIG_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".config/lastmile"))
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn ensure_home(home: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .with_context(|| format!("creating {}", home.display()))
}

/// The device key: loaded, or made on first use.
fn device_key(home: &Path) -> anyhow::Result<SigningKey> {
    let path = home.join("device.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let seed = Zeroizing::new(
                B64.decode(text.trim())
                    .with_context(|| format!("{} is damaged", path.display()))?,
            );
            let seed: [u8; 32] = seed
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} is damaged", path.display()))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = lastmile_api_client::new_key()?;
            write_private(&path, B64.encode(key.to_bytes()).as_bytes())?;
            eprintln!("made this machine's device key: {}", path.display());
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub(crate) fn load(home: &Path) -> anyhow::Result<Option<(ApiClient, Session)>> {
    let text = match std::fs::read_to_string(home.join("session.json")) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading the session"),
    };
    let saved: Saved = serde_json::from_str(&text)
        .context("the saved session is damaged: run `lastmile login`")?;
    let ca = std::fs::read_to_string(home.join("ca.pem"))
        .context("the pinned CA is missing: run `lastmile login --ca …`")?;
    let seed = Zeroizing::new(
        B64.decode(&saved.session_key)
            .context("the saved session is damaged")?,
    );
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("the saved session is damaged"))?;
    let client = ApiClient::new(&saved.api, &ca, None)?;
    Ok(Some((
        client,
        Session {
            device_key: device_key(home)?,
            session_key: SigningKey::from_bytes(&seed),
            login: saved.login,
        },
    )))
}

fn read_secret(prompt: &str, from_stdin: bool) -> anyhow::Result<Zeroizing<String>> {
    if from_stdin {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(Zeroizing::new(
            line.trim_end_matches(['\n', '\r']).to_owned(),
        ));
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password(prompt).context("reading the password from the terminal")?,
    ))
}

/// The id of the session saved in `home`, if there is one.
pub(crate) fn saved_session_id(home: &Path) -> anyhow::Result<Option<String>> {
    let text = match std::fs::read_to_string(home.join("session.json")) {
        Ok(t) => Zeroizing::new(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading the session"),
    };
    let saved: Saved = serde_json::from_str(&text).context("the saved session is damaged")?;
    Ok(Some(saved.login.session))
}

/// Saves a renewed session certificate (the agent renews it before it ends).
pub(crate) fn save_certificate(home: &Path, session: &Session) -> anyhow::Result<()> {
    let path = home.join("session.json");
    let text = Zeroizing::new(std::fs::read_to_string(&path).context("reading the session")?);
    let mut saved: Saved = serde_json::from_str(&text).context("the saved session is damaged")?;
    if saved.login.session != session.login.session {
        bail!("the saved session changed (a new login); not overwriting it");
    }
    saved
        .login
        .certificate
        .clone_from(&session.login.certificate);
    saved.login.certificate_expires_at = session.login.certificate_expires_at;
    write_private(
        &path,
        Zeroizing::new(serde_json::to_vec(&saved)?).as_slice(),
    )
}

pub async fn login(a: LoginArgs, out: Output) -> anyhow::Result<()> {
    let home = home()?;
    ensure_home(&home)?;
    let previous = remembered(&home);
    let api = a
        .api
        .or_else(|| previous.as_ref().map(|p| p.api.clone()))
        .context("which API? pass --api https://…")?;
    let ca_path = home.join("ca.pem");
    // A CA given with --ca is only tried here; it is pinned once a login with it succeeds.
    let ca = match &a.ca {
        Some(ca) => {
            let pem =
                std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
            if !pem.contains("BEGIN CERTIFICATE") {
                bail!("{} is not a PEM certificate", ca.display());
            }
            pem
        }
        None => std::fs::read_to_string(&ca_path).context(
            "no pinned CA: pass --ca with the organisation's CA certificate (ask your admin)",
        )?,
    };
    let user = a
        .user
        .or_else(|| previous.as_ref().map(|p| p.user.clone()))
        .or_else(|| std::env::var("USER").ok())
        .context("which user? pass --user")?;
    let device = device_key(&home)?;
    let facts = lastmile_proto::device::MachineFacts::collect();
    let fingerprint = lastmile_proto::device::fingerprint(&facts)?;
    let name = facts
        .hostname
        .clone()
        .unwrap_or_else(|| "unnamed machine".into());
    let client = ApiClient::new(&api, &ca, None)?;
    let password = read_secret(&format!("password for {user}: "), a.password_stdin)?;
    let mut totp = a.totp.clone();
    let mut new_password: Option<Zeroizing<String>> = None;
    let session = loop {
        let attempt = client
            .login(&Login {
                user: &user,
                password: &password,
                totp: totp.as_deref(),
                new_password: new_password.as_ref().map(|p| p.as_str()),
                device_key: &device,
                fingerprint: &fingerprint,
                device_name: &name,
            })
            .await;
        match attempt {
            Ok(s) => break s,
            Err(e)
                if e.code() == Some(&ErrorCode::PasswordChangeRequired)
                    && new_password.is_none() =>
            {
                eprintln!("this is a one-time password: choose your own (at least 12 characters)");
                let first = read_secret("new password: ", a.password_stdin)?;
                if !a.password_stdin && *read_secret("again: ", false)? != *first {
                    bail!("the two passwords differ; nothing was changed");
                }
                new_password = Some(first);
            }
            Err(e)
                if e.code() == Some(&ErrorCode::TotpRequired)
                    && totp.is_none()
                    && !a.password_stdin =>
            {
                let mut code = String::new();
                eprint!("TOTP code: ");
                std::io::stdin().lock().read_line(&mut code)?;
                totp = Some(code.trim().to_owned());
            }
            Err(e) if e.certificate_not_from_ca() => {
                return Err(untrusted_api(&api, a.ca.as_deref(), &ca_path));
            }
            Err(e) => return Err(explain(e)),
        }
    };
    if a.ca.is_some() {
        write_private(&ca_path, ca.as_bytes())?;
    }
    remember(&home, &api, &session.login.user)?;
    let saved = Saved {
        api,
        session_key: B64.encode(session.session_key.to_bytes()),
        login: session.login.clone(),
    };
    write_private(
        &home.join("session.json"),
        Zeroizing::new(serde_json::to_vec(&saved)?).as_slice(),
    )?;
    let known_hosts = match ssh_known_hosts(&home, &client, &session).await {
        Ok(note) => note,
        Err(e) => {
            eprintln!(
                "warning: ~/.ssh/known_hosts not updated for lastmile's ssh resources: {e:#}"
            );
            None
        }
    };
    let agent_pid = if a.no_agent {
        None
    } else {
        Some(crate::agent::spawn(&home)?)
    };
    let l = &session.login;
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"user": l.user, "device": l.device, "session": l.session, "session_expires_at": l.session_expires_at, "agent_pid": agent_pid, "known_hosts": known_hosts})
            )?
        ),
        Output::Text => {
            println!(
                "logged in as {} on device {} until {}",
                l.user,
                l.device,
                when(l.session_expires_at)
            );
            if let Some(path) = &known_hosts {
                println!(
                    "ssh: the organisation's SSH host CA is trusted for your ssh resources in {path}"
                );
            }
            if let Some(pid) = agent_pid {
                println!(
                    "agent started (pid {pid}); its log: {}",
                    home.join("agent.log").display()
                );
            }
        }
    }
    Ok(())
}

/// What `lastmile login` wrote to known_hosts, for `logout`.
#[derive(Serialize, Deserialize)]
struct KnownHostsState {
    organisation: String,
    path: PathBuf,
}

/// Writes (or refreshes) lastmile's `@cert-authority` block in `~/.ssh/known_hosts` for
/// the `ssh` resources the user can reach; the file's path when it holds one.
async fn ssh_known_hosts(
    home: &Path,
    client: &ApiClient,
    session: &Session,
) -> anyhow::Result<Option<String>> {
    let bundle: lastmile_proto::wire::CaBundle = client
        .get("/v1/ca")
        .await
        .context("reading the organisation's SSH host CA")?;
    let list: Vec<Resource> = client
        .call(session, Method::GET, "/v1/resources", None)
        .await?
        .json()
        .map_err(explain)?;
    let path = crate::known_hosts::default_path()?;
    let block = crate::known_hosts::block(&bundle.organisation, &bundle.ssh_host_ca, &list);
    crate::known_hosts::update(&path, &bundle.organisation, block.as_deref())?;
    let state = home.join(crate::known_hosts::STATE_FILE);
    if block.is_some() {
        let s = KnownHostsState {
            organisation: bundle.organisation,
            path: path.clone(),
        };
        write_private(&state, &serde_json::to_vec(&s)?)?;
        Ok(Some(path.display().to_string()))
    } else {
        let _ = std::fs::remove_file(&state);
        Ok(None)
    }
}

/// Takes lastmile's block out of the known_hosts file `login` wrote it to.
fn forget_ssh_known_hosts(home: &Path) -> anyhow::Result<()> {
    let state = home.join(crate::known_hosts::STATE_FILE);
    let Ok(text) = std::fs::read_to_string(&state) else {
        return Ok(());
    };
    let s: KnownHostsState = serde_json::from_str(&text).context("reading known_hosts.json")?;
    crate::known_hosts::update(&s.path, &s.organisation, None)?;
    std::fs::remove_file(&state).context("removing known_hosts.json")?;
    Ok(())
}

pub(crate) fn when(t: i64) -> String {
    u64::try_from(t)
        .map(|s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        })
        .unwrap_or_else(|_| t.to_string())
}

/// The API's certificate is not from the CA this login used: which CA, and what to do.
fn untrusted_api(api: &str, given: Option<&Path>, pinned: &Path) -> anyhow::Error {
    match given {
        Some(ca) => anyhow::anyhow!(
            "the API at {api} has a TLS certificate that was not issued by the CA in {}: \
             pass --ca the organisation's CA certificate (the file `lastmile-api init` wrote, \
             org-ca.pem; ask your admin) and check that --api names your organisation's API; \
             the CA was not pinned",
            ca.display()
        ),
        None => anyhow::anyhow!(
            "the API at {api} has a TLS certificate that was not issued by the CA pinned in {}: \
             if your organisation's CA changed, log in with --ca and the new CA certificate \
             (ask your admin); else check that --api names your organisation's API",
            pinned.display()
        ),
    }
}

/// A refusal, with what to do.
fn explain(e: ClientError) -> anyhow::Error {
    if e.code().is_some_and(ErrorCode::session_gone) {
        anyhow::anyhow!("{e}\nrun `lastmile login`")
    } else {
        anyhow::anyhow!(e)
    }
}

pub async fn resources(out: Output) -> anyhow::Result<()> {
    let (client, session) = load(&home()?)?.context("not logged in: run `lastmile login`")?;
    let list: Vec<Resource> = client
        .call(&session, Method::GET, "/v1/resources", None)
        .await?
        .json()
        .map_err(explain)?;
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        Output::Text => {
            if list.is_empty() {
                println!("no resources granted to you");
            }
            for r in list {
                let protect = if r.protect.is_empty() {
                    String::new()
                } else {
                    format!("  protect: {}", r.protect.join(", "))
                };
                println!(
                    "{:<24} {:<9} {}{protect}",
                    r.name,
                    r.kind.to_string(),
                    lastmile_proto::wire::host_port(&r.host, r.port),
                );
                println!("{:<24} use: {}", "", how_to_reach(&r));
            }
        }
    }
    Ok(())
}

/// `lastmile ca`: the organisation's CA, as pinned at login.
pub fn ca(path_only: bool) -> anyhow::Result<()> {
    let file = home()?.join("ca.pem");
    let pem = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "reading {}: log in first (`lastmile login --ca …` pins the organisation's CA)",
            file.display()
        )
    })?;
    if path_only {
        println!("{}", file.display());
    } else {
        print!("{pem}");
    }
    Ok(())
}

pub async fn logout() -> anyhow::Result<()> {
    let home = home()?;
    let Some((client, session)) = load(&home)? else {
        println!("not logged in");
        return Ok(());
    };
    crate::agent::stop(&home);
    // The API and user stay for the next login (a home from before `login.json` has them
    // only in the session about to go).
    if let Some(r) = remembered(&home) {
        remember(&home, &r.api, &r.user)?;
    }
    // Forget the session locally whatever the API says: a dead session is gone anyway.
    let answer = client
        .call(&session, Method::POST, "/v1/logout", None)
        .await;
    std::fs::remove_file(home.join("session.json")).context("removing the session")?;
    if let Err(e) = forget_ssh_known_hosts(&home) {
        eprintln!("warning: lastmile's lines are still in ~/.ssh/known_hosts: {e:#}");
    }
    match answer {
        Ok(a) if a.status == 204 => {
            println!("logged out; session {} revoked", session.login.session)
        }
        Ok(a) => println!("logged out here; the API said: {}", a.body),
        Err(e) => println!(
            "logged out here; the API could not be told ({})",
            lastmile_audit_sink::error_chain(&e)
        ),
    }
    Ok(())
}

/// The command a user runs to reach `r`: its native client at the first protected
/// address (the node redirects it), or `lastmile listen` when nothing is protected.
pub fn how_to_reach(r: &Resource) -> String {
    use lastmile_proto::wire::ResourceKind;
    // `ADDR:PORT`, `[ADDR6]:PORT`; a prefix (`NET/LEN:PORT`) names no one host.
    let target = r.protect.iter().find_map(|p| {
        let (host, port) = p.rsplit_once(':')?;
        (!host.contains('/')).then(|| {
            (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                port.to_owned(),
            )
        })
    });
    let db = r
        .databases
        .first()
        .map(|d| format!(" -d {d}"))
        .unwrap_or_default();
    match (r.kind, target) {
        (ResourceKind::Postgres, Some((host, port))) => format!("psql -h {host} -p {port}{db}"),
        (ResourceKind::Ssh, Some((host, port))) => {
            let login = r
                .ssh_principals
                .first()
                .map(|p| format!("{p}@"))
                .unwrap_or_default();
            if port == "22" {
                format!("ssh {login}{host}")
            } else {
                format!("ssh -p {port} {login}{host}")
            }
        }
        (ResourceKind::Tcp, Some((host, port))) => format!("connect to {host}:{port}"),
        (ResourceKind::Postgres, None) => format!(
            "lastmile listen {} --port 15432, then psql -h 127.0.0.1 -p 15432{db}",
            r.name
        ),
        (_, None) => format!(
            "lastmile listen {} --port N, then connect to 127.0.0.1:N",
            r.name
        ),
    }
}

#[cfg(test)]
mod reach_tests {
    use lastmile_proto::wire::{Resource, ResourceKind};

    fn resource(kind: ResourceKind, protect: &[&str]) -> Resource {
        Resource {
            name: "orders".into(),
            kind,
            host: "127.0.0.5".into(),
            port: 5432,
            protect: protect.iter().map(|p| (*p).to_owned()).collect(),
            upstream_tls: None,
            credential: None,
            ssh_principals: vec![],
            database_user: None,
            databases: vec!["app".into()],
            upstream_ca: None,
            ssh_host_ca: vec![],
            ssh_host_keys: vec![],
            ssh_allow_port_forwarding: false,
        }
    }

    #[test]
    fn postgres_resources_say_which_psql_to_run() {
        let r = resource(
            ResourceKind::Postgres,
            &["127.20.0.0/24:5432", "[::1]:5432"],
        );
        assert_eq!(super::how_to_reach(&r), "psql -h ::1 -p 5432 -d app");
        let r = resource(ResourceKind::Postgres, &[]);
        assert!(super::how_to_reach(&r).starts_with("lastmile listen orders"));
    }

    #[test]
    fn ssh_resources_say_which_ssh_to_run() {
        let mut r = resource(ResourceKind::Ssh, &["127.0.0.3:22"]);
        r.ssh_principals = vec!["deploy".into(), "root".into()];
        assert_eq!(super::how_to_reach(&r), "ssh deploy@127.0.0.3");
        r.protect = vec!["127.0.0.2:2222".into()];
        assert_eq!(super::how_to_reach(&r), "ssh -p 2222 deploy@127.0.0.2");
    }
}
