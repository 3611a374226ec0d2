//! Loading lastmile's kernel programs, attaching them to a cgroup, and keeping their maps
//! current.

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, MapError, PerCpuArray, lpm_trie::Key},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError},
};
use lastmile_ebpf_common::{RedirectConfig, Stat, TargetInfo, TargetV4, names};

use crate::target::ProtectedTarget;

/// The kernel object built from `ebpf/lastmile-ebpf` by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lastmile-ebpf"));

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
    #[error("cannot open cgroup {}: {source}; is it a cgroup v2 directory?", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map `{name}` refused the update")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{0} is IPv6; this build intercepts IPv4 targets only")]
    Ipv6NotSupported(String),
}

/// Identifies a protected target in kernel events (its position in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TargetId(pub u32);

/// The programs' decision counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecisionCounts {
    pub redirected: u64,
    pub unprotected: u64,
    pub no_listener: u64,
    pub exempt: u64,
}

/// Loaded kernel programs and their maps. Dropping it detaches the programs.
#[derive(Debug)]
pub struct Interceptor {
    ebpf: Ebpf,
    attached_to: Vec<PathBuf>,
}

impl Interceptor {
    /// Loads the embedded programs into the kernel (not yet attached anywhere).
    pub fn load() -> Result<Self, InterceptError> {
        if OBJECT.is_empty() {
            return Err(InterceptError::NotBuiltIn);
        }
        let mut ebpf = Ebpf::load(OBJECT).map_err(InterceptError::Load)?;
        let program = connect4(&mut ebpf)?;
        program.load().map_err(|source| InterceptError::Program {
            name: names::CONNECT4,
            source,
        })?;
        Ok(Self {
            ebpf,
            attached_to: Vec::new(),
        })
    }

    /// Attaches the programs to the cgroup v2 directory `cgroup`: every process in it, and
    /// in the cgroups below it, is intercepted. Other programs attached there keep running.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), InterceptError> {
        let dir = File::open(cgroup).map_err(|source| InterceptError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        // Attached through a BPF link (kernel >= 5.7), which always coexists with other
        // programs on the same cgroup; the link API takes no BPF_F_ALLOW_MULTI flag and
        // refuses one with EINVAL, so the mode must stay `Single` (no flags).
        connect4(&mut self.ebpf)?
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| InterceptError::Program {
                name: names::CONNECT4,
                source,
            })?;
        self.attached_to.push(cgroup.to_owned());
        Ok(())
    }

    /// The cgroups the programs are attached to.
    pub fn attached_to(&self) -> &[PathBuf] {
        &self.attached_to
    }

    /// Sends redirected connections to `listener`. Sockets marked `exempt_mark` (SO_MARK)
    /// are never redirected: lastmiled marks its own upstream connections with it.
    pub fn set_listener(
        &mut self,
        listener: SocketAddr,
        exempt_mark: u32,
    ) -> Result<(), InterceptError> {
        let mut config = RedirectConfig {
            listener_port: listener.port().to_be_bytes(),
            exempt_mark,
            ..RedirectConfig::default()
        };
        match listener.ip() {
            IpAddr::V4(a) => config.listener_v4 = a.octets(),
            IpAddr::V6(a) => config.listener_v6 = a.octets(),
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
        let (prefix_len, data) = target
            .key_v4()
            .ok_or_else(|| InterceptError::Ipv6NotSupported(target.to_string()))?;
        let map = self.map_mut(names::PROTECTED_V4)?;
        let mut trie: LpmTrie<_, TargetV4, TargetInfo> =
            LpmTrie::try_from(map).map_err(map_err(names::PROTECTED_V4))?;
        trie.insert(
            &Key::new(prefix_len, data),
            TargetInfo {
                target_id: id.0,
                flags: 0,
            },
            0,
        )
        .map_err(map_err(names::PROTECTED_V4))
    }

    /// Stops intercepting connections to `target`; a target that was not protected is fine.
    pub fn unprotect(&mut self, target: &ProtectedTarget) -> Result<(), InterceptError> {
        let (prefix_len, data) = target
            .key_v4()
            .ok_or_else(|| InterceptError::Ipv6NotSupported(target.to_string()))?;
        let map = self.map_mut(names::PROTECTED_V4)?;
        let mut trie: LpmTrie<_, TargetV4, TargetInfo> =
            LpmTrie::try_from(map).map_err(map_err(names::PROTECTED_V4))?;
        match trie.remove(&Key::new(prefix_len, data)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(InterceptError::Map {
                name: names::PROTECTED_V4,
                source,
            }),
        }
    }

    /// The decision counters, summed over CPUs.
    pub fn counts(&self) -> Result<DecisionCounts, InterceptError> {
        let map = self.ebpf.map(names::STATS).ok_or(InterceptError::Missing {
            kind: "map",
            name: names::STATS,
        })?;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err(names::STATS))?;
        let mut counts = DecisionCounts::default();
        for stat in Stat::ALL {
            let total: u64 = stats
                .get(&(stat as u32), 0)
                .map_err(map_err(names::STATS))?
                .iter()
                .sum();
            match stat {
                Stat::Redirected => counts.redirected = total,
                Stat::Unprotected => counts.unprotected = total,
                Stat::NoListener => counts.no_listener = total,
                Stat::Exempt => counts.exempt = total,
            }
        }
        Ok(counts)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, InterceptError> {
        self.ebpf
            .map_mut(name)
            .ok_or(InterceptError::Missing { kind: "map", name })
    }
}

fn connect4(ebpf: &mut Ebpf) -> Result<&mut CgroupSockAddr, InterceptError> {
    let name = names::CONNECT4;
    ebpf.program_mut(name)
        .ok_or(InterceptError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| InterceptError::Program { name, source })
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> InterceptError {
    move |source| InterceptError::Map { name, source }
}
