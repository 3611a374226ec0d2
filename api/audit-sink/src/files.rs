//! How the sink creates its files (the local event file, the spool and its neighbours):
//! readable by their owner and the `lastmile` group only, since events say who connected
//! where and when.
//!
//! A file the sink creates gets mode 0640, whatever the umask, and when a group named
//! [`READER_GROUP`] exists it is handed to that group (so `root:lastmile` when the
//! component runs as root); without the group, or when the process may not change the
//! group (not root and not a member), the file keeps the creator's group. A file that
//! already exists is opened as it is: its mode and owner are left alone, so an operator's
//! own choice stands (and an older, world-readable file stays so until they change it).

use std::{
    fs::{File, OpenOptions, Permissions},
    io,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// Mode of every file the sink creates: owner read-write, group read, others nothing.
pub const FILE_MODE: u32 = 0o640;

/// The group audit files are handed to when it exists: its members may read them.
pub const READER_GROUP: &str = "lastmile";

/// Opens `path` to append, creating it (mode [`FILE_MODE`], group [`READER_GROUP`]) if it
/// does not exist.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    let created = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path);
    match created {
        Ok(f) => {
            restrict(&f)?;
            Ok(f)
        }
        // Made meanwhile by another writer, or there already: as it is.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path)
        }
        Err(e) => Err(e),
    }
}

/// Creates `path` afresh (truncating a leftover) to write, mode [`FILE_MODE`], group
/// [`READER_GROUP`]: for a temporary file that replaces another.
pub(crate) fn create_replacement(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    restrict(&f)?;
    Ok(f)
}

/// The exact mode (the umask only narrows what `open` asked for), and the reader group.
fn restrict(f: &File) -> io::Result<()> {
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name(READER_GROUP) {
        // Best effort: without the right to change the group, the file is still 0640
        // with the creator's group, which leaks nothing to other users.
        let _ = std::os::unix::fs::fchown(f, None, Some(group.gid.as_raw()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn a_replacement_is_0640_even_over_a_world_readable_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.tmp");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        create_replacement(&path).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, FILE_MODE);
        assert_eq!(m.len(), 0);
    }
}
