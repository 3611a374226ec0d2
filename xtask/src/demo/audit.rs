//! The demo's audit part: the node's events into a tamper-evident log, verified,
//! tampered with and caught, and searched as a security team would.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::exec::{must, step};

/// The node's events into a tamper-evident log, verified and searched as a security team
/// would.
pub(super) fn audit(bin: &Path, dir: &Path, events: &Path) -> anyhow::Result<()> {
    let data = dir.join("audit");
    // Stands for write-once storage off the log's host; verify needs it as its anchor.
    let witness = dir.join("audit-witness");
    let origin = "demo.lastmile/audit";
    // On a real host the key goes on another filesystem than the data; here, another
    // directory stands for it.
    let signing_key = dir.join("audit-keys").join("signing.key");
    step("`lastmile-audit init`: a log with its own signing key, kept apart from its data");
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
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("    verifier key (pin it): {key}");
    step(
        "append the node's events; each batch is acknowledged once durable, then a checkpoint is signed",
    );
    must(
        Command::new(bin.join("lastmile-audit"))
            .args([
                "append",
                "--origin",
                origin,
                "--writer",
                "lastmile://node/demo",
                "--witness",
            ])
            .arg(&witness)
            .arg("--data-dir")
            .arg(&data)
            .arg("--signing-key")
            .arg(&signing_key)
            .stdin(std::fs::File::open(events)?),
    )?;
    step("`lastmile audit verify`, anchored by the witness's checkpoints");
    must(
        Command::new(bin.join("lastmile"))
            .args(["audit", "verify", "--key", &key, "--witness"])
            .arg(&witness)
            .arg("--data-dir")
            .arg(&data),
    )?;
    step("`lastmile audit search --kind node.refused_no_agent`");
    must(
        Command::new(bin.join("lastmile"))
            .args([
                "audit",
                "search",
                "--kind",
                "node.refused_no_agent",
                "--data-dir",
            ])
            .arg(&data),
    )?;
    step("edit one entry the way an intruder would, and verify again");
    let segment = std::fs::read_dir(data.join("segments"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .next()
        .context("no segment")?;
    let text = std::fs::read(&segment)?;
    let forged: Vec<u8> = String::from_utf8_lossy(&text)
        .replacen("\"uid\":65534", "\"uid\":65533", 1)
        .into_bytes();
    std::fs::write(&segment, forged)?;
    let out = Command::new(bin.join("lastmile"))
        .args(["audit", "verify", "--key", &key, "--witness"])
        .arg(&witness)
        .arg("--data-dir")
        .arg(&data)
        .output()?;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim_end());
    if out.status.success() {
        bail!("the edited log verified: the audit log is broken");
    }
    Ok(())
}
