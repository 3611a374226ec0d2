//! `lastmile audit …`: the security team's view of the audit log.
//!
//! Entries come from a copy of the log's data directory (`--data-dir`) or from the audit
//! service (`--url`, with a reader certificate). Sealed (host-encrypted) events are shown
//! as sealed unless `--identity` gives an age identity that opens them.

use std::{
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use anyhow::{Context as _, bail};

use crate::session::Output;

mod monitor;
mod text;
mod trace;
use lastmile_audit::{
    log::read_entries,
    verify::{Anchors, Problem, verify},
};
use lastmile_audit_log::NoteVerifier;
use serde_json::Value;
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check the log against its signed checkpoints; exit 1 naming the first failing entry.
    /// Needs a trust anchor from outside the log's host besides the key: a witness or a
    /// pinned checkpoint. Says which entries they vouch for and which they do not.
    ///
    /// With `--url` instead of `--data-dir`, checks the audit service as a Certificate
    /// Transparency monitor does, without a copy of the data: its newest checkpoint must
    /// be signed by `--key` and extend the one this monitor verified last (kept in
    /// `--state`), by a consistency proof; a history rewritten and signed again is
    /// reported as a fork, with both checkpoints as evidence.
    Verify {
        /// A copy of the log's data directory.
        #[arg(long, required_unless_present = "url", conflicts_with = "url")]
        data_dir: Option<PathBuf>,
        /// The audit service, e.g. https://audit.internal:7443.
        #[arg(long, requires_all = ["ca", "cert", "client_key"])]
        url: Option<String>,
        /// With --url: the organisation's CA (PEM), to check the service.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// With --url: your certificate and key (PEM), from the organisation's CA.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        client_key: Option<PathBuf>,
        /// With --url: where this monitor keeps the last checkpoint it verified. Default
        /// `$LASTMILE_HOME/audit-monitor.json`; seed it with --pinned NOTE the first time
        /// to trust a checkpoint you hold rather than the first one served.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The log's verifier key (`name+id+key`, or a file holding it), pinned by you:
        /// fetched out of band, never from the log's host.
        #[arg(long)]
        key: String,
        /// Directories holding witness copies of checkpoints (each must exist).
        #[arg(long)]
        witness: Vec<PathBuf>,
        /// A checkpoint note you trusted before: the log must still contain it.
        #[arg(long)]
        pinned: Option<PathBuf>,
        /// The log's object-lock archive (the bucket of `[audit.archive]`) as witness and
        /// archive: its checkpoints anchor the log, and a checkpoint or segment the log's
        /// host lost or changed is reported. Credentials (read access is enough) from
        /// LASTMILE_ARCHIVE_ACCESS_KEY_ID and LASTMILE_ARCHIVE_SECRET_ACCESS_KEY.
        #[arg(long, conflicts_with = "url")]
        archive_bucket: Option<String>,
        /// The archive bucket's region.
        #[arg(long, default_value = "us-east-1", requires = "archive_bucket")]
        archive_region: String,
        /// An S3-compatible server instead of the region's AWS endpoint.
        #[arg(long, requires = "archive_bucket")]
        archive_endpoint: Option<String>,
        /// The log's prefix in the bucket (`[audit.archive]`'s `prefix`).
        #[arg(long, default_value = "", requires = "archive_bucket")]
        archive_prefix: String,
    },
    /// The last entries.
    Tail {
        #[command(flatten)]
        source: Source,
        #[arg(short = 'n', default_value_t = 20)]
        count: usize,
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Entries matching every filter given, as JSON lines. `--text` and `--regex` search
    /// what users typed or ran: a `db.query`'s statement, an `ssh.exec`'s command line, an
    /// `ssh.sftp`'s path; sealed entries only when `--identity` opens them.
    Search {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        text: text::TextArgs,
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Every entry (optionally within a time range), as JSON lines.
    Export {
        #[command(flatten)]
        source: Source,
        /// Only entries received at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only entries received before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// One connection's story in order: the kernel's connect (pid, exe, uid), the node's
    /// hand-off, the session (user, device), the gateway's authorization, the credential
    /// released, every statement or command, the close. Joined by socket cookie and
    /// connection id across the audit log and components' event files (`--events`).
    #[command(group(clap::ArgGroup::new("start").required(true)))]
    Trace {
        /// The API's connection id (`conn_…`, in every gateway event).
        #[arg(long, group = "start")]
        connection: Option<String>,
        /// The kernel's socket cookie (`sock_cookie` of `kernel.connect`).
        #[arg(long, group = "start")]
        sock_cookie: Option<u64>,
        /// Every connection of a session.
        #[arg(long, group = "start")]
        session: Option<String>,
        #[command(flatten)]
        source: Source,
        /// A component's JSON-lines event file to read too (the node's, a gateway's, the
        /// API's audit file), for events not sent to the audit service (repeatable).
        #[arg(long)]
        events: Vec<PathBuf>,
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Prove that an entry (a line as `tail`, `search` or `export --url` print it) is in
    /// the audit service's log: its newest checkpoint, signed by `--key`, and an inclusion
    /// proof for the entry's position. Exit 1 if it is not (changed, or never logged).
    Prove {
        /// The entry: a file holding its JSON, or `-` for standard input.
        entry: PathBuf,
        #[arg(long)]
        url: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        client_key: PathBuf,
        /// The log's verifier key (`name+id+key`, or a file holding it), pinned by you.
        #[arg(long)]
        key: String,
    },
    /// Open sealed events in JSON lines read from standard input (or --input).
    Decrypt {
        /// An age identity file (`age-keygen` output).
        #[arg(long)]
        identity: PathBuf,
        #[arg(long)]
        input: Option<PathBuf>,
    },
}

/// Where entries come from.
#[derive(Debug, clap::Args)]
pub struct Source {
    /// A copy of the log's data directory.
    #[arg(long, conflicts_with = "url")]
    data_dir: Option<PathBuf>,
    /// The audit service, e.g. https://audit.internal:7443.
    #[arg(long)]
    url: Option<String>,
    /// The organisation's CA (PEM), to check the service.
    #[arg(long, requires = "url")]
    ca: Option<PathBuf>,
    /// Your reader certificate and key (PEM).
    #[arg(long, requires = "url")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "url")]
    key: Option<PathBuf>,
}

/// Search filters; each matches a field of the event exactly.
#[derive(Debug, Default, clap::Args)]
pub struct Filter {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    session: Option<String>,
    #[arg(long)]
    resource: Option<String>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    kind: Option<String>,
    /// Received at or after (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Received before (RFC 3339).
    #[arg(long)]
    until: Option<String>,
}

/// Everything the archive holds, for `verify`.
fn read_archive(
    config: &lastmile_audit::archive::ArchiveConfig,
) -> anyhow::Result<lastmile_audit::archive::ArchiveCopy> {
    let archive = lastmile_audit::archive::Archive::new(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(archive.read()).with_context(|| {
        format!(
            "cannot read the archive {}: it vouches for nothing until it can be read",
            archive.url("")
        )
    })
}

pub fn run(command: Command, out: Output) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Prove {
            entry,
            url,
            ca,
            cert,
            client_key,
            key,
        } => {
            let verifier = verifier_key(key)?;
            let text = if entry.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&entry)
                    .with_context(|| format!("reading {}", entry.display()))?
            };
            let envelope = lastmile_audit::envelope::Envelope::parse(text.trim().as_bytes())
                .context("the entry is not a log entry (`{\"event\": …, \"received\": …, \"seq\": N, \"writer\": …}`, as tail, search and export print them)")?;
            let client = tls_client(&ca, &cert, &client_key)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match runtime.block_on(lastmile_audit::monitor::prove(
                &client, &url, &verifier, &envelope,
            ))? {
                Ok(c) => {
                    println!(
                        "included: entry {} is in the log under its checkpoint of {} entries (signed at {}, root {})",
                        envelope.seq, c.size, c.time, c.root
                    );
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Err(why) => {
                    println!("NOT INCLUDED: {why}");
                    Ok(std::process::ExitCode::from(1))
                }
            }
        }
        Command::Trace {
            connection,
            sock_cookie,
            session,
            source,
            events,
            identity,
        } => {
            let start = match (connection, sock_cookie, session) {
                (Some(c), _, _) => trace::Start::Connection(c),
                (_, Some(n), _) => trace::Start::SockCookie(n),
                (_, _, Some(s)) => trace::Start::Session(s),
                _ => bail!("say where to start: --connection, --sock-cookie or --session"),
            };
            let identities = identities(identity.as_deref())?;
            let mut all = Vec::new();
            if source.data_dir.is_some() || source.url.is_some() {
                for entry in load(&source)? {
                    all.push(trace::event_of(open_entry(entry, &identities)?));
                }
            } else if events.is_empty() {
                bail!(
                    "say where the events are: --data-dir DIR or --url URL (the audit log), \
                     and/or --events FILE (a component's event file)"
                );
            }
            for file in &events {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                for (n, line) in text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| !l.trim().is_empty())
                {
                    let v: Value = serde_json::from_str(line)
                        .with_context(|| format!("{} line {}: not JSON", file.display(), n + 1))?;
                    all.push(trace::event_of(v));
                }
            }
            let story = trace::trace(&all, &start);
            if story.is_empty() {
                eprintln!(
                    "lastmile: no event of {start:?} among the {} read",
                    all.len()
                );
                return Ok(std::process::ExitCode::from(1));
            }
            let mut stdout = std::io::stdout().lock();
            match out {
                Output::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&story)?)?,
                Output::Text => {
                    for e in &story {
                        writeln!(stdout, "{}", trace::describe(e))?;
                    }
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Verify {
            data_dir,
            url,
            ca,
            cert,
            client_key,
            state,
            key,
            witness,
            pinned,
            archive_bucket,
            archive_region,
            archive_endpoint,
            archive_prefix,
        } => {
            let verifier = verifier_key(key)?;
            if let (Some(url), Some(ca), Some(cert), Some(client_key)) =
                (&url, &ca, &cert, &client_key)
            {
                let client = tls_client(ca, cert, client_key)?;
                let state = match state {
                    Some(s) => s,
                    None => crate::home::Home::locate()?.join("audit-monitor.json"),
                };
                return monitor::run(&client, url, &verifier, &state, pinned.as_deref());
            }
            let Some(data_dir) = data_dir else {
                bail!(
                    "say where the log is: --data-dir DIR (a copy), or --url URL with --ca, --cert and --client-key"
                );
            };
            if witness.is_empty() && pinned.is_none() && archive_bucket.is_none() {
                bail!(
                    "verify needs a trust anchor besides --key: --witness DIR (the log's \
                     write-once checkpoint copies), --archive-bucket BUCKET (its object-lock \
                     archive) or --pinned NOTE (a checkpoint you kept). \
                     The log's signing key lives on its host, so a log rewritten there and \
                     signed again would pass a check against its own checkpoints alone"
                );
            }
            let pinned = match pinned {
                Some(p) => vec![(
                    p.clone(),
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading --pinned {}", p.display()))?,
                )],
                None => Vec::new(),
            };
            let archive = match archive_bucket {
                Some(bucket) => Some(read_archive(&lastmile_audit::archive::ArchiveConfig {
                    bucket,
                    region: archive_region,
                    endpoint: archive_endpoint,
                    prefix: archive_prefix,
                    retention_days: 0,
                    access_key_id: None,
                    secret_access_key: None,
                })?),
                None => None,
            };
            let anchors = Anchors {
                witnesses: witness,
                pinned,
                archive,
            };
            let report = verify(&data_dir, &verifier, &anchors);
            for p in &report.problems {
                println!("FAIL {p}");
            }
            if report.ok() {
                println!(
                    "ok: {} entries, {} checkpoints verified",
                    report.entries, report.checkpoints
                );
                for line in report.coverage.describe(report.entries) {
                    println!("  {line}");
                }
                return Ok(std::process::ExitCode::SUCCESS);
            }
            match report.first_failing_entry() {
                Some(i) => println!("first failing entry: {i}"),
                None if report
                    .problems
                    .iter()
                    .any(|p| matches!(p, Problem::NoValidCheckpoint | Problem::Unanchored)) =>
                {
                    println!("no checkpoint can be trusted")
                }
                None => {}
            }
            Ok(std::process::ExitCode::from(1))
        }
        Command::Tail {
            source,
            count,
            identity,
        } => {
            let entries = load(&source)?;
            let skip = entries.len().saturating_sub(count);
            print_entries(entries.into_iter().skip(skip), identity.as_deref())
        }
        Command::Search {
            source,
            filter,
            text,
            identity,
        } => {
            let (since, until) = (time(&filter.since)?, time(&filter.until)?);
            let query = text::TextQuery::from_args(&text)?;
            let identities = identities(identity.as_deref())?;
            let mut out = std::io::stdout().lock();
            let (mut sealed, mut textless) = (0_usize, 0_usize);
            for entry in load(&source)? {
                let entry = open_entry(entry, &identities)?;
                if !matches(&entry, &filter, since, until) {
                    continue;
                }
                if let Some(query) = &query {
                    match query.check(entry.get("event").unwrap_or(&entry)) {
                        text::Outcome::Matches => {}
                        text::Outcome::DoesNotMatch => continue,
                        text::Outcome::Sealed => {
                            sealed += 1;
                            continue;
                        }
                        text::Outcome::NoText => {
                            textless += 1;
                            continue;
                        }
                    }
                }
                writeln!(out, "{entry}")?;
            }
            out.flush()?;
            if sealed > 0 {
                let why = match &identity {
                    None => "give --identity (an age identity that opens them)".to_owned(),
                    Some(p) => format!("--identity {} does not open them", p.display()),
                };
                eprintln!(
                    "lastmile: {} not searched: {why}",
                    count(sealed, "sealed entry was", "sealed entries were")
                );
            }
            if textless > 0 {
                eprintln!(
                    "lastmile: {} not searched: no statement text is kept (the gateway's \
                     `query_text` policy hashed it into `query_hmac` or dropped it)",
                    count(textless, "db.query entry was", "db.query entries were")
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Export {
            source,
            since,
            until,
            identity,
        } => {
            let (since, until) = (time(&since)?, time(&until)?);
            let filter = Filter::default();
            let identities = identities(identity.as_deref())?;
            let mut out = std::io::stdout().lock();
            for entry in load(&source)? {
                if matches(&entry, &filter, since, until) {
                    writeln!(out, "{}", open_entry(entry, &identities)?)?;
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Decrypt { identity, input } => {
            let identities = lastmile_audit_sink::load_identities(&identity)?;
            let reader: Box<dyn std::io::BufRead> = match &input {
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                )),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut out = std::io::stdout().lock();
            let mut failed = 0;
            for (n, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(&line)
                    .with_context(|| format!("line {}: not JSON", n + 1))?;
                match lastmile_audit_sink::open_all(&value, &identities) {
                    Ok(v) => writeln!(out, "{v}")?,
                    Err(e) => {
                        eprintln!("line {}: {e}", n + 1);
                        writeln!(out, "{value}")?;
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!(
                    "{failed} sealed events could not be opened with {}",
                    identity.display()
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// "1 thing was" or "N things were".
fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn identities(path: Option<&Path>) -> anyhow::Result<Vec<age::x25519::Identity>> {
    Ok(match path {
        Some(p) => lastmile_audit_sink::load_identities(p)?,
        None => Vec::new(),
    })
}

/// The entry with its sealed event opened when an identity can; otherwise unchanged.
fn open_entry(entry: Value, identities: &[age::x25519::Identity]) -> anyhow::Result<Value> {
    if identities.is_empty() {
        return Ok(entry);
    }
    Ok(lastmile_audit_sink::open_all(&entry, identities).unwrap_or(entry))
}

fn print_entries(
    entries: impl Iterator<Item = Value>,
    identity: Option<&Path>,
) -> anyhow::Result<std::process::ExitCode> {
    let identities = identities(identity)?;
    let mut out = std::io::stdout().lock();
    for entry in entries {
        writeln!(out, "{}", open_entry(entry, &identities)?)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn time(text: &Option<String>) -> anyhow::Result<Option<SystemTime>> {
    text.as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .with_context(|| format!("`{t}` is not an RFC 3339 time"))
        })
        .transpose()
}

fn matches(
    entry: &Value,
    f: &Filter,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> bool {
    let event = entry.get("event").unwrap_or(entry);
    let field_ok = |name: &str, want: &Option<String>| match want {
        None => true,
        Some(w) => match event.get(name) {
            Some(Value::String(s)) => s == w,
            Some(other) => serde_json::from_str::<Value>(w).is_ok_and(|v| v == *other),
            None => false,
        },
    };
    if !(field_ok("user", &f.user)
        && field_ok("session", &f.session)
        && field_ok("resource", &f.resource)
        && field_ok("host", &f.host)
        && field_ok("kind", &f.kind))
    {
        return false;
    }
    if since.is_none() && until.is_none() {
        return true;
    }
    let Some(received) = entry
        .get("received")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    else {
        return false;
    };
    since.is_none_or(|s| received >= s) && until.is_none_or(|u| received < u)
}

/// Every entry of the source, as JSON.
pub(crate) fn load(source: &Source) -> anyhow::Result<Vec<Value>> {
    match (&source.data_dir, &source.url) {
        (Some(dir), None) => {
            let entries = read_entries(dir)?;
            entries
                .records()
                .map(|(_, r)| {
                    serde_json::from_slice(&r.payload)
                        .with_context(|| format!("entry {} is not JSON", r.index))
                })
                .collect()
        }
        (None, Some(url)) => fetch(source, url),
        _ => {
            bail!("say where the log is: --data-dir DIR, or --url URL with --ca, --cert and --key")
        }
    }
}

/// Pages through the service's entries with a reader certificate.
fn fetch(source: &Source, url: &str) -> anyhow::Result<Vec<Value>> {
    let (Some(ca), Some(cert), Some(key)) = (&source.ca, &source.cert, &source.key) else {
        bail!(
            "--url needs --ca (the organisation's CA), --cert and --key (your reader certificate)"
        );
    };
    let client = tls_client(ca, cert, key)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut all = Vec::new();
        loop {
            let page = format!(
                "{}/v1/entries?start={}&count=1000",
                url.trim_end_matches('/'),
                all.len()
            );
            let resp = client
                .get(&page)
                .send()
                .await
                .with_context(|| format!("GET {page}"))?;
            if !resp.status().is_success() {
                bail!(
                    "{page}: {} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            let text = resp.text().await?;
            let before = all.len();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                all.push(serde_json::from_str(line)?);
            }
            if all.len() == before {
                return Ok(all);
            }
        }
    })
}

/// `--key`: the verifier key itself, or a file holding it.
fn verifier_key(key: String) -> anyhow::Result<NoteVerifier> {
    let text = if Path::new(&key).is_file() {
        std::fs::read_to_string(&key)?
    } else {
        key
    };
    text.trim()
        .parse()
        .context("--key is not a verifier key (name+id+key)")
}

/// A client of the audit service: TLS 1.3, checking it against the organisation's `ca`,
/// presenting `cert` and `key`.
fn tls_client(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<reqwest::Client> {
    let mut roots = RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(c?)?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{} is not a PEM key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_match_event_fields_and_the_receive_time() {
        let entry = json!({"seq": 1, "received": "2026-11-28T10:00:00Z", "writer": "gw",
                           "event": {"kind": "query", "user": "alice", "session": "s1", "conn": 3}});
        let f = Filter {
            user: Some("alice".into()),
            kind: Some("query".into()),
            ..Filter::default()
        };
        assert!(matches(&entry, &f, None, None));
        let f = Filter {
            user: Some("bob".into()),
            ..Filter::default()
        };
        assert!(!matches(&entry, &f, None, None));
        let at = |t| humantime::parse_rfc3339_weak(t).ok();
        assert!(matches(
            &entry,
            &Filter::default(),
            at("2026-11-28T09:00:00Z"),
            at("2026-11-28T11:00:00Z")
        ));
        assert!(!matches(
            &entry,
            &Filter::default(),
            at("2026-11-28T10:00:01Z"),
            None
        ));
        assert!(!matches(
            &entry,
            &Filter::default(),
            None,
            at("2026-11-28T10:00:00Z")
        ));
    }
}
