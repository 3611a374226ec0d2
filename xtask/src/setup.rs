//! `cargo xtask setup`: everything a fresh Debian 12 machine of this kind needs to build,
//! test and demo lastmile. Each step checks first and skips what is already there.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::exec::{must, output, step};

/// Debian packages, and why each is here.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "bpf-linker links LLVM 22, the LLVM of nightly rustc",
    ),
    (
        "libpolly-22-dev",
        "llvm-config --libs of LLVM 22 names Polly",
    ),
    ("libzstd-dev", "LLVM's compression, linked by bpf-linker"),
    ("zlib1g-dev", "LLVM's compression, linked by bpf-linker"),
    ("postgresql", "a real PostgreSQL for the last-mile tests"),
    ("postgresql-client", "the real psql"),
    ("openssh-server", "a real sshd for the last-mile tests"),
    ("openssh-client", "the real ssh"),
    (
        "tmux",
        "drives an interactive ssh session through a pty in the SSH tests",
    ),
    (
        "pgbouncer",
        "a real pooler between gateway and database in tests",
    ),
    ("iproute2", "network namespaces for test hosts"),
    ("qemu-system-x86", "VM tests across kernels"),
    ("cpio", "initramfs for VM tests"),
    ("busybox-static", "the VM tests' userland"),
    ("pkg-config", "C libraries for -sys crates"),
    ("curl", "the demo's raw HTTPS calls to the API"),
    (
        "rsyslog",
        "a real syslog receiver for the audit sink's RFC 5424 over TLS tests",
    ),
    (
        "rsyslog-gnutls",
        "rsyslog's TLS driver (gtls), for those tests",
    ),
    (
        "debootstrap",
        "a clean Debian root to install the .debs into (`cargo xtask package --check`)",
    ),
];

const CARGO_DEB_VERSION: &str = "3";

const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_MAJOR: u32 = 22;

pub fn run() -> anyhow::Result<()> {
    apt_packages().context("setup step `apt packages` failed")?;
    rust_src().context("setup step `rust-src for nightly` failed")?;
    bpf_linker().context("setup step `bpf-linker` failed")?;
    moto().context("setup step `moto` failed")?;
    promtool().context("setup step `promtool` failed")?;
    step("setup: done");
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    step("apt packages");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !dpkg_installed(name))
        .collect();
    if missing.is_empty() {
        eprintln!("    all {} present", APT_PACKAGES.len());
        return Ok(());
    }
    for (name, why) in APT_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        eprintln!("    missing {name}: {why}");
    }
    if !crate::exec::is_root() {
        bail!(
            "installing {} needs root; run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    must(Command::new("apt-get").arg("update").arg("-q"))?;
    must(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.ends_with("install ok installed"))
}

fn rust_src() -> anyhow::Result<()> {
    step("rust-src for the nightly toolchain");
    let Some(installed) = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ])) else {
        bail!(
            "the nightly toolchain is not installed; the eBPF programs need it \
             (`rustup toolchain install nightly --component rust-src`)"
        );
    };
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    present");
        return Ok(());
    }
    must(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// Which LLVM major a bpf-linker binary links, from `libLLVM.so.<major>` in its dynamic
/// section as `ldd` reports it.
fn bpf_linker_llvm(linker: &Path) -> Option<u32> {
    let ldd = output(Command::new("ldd").arg(linker))?;
    ldd.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("libLLVM")?;
        let rest = rest
            .strip_prefix(".so.")
            .or_else(|| rest.strip_prefix('-'))?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

fn bpf_linker() -> anyhow::Result<()> {
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR}"
    ));
    let linker = cargo_bin_dir().join("bpf-linker");
    if linker.is_file() {
        let version = output(Command::new(&linker).arg("--version")).unwrap_or_default();
        let llvm = bpf_linker_llvm(&linker);
        if version.contains(&format!(" {BPF_LINKER_VERSION}.")) && llvm == Some(LLVM_MAJOR) {
            eprintln!("    present: {} (LLVM {LLVM_MAJOR})", version.trim());
            return Ok(());
        }
        eprintln!(
            "    {} links LLVM {llvm:?}; rebuilding against LLVM {LLVM_MAJOR}",
            version.trim()
        );
    }
    let llvm_prefix = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}"));
    if !llvm_prefix.join("bin/llvm-config").is_file() {
        bail!(
            "{} has no llvm-config; is llvm-{LLVM_MAJOR}-dev installed?",
            llvm_prefix.display()
        );
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![llvm_prefix.join("bin")];
    paths.extend(env::split_paths(&path));
    eprintln!("    building bpf-linker (a few minutes on two cores)");
    must(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--version", &format!("^{BPF_LINKER_VERSION}")])
            .args(["--features", &format!("llvm-{LLVM_MAJOR}")])
            .env("LLVM_PREFIX", &llvm_prefix)
            .env(format!("LLVM_SYS_{LLVM_MAJOR}1_PREFIX"), &llvm_prefix)
            .env("PATH", env::join_paths(paths)?),
    )
}

fn moto() -> anyhow::Result<()> {
    step("moto[server] (a KMS-compatible API for tests)");
    let check = Command::new("python3")
        .args([
            "-c",
            "import moto, flask, flask_cors; print(moto.__version__)",
        ])
        .output();
    if let Ok(out) = &check
        && out.status.success()
    {
        eprintln!(
            "    present: moto {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
        return Ok(());
    }
    must(Command::new("python3").args(["-m", "pip", "install", "--quiet", "moto[server]"]))
}

/// Where `promtool` is put.
const PROMTOOL: &str = "/usr/local/bin/promtool";

/// `promtool`, which checks and unit-tests the shipped alert rules: taken out of Debian's
/// `prometheus` package (`apt-get download`, `dpkg-deb -x`) rather than installing it,
/// which would also install and start a Prometheus server.
fn promtool() -> anyhow::Result<()> {
    step("promtool (checks the alert rules in deploy/prometheus)");
    if let Some(v) = output(Command::new("promtool").arg("--version")) {
        eprintln!("    present: {}", v.lines().next().unwrap_or_default());
        return Ok(());
    }
    if !crate::exec::is_root() {
        bail!("installing {PROMTOOL} needs root; run `sudo cargo xtask setup`");
    }
    let dir = env::temp_dir().join(format!("lastmile-promtool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        must(
            Command::new("apt-get")
                .args(["download", "-q", "prometheus"])
                .current_dir(&dir),
        )?;
        let deb = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download prometheus left no .deb")?;
        must(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(dir.join("x")),
        )?;
        std::fs::copy(dir.join("x/usr/bin/promtool"), PROMTOOL)
            .with_context(|| format!("copying promtool to {PROMTOOL}"))?;
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    eprintln!("    installed {PROMTOOL}");
    Ok(())
}

/// cargo-deb, which `cargo xtask package` makes the Debian packages with. Installed by
/// `package` itself, not by every setup: nothing else needs it, and building it costs a
/// few minutes of every fresh CI run.
pub fn cargo_deb() -> anyhow::Result<()> {
    step(&format!("cargo-deb {CARGO_DEB_VERSION}"));
    let deb = cargo_bin_dir().join("cargo-deb");
    if let Some(v) = output(Command::new(&deb).arg("--version")) {
        eprintln!("    present: {}", v.trim());
        return Ok(());
    }
    eprintln!("    building cargo-deb (a few minutes on two cores)");
    must(Command::new("cargo").args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        &format!("^{CARGO_DEB_VERSION}"),
    ]))
}
