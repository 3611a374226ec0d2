//! `cgroup/connect4`: rewrite a TCP connection to a protected target so that it reaches
//! lastmiled's local listener instead.
//!
//! The program sees the destination the application passed to `connect(2)` in
//! `user_ip4`/`user_port` (network order) and may rewrite both before the kernel routes
//! the connection (see the kernel's `BPF_CGROUP_INET4_CONNECT` hook). Returning 1 lets
//! the connect proceed, 0 makes it fail with EPERM.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    macros::{cgroup_sock_addr, map},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::SockAddrContext,
};
use lastmile_ebpf_common::{MAX_TARGETS, RedirectConfig, STAT_COUNT, Stat, TargetInfo, TargetV4};

const ALLOW: i32 = 1;
const SOCK_STREAM: u32 = 1;

#[map(name = "PROTECTED_V4")]
static PROTECTED_V4: LpmTrie<TargetV4, TargetInfo> = LpmTrie::with_max_entries(MAX_TARGETS, 0);

#[map(name = "REDIRECT")]
static REDIRECT: Array<RedirectConfig> = Array::with_max_entries(1, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[inline(always)]
fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do not nest
        // on one CPU for this hook.
        unsafe { *counter += 1 };
    }
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the duration of the call.
    let addr = unsafe { &mut *ctx.sock_addr };
    redirect_v4(addr)
}

#[inline(always)]
fn redirect_v4(addr: &mut bpf_sock_addr) -> i32 {
    if addr.type_ != SOCK_STREAM {
        return ALLOW;
    }
    let key = Key::new(
        TargetV4::FULL_PREFIX,
        TargetV4 {
            // user_port holds the port in network order in its low 16 bits.
            port: (addr.user_port as u16).to_ne_bytes(),
            addr: addr.user_ip4.to_ne_bytes(),
        },
    );
    if PROTECTED_V4.get(&key).is_none() {
        count(Stat::Unprotected);
        return ALLOW;
    }
    let Some(config) = REDIRECT.get(0) else {
        count(Stat::NoListener);
        return ALLOW;
    };
    if config.exempt_mark != 0 {
        // SAFETY: in sock_addr programs `sk` always points at the connecting socket.
        let mark = unsafe { addr.__bindgen_anon_1.sk.as_ref() }.map(|sk| sk.mark);
        if mark == Some(config.exempt_mark) {
            count(Stat::Exempt);
            return ALLOW;
        }
    }
    if config.listener_port == [0, 0] {
        count(Stat::NoListener);
        return ALLOW;
    }
    addr.user_ip4 = u32::from_ne_bytes(config.listener_v4);
    addr.user_port = u32::from(u16::from_ne_bytes(config.listener_port));
    count(Stat::Redirected);
    ALLOW
}
