//! Loading lastmile's kernel programs, attaching them to a cgroup, pinning them so they
//! outlive lastmiled, and keeping their maps current.
//!
//! Pinned layout under the pin directory (default `/sys/fs/bpf/lastmile`):
//! `maps/<MAP>` for every map and `links/<program>` for every attachment. A new lastmiled
//! reuses the pinned maps (so the protected set and in-flight records survive) once it has
//! checked that they have the shape its programs expect, and keeps the pinned links while
//! swapping its own programs into them (`BPF_LINK_UPDATE`, atomic: interception never
//! stops, and an upgraded lastmiled runs upgraded programs); `lastmiled node detach`
//! removes the directory, which detaches everything.

use std::{
    fs::{self, File},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, MapData, MapError, MapInfo, PerCpuArray, RingBuf, lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, ProgramError,
        links::{FdLink, LinkError},
    },
};
use lastmile_ebpf_common::{
    ClientKey, ConnectRecord, FLAG_ENFORCE, RedirectConfig, Stat, TargetInfo, TargetV4, TargetV6,
    names,
};

use crate::target::{KernelKey as _, ProtectedTarget};

mod bpf;
mod status;
pub use status::{PinnedStatus, PinnedTarget, ProgramStatus, RedirectStatus, pinned_status};

/// The kernel object built from `ebpf/lastmile-ebpf` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lastmile-ebpf"));

/// The programs, in the order they are attached. Every one is needed for a redirected
/// connection to work end to end, so `sock_ops` and `getpeername` go first and `connect`
/// last: nothing is redirected before the rest is in place.
pub const PROGRAMS: [&str; 5] = [
    names::SOCK_OPS,
    names::GETPEERNAME4,
    names::GETPEERNAME6,
    names::CONNECT4,
    names::CONNECT6,
];

/// Why interception could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(
        "this lastmiled was built without its eBPF programs (LASTMILE_NO_EBPF=1); \
         rebuild it after `cargo xtask setup`"
    )]
    NotBuiltIn,
    #[error("the kernel refused lastmile's eBPF object (are you root, with bpf() allowed?)")]
    Load(#[source] aya::EbpfError),
    #[error("the eBPF object has no {kind} named `{name}`; lastmiled and its programs disagree")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("the kernel refused program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot open cgroup {} (is it a cgroup v2 directory?)", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("map `{name}` refused the operation")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot pin under {} (is bpffs mounted there?)", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pinned link {} is unusable", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error(
        "{} was pinned by a lastmiled whose programs need another layout \
         (key, value, entries: {have:?}; this lastmiled needs {want:?}); \
         run `lastmiled node detach` to remove the old interception (until lastmiled runs \
         again, protected connections are refused in enforcement mode or go direct), then \
         start lastmiled",
        path.display()
    )]
    IncompatiblePin {
        path: PathBuf,
        have: (u32, u32, u32),
        want: (u32, u32, u32),
    },
    #[error("pinned link {} is unusable", path.display())]
    PinnedLink {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the embedded eBPF object cannot be parsed: {0}")]
    Object(String),
    #[error("cannot put the new program `{name}` into its pinned link {}", path.display())]
    Replace {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read this network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+)")]
    NetnsCookie(#[source] io::Error),
}

/// What [`Interceptor::attach`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attached {
    /// Programs attached with a new link.
    pub new: usize,
    /// Pinned links that now run this lastmiled's program.
    pub replaced: usize,
    /// Pinned links on another cgroup, replaced by links on this one.
    pub moved: usize,
}

/// Identifies a protected target in kernel records (lastmiled's index of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TargetId(pub u32);

/// The programs' counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub redirected: u64,
    pub unprotected: u64,
    pub passed_through: u64,
    pub exempt: u64,
    pub refused: u64,
    pub other_netns: u64,
    pub events_dropped: u64,
    pub records_dropped: u64,
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} redirected, {} unprotected, {} passed through, {} exempt, {} refused, \
             {} from other network namespaces, {} events and {} records dropped",
            self.redirected,
            self.unprotected,
            self.passed_through,
            self.exempt,
            self.refused,
            self.other_netns,
            self.events_dropped,
            self.records_dropped
        )
    }
}

/// Where redirected connections go and how the programs decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectPolicy {
    /// Listener for IPv4 (and v4-mapped) targets.
    pub listener_v4: Option<SocketAddr>,
    /// Listener for IPv6 targets.
    pub listener_v6: Option<SocketAddr>,
    /// SO_MARK of lastmiled's own upstream sockets, never redirected; 0 for none.
    pub exempt_mark: u32,
    /// Refuse (EPERM) protected connections that have nowhere to go.
    pub enforce: bool,
}

/// Loaded kernel programs and their maps.
#[derive(Debug)]
pub struct Interceptor {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

impl Interceptor {
    /// Loads the embedded programs into the kernel, unpinned: dropping the interceptor
    /// detaches everything (what tests and short-lived tools want).
    pub fn load() -> Result<Self, InterceptError> {
        Self::load_with(None)
    }

    /// Loads the programs with their maps pinned under `pin_dir`, reusing maps already
    /// pinned there by an earlier lastmiled.
    pub fn load_pinned(pin_dir: &Path) -> Result<Self, InterceptError> {
        for sub in ["maps", "links"] {
            let dir = pin_dir.join(sub);
            fs::create_dir_all(&dir).map_err(|source| InterceptError::Pin { path: dir, source })?;
        }
        check_pinned_maps(pin_dir)?;
        Self::load_with(Some(pin_dir))
    }

    fn load_with(pin_dir: Option<&Path>) -> Result<Self, InterceptError> {
        if OBJECT.is_empty() {
            return Err(InterceptError::NotBuiltIn);
        }
        let mut loader = EbpfLoader::new();
        let map_paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => names::MAPS
                .iter()
                .map(|m| (*m, dir.join("maps").join(m)))
                .collect(),
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(InterceptError::Load)?;
        for name in PROGRAMS {
            let program = ebpf.program_mut(name).ok_or(InterceptError::Missing {
                kind: "program",
                name,
            })?;
            let result = match program {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                _ => {
                    return Err(InterceptError::Missing {
                        kind: "program of the expected type",
                        name,
                    });
                }
            };
            result.map_err(|source| InterceptError::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.map(Path::to_owned),
        })
    }

    /// Attaches every program to the cgroup v2 directory `cgroup`: every process in it and
    /// below it is intercepted. With pinning, a link already pinned (by an earlier
    /// lastmiled) on this cgroup is kept and gets this lastmiled's program in place of the
    /// one it had (atomically, so no connect goes unseen); one on another cgroup (the
    /// configuration changed, or that cgroup is gone) is replaced by a new link here,
    /// attached before the old one goes; new links are pinned.
    pub fn attach(&mut self, cgroup: &Path) -> Result<Attached, InterceptError> {
        let cgroup_err = |source| InterceptError::Cgroup {
            path: cgroup.to_owned(),
            source,
        };
        let dir = File::open(cgroup).map_err(cgroup_err)?;
        // A cgroup v2 id is its directory's kernfs node id, which is its inode number.
        let cgroup_id = std::os::unix::fs::MetadataExt::ino(&dir.metadata().map_err(cgroup_err)?);
        let mut attached = Attached::default();
        for name in PROGRAMS {
            let link_pin = self.pin_dir.as_ref().map(|d| d.join("links").join(name));
            let mut moving = false;
            if let Some(pin) = &link_pin
                && pin.exists()
            {
                let link = bpf::obj_get(pin).map_err(link_err(pin))?;
                let on = bpf::link_info(link.as_fd()).map_err(link_err(pin))?;
                if on.cgroup_id == Some(cgroup_id) {
                    self.replace_program(name, link.as_fd(), pin)?;
                    attached.replaced += 1;
                    continue;
                }
                moving = true;
            }
            // Links (kernel >= 5.7) always coexist with other programs on the cgroup; the
            // link API refuses BPF_F_ALLOW_MULTI with EINVAL, so the mode stays `Single`.
            let program_err = |source| InterceptError::Program { name, source };
            let link: Option<FdLink> = match self.ebpf.program_mut(name) {
                Some(aya::programs::Program::CgroupSockAddr(p)) => {
                    let id = p
                        .attach(&dir, CgroupAttachMode::Single)
                        .map_err(program_err)?;
                    match &link_pin {
                        Some(_) => Some(take_fd_link(p.take_link(id).map_err(program_err)?, name)?),
                        None => None,
                    }
                }
                Some(aya::programs::Program::SockOps(p)) => {
                    let id = p
                        .attach(&dir, CgroupAttachMode::Single)
                        .map_err(program_err)?;
                    match &link_pin {
                        Some(_) => Some(take_fd_link(p.take_link(id).map_err(program_err)?, name)?),
                        None => None,
                    }
                }
                _ => {
                    return Err(InterceptError::Missing {
                        kind: "program",
                        name,
                    });
                }
            };
            if let (Some(link), Some(pin)) = (link, link_pin) {
                if moving {
                    // The old link detaches once its pin is gone (nothing else holds it).
                    fs::remove_file(&pin).map_err(|source| InterceptError::Pin {
                        path: pin.clone(),
                        source,
                    })?;
                }
                link.pin(&pin).map_err(|e| InterceptError::Pin {
                    path: pin.clone(),
                    source: io::Error::other(e),
                })?;
            }
            if moving {
                attached.moved += 1;
            } else {
                attached.new += 1;
            }
        }
        Ok(attached)
    }

    /// Puts this lastmiled's program `name` into `link` (pinned at `pin`).
    fn replace_program(
        &self,
        name: &'static str,
        link: BorrowedFd<'_>,
        pin: &Path,
    ) -> Result<(), InterceptError> {
        let fd = match self.ebpf.program(name) {
            Some(aya::programs::Program::CgroupSockAddr(p)) => p.fd(),
            Some(aya::programs::Program::SockOps(p)) => p.fd(),
            _ => {
                return Err(InterceptError::Missing {
                    kind: "program",
                    name,
                });
            }
        }
        .map_err(|source| InterceptError::Program { name, source })?;
        bpf::link_update(link, fd.as_fd()).map_err(|source| InterceptError::Replace {
            name,
            path: pin.to_owned(),
            source,
        })
    }

    /// Sets where redirected connections go, for connections made in this process's
    /// network namespace (the only one intercepted).
    pub fn set_policy(&mut self, policy: &RedirectPolicy) -> Result<(), InterceptError> {
        let mut config = RedirectConfig {
            host_netns_cookie: own_netns_cookie().map_err(InterceptError::NetnsCookie)?,
            exempt_mark: policy.exempt_mark,
            flags: if policy.enforce { FLAG_ENFORCE } else { 0 },
            ..RedirectConfig::default()
        };
        if let Some(l) = policy.listener_v4
            && let IpAddr::V4(a) = l.ip()
        {
            config.listener_v4 = a.octets();
            config.listener_v4_port = l.port().to_be_bytes();
        }
        if let Some(l) = policy.listener_v6
            && let IpAddr::V6(a) = l.ip()
        {
            config.listener_v6 = a.octets();
            config.listener_v6_port = l.port().to_be_bytes();
        }
        let map = self.map_mut(names::REDIRECT)?;
        let mut array: Array<_, RedirectConfig> =
            Array::try_from(map).map_err(map_err(names::REDIRECT))?;
        array.set(0, config, 0).map_err(map_err(names::REDIRECT))
    }

    /// Starts intercepting connections to `target`.
    pub fn protect(
        &mut self,
        target: &ProtectedTarget,
        id: TargetId,
    ) -> Result<(), InterceptError> {
        let info = TargetInfo {
            target_id: id.0,
            flags: 0,
        };
        if let Some((len, data)) = target.key_v4() {
            let mut trie = self.trie_v4()?;
            trie.insert(&Key::new(len, data), info, 0)
                .map_err(map_err(names::PROTECTED_V4))
        } else if let Some((len, data)) = target.key_v6() {
            let mut trie = self.trie_v6()?;
            trie.insert(&Key::new(len, data), info, 0)
                .map_err(map_err(names::PROTECTED_V6))
        } else {
            Ok(())
        }
    }

    /// Stops intercepting connections to `target`; a target that was not protected is fine.
    pub fn unprotect(&mut self, target: &ProtectedTarget) -> Result<(), InterceptError> {
        if let Some((len, data)) = target.key_v4() {
            remove_key(
                &mut self.trie_v4()?,
                &Key::new(len, data),
                names::PROTECTED_V4,
            )
        } else if let Some((len, data)) = target.key_v6() {
            remove_key(
                &mut self.trie_v6()?,
                &Key::new(len, data),
                names::PROTECTED_V6,
            )
        } else {
            Ok(())
        }
    }

    /// Adds `targets` to the protected set (or updates their ids) and removes nothing.
    pub fn add_targets(
        &mut self,
        targets: &[(ProtectedTarget, TargetId)],
    ) -> Result<(), InterceptError> {
        for (t, id) in targets {
            self.protect(t, *id)?;
        }
        Ok(())
    }

    /// Makes the protected set exactly `targets`, without a moment where a target that
    /// stays protected is missing: new entries are written first, stale ones removed after.
    pub fn replace_targets(
        &mut self,
        targets: &[(ProtectedTarget, TargetId)],
    ) -> Result<(), InterceptError> {
        for (t, id) in targets {
            self.protect(t, *id)?;
        }
        let wanted_v4: Vec<_> = targets.iter().filter_map(|(t, _)| t.key_v4()).collect();
        let wanted_v6: Vec<_> = targets.iter().filter_map(|(t, _)| t.key_v6()).collect();
        remove_stale(&mut self.trie_v4()?, &wanted_v4, names::PROTECTED_V4)?;
        remove_stale(&mut self.trie_v6()?, &wanted_v6, names::PROTECTED_V6)
    }

    /// The record of the redirected connection whose client end is `client` (the peer
    /// address of the accepted socket). A connection without one was not redirected by the
    /// kernel: someone dialed the listener directly. The record stays until the client's
    /// socket closes (its getpeername needs it).
    pub fn record_for(
        &mut self,
        client: SocketAddr,
    ) -> Result<Option<ConnectRecord>, InterceptError> {
        let key = client_key(client);
        let map = self.map_mut(names::BY_CLIENT)?;
        let by_client: HashMap<_, ClientKey, ConnectRecord> =
            HashMap::try_from(map).map_err(map_err(names::BY_CLIENT))?;
        match by_client.get(&key, 0) {
            Ok(record) => Ok(Some(record)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(InterceptError::Map {
                name: names::BY_CLIENT,
                source,
            }),
        }
    }

    /// The event ring buffer, taken out of the interceptor to be polled on its own.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, InterceptError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(InterceptError::Missing {
                kind: "map",
                name: names::EVENTS,
            })?;
        RingBuf::try_from(map).map_err(map_err(names::EVENTS))
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, InterceptError> {
        let map = self.ebpf.map(names::STATS).ok_or(InterceptError::Missing {
            kind: "map",
            name: names::STATS,
        })?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err(names::STATS))?;
        read_counters(|i| stats.get(&i, 0).map(|v| v.iter().sum()))
    }

    /// Kernel ids of the loaded programs, by name (for BPF run-time statistics).
    pub fn program_ids(&self) -> Vec<(&'static str, u32)> {
        PROGRAMS
            .iter()
            .filter_map(|name| {
                let info = match self.ebpf.program(name)? {
                    aya::programs::Program::CgroupSockAddr(p) => p.info().ok()?,
                    aya::programs::Program::SockOps(p) => p.info().ok()?,
                    _ => return None,
                };
                Some((*name, info.id()))
            })
            .collect()
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, InterceptError> {
        self.ebpf
            .map_mut(name)
            .ok_or(InterceptError::Missing { kind: "map", name })
    }

    fn trie_v4(&mut self) -> Result<LpmTrie<&mut MapData, TargetV4, TargetInfo>, InterceptError> {
        let map = self.map_mut(names::PROTECTED_V4)?;
        LpmTrie::try_from(map).map_err(map_err(names::PROTECTED_V4))
    }

    fn trie_v6(&mut self) -> Result<LpmTrie<&mut MapData, TargetV6, TargetInfo>, InterceptError> {
        let map = self.map_mut(names::PROTECTED_V6)?;
        LpmTrie::try_from(map).map_err(map_err(names::PROTECTED_V6))
    }
}

/// Refuses maps pinned under `pin_dir` whose key size, value size or capacity differ from
/// the embedded object's: this lastmiled's programs would misread them (the kernel checks
/// bounds against the pinned map, not meaning).
fn check_pinned_maps(pin_dir: &Path) -> Result<(), InterceptError> {
    let object =
        aya_obj::Object::parse(OBJECT).map_err(|e| InterceptError::Object(e.to_string()))?;
    for name in names::MAPS {
        let path = pin_dir.join("maps").join(name);
        if !path.exists() {
            continue;
        }
        let def = object
            .maps
            .get(name)
            .ok_or(InterceptError::Missing { kind: "map", name })?;
        let pinned = MapInfo::from_pin(&path).map_err(map_err(name))?;
        let want = (def.key_size(), def.value_size(), def.max_entries());
        let have = (pinned.key_size(), pinned.value_size(), pinned.max_entries());
        if have != want {
            return Err(InterceptError::IncompatiblePin { path, have, want });
        }
    }
    Ok(())
}

/// Removes `key`; a key that is not there is fine.
fn remove_key<K: aya::Pod>(
    trie: &mut LpmTrie<&mut MapData, K, TargetInfo>,
    key: &Key<K>,
    name: &'static str,
) -> Result<(), InterceptError> {
    match trie.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(source) => Err(InterceptError::Map { name, source }),
    }
}

/// Removes every entry of `trie` that is not in `wanted` (prefix length, key data).
fn remove_stale<K: aya::Pod + PartialEq>(
    trie: &mut LpmTrie<&mut MapData, K, TargetInfo>,
    wanted: &[(u32, K)],
    name: &'static str,
) -> Result<(), InterceptError> {
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
        .collect();
    for key in &stale {
        remove_key(trie, key, name)?;
    }
    Ok(())
}

fn take_fd_link<L>(link: L, name: &'static str) -> Result<FdLink, InterceptError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    FdLink::try_from(link).map_err(|source| InterceptError::Link {
        path: PathBuf::from(name),
        source,
    })
}

fn read_counters(
    mut get: impl FnMut(u32) -> Result<u64, MapError>,
) -> Result<Counters, InterceptError> {
    let mut c = Counters::default();
    for stat in Stat::ALL {
        let v = get(stat as u32).map_err(map_err(names::STATS))?;
        let slot = match stat {
            Stat::Redirected => &mut c.redirected,
            Stat::Unprotected => &mut c.unprotected,
            Stat::PassedThrough => &mut c.passed_through,
            Stat::Exempt => &mut c.exempt,
            Stat::Refused => &mut c.refused,
            Stat::OtherNetns => &mut c.other_netns,
            Stat::EventsDropped => &mut c.events_dropped,
            Stat::RecordsDropped => &mut c.records_dropped,
        };
        *slot = v;
    }
    Ok(c)
}

/// A kernel event from the ring buffer, or None when it is too short to be one.
pub fn record_from_event(bytes: &[u8]) -> Option<ConnectRecord> {
    if bytes.len() < std::mem::size_of::<ConnectRecord>() {
        return None;
    }
    // SAFETY: at least size_of::<ConnectRecord>() bytes, and any bit pattern is a valid
    // ConnectRecord (integers and byte arrays only); unaligned, because the ring buffer
    // promises only 8-byte alignment of the item, not of this slice's start.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// The record key for a client address: IPv4 as `::ffff:a.b.c.d`, port in network order.
pub fn client_key(client: SocketAddr) -> ClientKey {
    let addr = match client.ip() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    ClientKey {
        addr,
        port: client.port().to_be_bytes(),
        reserved: [0; 2],
    }
}

/// The cookie of the network namespace this process runs in.
pub fn own_netns_cookie() -> io::Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket_u64_option(&sock, libc::SO_NETNS_COOKIE)
}

/// The kernel's cookie of a socket (`SO_COOKIE`), as the programs see it.
pub fn socket_cookie(sock: &impl std::os::fd::AsRawFd) -> io::Result<u64> {
    socket_u64_option(sock, libc::SO_COOKIE)
}

fn socket_u64_option(sock: &impl std::os::fd::AsRawFd, option: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: value and len point at valid memory of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes everything pinned under `pin_dir`: the links (which detaches the programs) and
/// the maps. Returns whether there was anything to remove.
pub fn unpin_all(pin_dir: &Path) -> io::Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(pin_dir)?;
    Ok(true)
}

fn link_err(path: &Path) -> impl Fn(io::Error) -> InterceptError {
    move |source| InterceptError::PinnedLink {
        path: path.to_owned(),
        source,
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> InterceptError {
    move |source| InterceptError::Map { name, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_write_ipv4_as_v4_mapped_and_ports_in_network_order() {
        let k = client_key("127.0.0.1:258".parse().unwrap());
        assert_eq!(
            k.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
        assert_eq!(k.port, [1, 2]);
        let k6 = client_key("[::1]:1".parse().unwrap());
        assert_eq!(k6.addr[15], 1);
        assert_eq!(k6.addr[10], 0);
    }
}
