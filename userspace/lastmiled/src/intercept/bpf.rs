//! What a pinned cgroup link needs of bpf(2) that aya does not offer: opening it, its
//! cgroup, replacing its program. Layouts and numbers from `include/uapi/linux/bpf.h`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// `bpf_attr` for BPF_OBJ_GET. Every byte is written, padding included: the kernel
/// refuses an attr with anything but zeros past the command's last field (EINVAL).
#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    padding: u32,
}

/// `bpf_attr` for BPF_LINK_UPDATE (no BPF_F_REPLACE: whatever program the link has
/// is replaced).
#[repr(C)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_link_info` with the cgroup member of its union, zero-padded
/// to a size every kernel with links accepts (it checks that bytes past its own
/// struct are zero).
#[repr(C, align(8))]
struct CgroupLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    padding: u32,
    cgroup_id: u64,
    attach_type: u32,
    rest: [u32; 9],
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a bpf_attr prefix of the size passed, valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    let mut attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        padding: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel says of a link.
pub struct LinkInfo {
    pub id: u32,
    pub program_id: u32,
    /// The cgroup a cgroup link is attached to; `None` for another kind of link or
    /// one whose cgroup is gone (the kernel reports 0).
    pub cgroup_id: Option<u64>,
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut info = CgroupLinkInfo {
        link_type: 0,
        id: 0,
        prog_id: 0,
        padding: 0,
        cgroup_id: 0,
        attach_type: 0,
        rest: [0; 9],
    };
    let mut attr = InfoByFd {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<CgroupLinkInfo>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        id: info.id,
        program_id: info.prog_id,
        cgroup_id: (info.link_type == BPF_LINK_TYPE_CGROUP && info.cgroup_id != 0)
            .then_some(info.cgroup_id),
    })
}

/// Makes `link` run `program` from now on.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}
