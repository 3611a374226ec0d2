//! Whether the running kernel loads lastmiled's programs: the tests that need them
//! (the redirect suite, the tunnel tests through the kernel's interception) skip visibly
//! below that. Shared by those test binaries, each of which has `mod support;` too.

use std::io::Write as _;

/// What lastmiled's programs need of the kernel, newest first: the oldest kernel they load
/// and run on is the first one's. Debian 11's 5.10 has neither (found under vm-tests).
const KERNEL_NEEDS: &[((u32, u32), &str)] = &[
    (
        (5, 19),
        "bpf_map_lookup_percpu_elem, which sock_ops record_client calls for other CPUs' pending slots",
    ),
    (
        (5, 14),
        "SO_NETNS_COOKIE, by which set_policy learns the host's network namespace",
    ),
];

/// The running kernel's major and minor version (`6.1.0-50-amd64` → (6, 1)).
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((parts.next()?.ok()?, parts.next()?.ok()?))
}

/// Whether `test` can run here: as root, on a kernel that loads lastmiled's programs.
/// Otherwise it says why, past the harness's capture (`SKIPPED name: why`, which
/// vm-tests reads too), and the test returns early.
pub fn can_run(test: &str) -> bool {
    if !crate::support::have_root(test) {
        return false;
    }
    let Some(running @ (major, minor)) = kernel_version() else {
        return true;
    };
    let missing: Vec<String> = KERNEL_NEEDS
        .iter()
        .filter(|(since, _)| running < *since)
        .map(|((a, b), what)| format!("{what} (kernel >= {a}.{b})"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: skipped on {major}.{minor}: needs {}",
        missing.join("; ")
    );
    false
}
