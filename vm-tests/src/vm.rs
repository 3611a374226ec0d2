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

/// Unpacks the kernel modules `names` (`inet_diag`, …) from a kernel's modules package to
/// `dir/modules/NAME.ko`, once, uncompressed (6.12 and later have them as `.ko.xz`, which
/// busybox's insmod does not read). In the order given, which is the order they load in.
pub fn modules(deb: &Path, names: &[String], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out_dir = dir.join("modules");
    let out: Vec<PathBuf> = names
        .iter()
        .map(|n| out_dir.join(format!("{n}.ko")))
        .collect();
    if out.iter().all(|p| p.is_file()) {
        return Ok(out);
    }
    fs::create_dir_all(&out_dir)?;
    let listing = Command::new("sh")
        .arg("-c")
        .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -t")
        .arg("sh")
        .arg(deb)
        .output()
        .context("running dpkg-deb and tar")?;
    if !listing.status.success() {
        bail!("listing {} failed", deb.display());
    }
    let listing = String::from_utf8_lossy(&listing.stdout);
    for (name, path) in names.iter().zip(&out) {
        let (member, decompress) = module_member(&listing, name)
            .with_context(|| format!("{} has no module {name}", deb.display()))?;
        let module = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "dpkg-deb --fsys-tarfile \"$1\" | tar -xO \"$2\" | {decompress}"
            ))
            .arg("sh")
            .arg(deb)
            .arg(member)
            .output()
            .context("running dpkg-deb, tar and a decompressor")?;
        if !module.status.success() || module.stdout.is_empty() {
            bail!(
                "unpacking {member} from {} failed: {}",
                deb.display(),
                String::from_utf8_lossy(&module.stderr).trim()
            );
        }
        let partial = path.with_extension("partial");
        fs::write(&partial, &module.stdout)?;
        fs::rename(&partial, path)?;
    }
    Ok(out)
}

/// Where module `name` is in a package's listing, and the command that decompresses it:
/// `…/lib/modules/RELEASE/kernel/net/ipv4/inet_diag.ko[.xz|.zst|.gz]`. A module's name has
/// `_` where its file may have `-`.
fn module_member<'a>(listing: &'a str, name: &str) -> Option<(&'a str, &'static str)> {
    listing
        .lines()
        .filter(|m| m.contains("/kernel/"))
        .find_map(|m| {
            let file = m.rsplit('/').next()?;
            let (stem, decompress) = [
                (".ko", "cat"),
                (".ko.xz", "xz -dc"),
                (".ko.zst", "zstd -dcq"),
                (".ko.gz", "gzip -dc"),
            ]
            .into_iter()
            .find_map(|(suffix, d)| Some((file.strip_suffix(suffix)?, d)))?;
            (stem.replace('-', "_") == name.replace('-', "_")).then_some((m, decompress))
        })
}

/// The initramfs for one kernel: the shared one with that kernel's modules appended as a
/// second cpio archive (the kernel unpacks concatenated archives in turn), written to
/// `out`. The shared one as it is when there are none.
pub fn with_modules(base: &Path, modules: &[PathBuf], out: &Path) -> anyhow::Result<PathBuf> {
    if modules.is_empty() {
        return Ok(base.to_owned());
    }
    let root = out.with_extension("root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(root.join("modules"))?;
    let mut names = Vec::new();
    for m in modules {
        let name = m.file_name().context("a module without a name")?;
        fs::copy(m, root.join("modules").join(name))?;
        names.push(
            m.file_stem()
                .context("a module without a name")?
                .to_string_lossy()
                .into_owned(),
        );
    }
    fs::write(root.join("modules.list"), names.join("\n"))?;
    let mut archive = fs::read(base).with_context(|| format!("reading {}", base.display()))?;
    archive.extend(cpio(&root)?);
    fs::write(out, archive)?;
    Ok(out.to_owned())
}

/// `find . | cpio -o -H newc` in `root`.
fn cpio(root: &Path) -> anyhow::Result<Vec<u8>> {
    let list = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet")
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cpio (cargo xtask setup installs it)")?
        .wait_with_output()?;
    if !list.status.success() {
        bail!("building the initramfs with cpio failed");
    }
    Ok(list.stdout)
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
# Modules the tests need that Debian builds as such (inet_diag and tcp_diag, for
# sock_diag), from this kernel's own package, in order.
if [ -f /modules.list ]; then
    for m in $(cat /modules.list); do
        insmod "/modules/$m.ko" || echo "VMTEST MODULE $m did not load"
    done
fi
status=0
for t in $(cat /tests.list); do
    echo "VMTEST RUN $t"
    # --exact and a --skip per test the VM cannot run (see --skip).
    "$t" --test-threads=1 $(cat /tests.args) || status=1
done
echo "VMTEST STATUS $status"
echo o > /proc/sysrq-trigger
sleep 10
"#;

/// The initramfs: busybox, `ip`, the binaries at their host paths and their libraries;
/// each test binary runs with `test_args` besides `--test-threads=1`.
pub fn build_initramfs(
    work: &Path,
    tests: &[PathBuf],
    with: &[PathBuf],
    test_args: &[String],
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
    fs::write(root.join("tests.args"), test_args.join(" "))?;
    fs::write(root.join("init"), INIT)?;
    set_mode(&root.join("init"), 0o755)?;
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    // The tunnel tests' API is at https://localhost:PORT; glibc finds it in /etc/hosts
    // (no DNS: the VM has no network).
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
    )?;
    // `lastmile login` binds its device key to the machine's identity. A fixed one: the
    // VM is a machine of its own, the same on every boot.
    fs::write(
        root.join("etc/machine-id"),
        "6c6173746d696c652d766d2d74657374\n",
    )?;
    fs::write(
        root.join("etc/nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files\n",
    )?;

    let archive = work.join("initramfs.cpio");
    fs::write(&archive, cpio(&root)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_found_by_name_compressed_or_not() {
        let listing = "./usr/lib/modules/7.3.4+deb13-amd64/kernel/net/ipv4/inet_diag.ko.xz\n\
                       ./usr/lib/modules/7.3.4+deb13-amd64/kernel/net/ipv4/tcp_diag.ko.xz\n\
                       ./usr/lib/modules/7.3.4+deb13-amd64/kernel/net/mptcp/mptcp_diag.ko.xz\n\
                       ./lib/modules/5.10.0-32-amd64/kernel/drivers/x/snd-hda.ko\n";
        assert_eq!(
            module_member(listing, "tcp_diag"),
            Some((
                "./usr/lib/modules/7.3.4+deb13-amd64/kernel/net/ipv4/tcp_diag.ko.xz",
                "xz -dc"
            ))
        );
        assert_eq!(
            module_member(listing, "snd_hda").map(|(_, d)| d),
            Some("cat")
        );
        assert_eq!(module_member(listing, "diag"), None);
    }
}
