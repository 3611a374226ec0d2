//! The maps every program shares. Layouts are in `lastmile-ebpf-common`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use lastmile_ebpf_common::{
    ClientKey, ConnectRecord, EVENTS_BYTES, MAX_RECORDS, MAX_TARGETS, RedirectConfig, STAT_COUNT,
    Stat, TargetInfo, TargetV4, TargetV6,
};

#[map(name = "PROTECTED_V4")]
pub static PROTECTED_V4: LpmTrie<TargetV4, TargetInfo> = LpmTrie::with_max_entries(MAX_TARGETS, 0);

#[map(name = "PROTECTED_V6")]
pub static PROTECTED_V6: LpmTrie<TargetV6, TargetInfo> = LpmTrie::with_max_entries(MAX_TARGETS, 0);

#[map(name = "REDIRECT")]
pub static REDIRECT: Array<RedirectConfig> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map(name = "BY_COOKIE")]
pub static BY_COOKIE: LruHashMap<u64, ConnectRecord> = LruHashMap::with_max_entries(MAX_RECORDS, 0);

#[map(name = "BY_CLIENT")]
pub static BY_CLIENT: LruHashMap<ClientKey, ConnectRecord> =
    LruHashMap::with_max_entries(MAX_RECORDS, 0);

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

/// Sends `record` to userspace, or counts the loss when the ring buffer is full.
#[inline(always)]
pub fn emit(record: &ConnectRecord) {
    match EVENTS.reserve::<ConnectRecord>(0) {
        Some(mut entry) => {
            entry.write(*record);
            entry.submit(0);
        }
        None => count(Stat::EventsDropped),
    }
}
