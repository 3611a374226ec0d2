//! `vm-tests`: run test binaries inside a Debian kernel under qemu.
//!
//! For each kernel: download the Debian package (`apt-get download`, cached), unpack its
//! vmlinuz, build an initramfs holding busybox, the given binaries at their host paths
//! (test binaries refer to helpers by absolute path) and the shared libraries they
//! link, boot it with qemu's TCG (stock kernels fail under this machine's KVM) and no
//! network device at all, run each test binary, and report. The kernel command line
//! carries nothing secret; the VM has no way to send a packet anywhere.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Run lastmile's eBPF tests inside Debian kernels under qemu")]
struct Args {
    /// Kernel to boot: a Debian series such as `6.1` (the newest linux-image-6.1.0-N-amd64
    /// the archive has) or an exact package name (repeatable).
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
    /// Give up on a VM after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

const MARK: &str = "VMTEST";

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
    fs::create_dir_all(&args.work).with_context(|| format!("creating {}", args.work.display()))?;
    let initramfs = build_initramfs(args)?;
    let mut all_ok = true;
    for kernel in &args.kernels {
        let package = &resolve(kernel)?;
        let vmlinuz = fetch_kernel(&args.work, package)?;
        eprintln!("==> {package}: booting under qemu (TCG)");
        let ok = boot(&vmlinuz, &initramfs, Duration::from_secs(args.timeout))?;
        eprintln!(
            "==> {package}: {}",
            if ok { "all tests passed" } else { "FAILED" }
        );
        all_ok &= ok;
    }
    Ok(all_ok)
}

/// `6.1` → the newest `linux-image-6.1.0-N-amd64` the archive has; a package name as is.
fn resolve(kernel: &str) -> anyhow::Result<String> {
    if kernel.starts_with("linux-image-") {
        return Ok(kernel.to_owned());
    }
    let pattern = format!(
        "^linux-image-{}\\.0-[0-9]+-amd64$",
        kernel.replace('.', "\\.")
    );
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("running apt-cache")?;
    let newest = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name
                .strip_prefix(&format!("linux-image-{kernel}.0-"))?
                .strip_suffix("-amd64")?;
            Some((abi.parse::<u32>().ok()?, name.to_owned()))
        })
        .max();
    match newest {
        Some((_, name)) => Ok(name),
        None => {
            bail!("no linux-image-{kernel}.0-N-amd64 package in the apt archive (apt-get update?)")
        }
    }
}

/// Downloads and unpacks the kernel package once; returns its vmlinuz.
fn fetch_kernel(work: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let dir = work.join("kernels").join(package);
    let found = find_vmlinuz(&dir);
    if let Some(v) = found {
        return Ok(v);
    }
    fs::create_dir_all(&dir)?;
    eprintln!("==> downloading {package}");
    let status = Command::new("apt-get")
        .args(["download", package])
        .current_dir(&dir)
        .status()
        .context("running apt-get download")?;
    if !status.success() {
        bail!(
            "`apt-get download {package}` failed: is the package name right (apt-cache search linux-image-6)?"
        );
    }
    let deb = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root"))
        .status()?;
    if !status.success() {
        bail!("unpacking {} failed", deb.display());
    }
    find_vmlinuz(&dir).with_context(|| format!("{package} has no /boot/vmlinuz-*"))
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("root/boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The shared libraries `binary` needs, from `ldd`.
fn libraries(binary: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(PathBuf::from(p));
        }
    }
    Ok(libs)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# The initramfs root is writable memory already; no tmpfs over /tmp or /run, which
# would hide test binaries copied there (a checkout under /tmp, say).
mkdir -p /tmp /run/netns /sys/fs/cgroup /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
/usr/bin/ip link set lo up
echo "VMTEST KERNEL $(uname -r)"
status=0
for t in $(cat /tests.list); do
    echo "VMTEST RUN $t"
    "$t" --test-threads=1 || status=1
done
echo "VMTEST STATUS $status"
echo o > /proc/sysrq-trigger
sleep 10
"#;

fn build_initramfs(args: &Args) -> anyhow::Result<PathBuf> {
    let root = args.work.join("initramfs-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "usr/bin", "etc",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: run `cargo xtask setup` (it installs busybox-static)");
    }
    copy_into(&root, busybox)?;
    let ip = Path::new("/usr/bin/ip");
    let mut binaries: Vec<PathBuf> = args.tests.iter().chain(&args.with).cloned().collect();
    binaries.push(ip.to_owned());
    let mut libs = BTreeSet::new();
    for b in &binaries {
        let b = b
            .canonicalize()
            .with_context(|| format!("{} not found", b.display()))?;
        copy_into(&root, &b)?;
        libs.extend(libraries(&b)?);
    }
    for l in &libs {
        copy_into(&root, l)?;
        // The dynamic loader is looked up at its canonical path too.
        if let Ok(real) = l.canonicalize()
            && real != *l
        {
            copy_into(&root, &real)?;
        }
    }
    let tests: Vec<String> = args
        .tests
        .iter()
        .map(|t| t.canonicalize().map(|p| p.display().to_string()))
        .collect::<Result<_, _>>()?;
    fs::write(root.join("tests.list"), tests.join("\n"))?;
    fs::write(root.join("init"), INIT)?;
    set_mode(&root.join("init"), 0o755)?;
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;

    let archive = args.work.join("initramfs.cpio");
    let list = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet")
        .current_dir(&root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cpio (cargo xtask setup installs it)")?
        .wait_with_output()?;
    if !list.status.success() {
        bail!("building the initramfs with cpio failed");
    }
    fs::write(&archive, list.stdout)?;
    Ok(archive)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Copies `src` to the same absolute path under `root`, keeping its mode.
fn copy_into(root: &Path, src: &Path) -> anyhow::Result<()> {
    let rel = src.strip_prefix("/").unwrap_or(src);
    let dst = root.join(rel);
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(src, &dst).with_context(|| format!("copying {} into the initramfs", src.display()))?;
    Ok(())
}

/// Boots the kernel with the initramfs; true when every test binary passed.
fn boot(vmlinuz: &Path, initramfs: &Path, timeout: Duration) -> anyhow::Result<bool> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "1536", "-smp", "2"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut status = None;
    let mut out = std::io::stderr().lock();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                writeln!(out, "    vm| {line}")?;
                if let Some(s) = line.strip_prefix(&format!("{MARK} STATUS ")) {
                    status = Some(s.trim() == "0");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    match status {
        Some(ok) => Ok(ok),
        None => bail!("the VM ended (or timed out) without reporting a status"),
    }
}
