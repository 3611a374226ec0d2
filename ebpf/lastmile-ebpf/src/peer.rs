//! Keeping the application's view of its connection: `record_client` (sock_ops) and
//! `getpeername4`/`getpeername6`.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE, bpf_sock, bpf_sock_ops,
    },
    helpers::generated::{
        bpf_get_socket_cookie, bpf_map_lookup_percpu_elem, bpf_sock_ops_cb_flags_set,
    },
    macros::{cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};
use lastmile_ebpf_common::{AF_INET, AF_INET6, ClientKey, ConnectRecord, Stat};

use crate::{
    maps::{BY_CLIENT, PENDING, REDIRECT, count, pending_slot},
    words::{AddrWords, load_addr, store_addr, v4_mapped},
};

/// When a redirected socket sends its SYN, its local address and port are fixed: move
/// its record under them, which is all lastmiled learns from `accept` and what
/// getpeername can find again; and ask to hear when the socket closes. When it closes,
/// drop the record.
#[sock_ops]
pub fn record_client(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: one field of the kernel's valid bpf_sock_ops.
    let op = unsafe { core::ptr::read_volatile(&raw const (*ops).op) };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        if !to_listener(ops) {
            return 1;
        }
        // SAFETY: the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ops.cast()) };
        let Some(record) = take_pending(cookie) else {
            return 1;
        };
        let Some(key) = client_key(ops) else {
            return 1;
        };
        if BY_CLIENT.insert(&key, &record, 0).is_err() {
            count(Stat::RecordsDropped);
            return 1;
        }
        // SAFETY: the program's own context; asks for BPF_SOCK_OPS_STATE_CB on this socket.
        unsafe { bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG as i32) };
    } else if op == BPF_SOCK_OPS_STATE_CB {
        // SAFETY: args[1] of a state callback is the new state.
        let new_state =
            unsafe { core::ptr::read_volatile(&raw const (*ops).__bindgen_anon_1.args[1]) };
        if new_state == BPF_TCP_CLOSE
            && let Some(key) = client_key(ops)
        {
            let _ = BY_CLIENT.remove(&key);
        }
    }
    1
}

/// Whether the connecting socket goes to one of lastmiled's listener ports, as every
/// redirected one does. Every other TCP connect in the cgroup (most of them) stops here,
/// before the search of every CPU's pending slots.
#[inline(always)]
fn to_listener(ops: *mut bpf_sock_ops) -> bool {
    let Some(config) = REDIRECT.get(0) else {
        return false;
    };
    // SAFETY: one field of the kernel's valid bpf_sock_ops.
    let remote_port = unsafe { core::ptr::read_volatile(&raw const (*ops).remote_port) };
    // sock_ops gives the remote port in network order in the upper 16 bits (the kernel
    // shifts skc_dport left by 16 on little-endian hosts, see sock_ops_convert_ctx_access).
    let port = ((remote_port >> 16) as u16).to_ne_bytes();
    port != [0, 0] && (port == config.listener_v4_port || port == config.listener_v6_port)
}

/// Most CPUs looked at for a pending record; more than a host of this kind has.
const MAX_CPUS: u32 = 256;

/// Takes the pending record of `cookie`: from this CPU's slot, or, if connect4/6 ran on
/// another CPU (the task migrated), from that one's.
#[inline(always)]
fn take_pending(cookie: u64) -> Option<ConnectRecord> {
    let index = pending_slot(cookie);
    if let Some(slot) = PENDING.get_ptr_mut(index) {
        // SAFETY: this CPU's slot.
        let slot = unsafe { &mut *slot };
        if slot.sock_cookie == cookie {
            let record = *slot;
            slot.sock_cookie = 0;
            return Some(record);
        }
    }
    let map = core::ptr::from_ref(&PENDING).cast_mut().cast();
    for cpu in 0..MAX_CPUS {
        // SAFETY: a lookup of `index` in another CPU's copy; NULL past the last CPU.
        let slot = unsafe { bpf_map_lookup_percpu_elem(map, (&raw const index).cast(), cpu) };
        if slot.is_null() {
            break;
        }
        // SAFETY: non-null slot of PENDING, which holds ConnectRecords.
        let slot = unsafe { &mut *slot.cast::<ConnectRecord>() };
        if slot.sock_cookie == cookie {
            let record = *slot;
            slot.sock_cookie = 0;
            return Some(record);
        }
    }
    None
}

/// The socket's own address and port as a record key.
///
/// The verifier only allows loads at constant offsets from the context pointer itself;
/// volatile reads keep LLVM from computing `ctx + off` once and dereferencing that
/// ("dereference of modified ctx ptr").
#[inline(always)]
fn client_key(ops: *mut bpf_sock_ops) -> Option<ClientKey> {
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
        AF_INET => v4_mapped(ip4),
        AF_INET6 => ip6,
        _ => return None,
    };
    // sock_ops gives the local port in host order (unlike remote_port).
    Some(key(addr, local_port))
}

/// The record key of the socket behind a sock_addr context: its source address and port
/// (`bpf_sock.src_port` is in host order).
#[inline(always)]
fn own_key(ctx: &SockAddrContext, v6: bool) -> Option<ClientKey> {
    // SAFETY: in sock_addr programs `sk` points at the socket, or is null.
    let sk: &bpf_sock = unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk.as_ref() }?;
    let addr = if v6 {
        sk.src_ip6
    } else {
        v4_mapped(sk.src_ip4)
    };
    Some(key(addr, sk.src_port))
}

/// A record key from an address and a port in host order, written word by word (see
/// `words`).
#[inline(always)]
fn key(addr: AddrWords, port: u32) -> ClientKey {
    let mut key = MaybeUninit::<ClientKey>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: every field of the 4-aligned key is written before it is read.
    unsafe {
        store_addr(&raw mut (*k).addr, addr);
        (&raw mut (*k).port)
            .cast::<u16>()
            .write((port as u16).to_be());
        (&raw mut (*k).reserved).cast::<u16>().write(0);
        key.assume_init()
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(key) = own_key(&ctx, false)
        // SAFETY: a value of the map; a concurrent delete frees it only after an RCU
        // grace period, which cannot end during this program.
        && let Some(record) = unsafe { BY_CLIENT.get(&key) }
    {
        // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the call;
        // the record's address is 4-aligned.
        let sa = unsafe { &mut *ctx.sock_addr };
        let a = unsafe { load_addr(&raw const record.orig_addr) };
        sa.user_ip4 = a[3];
        sa.user_port = u32::from(u16::from_ne_bytes(record.orig_port));
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(key) = own_key(&ctx, true)
        // SAFETY: a value of the map; a concurrent delete frees it only after an RCU
        // grace period, which cannot end during this program.
        && let Some(record) = unsafe { BY_CLIENT.get(&key) }
    {
        // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the call;
        // the record's address is 4-aligned.
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip6 = unsafe { load_addr(&raw const record.orig_addr) };
        sa.user_port = u32::from(u16::from_ne_bytes(record.orig_port));
    }
    1
}
