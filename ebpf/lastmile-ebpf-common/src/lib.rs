//! The map keys, values and constants that lastmile's kernel programs and `lastmiled`
//! share. Every type is `#[repr(C)]` and made only of byte arrays and fixed-width integers,
//! so both sides agree on its layout without padding surprises.
//!
//! Addresses and ports are kept as byte arrays in network order, exactly as the kernel
//! hands them to a `cgroup/connect*` program, so the LPM trie compares them bit by bit
//! from the most significant end (see `Documentation/bpf/map_lpm_trie.rst`).
#![no_std]

/// How many protected targets (exact or prefix) each address family can hold.
pub const MAX_TARGETS: u32 = 4096;

/// Bits of the port that come before the address in a target key.
pub const PORT_PREFIX_BITS: u32 = 16;

/// Data of an IPv4 protected-target key. The port comes first so that one trie answers
/// both "this address and port" (prefix length 16 + 32) and "this network on this port"
/// (prefix length 16 + network bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetV4 {
    /// Destination port, network order.
    pub port: [u8; 2],
    /// Destination address, network order.
    pub addr: [u8; 4],
}

impl TargetV4 {
    /// Prefix length that covers port and the whole address.
    pub const FULL_PREFIX: u32 = PORT_PREFIX_BITS + 32;
}

/// Data of an IPv6 protected-target key; see [`TargetV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TargetV6 {
    /// Destination port, network order.
    pub port: [u8; 2],
    /// Destination address, network order.
    pub addr: [u8; 16],
}

impl TargetV6 {
    /// Prefix length that covers port and the whole address.
    pub const FULL_PREFIX: u32 = PORT_PREFIX_BITS + 128;
}

/// What the kernel knows about a protected target: which one it is, so userspace can
/// name it in events without a second lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// lastmiled's identifier of the protected target (its index in the configuration).
    pub target_id: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// Where redirected connections go: lastmiled's local listener. Lives at index 0 of the
/// `REDIRECT` array. A zero port means "no listener configured": protected targets are
/// then passed through (or refused, in enforcement mode).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RedirectConfig {
    /// IPv4 address of the listener, network order.
    pub listener_v4: [u8; 4],
    /// IPv6 address of the listener, network order.
    pub listener_v6: [u8; 16],
    /// Listener port, network order.
    pub listener_port: [u8; 2],
    /// Reserved, zero.
    pub flags: u16,
    /// Sockets carrying this `SO_MARK` are lastmiled's own upstream connections and are
    /// never redirected. Zero disables the exemption.
    pub exempt_mark: u32,
}

/// Indices of the per-CPU decision counters in the `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A connection to a protected target was rewritten to the listener.
    Redirected = 0,
    /// A connection to an unprotected destination went on unchanged.
    Unprotected = 1,
    /// A connection to a protected target was passed through: no listener configured.
    NoListener = 2,
    /// A connection from lastmiled itself (by mark) went on unchanged.
    Exempt = 3,
}

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; 4] = [
        Stat::Redirected,
        Stat::Unprotected,
        Stat::NoListener,
        Stat::Exempt,
    ];
}

/// Number of entries in the `STATS` array.
pub const STAT_COUNT: u32 = Stat::ALL.len() as u32;

/// Names of the maps and programs in the object, shared so that a rename on one side
/// fails to compile on the other instead of failing at load time.
pub mod names {
    /// LPM trie of IPv4 protected targets.
    pub const PROTECTED_V4: &str = "PROTECTED_V4";
    /// Array holding the one [`super::RedirectConfig`].
    pub const REDIRECT: &str = "REDIRECT";
    /// Per-CPU array of decision counters, indexed by [`super::Stat`].
    pub const STATS: &str = "STATS";
    /// The `cgroup/connect4` program.
    pub const CONNECT4: &str = "connect4";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], holds only integers and byte arrays, and has no
    // padding (the field sizes add up to the type's size), so any bit pattern is valid.
    unsafe impl aya::Pod for super::TargetV4 {}
    unsafe impl aya::Pod for super::TargetV6 {}
    unsafe impl aya::Pod for super::TargetInfo {}
    unsafe impl aya::Pod for super::RedirectConfig {}
}

// The layouts are part of the contract with the kernel object: no padding anywhere.
const _: () = assert!(core::mem::size_of::<TargetV4>() == 6);
const _: () = assert!(core::mem::size_of::<TargetV6>() == 18);
const _: () = assert!(core::mem::size_of::<TargetInfo>() == 8);
const _: () = assert!(core::mem::size_of::<RedirectConfig>() == 28);
