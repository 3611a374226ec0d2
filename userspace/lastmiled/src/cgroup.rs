//! Finding the cgroup v2 hierarchy that the programs attach to.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where the cgroup v2 hierarchy is mounted, read from `/proc/self/mounts` (it is
/// `/sys/fs/cgroup` on most systems, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    parse_cgroup2_root(&mounts).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 filesystem is mounted; mount one with `mount -t cgroup2 none /sys/fs/cgroup`",
        )
    })
}

fn parse_cgroup2_root(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether `path` is a directory of a cgroup v2 hierarchy.
pub fn is_cgroup2_dir(path: &Path) -> bool {
    path.join("cgroup.procs").is_file() && path.join("cgroup.controllers").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_others() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      tmpfs /sys/fs/cgroup tmpfs ro 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            parse_cgroup2_root(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_cgroup2_root("sysfs /sys sysfs rw 0 0\n"), None);
    }
}
