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

/// Where redirected connections go, and how the programs decide. Lives at index 0 of the
/// `REDIRECT` array; all zero (the state before lastmiled configures it) means "not
/// configured": protected targets are passed through, or refused in enforcement mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RedirectConfig {
    /// Cookie of the network namespace whose connections are intercepted (the host's);
    /// connections from other namespaces are left alone. Zero: no interception at all.
    pub host_netns_cookie: u64,
    /// Sockets carrying this `SO_MARK` are lastmiled's own upstream connections and are
    /// never redirected. Zero disables the exemption.
    pub exempt_mark: u32,
    /// [`FLAG_ENFORCE`] and friends.
    pub flags: u32,
    /// IPv4 listener address, network order.
    pub listener_v4: [u8; 4],
    /// IPv4 listener port, network order; zero when there is no IPv4 listener.
    pub listener_v4_port: [u8; 2],
    /// IPv6 listener port, network order; zero when there is no IPv6 listener.
    pub listener_v6_port: [u8; 2],
    /// IPv6 listener address, network order.
    pub listener_v6: [u8; 16],
}

/// Enforcement mode: a connection to a protected target that cannot be redirected (no
/// listener for its family) fails with EPERM instead of going to the target directly.
pub const FLAG_ENFORCE: u32 = 1;

/// What the kernel decided for a connection to a protected target.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Rewritten to lastmiled's listener.
    Redirected = 1,
    /// Refused with EPERM (enforcement mode, nowhere to redirect to).
    Refused = 2,
    /// Left alone: the socket carries lastmiled's exemption mark.
    Exempt = 3,
    /// Passed through to the target: nowhere to redirect to, enforcement off.
    PassedThrough = 4,
}

impl Decision {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Redirected),
            2 => Some(Self::Refused),
            3 => Some(Self::Exempt),
            4 => Some(Self::PassedThrough),
            _ => None,
        }
    }
}

/// `AF_INET`, as the kernel numbers it.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as the kernel numbers it.
pub const AF_INET6: u16 = 10;

/// One connect to a protected target: who asked for what, and what the kernel decided.
/// It is both the ring-buffer event and the record lastmiled looks up when a redirected
/// connection arrives (by the client's address and port) or the application asks for its
/// peer (by the client's address and port, until the socket closes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectRecord {
    /// The connecting socket's cookie (`SO_COOKIE`), unique for the boot.
    pub sock_cookie: u64,
    /// cgroup v2 id of the caller.
    pub cgroup_id: u64,
    /// Network namespace cookie of the socket.
    pub netns_cookie: u64,
    /// `bpf_ktime_get_boot_ns` at the decision.
    pub boot_ns: u64,
    /// The destination the application asked for, network order; IPv4 as `::ffff:a.b.c.d`.
    pub orig_addr: [u8; 16],
    /// The destination port the application asked for, network order.
    pub orig_port: [u8; 2],
    /// Address family of the socket ([`AF_INET`] or [`AF_INET6`]).
    pub family: u16,
    /// A [`Decision`].
    pub decision: u32,
    /// [`TargetInfo::target_id`] of the protected target that matched.
    pub target_id: u32,
    /// Thread id of the caller.
    pub tid: u32,
    /// Process id (thread group id) of the caller.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// `comm` of the calling thread, NUL-padded.
    pub comm: [u8; 16],
}

impl ConnectRecord {
    /// All zero.
    pub const ZERO: Self = Self {
        sock_cookie: 0,
        cgroup_id: 0,
        netns_cookie: 0,
        boot_ns: 0,
        orig_addr: [0; 16],
        orig_port: [0; 2],
        family: 0,
        decision: 0,
        target_id: 0,
        tid: 0,
        pid: 0,
        uid: 0,
        gid: 0,
        reserved: 0,
        comm: [0; 16],
    };
}

/// Key of the record of a redirected connection, by the client's end as the listener sees
/// it once it accepts: local address (IPv4 as `::ffff:a.b.c.d`) and port, network order.
///
/// 4-aligned (the size stays 20) so that the kernel programs can write the address as
/// four words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClientKey {
    pub addr: [u8; 16],
    pub port: [u8; 2],
    /// Reserved, zero (keys are compared bytewise).
    pub reserved: [u8; 2],
}

/// Capacity of the by-client record map: open redirected connections (LRU: should it
/// ever fill, the oldest records go first).
pub const MAX_RECORDS: u32 = 65536;

/// Pending-record slots per CPU: connects between connect4/6 and their SYN.
pub const PENDING_SLOTS: u32 = 64;

/// Size of the event ring buffer, in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Indices of the per-CPU counters in the `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A connection to a protected target was rewritten to the listener.
    Redirected = 0,
    /// A connection to an unprotected destination went on unchanged.
    Unprotected = 1,
    /// A protected target was passed through: no listener, enforcement off.
    PassedThrough = 2,
    /// A connection from lastmiled itself (by mark) went on unchanged.
    Exempt = 3,
    /// A protected target was refused with EPERM (enforcement mode).
    Refused = 4,
    /// A connection from another network namespace went on unchanged.
    OtherNetns = 5,
    /// An event could not be reserved in the ring buffer (userspace too slow).
    EventsDropped = 6,
    /// A connection record could not be stored.
    RecordsDropped = 7,
}

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; 8] = [
        Stat::Redirected,
        Stat::Unprotected,
        Stat::PassedThrough,
        Stat::Exempt,
        Stat::Refused,
        Stat::OtherNetns,
        Stat::EventsDropped,
        Stat::RecordsDropped,
    ];
}

/// Number of entries in the `STATS` array.
pub const STAT_COUNT: u32 = Stat::ALL.len() as u32;

/// Names of the maps and programs in the object, shared so that a rename on one side
/// fails to compile on the other instead of failing at load time.
pub mod names {
    /// LPM trie of IPv4 protected targets.
    pub const PROTECTED_V4: &str = "PROTECTED_V4";
    /// LPM trie of IPv6 protected targets.
    pub const PROTECTED_V6: &str = "PROTECTED_V6";
    /// Array holding the one [`super::RedirectConfig`].
    pub const REDIRECT: &str = "REDIRECT";
    /// Per-CPU array of counters, indexed by [`super::Stat`].
    pub const STATS: &str = "STATS";
    /// Per-CPU slots for records between connect and the socket's first sock_ops callback.
    pub const PENDING: &str = "PENDING";
    /// Records by client address and port (for lastmiled's accept).
    pub const BY_CLIENT: &str = "BY_CLIENT";
    /// Ring buffer of [`super::ConnectRecord`] events.
    pub const EVENTS: &str = "EVENTS";
    /// Every map, for pinning.
    pub const MAPS: [&str; 7] = [
        PROTECTED_V4,
        PROTECTED_V6,
        REDIRECT,
        STATS,
        PENDING,
        BY_CLIENT,
        EVENTS,
    ];

    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const GETPEERNAME4: &str = "getpeername4";
    pub const GETPEERNAME6: &str = "getpeername6";
    pub const SOCK_OPS: &str = "record_client";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], holds only integers and byte arrays, and has no
    // padding (the field sizes add up to the type's size), so any bit pattern is valid.
    unsafe impl aya::Pod for super::TargetV4 {}
    unsafe impl aya::Pod for super::TargetV6 {}
    unsafe impl aya::Pod for super::TargetInfo {}
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::ConnectRecord {}
    unsafe impl aya::Pod for super::ClientKey {}
}

// The layouts are part of the contract with the kernel object: no padding anywhere.
const _: () = assert!(core::mem::size_of::<TargetV4>() == 6);
const _: () = assert!(core::mem::size_of::<TargetV6>() == 18);
const _: () = assert!(core::mem::size_of::<TargetInfo>() == 8);
const _: () = assert!(core::mem::size_of::<RedirectConfig>() == 40);
const _: () = assert!(core::mem::size_of::<ConnectRecord>() == 96);
const _: () = assert!(core::mem::size_of::<ClientKey>() == 20);
// The kernel programs store and load the addresses as u32 words and copy records as u64
// words (see lastmile-ebpf's `words`): both need these alignments.
const _: () = assert!(core::mem::align_of::<ConnectRecord>() == 8);
const _: () = assert!(core::mem::offset_of!(ConnectRecord, orig_addr) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(ConnectRecord, orig_port) % 2 == 0);
const _: () = assert!(core::mem::offset_of!(ConnectRecord, comm) % 8 == 0);
const _: () = assert!(core::mem::align_of::<ClientKey>() == 4);
const _: () = assert!(core::mem::offset_of!(ClientKey, addr) == 0);
const _: () = assert!(core::mem::offset_of!(ClientKey, port) % 2 == 0);
