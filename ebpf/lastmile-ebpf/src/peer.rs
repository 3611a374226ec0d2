//! Keeping the application's view of its connection: `record_client` (sock_ops) and
//! `getpeername4`/`getpeername6`.

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};
use lastmile_ebpf_common::{AF_INET, AF_INET6, ClientKey, Stat};

use crate::{
    connect::{ip6_bytes, ip6_words, v4_mapped},
    maps::{BY_CLIENT, BY_COOKIE, count},
};

/// When a redirected socket sends its SYN, its local address and port are fixed: store
/// the record under them too, since that is all lastmiled learns from `accept`.
#[sock_ops]
pub fn record_client(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    // SAFETY: the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    // SAFETY: a copy is taken at once; a concurrent LRU eviction can at worst make the
    // copy stale, never invalid memory.
    let Some(record) = (unsafe { BY_COOKIE.get(&cookie) }).copied() else {
        return 1;
    };
    // The verifier only allows loads at constant offsets from the context pointer itself;
    // volatile reads, done up front, keep LLVM from computing `ctx + off` once and
    // dereferencing that ("dereference of modified ctx ptr").
    let ops = ctx.ops;
    // SAFETY: each read is of one field of the kernel's valid bpf_sock_ops.
    let (family, ip4, ip6, local_port) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*ops).family),
            core::ptr::read_volatile(&raw const (*ops).local_ip4),
            [
                core::ptr::read_volatile(&raw const (*ops).local_ip6[0]),
                core::ptr::read_volatile(&raw const (*ops).local_ip6[1]),
                core::ptr::read_volatile(&raw const (*ops).local_ip6[2]),
                core::ptr::read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            core::ptr::read_volatile(&raw const (*ops).local_port),
        )
    };
    let addr = match family as u16 {
        AF_INET => v4_mapped(ip4.to_ne_bytes()),
        AF_INET6 => ip6_bytes(ip6),
        _ => return 1,
    };
    // sock_ops gives the local port in host order (unlike remote_port).
    let key = ClientKey {
        addr,
        port: (local_port as u16).to_be_bytes(),
        reserved: [0; 2],
    };
    if BY_CLIENT.insert(&key, &record, 0).is_err() {
        count(Stat::RecordsDropped);
    }
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: copied at once, see record_client.
    if let Some(record) = unsafe { BY_COOKIE.get(&cookie) }.copied() {
        // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the call.
        let sa = unsafe { &mut *ctx.sock_addr };
        let a = record.orig_addr;
        sa.user_ip4 = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
        sa.user_port = u32::from(u16::from_ne_bytes(record.orig_port));
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: copied at once, see record_client.
    if let Some(record) = unsafe { BY_COOKIE.get(&cookie) }.copied() {
        // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the call.
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip6 = ip6_words(record.orig_addr);
        sa.user_port = u32::from(u16::from_ne_bytes(record.orig_port));
    }
    1
}
