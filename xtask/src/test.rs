//! `cargo xtask test`: set up, build everything (eBPF included), lint, and run every test.

use std::time::Instant;

use crate::exec::{cargo, must, step};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip `cargo xtask setup` (when you know the machine is ready).
    #[arg(long)]
    no_setup: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Skip the VM tests (the eBPF suite inside other kernels under qemu).
    #[arg(long)]
    no_vm: bool,
    /// Passed to `cargo test` after `--` (a test name filter, `--nocapture`, …).
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if !args.no_setup {
        crate::setup::run()?;
    }
    check_disk()?;
    if !crate::exec::is_root() {
        eprintln!(
            "note: not root: tests that need eBPF or cgroups will say SKIPPED; \
             run `sudo cargo xtask test` to run them"
        );
    }
    if !args.no_lint {
        step("rustfmt");
        must(cargo().args(["fmt", "--all", "--check"]))?;
        step("clippy (host crates, with the real eBPF build)");
        must(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    step("build and run every test");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--"]);
    cmd.args(&args.test_args);
    must(&mut cmd)?;
    if !args.no_vm {
        vm_tests()?;
    }
    step(&format!("all tests passed in {:.0?}", started.elapsed()));
    Ok(())
}

/// About what a full test run writes under `target/` (debug build with line tables, the
/// eBPF release build, VM images), with room to spare.
const DISK_NEEDED: u64 = 5 << 30;

/// Says how much room the build has, and refuses to start one that cannot finish: a
/// linker that runs out of disk dies with a bus error that names no cause.
fn check_disk() -> anyhow::Result<()> {
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| ".".into(), std::path::PathBuf::from);
    let probe = if dir.exists() {
        dir.clone()
    } else {
        ".".into()
    };
    let Some(free) = crate::exec::free_bytes(&probe) else {
        return Ok(());
    };
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    step(&format!(
        "disk: {:.1} GiB free for {}",
        gib(free),
        dir.display()
    ));
    if free < DISK_NEEDED {
        anyhow::bail!(
            "only {:.1} GiB free where the build goes ({}); a full test run needs about {:.0} GiB: \
             free some space (`cargo clean` removes old builds) or set CARGO_TARGET_DIR to a bigger disk",
            gib(free),
            dir.display(),
            gib(DISK_NEEDED)
        );
    }
    Ok(())
}

/// Kernels the kernel-facing tests ([`VM_TESTS`]) also run on, besides the host's:
/// Debian 11's 5.10 (bullseye), 12's 6.1 (bookworm), 6.12 (bookworm-backports) and the
/// newest of trixie-backports, each resolved to an exact package by vm-tests. lastmiled's
/// programs need 5.19 (bpf_map_lookup_percpu_elem) and 5.14 (SO_NETNS_COOKIE), so on 5.10
/// each test through them says `skipped on 5.10: needs …` instead of failing, until the
/// product has fallbacks for those. Under TCG each kernel boots and runs the redirect
/// suite and the tunnel's kernel-facing tests in about 75 s (5.10, where most skip, in
/// about 20).
const VM_KERNELS: &[&str] = &["5.10", "6.1", "6.12", "trixie-backports"];

/// Test binaries run inside the VMs: the eBPF suite, and the tunnel end to end (the
/// kernel's interception → lastmiled → agent → mutual TLS → gateway → an echo target,
/// the API in the test process with SQLite; `lastmile listen`, whose sock_diag lookups
/// need the modules below).
const VM_TESTS: &[&str] = &["redirect", "tunnel"];

/// Binaries those tests run by path: lastmiled (`CARGO_BIN_EXE_lastmiled`) and the
/// `lastmile` beside it. `lastmile`'s own CLI test is built alongside so that cargo
/// reports that binary (and has built it).
const VM_HELPERS: &[&str] = &["lastmiled", "lastmile"];
const VM_HELPERS_FROM: &str = "login_cli";

/// Debian builds these as modules, and a VM loads none by itself: `lastmile listen` asks
/// the kernel who owns each connection to it over NETLINK_SOCK_DIAG (inet_diag, and
/// tcp_diag for TCP, in that order).
const VM_MODULES: &[&str] = &["inet_diag", "tcp_diag"];

/// Tunnel tests with no kernel path of their own: the API, gateways and agents talk over
/// loopback TCP the same way on every kernel (and `lastmile listen`'s sock_diag lookup is
/// `listen_serves_only_its_own_user`'s). The host's `cargo test` runs them; under TCG
/// they take 6-25 s each, about 100 s a kernel for the seven (measured on 6.12, 2 busy
/// cores), which would put the VM step past 10 minutes.
const USERSPACE_ONLY: &[&str] = &[
    "idle_handshakes_are_bounded_in_time_and_number",
    "listen_carries_bytes_fails_over_and_is_cut_on_revocation",
    "open_connections_end_with_the_access_they_rest_on",
    "revocations_made_while_the_api_is_unreachable_are_applied_on_its_return",
    "the_agent_renews_its_session_certificate_before_it_ends",
    "the_gateway_refuses_expired_and_foreign_certificates",
    "the_gateway_renews_its_certificate_and_keeps_serving",
];
const USERSPACE_ONLY_WHY: &str = "no kernel path of its own (loopback TCP between the API, gateway and agent); the host's run covers it, and under TCG it takes 6-25 s";

/// Tests not run in the VMs, and why (the table shows them as skipped): the tunnel suite
/// runs there only what goes through the kernel (interception, node restarts over pinned
/// programs, sock_diag).
fn vm_skips() -> Vec<(&'static str, &'static str)> {
    let mut skips = vec![(
        "a_refused_stream_is_explained_to_psql_in_its_own_protocol",
        "runs psql, which the initramfs does not have (PostgreSQL's client; nothing kernel-facing)",
    )];
    skips.extend(USERSPACE_ONLY.iter().map(|t| (*t, USERSPACE_ONLY_WHY)));
    skips
}

/// Runs the kernel-facing tests ([`VM_TESTS`]) inside each of [`VM_KERNELS`] under qemu.
fn vm_tests() -> anyhow::Result<()> {
    step(&format!(
        "VM tests: {VM_TESTS:?} inside Debian kernels {VM_KERNELS:?} under qemu (TCG)"
    ));
    let mut build = cargo();
    build.args([
        "test",
        "--no-run",
        // --workspace, as the test run above: the same feature set, so this compiles
        // nothing and only reports the binaries' paths (`-p lastmiled` relinked them).
        "--workspace",
        "--message-format=json",
    ]);
    for t in VM_TESTS.iter().chain([&VM_HELPERS_FROM]) {
        build.args(["--test", t]);
    }
    let out = build.stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        anyhow::bail!("building the VM tests failed");
    }
    // Test binaries by their test target's name; helpers by their bin target's.
    let mut tests = std::collections::BTreeMap::new();
    let mut helpers = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let str_at = |pointer: &str| msg.pointer(pointer).and_then(|v| v.as_str());
        let (Some("compiler-artifact"), Some(name), Some(exe)) = (
            str_at("/reason"),
            str_at("/target/name"),
            str_at("/executable"),
        ) else {
            continue;
        };
        let is_test = msg.pointer("/profile/test").and_then(|v| v.as_bool()) == Some(true);
        let kinds = msg.pointer("/target/kind").and_then(|v| v.as_array());
        let is_bin = kinds.is_some_and(|k| k.iter().any(|k| k.as_str() == Some("bin")));
        let found = if is_test && VM_TESTS.contains(&name) {
            &mut tests
        } else if is_bin && !is_test && VM_HELPERS.contains(&name) {
            &mut helpers
        } else {
            continue;
        };
        let exe = std::path::PathBuf::from(exe);
        if let Some(other) = found.insert(name.to_owned(), exe.clone())
            && other != exe
        {
            anyhow::bail!(
                "two {name} binaries in the workspace: {} and {}",
                other.display(),
                exe.display()
            );
        }
    }
    let pick = |found: &std::collections::BTreeMap<String, std::path::PathBuf>,
                names: &[&str]|
     -> anyhow::Result<Vec<std::path::PathBuf>> {
        names
            .iter()
            .map(|n| {
                found
                    .get(*n)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("cargo reported no {n} binary"))
            })
            .collect()
    };
    let tests = pick(&tests, VM_TESTS)?;
    let helpers = pick(&helpers, VM_HELPERS)?;
    // Beside the profile directories (target/vm-tests), where nothing else is named so.
    let work = helpers
        .first()
        .and_then(|lastmiled| lastmiled.parent())
        .and_then(|profile| profile.parent())
        .map(|target| target.join("vm-tests"))
        .unwrap_or_else(|| "target/vm-tests".into());
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "vm-tests", "--"]);
    for k in VM_KERNELS {
        cmd.args(["--kernel", k]);
    }
    for t in &tests {
        cmd.arg("--test").arg(t);
    }
    for h in &helpers {
        cmd.arg("--with").arg(h);
    }
    for m in VM_MODULES {
        cmd.args(["--module", m]);
    }
    for (name, reason) in vm_skips() {
        cmd.arg("--skip").arg(format!("{name}={reason}"));
    }
    cmd.arg("--work").arg(&work);
    must(&mut cmd)
}
