//! lastmile's block in `~/.ssh/known_hosts`: an `@cert-authority` line per `ssh` resource
//! the user can reach, for its protected names, with the organisation's SSH host CA, so
//! `ssh` verifies the gateway (which presents a host certificate from that CA) with no
//! prompt and no option. `lastmile login` writes the block, `logout` removes it; every
//! other line of the file is kept as it was.
//!
//! The block sits between `# lastmile:begin ORG` and `# lastmile:end ORG`, and the file
//! is replaced atomically (a temporary file in the same directory, fsynced, renamed).

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use lastmile_proto::wire::{Resource, ResourceKind};

/// Where lastmile remembers which file and organisation it wrote, for `logout`.
pub const STATE_FILE: &str = "known_hosts.json";

fn begin(org: &str) -> String {
    format!("# lastmile:begin {org}")
}

fn end(org: &str) -> String {
    format!("# lastmile:end {org}")
}

/// The known_hosts patterns for `r`'s protected addresses and DNS names: `HOST` for port
/// 22, else `[HOST]:PORT` (how ssh looks a host on another port up). A prefix names no
/// one host, but its port is one a DNS name may be dialled on.
pub fn patterns(r: &Resource) -> Vec<String> {
    let mut out = Vec::new();
    let mut ports = Vec::new();
    let push = |host: &str, port: &str, out: &mut Vec<String>| {
        let pattern = if port == "22" {
            host.to_owned()
        } else {
            format!("[{host}]:{port}")
        };
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    };
    for p in &r.protect {
        let Some((host, port)) = p.rsplit_once(':') else {
            continue;
        };
        if port.parse::<u16>().is_err() {
            continue;
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            continue;
        }
        push(host, port, &mut out);
    }
    for name in &r.names {
        for port in &ports {
            push(name, port, &mut out);
        }
    }
    out
}

/// The lines of the block (markers included) for `resources`, or None when no `ssh`
/// resource has a protected address.
pub fn block(org: &str, host_ca: &str, resources: &[Resource]) -> Option<Vec<String>> {
    // The key's type and base64, without its comment.
    let key: Vec<&str> = host_ca.split_whitespace().take(2).collect();
    let key = key.join(" ");
    let mut lines = vec![
        begin(org),
        "# Written by `lastmile login`, removed by `lastmile logout`: edits here are lost."
            .to_owned(),
    ];
    let mut any = false;
    for r in resources.iter().filter(|r| r.kind == ResourceKind::Ssh) {
        let pats = patterns(r);
        if pats.is_empty() {
            continue;
        }
        any = true;
        lines.push(format!(
            "@cert-authority {} {key} lastmile:{org}:{}",
            pats.join(","),
            r.name
        ));
    }
    lines.push(end(org));
    any.then_some(lines)
}

/// `existing` with `org`'s block taken out and `block` (if any) appended; every other
/// line as it was.
pub fn replace(existing: &str, org: &str, block: Option<&[String]>) -> String {
    let (b, e) = (begin(org), end(org));
    let mut out = String::with_capacity(existing.len());
    let mut inside = false;
    for line in existing.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if !inside && bare == b {
            inside = true;
        } else if inside && bare == e {
            inside = false;
        } else if !inside {
            out.push_str(line);
        }
    }
    if let Some(block) = block {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        for l in block {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `~/.ssh/known_hosts`.
pub fn default_path() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set: cannot find ~/.ssh")?;
    Ok(PathBuf::from(home).join(".ssh").join("known_hosts"))
}

/// Writes `org`'s block into `path` (or takes it out, with None), atomically; a file
/// that would not change is left alone.
pub fn update(path: &Path, org: &str, block: Option<&[String]>) -> anyhow::Result<bool> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let updated = replace(&existing, org, block);
    if updated == existing {
        return Ok(false);
    }
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    let tmp = dir.join(format!(".known_hosts.lastmile-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(updated.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use lastmile_proto::wire::{Resource, ResourceKind};

    use super::*;

    fn ssh(name: &str, protect: &[&str]) -> Resource {
        Resource {
            name: name.into(),
            kind: ResourceKind::Ssh,
            host: "127.0.0.5".into(),
            port: 22,
            protect: protect.iter().map(|p| (*p).to_owned()).collect(),
            upstream_tls: None,
            credential: None,
            ssh_principals: vec![],
            database_user: None,
            databases: vec![],
            upstream_ca: None,
            ssh_host_ca: vec![],
            ssh_host_keys: vec![],
            ssh_allow_port_forwarding: false,
            names: vec![],
        }
    }

    const CA: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcwKrwYb+slyVnT19lOoUZJGSU1nRhw2irl+40qW96k acme ssh host ca";

    #[test]
    fn patterns_follow_how_ssh_names_a_host_on_a_port() {
        let r = ssh(
            "web",
            &[
                "127.0.0.3:22",
                "127.0.0.2:2222",
                "[::1]:22",
                "[::1]:2200",
                "127.8.0.0/16:22",
            ],
        );
        assert_eq!(
            patterns(&r),
            ["127.0.0.3", "[127.0.0.2]:2222", "::1", "[::1]:2200"]
        );
        // A DNS name is dialled on each protected port.
        let mut named = ssh("web", &["127.0.0.3:22", "127.8.0.0/16:2200"]);
        named.names = vec!["web.demo.internal".into()];
        assert_eq!(
            patterns(&named),
            ["127.0.0.3", "web.demo.internal", "[web.demo.internal]:2200"]
        );
    }

    #[test]
    fn the_block_is_replaced_and_removed_and_nothing_else_changes() {
        let mut db = ssh("db", &["127.0.0.9:5432"]);
        db.kind = ResourceKind::Postgres;
        let list = [ssh("web", &["127.0.0.3:22"]), db, ssh("none", &[])];
        let b = block("acme", CA, &list).unwrap();
        assert_eq!(b.len(), 4, "{b:?}");
        assert_eq!(
            b[2],
            "@cert-authority 127.0.0.3 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKcwKrwYb+slyVnT19lOoUZJGSU1nRhw2irl+40qW96k lastmile:acme:web"
        );
        let mine = "github.com ssh-ed25519 AAAA1\n# a comment\n[h]:2 ssh-rsa AAAA2"; // no final newline
        let once = replace(mine, "acme", Some(&b));
        assert!(once.starts_with("github.com ssh-ed25519 AAAA1\n# a comment\n[h]:2 ssh-rsa AAAA2\n# lastmile:begin acme\n"));
        // Idempotent, and another organisation's block is its own.
        assert_eq!(replace(&once, "acme", Some(&b)), once);
        let other = replace(&once, "other", Some(&block("other", CA, &list).unwrap()));
        assert!(
            other.contains("# lastmile:begin acme") && other.contains("# lastmile:begin other")
        );
        let gone = replace(&other, "acme", None);
        assert!(!gone.contains("acme") && gone.contains("# lastmile:end other"));
        assert_eq!(replace(&once, "acme", None), format!("{mine}\n"));
        assert!(block("acme", CA, &[ssh("none", &[])]).is_none());
    }

    #[test]
    fn update_writes_atomically_keeps_the_mode_and_leaves_an_unchanged_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".ssh").join("known_hosts");
        let b = block("acme", CA, &[ssh("web", &["127.0.0.3:22"])]).unwrap();
        assert!(update(&path, "acme", Some(&b)).unwrap());
        let ssh_dir = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(ssh_dir.permissions().mode() & 0o777, 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!update(&path, "acme", Some(&b)).unwrap());
        assert!(update(&path, "acme", None).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
