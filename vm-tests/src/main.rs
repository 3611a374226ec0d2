//! `vm-tests`: run test binaries inside Debian kernels under qemu, a matrix of them.
//!
//! For each kernel: resolve it to an exact Debian package through private apt sources
//! (see [`apt`]; the machine's own are not touched), download it (cached), unpack its
//! vmlinuz, boot it under qemu's TCG (stock kernels fail under this machine's KVM) with
//! an initramfs holding busybox, the given binaries at their host paths (test binaries
//! refer to helpers by absolute path) and the shared libraries they link, and no network
//! device at all; run each test binary with `--test-threads=1`, and read libtest's
//! `test NAME ... ok|FAILED|ignored` lines. At the end, a kernel × test table. The kernel
//! command line carries nothing secret; the VM has no way to send a packet anywhere.

mod apt;
mod report;
mod vm;

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;

use crate::report::{Outcome, Run};

#[derive(Debug, Parser)]
#[command(about = "Run lastmile's eBPF tests inside Debian kernels under qemu")]
struct Args {
    /// Kernel to boot (repeatable): a series `5.10`, `6.1` or `6.12` (the kernel of
    /// bullseye, bookworm, bookworm-backports), a suite such as `trixie-backports` (its
    /// newest kernel), another series (`6.17`: the newest of any suite) or an exact
    /// package name.
    #[arg(long = "kernel", required = true)]
    kernels: Vec<String>,
    /// A test binary to run in the VM (repeatable); it runs with --test-threads=1.
    #[arg(long = "test", required = true)]
    tests: Vec<PathBuf>,
    /// Another binary to place in the VM at the same path (a helper the tests run).
    #[arg(long = "with")]
    with: Vec<PathBuf>,
    /// Cache and work directory.
    #[arg(long, default_value = "target/vm-tests")]
    work: PathBuf,
    /// Give up on a VM after this many seconds (boot and suite take about 20 under TCG;
    /// four kernels that all hang stay within 20 minutes).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("vm-tests: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    fs::create_dir_all(&args.work).with_context(|| format!("creating {}", args.work.display()))?;
    let apt = apt::Apt::new(&args.work)?;
    apt.update()?;
    let mut kernels = Vec::new();
    for spec in &args.kernels {
        let k = apt.resolve(spec)?;
        let split = if k.vmlinuz_package == k.package {
            String::new()
        } else {
            format!(" (its kernel is in {})", k.vmlinuz_package)
        };
        eprintln!("==> {spec}: {} {}{split}", k.package, k.version);
        kernels.push(k);
    }
    let initramfs = vm::build_initramfs(&args.work, &args.tests, &args.with)?;
    let tests = list_tests(&args.tests)?;
    let mut runs = Vec::new();
    for kernel in &kernels {
        let run = run_kernel(args, &apt, kernel, &initramfs);
        runs.push(run);
    }

    let mut out = std::io::stderr().lock();
    writeln!(out, "\n==> VM tests: kernel × test")?;
    for run in &runs {
        writeln!(
            out,
            "    {:6} {}: {} (uname -r {}): {:.0}s{}",
            run.label,
            run.spec,
            run.package,
            run.release.as_deref().unwrap_or("?"),
            run.seconds,
            run.error
                .as_deref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default()
        )?;
    }
    writeln!(out)?;
    for l in report::table(&tests, &runs).lines() {
        writeln!(out, "    {l}")?;
    }
    // Why tests were skipped, once per kernel and reason.
    for run in &runs {
        let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (test, outcome) in &run.results {
            if let Outcome::Skipped(reason) = outcome {
                by_reason.entry(reason).or_default().push(test);
            }
        }
        for (reason, skipped) in by_reason {
            let which = if skipped.len() == run.results.len() {
                format!("all {} tests", skipped.len())
            } else {
                skipped.join(", ")
            };
            writeln!(out, "    {}: {which}: {reason}", run.label)?;
        }
    }
    let ok = runs.iter().all(Run::ok);
    writeln!(
        out,
        "==> VM tests {} in {:.0}s",
        if ok { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    )?;
    Ok(ok)
}

/// A console line without its terminal escapes (SeaBIOS and the kernel reset the screen).
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params final, or ESC and one character.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// `linux-image-6.12.95+deb12-amd64` → `6.12`.
fn series(package: &str) -> String {
    let digits: Vec<&str> = package
        .trim_start_matches("linux-image-")
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .collect();
    digits.join(".")
}

/// Downloads, boots and reads one kernel; whatever fails is the run's error, so that the
/// other kernels still run.
fn run_kernel(args: &Args, apt: &apt::Apt, kernel: &apt::Kernel, initramfs: &Path) -> Run {
    let mut run = Run {
        label: series(&kernel.package),
        spec: kernel.spec.clone(),
        package: kernel.package.clone(),
        release: None,
        results: Default::default(),
        error: None,
        seconds: 0.0,
    };
    let dir = args.work.join("kernels").join(&kernel.package);
    let vmlinuz = match apt
        .download(kernel, &dir)
        .and_then(|deb| vm::vmlinuz(&deb, &dir))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("==> {}: {e:#}", kernel.spec);
            run.error = Some(format!("{e:#}"));
            return run;
        }
    };
    eprintln!(
        "==> {}: booting {} under qemu (TCG)",
        kernel.spec, kernel.package
    );
    let started = Instant::now();
    let mut parser = report::Parser::default();
    let booted = vm::boot(
        &vmlinuz,
        initramfs,
        Duration::from_secs(args.timeout),
        |line| {
            eprintln!("    vm| {}", printable(line));
            parser.line(line);
        },
    );
    run.seconds = started.elapsed().as_secs_f64();
    run.results = parser.finish();
    match booted {
        Ok(b) => {
            run.release = b.release;
            run.error = b.error;
            if b.status == Some(false) && run.results.values().all(|o| *o != Outcome::Fail) {
                run.error = Some("a test binary failed outside any test".to_owned());
            }
        }
        Err(e) => run.error = Some(format!("{e:#}")),
    }
    let count = |f: fn(&Outcome) -> bool| run.results.values().filter(|o| f(o)).count();
    eprintln!(
        "==> {} ({}): {} passed, {} failed, {} skipped in {:.0}s{}",
        kernel.spec,
        run.release.as_deref().unwrap_or("did not boot"),
        count(|o| *o == Outcome::Pass),
        count(|o| *o == Outcome::Fail),
        count(|o| matches!(o, Outcome::Skipped(_) | Outcome::Ignored)),
        run.seconds,
        run.error
            .as_deref()
            .map(|e| format!("; {e}"))
            .unwrap_or_default()
    );
    run
}

/// The tests each binary has (`--list`, run on the host), for the table's rows.
fn list_tests(binaries: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut tests = Vec::new();
    for b in binaries {
        let out = Command::new(b)
            .arg("--list")
            .output()
            .with_context(|| format!("running {} --list", b.display()))?;
        tests.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.strip_suffix(": test"))
                .map(str::to_owned),
        );
    }
    Ok(tests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_escapes_are_dropped() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2JVMTEST KERNEL 6.1.0-50-amd64\r"),
            "VMTEST KERNEL 6.1.0-50-amd64"
        );
        assert_eq!(series("linux-image-6.12.95+deb12-amd64"), "6.12");
        assert_eq!(series("linux-image-5.10.0-32-amd64"), "5.10");
    }
}
