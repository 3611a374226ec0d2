//! The kernel's connect events as lastmiled reads them off the ring buffer
//! (`intercept::record_from_event`) and turns them into `kernel.connect` audit events
//! (`events::kernel_connect`, `orig_dst`, `comm`).
//!
//! Input: the ring-buffer item's bytes (any length).
//!
//! Checked beyond "no panic": an item shorter than a `ConnectRecord` is refused; a longer
//! one decodes to the fields an independent reading of the `#[repr(C)]` layout gives
//! (little-endian host fields, network-order address and port); the event it makes
//! serialises to JSON whose `comm` and `orig_dst` say what the record does.

#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use lastmile_ebpf_common::{AF_INET, ConnectRecord};
use lastmiled::events::{self, Event, EventBody, ProcInfo};
use lastmiled::intercept::record_from_event;
use libfuzzer_sys::fuzz_target;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(std::mem::size_of::<ConnectRecord>(), 96);
    let Some(r) = record_from_event(data) else {
        assert!(data.len() < 96);
        return;
    };
    assert!(data.len() >= 96);
    assert_eq!(r.sock_cookie, u64_at(data, 0));
    assert_eq!(r.cgroup_id, u64_at(data, 8));
    assert_eq!(r.netns_cookie, u64_at(data, 16));
    assert_eq!(r.boot_ns, u64_at(data, 24));
    assert_eq!(r.orig_addr, data[32..48]);
    assert_eq!(r.orig_port, data[48..50]);
    assert_eq!(r.family, u16::from_ne_bytes([data[50], data[51]]));
    assert_eq!(r.decision, u32_at(data, 52));
    assert_eq!(r.target_id, u32_at(data, 56));
    assert_eq!((r.tid, r.pid), (u32_at(data, 60), u32_at(data, 64)));
    assert_eq!((r.uid, r.gid), (u32_at(data, 68), u32_at(data, 72)));
    assert_eq!(r.comm, data[80..96]);

    let dst = events::orig_dst(&r).0;
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&data[32..48]).expect("16 bytes"));
    let port = u16::from_be_bytes([data[48], data[49]]);
    let expected = match v6.to_ipv4_mapped() {
        Some(v4) if r.family == AF_INET => SocketAddr::new(IpAddr::V4(v4), port),
        _ => SocketAddr::new(IpAddr::V6(v6), port),
    };
    assert_eq!(dst, expected);

    let comm = events::comm(&r);
    let end = data[80..96].iter().position(|&b| b == 0).unwrap_or(16);
    assert_eq!(comm, String::from_utf8_lossy(&data[80..80 + end]));

    let event = Event::now(EventBody::KernelConnect(events::kernel_connect(
        &r,
        None,
        ProcInfo::default(),
    )));
    let json = serde_json::to_value(&event).expect("an event serialises");
    assert_eq!(json["kind"], "kernel.connect");
    assert_eq!(json["comm"], comm.as_str());
    assert_eq!(json["orig_dst"], dst.to_string().as_str());
    assert_eq!(json["pid"], r.pid);
    let decision = json["decision"].as_str().expect("a decision name");
    assert!(
        [
            "redirected",
            "refused",
            "exempt",
            "passed_through",
            "unknown"
        ]
        .contains(&decision),
        "{decision}"
    );
});
