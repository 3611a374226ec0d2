//! What is mounted where, from `/proc/self/mounts`: the cgroup v2 hierarchy the programs
//! attach to, and the bpffs they are pinned on.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on most systems,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    mount_points(&fs::read_to_string("/proc/self/mounts")?, "cgroup2").into_iter().next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 filesystem is mounted; mount one with `mount -t cgroup2 none /sys/fs/cgroup`",
        )
    })
}

/// Whether `path` lies on a mounted bpffs.
pub fn on_bpffs(path: &Path) -> io::Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    Ok(mount_points(&mounts, "bpf")
        .iter()
        .any(|m| path.starts_with(m)))
}

/// The mount points of every filesystem of type `fstype` in a `/proc/self/mounts` text.
fn mount_points(mounts: &str, fstype: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, ty) = (fields.next()?, fields.next()?, fields.next()?);
            (ty == fstype).then(|| PathBuf::from(unescape_mount_path(dir)))
        })
        .collect()
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points_by_type_among_others() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n\
                      bpf /sys/fs/bpf bpf rw 0 0\n\
                      bpf /mnt/my\\040pins bpf rw 0 0\n";
        assert_eq!(
            mount_points(mounts, "cgroup2"),
            [PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(
            mount_points(mounts, "bpf"),
            [PathBuf::from("/sys/fs/bpf"), PathBuf::from("/mnt/my pins")]
        );
        assert!(mount_points("sysfs /sys sysfs rw 0 0\n", "cgroup2").is_empty());
    }
}
