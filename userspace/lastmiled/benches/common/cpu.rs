//! CPU time of process trees, from /proc, and percentiles: what the benches print per
//! unit of work (steadier than wall-clock rates on a shared machine).

use std::collections::HashMap;

/// The parent pid and CPU clock ticks of process `pid`, from /proc/PID/stat: utime +
/// stime, plus cutime + cstime (the children it has reaped) when `with_reaped`.
pub fn stat_ticks(pid: u32, with_reaped: bool) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "(comm)": state, ppid, …; utime, stime, cutime, cstime are fields 14-17.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let own = num(11)? + num(12)?;
    let reaped = if with_reaped { num(13)? + num(14)? } else { 0 };
    Some((num(1)? as u32, own + reaped))
}

/// Seconds in `ticks` clock ticks.
pub fn ticks_to_secs(ticks: u64) -> f64 {
    // SAFETY: sysconf reads a constant and touches no memory of ours.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_sec
}

/// CPU seconds of `roots` and all their live descendants (with what each reaped, when
/// `with_reaped`).
pub fn tree_secs(roots: &[u32], with_reaped: bool) -> f64 {
    if roots.is_empty() {
        return 0.0;
    }
    let procs: HashMap<u32, (u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter_map(|pid| Some((pid, stat_ticks(pid, with_reaped)?)))
        .collect();
    let counted = |mut pid: u32| loop {
        if roots.contains(&pid) {
            return true;
        }
        match procs.get(&pid) {
            Some(&(ppid, _)) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    };
    ticks_to_secs(
        procs
            .iter()
            .filter(|(pid, _)| counted(**pid))
            .map(|(_, (_, t))| t)
            .sum(),
    )
}

/// The `p` quantile (0-1) of `v`, which it sorts.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
