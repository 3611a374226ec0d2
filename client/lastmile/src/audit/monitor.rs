//! `lastmile audit verify --url`: the monitor's side of [`lastmile_audit::monitor`] —
//! the state file, and what is printed.

use std::path::Path;

use anyhow::Context as _;
use lastmile_audit::monitor::{Found, Kept, check};
use lastmile_audit_log::NoteVerifier;

/// One check; exit 0 when the log extends what was kept (or it was the first), 1 on a
/// fork, 2 on an error (no answer, a checkpoint that does not verify).
pub fn run(
    client: &reqwest::Client,
    url: &str,
    verifier: &NoteVerifier,
    state: &Path,
    pinned: Option<&Path>,
) -> anyhow::Result<std::process::ExitCode> {
    let kept: Option<Kept> = match std::fs::read_to_string(state) {
        Ok(text) => Some(serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a monitor state: move it away to start over",
                state.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match pinned {
            Some(p) => Some(Kept {
                note: std::fs::read_to_string(p)
                    .with_context(|| format!("reading --pinned {}", p.display()))?,
            }),
            None => None,
        },
        Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (found, next) = runtime.block_on(check(client, url, verifier, kept.as_ref()))?;
    if let Some(next) = &next
        && Some(next) != kept.as_ref()
    {
        if let Some(dir) = state.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::home::write_private(state, &serde_json::to_vec_pretty(next)?)?;
    }
    match found {
        Found::First(c) => {
            println!(
                "ok: first check of {url}: checkpoint of {} entries (signed at {}) kept in {}; \
                 later checks prove the log extends it",
                c.size,
                c.time,
                state.display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Found::Unchanged(c) => {
            println!("ok: {} entries, the checkpoint kept; nothing new", c.size);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Found::Extended { from, to } => {
            println!(
                "ok: {} → {} entries; the {} verified before are unchanged (consistency proof checked)",
                from.size, to.size, from.size
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Found::Fork {
            kept_note,
            served_note,
            why,
            ..
        } => {
            println!("FORK: {why}");
            println!(
                "the checkpoint verified before (kept in {}):",
                state.display()
            );
            println!("{}", kept_note.trim_end());
            println!("the checkpoint the service serves now:");
            println!("{}", served_note.trim_end());
            println!(
                "both are signed by the log's key: keep them as evidence that the log's history was rewritten"
            );
            Ok(std::process::ExitCode::from(1))
        }
    }
}
