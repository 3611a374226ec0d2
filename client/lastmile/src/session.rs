//! `lastmile login | logout | status | resources`: the user's identity on this machine.
//!
//! What they keep on this machine is in `$LASTMILE_HOME`; see [`crate::home`].

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use lastmile_api_client::{ApiClient, ClientError, Login, Session};
use lastmile_proto::wire::{ErrorCode, Resource};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::home::{self, Home};

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

pub async fn login(a: LoginArgs, out: Output) -> anyhow::Result<()> {
    let home = Home::locate()?;
    home.ensure()?;
    let previous = home.remembered();
    let api = a
        .api
        .or_else(|| previous.as_ref().map(|p| p.api.clone()))
        .context("which API? pass --api https://…")?;
    let ca_path = home.join(home::CA);
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
    let device = home.device_key()?;
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
        home.write_private(home::CA, ca.as_bytes())?;
    }
    home.remember(&api, &session.login.user)?;
    home.save_session(&api, &session)?;
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
        crate::home::write_private(&state, &serde_json::to_vec(&s)?)?;
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
    let (client, session) = Home::locate()?
        .load()?
        .context("not logged in: run `lastmile login`")?;
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
    let file = Home::locate()?.join(home::CA);
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
    let home = Home::locate()?;
    let Some((client, session)) = home.load()? else {
        println!("not logged in");
        return Ok(());
    };
    crate::agent::stop(&home);
    // The API and user stay for the next login (a home from before `login.json` has them
    // only in the session about to go).
    if let Some(r) = home.remembered() {
        home.remember(&r.api, &r.user)?;
    }
    // Forget the session locally whatever the API says: a dead session is gone anyway.
    let answer = client
        .call(&session, Method::POST, "/v1/logout", None)
        .await;
    home.remove_session()?;
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
            names: vec![],
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
