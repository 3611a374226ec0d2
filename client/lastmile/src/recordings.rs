//! `lastmile recordings`: the SSH session recordings a gateway keeps (asciicast v2, one
//! `.cast` per interactive channel, in its `[gateway] recordings` directory), listed,
//! played in the terminal, exported, and verified against the SHA-256 the audit log
//! holds for each (`ssh.recording` events), so an edited recording is reported.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use lastmile_ssh::recording::{EventCode, cast};
use serde_json::Value;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Each recording in a recordings directory: id, start, duration, bytes, terminal size.
    List {
        /// The gateway's recordings directory (or a copy of it).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Replay a recording's output in this terminal, at its pace.
    Play {
        /// A recording's id (its file name without `.cast`, as `ssh.recording` events
        /// name it) or a path to a `.cast` file.
        recording: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Faster (2) or slower (0.5) than it happened.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Longest pause, in seconds, however long the user was idle.
        #[arg(long, default_value_t = 2.0)]
        max_wait: f64,
    },
    /// Write a recording's `.cast` (checked to be asciicast v2) for `asciinema play`.
    Export {
        recording: String,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check every recording the audit trail names against the SHA-256 and size recorded
    /// when it was written: a changed, cut or missing recording is reported and the exit
    /// status is 1.
    Verify {
        /// The recordings directory (or a copy).
        #[arg(long)]
        dir: PathBuf,
        /// The events, from the audit log...
        #[command(flatten)]
        source: crate::audit::Source,
        /// ...or from a gateway's own event file (JSON lines).
        #[arg(long, conflicts_with_all = ["data_dir", "url"])]
        events: Option<PathBuf>,
    },
}

pub fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::List { dir } => list(&dir)?,
        Command::Play {
            recording,
            dir,
            speed,
            max_wait,
        } => play(&locate(&recording, dir.as_deref())?, speed, max_wait)?,
        Command::Export {
            recording,
            dir,
            out,
        } => {
            let path = locate(&recording, dir.as_deref())?;
            let bytes = read_cast(&path)?.0;
            write_new(&out, &bytes)?;
            println!("wrote {}", out.display());
        }
        Command::Verify {
            dir,
            source,
            events,
        } => {
            let events = match events {
                Some(file) => read_event_file(&file)?,
                None => crate::audit::load(&source)?,
            };
            return verify(&dir, &events);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A recording by id in `dir`, or a path.
fn locate(recording: &str, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let as_path = PathBuf::from(recording);
    if as_path.extension().is_some_and(|e| e == "cast") || dir.is_none() {
        return Ok(as_path);
    }
    let dir = dir.unwrap_or(Path::new("."));
    if recording.contains('/') || recording.starts_with('.') {
        bail!("`{recording}` is not a recording id; give a path ending in .cast instead");
    }
    Ok(dir.join(format!("{recording}.cast")))
}

fn read_cast(path: &Path) -> anyhow::Result<(Vec<u8>, cast::Cast)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = cast::parse(&bytes)
        .with_context(|| format!("{} is not an asciicast v2 recording", path.display()))?;
    Ok((bytes, parsed))
}

fn list(dir: &Path) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "cast") {
            continue;
        }
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match read_cast(&path) {
            Ok((_, c)) => rows.push((
                c.header.timestamp.unwrap_or(0),
                format!(
                    "{id}  {}  {:>8.1}s  {:>9} bytes  {}x{}  {}",
                    c.header
                        .timestamp
                        .and_then(|t| {
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + Duration::from_secs(t),
                            )
                            .to_string()
                            .into()
                        })
                        .unwrap_or_else(|| "-".into()),
                    c.duration(),
                    size,
                    c.header.width,
                    c.header.height,
                    c.header.title.unwrap_or_default()
                ),
            )),
            Err(e) => rows.push((0, format!("{id}  UNREADABLE: {e:#}"))),
        }
    }
    rows.sort();
    if rows.is_empty() {
        println!("no recordings in {}", dir.display());
    }
    for (_, row) in rows {
        println!("{row}");
    }
    Ok(())
}

fn play(path: &Path, speed: f64, max_wait: f64) -> anyhow::Result<()> {
    if !(speed > 0.0 && speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    let (_, c) = read_cast(path)?;
    let mut out = std::io::stdout().lock();
    let mut last = 0.0_f64;
    for e in &c.events {
        if e.code != EventCode::Output {
            continue;
        }
        let wait = ((e.time - last) / speed).clamp(0.0, max_wait.max(0.0));
        last = e.time;
        if wait > 0.0 {
            out.flush()?;
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
        out.write_all(e.data.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn read_event_file(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))
        })
        .collect()
}

/// What one `ssh.recording` event says of its recording.
#[derive(Debug, PartialEq)]
struct Recorded {
    id: String,
    sha256: String,
    size: u64,
}

/// The `ssh.recording` events among `events` (audit entries wrap the event in `event`).
fn recorded(events: &[Value]) -> Vec<Recorded> {
    events
        .iter()
        .map(|e| e.get("event").unwrap_or(e))
        .filter(|e| e.get("kind").and_then(Value::as_str) == Some("ssh.recording"))
        .filter_map(|e| {
            let location = e.get("location")?.as_str()?;
            let id = Path::new(location)
                .file_stem()?
                .to_string_lossy()
                .into_owned();
            Some(Recorded {
                id,
                sha256: e.get("sha256")?.as_str()?.to_owned(),
                size: e.get("size")?.as_u64()?,
            })
        })
        .collect()
}

fn verify(dir: &Path, events: &[Value]) -> anyhow::Result<std::process::ExitCode> {
    let recorded = recorded(events);
    let mut bad = 0;
    for r in &recorded {
        let path = dir.join(format!("{}.cast", r.id));
        match lastmile_ssh::recording::store::digest_file(&path) {
            Ok((sha256, size)) if sha256 == r.sha256 && size == r.size => {
                println!("ok       {}  {size} bytes", r.id);
            }
            Ok((sha256, size)) => {
                bad += 1;
                println!(
                    "CHANGED  {}: the audit log recorded {} bytes with SHA-256 {}, the file has {size} bytes with {sha256}",
                    r.id, r.size, r.sha256
                );
            }
            Err(e) => {
                bad += 1;
                println!("MISSING  {}: {}: {e}", r.id, path.display());
            }
        }
    }
    println!(
        "{} recordings named by the audit trail; {} verified, {bad} changed or missing",
        recorded.len(),
        recorded.len() - bad
    );
    Ok(if bad == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_are_read_from_audit_entries_and_plain_events() {
        let plain = serde_json::json!({"kind": "ssh.recording", "location": "/var/lib/r/c1-0.cast", "sha256": "ab", "size": 9});
        let wrapped = serde_json::json!({"event": {"kind": "ssh.recording", "location": "/x/c2-1.cast", "sha256": "cd", "size": 1}});
        let other = serde_json::json!({"kind": "ssh.exec", "location": "/x/y.cast"});
        let r = recorded(&[plain, wrapped, other]);
        assert_eq!(
            r,
            [
                Recorded {
                    id: "c1-0".into(),
                    sha256: "ab".into(),
                    size: 9
                },
                Recorded {
                    id: "c2-1".into(),
                    sha256: "cd".into(),
                    size: 1
                },
            ]
        );
    }

    #[test]
    fn ids_cannot_leave_the_directory() {
        assert!(locate("../etc/passwd", Some(Path::new("/r"))).is_err());
        assert_eq!(
            locate("c1-0", Some(Path::new("/r"))).unwrap(),
            PathBuf::from("/r/c1-0.cast")
        );
        assert_eq!(
            locate("/tmp/a.cast", Some(Path::new("/r"))).unwrap(),
            PathBuf::from("/tmp/a.cast")
        );
    }
}
