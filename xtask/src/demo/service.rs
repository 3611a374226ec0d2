//! The demo's lasting audit service: `lastmile-audit serve` on loopback with its own
//! signing key and witness, taking events from the API, the gateway and the node, each
//! admitted by the role its enrolled certificate names (no writer certificate is made by
//! hand), and read by a security reader with a certificate the API issued.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::stack::Stack;
use crate::exec::{must, step};

const LISTEN: &str = "127.0.0.1:17443";

pub(super) struct AuditService {
    /// How writers and readers reach it.
    pub url: String,
    /// The CA of its TLS certificate (made here with openssl, as an ops team would).
    pub ca: PathBuf,
    pub data: PathBuf,
    pub witness: PathBuf,
    /// The log's verifier key, to pin.
    pub verifier: String,
    dir: PathBuf,
}

fn openssl(args: &[&str], cwd: &Path) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .context("running openssl (Debian's `openssl` package)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Initialises the log and starts the service; `org_ca` is the CA writers' and readers'
/// certificates chain to.
pub(super) fn start(
    bin: &Path,
    dir: &Path,
    org_ca: &Path,
    stack: &mut Stack,
) -> anyhow::Result<AuditService> {
    let home = dir.join("audit-service");
    let tls = home.join("tls");
    std::fs::create_dir_all(&tls)?;
    step(&format!(
        "`lastmile-audit serve` on {LISTEN}: its own key and witness; writers by role (gateway, node, API), readers by role (audit-reader)"
    ));
    // A CA of the service's own and a certificate for localhost from it.
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=demo audit CA",
        ],
        &tls,
    )?;
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "audit.key",
            "-out",
            "audit.csr",
            "-subj",
            "/CN=localhost",
        ],
        &tls,
    )?;
    std::fs::write(
        tls.join("ext.cnf"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\nextendedKeyUsage = serverAuth\n",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "audit.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "audit.pem",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
        ],
        &tls,
    )?;
    let data = home.join("data");
    let witness = home.join("witness");
    std::fs::create_dir_all(&witness)?;
    let signing_key = home.join("keys").join("signing.key");
    let origin = "demo.lastmile/live";
    let out = Command::new(bin.join("lastmile-audit"))
        .args(["init", "--origin", origin, "--data-dir"])
        .arg(&data)
        .arg("--signing-key")
        .arg(&signing_key)
        .output()?;
    if !out.status.success() {
        bail!(
            "lastmile-audit init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verifier = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::write(home.join("verifier"), format!("{verifier}\n"))?;
    eprintln!("    the live log's verifier key (pin it): {verifier}");
    let config = home.join("audit.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\ndata_dir = {data:?}\norigin = \"{origin}\"\nsigning_key = {signing_key:?}\n\
             listen = \"{LISTEN}\"\nwitness = {witness:?}\ntls_cert = {:?}\ntls_key = {:?}\n\
             client_ca = {org_ca:?}\nwriters = [\"role:gateway\", \"role:node\", \"role:api\"]\n\
             readers = [\"role:audit-reader\"]\n",
            tls.join("audit.pem"),
            tls.join("audit.key"),
        ),
    )?;
    stack.spawn(
        "lastmile-audit serve",
        Command::new(bin.join("lastmile-audit"))
            .args(["serve", "--config"])
            .arg(&config),
        &dir.join("audit.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(LISTEN).is_err() {
        if Instant::now() > deadline {
            bail!(
                "lastmile-audit serve did not listen on {LISTEN} within 10 s: {}",
                std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(AuditService {
        url: "https://localhost:17443".into(),
        ca: tls.join("ca.pem"),
        data,
        witness,
        verifier,
        dir: home,
    })
}

impl AuditService {
    /// A `[<table>.audit.service]` section: no cert or key, so the component presents the
    /// identity it enrolled with.
    pub(super) fn section(&self, table: &str) -> String {
        format!(
            "[{table}.audit.service]\nurl = \"{}\"\nca = {:?}\nspool = {:?}\n",
            self.url,
            self.ca,
            self.dir.join(format!("{table}-spool"))
        )
    }

    /// A security reader's key (made here) and the certificate the API issues for it:
    /// `lastmile-api audit-readers issue`. Returns (certificate, key).
    pub(super) fn reader(
        &self,
        api: &dyn Fn(&[&str]) -> Command,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let home = self.dir.join("reader");
        std::fs::create_dir_all(&home)?;
        step(
            "a security reader: their own key and CSR, and `lastmile-api audit-readers issue security --csr` for a reader certificate",
        );
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ed25519",
                "-nodes",
                "-keyout",
                "security.key",
                "-out",
                "security.csr",
                "-subj",
                "/CN=security",
            ],
            &home,
        )?;
        let csr = home.join("security.csr");
        let csr_arg = csr.display().to_string();
        let out = api(&["audit-readers", "issue", "security", "--csr", &csr_arg]).output()?;
        if !out.status.success() {
            bail!(
                "lastmile-api audit-readers issue failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cert = home.join("security.pem");
        std::fs::write(&cert, &out.stdout)?;
        Ok((cert, home.join("security.key")))
    }

    /// The arguments that point a `lastmile audit` command at the service as `reader`.
    pub(super) fn as_reader<'c>(
        &self,
        cmd: &'c mut Command,
        reader: &(PathBuf, PathBuf),
    ) -> &'c mut Command {
        cmd.args(["--url", &self.url, "--ca"])
            .arg(&self.ca)
            .arg("--cert")
            .arg(&reader.0)
            .arg("--key")
            .arg(&reader.1)
    }

    /// `verify` as a remote monitor (consistency from the checkpoint it kept), and of the
    /// data directory against the witness.
    pub(super) fn verify(&self, bin: &Path, reader: &(PathBuf, PathBuf)) -> anyhow::Result<()> {
        step(
            "`lastmile audit verify --url`: the service checked like a CT log, from the reader's seat",
        );
        must(
            Command::new(bin.join("lastmile"))
                .args(["audit", "verify", "--url", &self.url, "--ca"])
                .arg(&self.ca)
                .arg("--cert")
                .arg(&reader.0)
                .arg("--client-key")
                .arg(&reader.1)
                .args(["--key", &self.verifier, "--state"])
                .arg(self.dir.join("reader/monitor.json")),
        )?;
        step("`lastmile audit verify` of the live log's data, anchored by its witness");
        must(
            Command::new(bin.join("lastmile"))
                .args(["audit", "verify", "--key", &self.verifier, "--witness"])
                .arg(&self.witness)
                .arg("--data-dir")
                .arg(&self.data),
        )
    }
}
