//! What /proc says of the process behind a connect, read while it still exists.

use std::{path::PathBuf, sync::Mutex};

use lastmile_ebpf_common::ConnectRecord;

/// What /proc says of a caller, read while it still exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub exe: Option<PathBuf>,
    pub ppid: Option<u32>,
    pub login_uid: Option<u32>,
}

impl ProcInfo {
    /// Reads /proc/<pid>; fields of a process that is gone are None.
    pub fn read(pid: u32) -> Self {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        Self {
            exe: std::fs::read_link(proc_dir.join("exe")).ok(),
            ppid: std::fs::read_to_string(proc_dir.join("stat"))
                .ok()
                .and_then(|s| parse_ppid(&s)),
            login_uid: std::fs::read_to_string(proc_dir.join("loginuid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                // (uid_t)-1 means "not set" (no login session).
                .filter(|u| *u != u32::MAX),
        }
    }
}

/// /proc facts read when lastmiled accepted a redirected connection, kept until the
/// kernel's event for it is read (the kernel does not wake lastmiled for those events;
/// see the eBPF `emit`). Entries older than a minute are dropped.
#[derive(Debug, Default)]
pub struct ProcCache {
    entries: Mutex<std::collections::HashMap<u64, (std::time::Instant, ProcInfo)>>,
}

impl ProcCache {
    const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

    pub fn insert(&self, sock_cookie: u64, info: ProcInfo) {
        if let Ok(mut entries) = self.entries.lock() {
            let now = std::time::Instant::now();
            if entries.len() >= 4096 {
                entries.retain(|_, (at, _)| now.duration_since(*at) < Self::MAX_AGE);
            }
            entries.insert(sock_cookie, (now, info));
        }
    }

    /// The cached facts for `record`, or what /proc says now.
    pub fn take_or_read(&self, record: &ConnectRecord) -> ProcInfo {
        let cached = self
            .entries
            .lock()
            .ok()
            .and_then(|mut e| e.remove(&record.sock_cookie));
        match cached {
            Some((_, info)) => info,
            None => ProcInfo::read(record.pid),
        }
    }
}

/// `/proc/<pid>/stat`: the fourth field is the parent pid; the second, the command, is in
/// parentheses and may itself contain spaces and parentheses, so parse from the last ')'.
fn parse_ppid(stat: &str) -> Option<u32> {
    let after = stat.get(stat.rfind(')')? + 1..)?;
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_survives_a_command_with_parentheses() {
        assert_eq!(parse_ppid("1234 (a) b) S 77 1234 1234 0"), Some(77));
        assert_eq!(parse_ppid("garbage"), None);
    }
}
