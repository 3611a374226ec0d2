//! The VM: an initramfs with the test binaries, booted under qemu's TCG.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub const MARK: &str = "VMTEST";

/// Unpacks the kernel of a kernel package to `dir/vmlinuz`, once. Debian's packages
/// have it at `/boot/vmlinuz-RELEASE`, the split ones of 7.x (`linux-binary-…`) at
/// `/usr/lib/modules/RELEASE/vmlinuz`. Nothing else is unpacked: the VM loads no module.
pub fn vmlinuz(deb: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join("vmlinuz");
    if out.is_file() {
        return Ok(out);
    }
    // `sh -c SCRIPT sh DEB MEMBER`: the package and the member as $1 and $2.
    let tar = |tar_args: &str, member: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("dpkg-deb --fsys-tarfile \"$1\" | tar {tar_args}"))
            .arg("sh")
            .arg(deb)
            .arg(member)
            .output()
            .context("running dpkg-deb and tar")
    };
    let listing = tar("-t", "")?;
    if !listing.status.success() {
        bail!("listing {} failed", deb.display());
    }
    let listing = String::from_utf8_lossy(&listing.stdout);
    let member = listing
        .lines()
        .find(|m| {
            let m = m.trim_start_matches("./");
            m.strip_prefix("boot/vmlinuz-")
                .is_some_and(|r| !r.is_empty())
                || m.strip_prefix("usr/lib/modules/")
                    .and_then(|r| r.strip_suffix("/vmlinuz"))
                    .is_some_and(|r| !r.is_empty() && !r.contains('/'))
        })
        .with_context(|| {
            format!(
                "{} has neither /boot/vmlinuz-* nor /usr/lib/modules/*/vmlinuz",
                deb.display()
            )
        })?;
    let image = tar("-xO \"$2\"", member)?;
    if !image.status.success() || image.stdout.is_empty() {
        bail!("unpacking {member} from {} failed", deb.display());
    }
    let partial = dir.join("vmlinuz.partial");
    fs::write(&partial, &image.stdout)?;
    fs::rename(&partial, &out)?;
    Ok(out)
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

/// The initramfs: busybox, `ip`, the binaries at their host paths and their libraries.
pub fn build_initramfs(
    work: &Path,
    tests: &[PathBuf],
    with: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    let root = work.join("initramfs-root");
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
    let mut binaries: Vec<PathBuf> = tests.iter().chain(with).cloned().collect();
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
    let tests: Vec<String> = tests
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

    let archive = work.join("initramfs.cpio");
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

/// What a VM said.
#[derive(Debug, Default)]
pub struct Boot {
    /// `uname -r`, once the init ran.
    pub release: Option<String>,
    /// The init's `VMTEST STATUS`: true when every test binary exited 0.
    pub status: Option<bool>,
    /// Why it said no status (timed out, qemu ended).
    pub error: Option<String>,
}

/// Boots the kernel with the initramfs, handing each console line to `line`.
pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    timeout: Duration,
    mut line: impl FnMut(&str),
) -> anyhow::Result<Boot> {
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
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Lines, not necessarily UTF-8 (a kernel's console may print anything).
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
            buf.clear();
            if tx.send(text).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut boot = Boot::default();
    loop {
        if Instant::now() >= deadline {
            boot.error = Some(format!("timed out after {}s", timeout.as_secs()));
            break;
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(text) => {
                line(&text);
                // Anywhere in the line: the console's reset sequences may stand before.
                let after = |mark: &str| {
                    let mark = format!("{MARK} {mark} ");
                    text.find(&mark)
                        .and_then(|at| text.get(at + mark.len()..))
                        .map(|rest| rest.trim().to_owned())
                };
                if let Some(s) = after("STATUS") {
                    boot.status = Some(s == "0");
                    break;
                }
                if let Some(r) = after("KERNEL") {
                    boot.release = Some(r);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(_)) = child.try_wait() {
                    boot.error = Some("qemu exited before the tests finished".to_owned());
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                boot.error = Some("qemu exited before the tests finished".to_owned());
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(boot)
}
