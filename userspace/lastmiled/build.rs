//! Builds lastmile's kernel programs (`ebpf/lastmile-ebpf`) for `bpfel-unknown-none` with
//! the nightly toolchain and `-Z build-std=core`, through aya-build, and leaves the object
//! in `OUT_DIR` for `include_bytes!`.
//!
//! The eBPF toolchain is checked first, so that a missing piece is named together with the
//! fix instead of surfacing as a linker error deep in a nested cargo run.
//!
//! `LASTMILE_NO_EBPF=1` builds lastmiled without its kernel programs (for editors, clippy
//! and machines without the toolchain): it then refuses to start the node role, saying so.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "lastmile-ebpf";
const FIX: &str = "run `cargo xtask setup` to install the eBPF toolchain, \
                   or set LASTMILE_NO_EBPF=1 to build without the kernel programs";

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=LASTMILE_NO_EBPF");
    println!("cargo::rustc-check-cfg=cfg(lastmile_no_ebpf)");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join(EBPF_PACKAGE);

    if env::var_os("LASTMILE_NO_EBPF").is_some_and(|v| v == "1" || v == "true") {
        println!(
            "cargo::warning=LASTMILE_NO_EBPF is set: lastmiled is built without its eBPF programs"
        );
        println!("cargo::rustc-cfg=lastmile_no_ebpf");
        fs::write(&object, []).context("writing the empty eBPF placeholder")?;
        return Ok(());
    }

    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let ebpf_root = manifest_dir.join("../../ebpf");
    check_toolchain()
        .map_err(|e| anyhow!("cannot build the eBPF programs: {e:#}\n  fix: {FIX}"))?;

    // The programs depend on the shared layouts; a change there must rebuild them too.
    println!(
        "cargo::rerun-if-changed={}",
        ebpf_root.join("lastmile-ebpf-common").display()
    );
    let root_dir = ebpf_root.join(EBPF_PACKAGE);
    let root_dir = root_dir
        .to_str()
        .context("non-UTF-8 path to the eBPF crate")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .map_err(|e| {
        anyhow!("building the eBPF programs failed: {e:#}\n  if the toolchain changed: {FIX}")
    })?;
    if !object.is_file() {
        bail!("aya-build finished but left no {}", object.display());
    }
    Ok(())
}

/// Checks nightly, its rust-src, and that bpf-linker exists and links the same LLVM major
/// as nightly rustc (bitcode from a newer LLVM cannot be read by an older one).
fn check_toolchain() -> anyhow::Result<()> {
    let version = run("rustup", &["run", "nightly", "rustc", "-vV"])
        .context("the nightly toolchain is not usable (`rustup run nightly rustc -vV` failed)")?;
    let rustc_llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse::<u32>().ok())
        .context("nightly rustc did not report its LLVM version")?;

    let sysroot = run("rustup", &["run", "nightly", "rustc", "--print", "sysroot"])?;
    let core = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core.is_file() {
        bail!("the nightly toolchain has no rust-src component (needed for -Z build-std=core)");
    }

    let linker = find_on_path("bpf-linker").context("bpf-linker is not installed")?;
    println!("cargo::rerun-if-changed={}", linker.display());
    match linked_llvm_major(&linker)? {
        Some(major) if major != rustc_llvm => bail!(
            "{} is built against LLVM {major}, but nightly rustc uses LLVM {rustc_llvm}",
            linker.display()
        ),
        Some(_) => {}
        None => println!(
            "cargo::warning=could not tell which LLVM {} links; assuming it matches nightly's LLVM {rustc_llvm}",
            linker.display()
        ),
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("could not run {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("non-UTF-8 output")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// bpf-linker built against a system LLVM links `libLLVM.so.<major>[.<minor>]` (or
/// `libLLVM-<major>.so`); the name sits in the binary's dynamic string table.
fn linked_llvm_major(binary: &Path) -> anyhow::Result<Option<u32>> {
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let needle = b"libLLVM";
    let majors = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .filter_map(|(at, _)| {
            let rest = bytes.get(at + needle.len()..)?;
            let rest = rest
                .strip_prefix(b".so.")
                .or_else(|| rest.strip_prefix(b"-"))?;
            let digits: Vec<u8> = rest
                .iter()
                .copied()
                .take_while(u8::is_ascii_digit)
                .collect();
            std::str::from_utf8(&digits).ok()?.parse::<u32>().ok()
        });
    let mut found: Vec<u32> = majors.collect();
    found.dedup();
    Ok(found.first().copied())
}
