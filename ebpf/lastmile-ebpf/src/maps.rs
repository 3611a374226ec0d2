//! The maps every program shares. Layouts are in `lastmile-ebpf-common`.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, ring_buf::RingBufEntry},
};
use lastmile_ebpf_common::{
    ClientKey, ConnectRecord, EVENTS_BYTES, MAX_RECORDS, MAX_TARGETS, PENDING_SLOTS,
    RedirectConfig, STAT_COUNT, Stat, TargetInfo, TargetV4, TargetV6,
};

#[map(name = "PROTECTED_V4")]
pub static PROTECTED_V4: LpmTrie<TargetV4, TargetInfo> = LpmTrie::with_max_entries(MAX_TARGETS, 0);

#[map(name = "PROTECTED_V6")]
pub static PROTECTED_V6: LpmTrie<TargetV6, TargetInfo> = LpmTrie::with_max_entries(MAX_TARGETS, 0);

#[map(name = "REDIRECT")]
pub static REDIRECT: Array<RedirectConfig> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Records between connect4/6 and the sock_ops callback of the same connect, which come
/// one after the other in the same connect(2): a few slots per CPU, indexed by socket
/// cookie, tagged with it. record_client looks on its own CPU first and on the others if
/// the task migrated in between. Writing a per-CPU slot takes no lock and no allocation;
/// a hash insert here measured 200-300 ns and socket-local storage ~600 ns (see
/// `cargo xtask bench connect`).
#[map(name = "PENDING")]
pub static PENDING: PerCpuArray<ConnectRecord> = PerCpuArray::with_max_entries(PENDING_SLOTS, 0);

/// Records of redirected connections by the client's address and port, for lastmiled's
/// accept and the client's getpeername; deleted when the client socket closes.
#[map(name = "BY_CLIENT")]
pub static BY_CLIENT: LruHashMap<ClientKey, ConnectRecord> =
    LruHashMap::with_max_entries(MAX_RECORDS, BPF_F_NO_COMMON_LRU);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and these hooks run in
        // process context without nesting on one CPU.
        unsafe { *counter += 1 };
    }
}

/// The pending slot of a socket cookie.
#[inline(always)]
pub fn pending_slot(cookie: u64) -> u32 {
    (cookie % u64::from(PENDING_SLOTS)) as u32
}

/// Unread event bytes past which any submit wakes lastmiled.
const WAKEUP_BYTES: u64 = EVENTS_BYTES as u64 / 4;

/// Submits a filled event to userspace.
///
/// Waking a sleeping reader costs a few microseconds inside the program (irq_work, then
/// a scheduler wakeup), measured at 2-3 us per redirected connect. So a redirected
/// connect's event is submitted without a wakeup (`wake` false): lastmiled accepts that
/// connection at once and reads the caller's /proc entry then, and collects the event on
/// its 100 ms poll. Other decisions (refused, exempt, passed through) have no accept to
/// learn from: they wake lastmiled (adaptively: only if it had caught up), so it can read
/// /proc while the caller still exists. A quarter-full buffer always wakes it.
#[inline(always)]
pub fn submit(entry: RingBufEntry<ConnectRecord>, wake: bool) {
    let flags = if wake {
        0
    } else if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= WAKEUP_BYTES {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    };
    entry.submit(flags);
}
