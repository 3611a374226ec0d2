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

/// Kernels the eBPF suite also runs on, besides the host's: Debian 11's 5.10 (bullseye),
/// 12's 6.1 (bookworm), 6.12 (bookworm-backports) and the newest of trixie-backports,
/// each resolved to an exact package by vm-tests. lastmiled's programs need 5.19
/// (bpf_map_lookup_percpu_elem) and 5.14 (SO_NETNS_COOKIE), so on 5.10 each test says
/// `skipped on 5.10: needs …` instead of failing, until the product has fallbacks for
/// those. Under TCG each kernel boots and runs the suite in about 20 s.
const VM_KERNELS: &[&str] = &["5.10", "6.1", "6.12", "trixie-backports"];

/// Runs the kernel-facing tests (`lastmiled`'s `redirect` suite) inside each of
/// [`VM_KERNELS`] under qemu.
fn vm_tests() -> anyhow::Result<()> {
    step(&format!(
        "VM tests: the eBPF suite inside Debian kernels {VM_KERNELS:?} under qemu (TCG)"
    ));
    let out = cargo()
        .args([
            "test",
            "--no-run",
            // --workspace, as the test run above: the same feature set, so this compiles
            // nothing and only reports the binary's path (`-p lastmiled` relinked it).
            "--workspace",
            "--test",
            "redirect",
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        anyhow::bail!("building the redirect tests failed");
    }
    let mut test_bin = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is =
            |pointer: &str, want: &str| msg.pointer(pointer).and_then(|v| v.as_str()) == Some(want);
        if is("/reason", "compiler-artifact") && is("/target/name", "redirect") {
            test_bin = msg
                .pointer("/executable")
                .and_then(|v| v.as_str())
                .map(std::path::PathBuf::from);
        }
    }
    let test_bin =
        test_bin.ok_or_else(|| anyhow::anyhow!("cargo reported no redirect test binary"))?;
    // The tests run lastmiled by the path cargo compiled into them.
    let lastmiled = test_bin
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("lastmiled"))
        .ok_or_else(|| anyhow::anyhow!("unexpected test binary path {}", test_bin.display()))?;
    // Beside the profile directories (target/vm-tests), where nothing else is named so.
    let work = lastmiled
        .parent()
        .and_then(|profile| profile.parent())
        .map(|target| target.join("vm-tests"))
        .unwrap_or_else(|| "target/vm-tests".into());
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "vm-tests", "--"]);
    for k in VM_KERNELS {
        cmd.args(["--kernel", k]);
    }
    cmd.arg("--test")
        .arg(&test_bin)
        .arg("--with")
        .arg(&lastmiled)
        .arg("--work")
        .arg(&work);
    must(&mut cmd)
}
