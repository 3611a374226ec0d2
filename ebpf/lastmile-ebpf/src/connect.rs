//! `cgroup/connect4` and `cgroup/connect6`.
//!
//! The program sees the destination the application passed to `connect(2)` in
//! `user_ip4`/`user_ip6` and `user_port` (network order) and may rewrite them before the
//! kernel routes the connection (the kernel's `BPF_CGROUP_INET{4,6}_CONNECT` hooks).
//! Returning 1 lets the connect proceed, 0 makes it fail with EPERM.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_boot_ns,
        },
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use lastmile_ebpf_common::{
    AF_INET, AF_INET6, ConnectRecord, Decision, FLAG_ENFORCE, RedirectConfig, Stat, TargetInfo,
    TargetV4, TargetV6,
};

use crate::maps::{PENDING, PROTECTED_V4, PROTECTED_V6, REDIRECT, count, emit, pending_slot};

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const SOCK_STREAM: u32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the call.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    let port = (sa.user_port as u16).to_ne_bytes();
    let addr4 = sa.user_ip4.to_ne_bytes();
    let Some(target) = lookup_v4(port, addr4) else {
        count(Stat::Unprotected);
        return ALLOW;
    };
    let Some(config) = REDIRECT.get(0) else {
        return ALLOW;
    };
    let (listener, listener_port) = (config.listener_v4, config.listener_v4_port);
    let decision = decide(
        &ctx,
        sa,
        config,
        target,
        v4_mapped(addr4),
        port,
        AF_INET,
        listener_port,
    );
    verdict(decision, || {
        sa.user_ip4 = u32::from_ne_bytes(listener);
        sa.user_port = u32::from(u16::from_ne_bytes(listener_port));
    })
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the call.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.type_ != SOCK_STREAM {
        return ALLOW;
    }
    let port = (sa.user_port as u16).to_ne_bytes();
    let orig = ip6_bytes(sa.user_ip6);
    // A v4-mapped destination (::ffff:a.b.c.d) from a dual-stack socket is an IPv4
    // connection on the wire: it is protected by the IPv4 targets and goes to the IPv4
    // listener, written back as v4-mapped.
    let mapped = as_v4(&orig);
    let target = match mapped {
        Some(addr4) => lookup_v4(port, addr4),
        None => PROTECTED_V6
            .get(&Key::new(
                TargetV6::FULL_PREFIX,
                TargetV6 { port, addr: orig },
            ))
            .copied(),
    };
    let Some(target) = target else {
        count(Stat::Unprotected);
        return ALLOW;
    };
    let Some(config) = REDIRECT.get(0) else {
        return ALLOW;
    };
    let (listener, listener_port) = match mapped {
        Some(_) => (v4_mapped(config.listener_v4), config.listener_v4_port),
        None => (config.listener_v6, config.listener_v6_port),
    };
    let decision = decide(
        &ctx,
        sa,
        config,
        target,
        orig,
        port,
        AF_INET6,
        listener_port,
    );
    verdict(decision, || {
        sa.user_ip6 = ip6_words(listener);
        sa.user_port = u32::from(u16::from_ne_bytes(listener_port));
    })
}

/// The program's return value for `decision`, rewriting the destination to the listener
/// (with `redirect`) when the connection is redirected.
#[inline(always)]
fn verdict(decision: Decision, redirect: impl FnOnce()) -> i32 {
    match decision {
        Decision::Redirected => {
            redirect();
            ALLOW
        }
        Decision::Refused => DENY,
        Decision::Exempt | Decision::PassedThrough => ALLOW,
    }
}

#[inline(always)]
fn lookup_v4(port: [u8; 2], addr: [u8; 4]) -> Option<TargetInfo> {
    let key = Key::new(TargetV4::FULL_PREFIX, TargetV4 { port, addr });
    PROTECTED_V4.get(&key).copied()
}

/// Decides what happens to a connect to a protected target, records it, and reports it.
/// Connections from other network namespaces are left alone, unrecorded.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decide(
    ctx: &SockAddrContext,
    sa: &bpf_sock_addr,
    config: &RedirectConfig,
    target: TargetInfo,
    orig_addr: [u8; 16],
    orig_port: [u8; 2],
    family: u16,
    listener_port: [u8; 2],
) -> Decision {
    // SAFETY: the helpers take the program's own context pointer.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    if config.host_netns_cookie == 0 || netns_cookie != config.host_netns_cookie {
        count(Stat::OtherNetns);
        return Decision::PassedThrough;
    }
    // SAFETY: in sock_addr programs `sk` points at the connecting socket.
    let mark = unsafe { sa.__bindgen_anon_1.sk.as_ref() }.map(|sk| sk.mark);
    let decision = if config.exempt_mark != 0 && mark == Some(config.exempt_mark) {
        count(Stat::Exempt);
        Decision::Exempt
    } else if listener_port == [0, 0] {
        if config.flags & FLAG_ENFORCE != 0 {
            count(Stat::Refused);
            Decision::Refused
        } else {
            count(Stat::PassedThrough);
            Decision::PassedThrough
        }
    } else {
        Decision::Redirected
    };

    // A redirected connect's record is built in place in its pending slot (one copy
    // fewer on the hot path); any other decision's on the stack, for the event only.
    // SAFETY: as above, the program's own context.
    let sock_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let mut local = ConnectRecord::ZERO;
    let slot = if decision == Decision::Redirected {
        PENDING.get_ptr_mut(pending_slot(sock_cookie))
    } else {
        None
    };
    // SAFETY: a slot is this CPU's own, and nothing else runs on this CPU meanwhile.
    let record = match slot {
        Some(slot) => unsafe { &mut *slot },
        None => &mut local,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    record.sock_cookie = sock_cookie;
    // SAFETY: no arguments.
    record.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    record.netns_cookie = netns_cookie;
    // SAFETY: no arguments.
    record.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    record.orig_addr = orig_addr;
    record.orig_port = orig_port;
    record.family = family;
    record.decision = decision as u32;
    record.target_id = target.target_id;
    record.tid = pid_tgid as u32;
    record.pid = (pid_tgid >> 32) as u32;
    record.uid = uid_gid as u32;
    record.gid = (uid_gid >> 32) as u32;
    record.reserved = 0;
    record.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if decision == Decision::Redirected {
        if slot.is_none() {
            count(Stat::RecordsDropped);
        }
        count(Stat::Redirected);
    }
    emit(record, decision != Decision::Redirected);
    decision
}

#[inline(always)]
pub fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[inline(always)]
fn as_v4(a: &[u8; 16]) -> Option<[u8; 4]> {
    let prefix = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if a[..12] == prefix {
        Some([a[12], a[13], a[14], a[15]])
    } else {
        None
    }
}

/// The kernel's `user_ip6` words hold the address bytes in memory order.
#[inline(always)]
pub fn ip6_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

#[inline(always)]
pub fn ip6_words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
