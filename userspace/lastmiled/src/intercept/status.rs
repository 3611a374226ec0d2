//! What `lastmiled node status` reads from the pins: the programs' links, the maps'
//! sizes, the counters, the redirect configuration and the protected entries.

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray};
use lastmile_ebpf_common::{
    ClientKey, ConnectRecord, FLAG_ENFORCE, PORT_PREFIX_BITS, RedirectConfig, TargetInfo, TargetV4,
    TargetV6, names,
};

use super::{Counters, InterceptError, PROGRAMS, TargetId, bpf, link_err, read_counters};
use crate::target::ProtectedTarget;

/// What `lastmiled node status` reports, read from the pins alone, so it works whether or
/// not a lastmiled is running.
#[derive(Debug, serde::Serialize)]
pub struct PinnedStatus {
    pub pin_dir: PathBuf,
    pub programs: Vec<ProgramStatus>,
    pub protected_v4: usize,
    pub protected_v6: usize,
    pub records_by_client: usize,
    pub counters: Option<Counters>,
    pub redirect: Option<RedirectStatus>,
}

/// The redirect configuration the programs are using.
#[derive(Debug, serde::Serialize)]
pub struct RedirectStatus {
    pub listener_v4: Option<SocketAddr>,
    pub listener_v6: Option<SocketAddr>,
    pub enforce: bool,
    pub exempt_mark: u32,
}

impl RedirectStatus {
    fn from_config(c: &RedirectConfig) -> Self {
        let v4_port = u16::from_be_bytes(c.listener_v4_port);
        let v6_port = u16::from_be_bytes(c.listener_v6_port);
        Self {
            listener_v4: (v4_port != 0)
                .then(|| SocketAddr::from((std::net::Ipv4Addr::from(c.listener_v4), v4_port))),
            listener_v6: (v6_port != 0)
                .then(|| SocketAddr::from((std::net::Ipv6Addr::from(c.listener_v6), v6_port))),
            enforce: c.flags & FLAG_ENFORCE != 0,
            exempt_mark: c.exempt_mark,
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub struct ProgramStatus {
    pub name: &'static str,
    pub attached: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// The cgroup (v2 id: its directory's inode number) the link is attached to.
    pub cgroup_id: Option<u64>,
    /// BPF run-time statistics, when `kernel.bpf_stats_enabled` is on.
    pub run_count: Option<u64>,
    pub run_time_ns: Option<u64>,
}

/// Reads the status of the interception pinned under `pin_dir`.
pub fn pinned_status(pin_dir: &Path) -> Result<PinnedStatus, InterceptError> {
    let mut programs = Vec::new();
    let loaded: Vec<aya::programs::ProgramInfo> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .collect();
    for name in PROGRAMS {
        let pin = pin_dir.join("links").join(name);
        let mut status = ProgramStatus {
            name,
            attached: false,
            link_id: None,
            program_id: None,
            cgroup_id: None,
            run_count: None,
            run_time_ns: None,
        };
        if pin.exists() {
            let link = bpf::obj_get(&pin).map_err(link_err(&pin))?;
            if let Ok(info) = bpf::link_info(link.as_fd()) {
                // A link whose cgroup is gone exists but intercepts nothing.
                status.attached = info.cgroup_id.is_some();
                status.cgroup_id = info.cgroup_id;
                status.link_id = Some(info.id);
                status.program_id = Some(info.program_id);
                if let Some(p) = loaded.iter().find(|p| p.id() == info.program_id) {
                    status.run_count = Some(p.run_count());
                    status.run_time_ns = Some(p.run_time().as_nanos() as u64);
                }
            }
        }
        programs.push(status);
    }
    let count = |name: &'static str| -> usize {
        let path = pin_dir.join("maps").join(name);
        let Ok(data) = MapData::from_pin(&path) else {
            return 0;
        };
        let map = aya::maps::Map::HashMap(data);
        match name {
            names::PROTECTED_V4 => {
                LpmTrie::<_, TargetV4, TargetInfo>::try_from(reinterpret(map, name))
                    .map(|t| t.keys().count())
                    .unwrap_or(0)
            }
            names::PROTECTED_V6 => {
                LpmTrie::<_, TargetV6, TargetInfo>::try_from(reinterpret(map, name))
                    .map(|t| t.keys().count())
                    .unwrap_or(0)
            }
            names::BY_CLIENT => {
                HashMap::<_, ClientKey, ConnectRecord>::try_from(reinterpret(map, name))
                    .map(|t| t.keys().count())
                    .unwrap_or(0)
            }
            _ => 0,
        }
    };
    let counters = MapData::from_pin(pin_dir.join("maps").join(names::STATS))
        .ok()
        .and_then(|data| {
            let stats = PerCpuArray::<_, u64>::try_from(aya::maps::Map::PerCpuArray(data)).ok()?;
            read_counters(|i| stats.get(&i, 0).map(|v| v.iter().sum())).ok()
        });
    let redirect = MapData::from_pin(pin_dir.join("maps").join(names::REDIRECT))
        .ok()
        .and_then(|data| {
            let array = Array::<_, RedirectConfig>::try_from(aya::maps::Map::Array(data)).ok()?;
            array
                .get(&0, 0)
                .ok()
                .map(|c| RedirectStatus::from_config(&c))
        });
    Ok(PinnedStatus {
        redirect,
        pin_dir: pin_dir.to_owned(),
        programs,
        protected_v4: count(names::PROTECTED_V4),
        protected_v6: count(names::PROTECTED_V6),
        records_by_client: count(names::BY_CLIENT),
        counters,
    })
}

/// A pinned map opened from bpffs comes back untyped; wrap it in the variant its name says.
fn reinterpret(map: aya::maps::Map, name: &str) -> aya::maps::Map {
    let data = match map {
        aya::maps::Map::HashMap(d) => d,
        other => return other,
    };
    match name {
        names::PROTECTED_V4 | names::PROTECTED_V6 => aya::maps::Map::LpmTrie(data),
        names::BY_CLIENT => aya::maps::Map::LruHashMap(data),
        _ => aya::maps::Map::HashMap(data),
    }
}

/// One entry of the protected tries: what the kernel intercepts, and the id of the target
/// it is handed to as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedTarget {
    pub protect: ProtectedTarget,
    pub id: TargetId,
}

impl PinnedTarget {
    /// The entries of both protected tries pinned under `pin_dir`; none when nothing is
    /// pinned. An entry whose key is no protected target (a map written by something
    /// else) is skipped.
    pub fn read_all(pin_dir: &Path) -> Vec<PinnedTarget> {
        let mut out = read_trie::<TargetV4>(pin_dir, names::PROTECTED_V4, |k| {
            (IpAddr::from(k.addr), k.port)
        });
        out.extend(read_trie::<TargetV6>(pin_dir, names::PROTECTED_V6, |k| {
            (IpAddr::from(k.addr), k.port)
        }));
        out
    }
}

/// The entries of the protected trie `name`, its keys read by `addr_port`.
fn read_trie<K: aya::Pod>(
    pin_dir: &Path,
    name: &str,
    addr_port: impl Fn(&K) -> (IpAddr, [u8; 2]),
) -> Vec<PinnedTarget> {
    let Ok(data) = MapData::from_pin(pin_dir.join("maps").join(name)) else {
        return Vec::new();
    };
    let map = reinterpret(aya::maps::Map::HashMap(data), name);
    let Ok(trie) = LpmTrie::<_, K, TargetInfo>::try_from(map) else {
        return Vec::new();
    };
    trie.iter()
        .filter_map(Result::ok)
        .filter_map(|(key, info)| {
            let (addr, port) = addr_port(&key.data());
            entry(addr, key.prefix_len(), port, info)
        })
        .collect()
}

/// The target a trie key stands for: the port's bits come first in the key, then the
/// address's (see `crate::target::KernelKey`).
fn entry(addr: IpAddr, key_bits: u32, port: [u8; 2], info: TargetInfo) -> Option<PinnedTarget> {
    let prefix = u8::try_from(key_bits.checked_sub(PORT_PREFIX_BITS)?).ok()?;
    let protect = ProtectedTarget::network(addr, prefix, u16::from_be_bytes(port)).ok()?;
    Some(PinnedTarget {
        protect,
        id: TargetId(info.target_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::KernelKey as _;

    #[test]
    fn a_trie_key_reads_back_as_the_target_that_wrote_it() {
        for spec in [
            "127.0.0.2:5432",
            "127.1.0.0/16:22",
            "[::1]:8080",
            "[fd00::/64]:443",
        ] {
            let t: ProtectedTarget = spec.parse().unwrap();
            let info = TargetInfo {
                target_id: 7,
                flags: 0,
            };
            let back = if let Some((len, k)) = t.key_v4() {
                entry(IpAddr::from(k.addr), len, k.port, info)
            } else {
                let (len, k) = t.key_v6().unwrap();
                entry(IpAddr::from(k.addr), len, k.port, info)
            };
            assert_eq!(
                back,
                Some(PinnedTarget {
                    protect: t,
                    id: TargetId(7)
                }),
                "{spec}"
            );
        }
    }
}
