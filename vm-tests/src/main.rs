//! `vm-tests`: run test binaries inside Debian kernels under qemu, a matrix of them.
//!
//! For each kernel: resolve it to an exact Debian package through private apt sources
//! (see [`apt`]; the machine's own are not touched), download it (cached), unpack its
//! vmlinuz, boot it under qemu's TCG (stock kernels fail under this machine's KVM) with
//! an initramfs holding busybox, the given binaries at their host paths (test binaries
//! refer to helpers by absolute path) and the shared libraries they link, the kernel
//! modules asked for (from that kernel's own package), a machine id, `/etc/hosts` for
//! `localhost`, and no network device at all (`lo` only); run each test binary with
//! `--test-threads=1` (and `--skip` for each test not to run there), and read libtest's
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
#[command(about = "Run lastmile's kernel-facing tests inside Debian kernels under qemu")]
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
    /// A kernel module to load before the tests (repeatable, in load order: a module's
    /// dependencies first), from each kernel's own package: `inet_diag`.
    #[arg(long = "module")]
    modules: Vec<String>,
    /// `NAME=REASON`: a test (its full name, in any of the binaries) not to run in the VM,
    /// and why; the table shows it as skipped, with the reason (repeatable).
    #[arg(long = "skip", value_parser = parse_skip)]
    skips: Vec<(String, String)>,
    /// Cache and work directory.
    #[arg(long, default_value = "target/vm-tests")]
    work: PathBuf,
    /// Give up on a VM after this many seconds (boot and `cargo xtask test`'s tests take
    /// about 80 under TCG; four kernels that all hang stay within 20 minutes).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

fn parse_skip(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, reason)) if !name.is_empty() && !reason.trim().is_empty() => {
            Ok((name.to_owned(), reason.trim().to_owned()))
        }
        _ => Err(format!("{s:?} is not NAME=REASON")),
    }
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
    // libtest's --skip matches substrings, unless --exact.
    let test_args: Vec<String> = if args.skips.is_empty() {
        Vec::new()
    } else {
        std::iter::once("--exact".to_owned())
            .chain(
                args.skips
                    .iter()
                    .flat_map(|(name, _)| ["--skip".to_owned(), name.clone()]),
            )
            .collect()
    };
    let initramfs = vm::build_initramfs(&args.work, &args.tests, &args.with, &test_args)?;
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
    // Why tests were not run: those of --skip once, the others' once per kernel and reason.
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (test, reason) in &args.skips {
        by_reason.entry(reason).or_default().push(test);
    }
    for (reason, skipped) in by_reason {
        writeln!(out, "    every kernel, not run in the VM: {reason}:")?;
        for test in skipped {
            writeln!(out, "        {test}")?;
        }
    }
    for run in &runs {
        let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (test, outcome) in &run.results {
            if let Outcome::Skipped(reason) = outcome
                && !args.skips.iter().any(|(name, _)| name == test)
            {
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
    let prepared = apt
        .download(kernel, &dir)
        .and_then(|deb| vm::vmlinuz(&deb, &dir))
        .and_then(|vmlinuz| {
            if args.modules.is_empty() {
                return Ok((vmlinuz, initramfs.to_owned()));
            }
            let deb = apt.download_modules(kernel, &dir)?;
            let modules = vm::modules(&deb, &args.modules, &dir)?;
            let initramfs = vm::with_modules(
                initramfs,
                &modules,
                &args.work.join("initramfs-kernel.cpio"),
            )?;
            Ok((vmlinuz, initramfs))
        });
    let (vmlinuz, initramfs) = match prepared {
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
    let mut modules_missing = Vec::new();
    let booted = vm::boot(
        &vmlinuz,
        &initramfs,
        Duration::from_secs(args.timeout),
        |line| {
            eprintln!("    vm| {}", printable(line));
            parser.line(line);
            if let Some(m) = line
                .split_once(&format!("{} MODULE ", vm::MARK))
                .and_then(|(_, rest)| rest.strip_suffix(" did not load"))
            {
                modules_missing.push(m.trim().to_owned());
            }
        },
    );
    run.seconds = started.elapsed().as_secs_f64();
    let slowest: Vec<String> = parser
        .slowest(3)
        .into_iter()
        .filter(|(_, took)| *took >= Duration::from_secs(1))
        .map(|(test, took)| format!("{test} {:.0}s", took.as_secs_f64()))
        .collect();
    run.results = parser.finish();
    if booted.as_ref().is_ok_and(|b| b.release.is_some()) {
        for (name, reason) in &args.skips {
            run.results.insert(
                name.clone(),
                Outcome::Skipped(format!("not run in the VM: {reason}")),
            );
        }
    }
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
    if run.error.is_none() && !modules_missing.is_empty() {
        run.error = Some(format!(
            "module(s) {} did not load",
            modules_missing.join(", ")
        ));
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
    if !slowest.is_empty() {
        eprintln!("    slowest: {}", slowest.join(", "));
    }
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

    #[test]
    fn skips_are_name_and_reason() {
        assert_eq!(
            parse_skip("a_test=needs psql"),
            Ok(("a_test".to_owned(), "needs psql".to_owned()))
        );
        assert!(parse_skip("a_test").is_err());
        assert!(parse_skip("a_test= ").is_err());
    }
}
