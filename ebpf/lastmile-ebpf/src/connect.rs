//! `cgroup/connect4` and `cgroup/connect6`.
//!
//! The program sees the destination the application passed to `connect(2)` in
//! `user_ip4`/`user_ip6` and `user_port` (network order) and may rewrite them before the
//! kernel routes the connection (the kernel's `BPF_CGROUP_INET{4,6}_CONNECT` hooks).
//! Returning 1 lets the connect proceed, 0 makes it fail with EPERM.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_netns_cookie,
            bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
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

use crate::{
    maps::{EVENTS, PENDING, PROTECTED_V4, PROTECTED_V6, REDIRECT, count, pending_slot, submit},
    words::{AddrWords, as_v4, store_addr, v4_mapped},
};

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
    let port = sa.user_port as u16;
    let ip4 = sa.user_ip4;
    let Some(target) = lookup_v4(port, ip4) else {
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
        v4_mapped(ip4),
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
    let port = sa.user_port as u16;
    let orig = sa.user_ip6;
    // A v4-mapped destination (::ffff:a.b.c.d) from a dual-stack socket is an IPv4
    // connection on the wire: it is protected by the IPv4 targets and goes to the IPv4
    // listener, written back as v4-mapped.
    let mapped = as_v4(orig);
    let target = match mapped {
        Some(ip4) => lookup_v4(port, ip4),
        None => PROTECTED_V6
            .get(&Key::new(
                TargetV6::FULL_PREFIX,
                TargetV6 {
                    port: port.to_ne_bytes(),
                    addr: ip6_bytes(orig),
                },
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
        Some(_) => (
            v4_mapped(u32::from_ne_bytes(config.listener_v4)),
            config.listener_v4_port,
        ),
        None => (ip6_words(config.listener_v6), config.listener_v6_port),
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
        sa.user_ip6 = listener;
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

/// `port` and `ip4` as the kernel gives them (network order in memory order).
#[inline(always)]
fn lookup_v4(port: u16, ip4: u32) -> Option<TargetInfo> {
    let key = Key::new(
        TargetV4::FULL_PREFIX,
        TargetV4 {
            port: port.to_ne_bytes(),
            addr: ip4.to_ne_bytes(),
        },
    );
    PROTECTED_V4.get(&key).copied()
}

/// Decides what happens to a connect to a protected target, records it, and reports it.
/// Connections from other network namespaces cannot be redirected (the listener lives in
/// the host's): without `enforce` they are left alone, unrecorded; with it they are
/// refused and recorded, since a process in a container's namespace could otherwise
/// reach a protected target through its own network.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decide(
    ctx: &SockAddrContext,
    sa: &bpf_sock_addr,
    config: &RedirectConfig,
    target: TargetInfo,
    orig_addr: AddrWords,
    orig_port: u16,
    family: u16,
    listener_port: [u8; 2],
) -> Decision {
    // SAFETY: the helpers take the program's own context pointer.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let enforce = config.flags & FLAG_ENFORCE != 0;
    let other_netns = config.host_netns_cookie == 0 || netns_cookie != config.host_netns_cookie;
    if other_netns {
        count(Stat::OtherNetns);
        if !enforce {
            return Decision::PassedThrough;
        }
    }
    // SAFETY: in sock_addr programs `sk` points at the connecting socket.
    let mark = unsafe { sa.__bindgen_anon_1.sk.as_ref() }.map(|sk| sk.mark);
    let decision = if config.exempt_mark != 0 && mark == Some(config.exempt_mark) {
        count(Stat::Exempt);
        Decision::Exempt
    } else if other_netns {
        count(Stat::Refused);
        Decision::Refused
    } else if listener_port == [0, 0] {
        if enforce {
            count(Stat::Refused);
            Decision::Refused
        } else {
            count(Stat::PassedThrough);
            Decision::PassedThrough
        }
    } else {
        count(Stat::Redirected);
        Decision::Redirected
    };

    // SAFETY: as above, the program's own context.
    let sock_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let fields = Fields {
        sock_cookie,
        netns_cookie,
        orig_addr,
        orig_port,
        family,
        decision,
        target_id: target.target_id,
    };
    // The event is reserved and its known fields written first: its cache lines were last
    // read by lastmiled on another CPU, and fetching them back then overlaps the helper
    // calls below instead of following them (the commit's locked exchange waits for them).
    // A redirected connect's record also goes to its pending slot, for record_client.
    // (One match on the reservation, so that the verifiers of older kernels, which do not
    // know a checked ring-buffer pointer stays non-null, see a submit on every path.)
    match EVENTS.reserve::<ConnectRecord>(0) {
        Some(mut entry) => {
            let event = entry.as_mut_ptr();
            // SAFETY: a reserved, 8-aligned record, written only; the slot is this CPU's
            // own, and nothing else runs on this CPU meanwhile (comm is read from it after
            // it was written).
            unsafe {
                write_known(event, &fields);
                let caller = Caller::now();
                match pending(decision, sock_cookie) {
                    Some(slot) => {
                        write_record(slot, &fields, &caller);
                        write_caller(event, &caller);
                        copy_comm(event, slot);
                    }
                    None => {
                        write_caller(event, &caller);
                        write_comm(event);
                    }
                }
            }
            submit(entry, decision != Decision::Redirected);
        }
        None => {
            count(Stat::EventsDropped);
            if let Some(slot) = pending(decision, sock_cookie) {
                // SAFETY: as above.
                unsafe { write_record(slot, &fields, &Caller::now()) };
            }
        }
    }
    decision
}

/// The pending slot for a redirected connect's record; `None` for other decisions.
#[inline(always)]
fn pending(decision: Decision, sock_cookie: u64) -> Option<*mut ConnectRecord> {
    if decision != Decision::Redirected {
        return None;
    }
    let slot = PENDING.get_ptr_mut(pending_slot(sock_cookie));
    if slot.is_none() {
        count(Stat::RecordsDropped);
    }
    slot
}

/// What a record holds about the connection.
struct Fields {
    sock_cookie: u64,
    netns_cookie: u64,
    orig_addr: AddrWords,
    orig_port: u16,
    family: u16,
    decision: Decision,
    target_id: u32,
}

/// What a record holds about the calling task, asked of the kernel once per connect.
struct Caller {
    pid_tgid: u64,
    uid_gid: u64,
    cgroup_id: u64,
    boot_ns: u64,
}

impl Caller {
    #[inline(always)]
    fn now() -> Self {
        Self {
            pid_tgid: bpf_get_current_pid_tgid(),
            uid_gid: bpf_get_current_uid_gid(),
            // SAFETY: no arguments.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            // SAFETY: no arguments.
            boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        }
    }
}

// The writers below share one contract.
//
// # Safety
//
// `r` points at writable, 8-aligned memory for one record (a map value or a reserved
// ring-buffer entry), possibly uninitialised: it is only written, field by field, and
// every field is written by `write_known`, `write_caller` and one of `write_comm` or
// `copy_comm` together.

/// Writes the connection's fields.
#[inline(always)]
unsafe fn write_known(r: *mut ConnectRecord, fields: &Fields) {
    // SAFETY: see above.
    unsafe {
        (&raw mut (*r).sock_cookie).write(fields.sock_cookie);
        (&raw mut (*r).netns_cookie).write(fields.netns_cookie);
        store_addr(&raw mut (*r).orig_addr, fields.orig_addr);
        (&raw mut (*r).orig_port)
            .cast::<u16>()
            .write(fields.orig_port);
        (&raw mut (*r).family).write(fields.family);
        (&raw mut (*r).decision).write(fields.decision as u32);
        (&raw mut (*r).target_id).write(fields.target_id);
        (&raw mut (*r).reserved).write(0);
    }
}

/// Writes the caller's fields, but comm.
#[inline(always)]
unsafe fn write_caller(r: *mut ConnectRecord, caller: &Caller) {
    // SAFETY: see above.
    unsafe {
        (&raw mut (*r).cgroup_id).write(caller.cgroup_id);
        (&raw mut (*r).boot_ns).write(caller.boot_ns);
        (&raw mut (*r).tid).write(caller.pid_tgid as u32);
        (&raw mut (*r).pid).write((caller.pid_tgid >> 32) as u32);
        (&raw mut (*r).uid).write(caller.uid_gid as u32);
        (&raw mut (*r).gid).write((caller.uid_gid >> 32) as u32);
    }
}

/// Writes the whole record.
#[inline(always)]
unsafe fn write_record(r: *mut ConnectRecord, fields: &Fields, caller: &Caller) {
    // SAFETY: see above.
    unsafe {
        write_known(r, fields);
        write_caller(r, caller);
        write_comm(r);
    }
}

/// Writes the calling thread's comm: all 16 bytes, NUL-padded (zeroed if it fails).
#[inline(always)]
unsafe fn write_comm(r: *mut ConnectRecord) {
    // SAFETY: see above; the helper writes exactly the 16 bytes it is given.
    unsafe { bpf_get_current_comm((&raw mut (*r).comm).cast(), 16) };
}

/// Copies comm from `from`, a record whose comm is written, as two words.
#[inline(always)]
unsafe fn copy_comm(r: *mut ConnectRecord, from: *const ConnectRecord) {
    // SAFETY: see above; comm sits 8-aligned in both records.
    unsafe {
        let (d, s) = (
            (&raw mut (*r).comm).cast::<u64>(),
            (&raw const (*from).comm).cast::<u64>(),
        );
        d.write(core::ptr::read_volatile(s));
        d.add(1).write(core::ptr::read_volatile(s.add(1)));
    }
}

/// The 16 bytes of an address in `user_ip6` form, for an LPM trie key.
#[inline(always)]
fn ip6_bytes(w: AddrWords) -> [u8; 16] {
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

/// The `user_ip6` form of 16 address bytes.
#[inline(always)]
fn ip6_words(a: [u8; 16]) -> AddrWords {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
