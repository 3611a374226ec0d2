//! `cargo xtask package [--check]`: the Debian packages (cargo-deb), and a test of them.
//!
//! The release binaries are built in one `cargo build`, then `cargo deb --no-build` makes
//! each package from them: `lastmiled` (node and gateway units), `lastmile-api`,
//! `lastmile-audit` and the client `lastmile`. `--check` then checks what was built:
//!
//! 1. each .deb's layout (paths, modes, owners), its Depends, conffiles and maintainer
//!    scripts, from `dpkg-deb`;
//! 2. every unit with `systemd-analyze verify` (against the units and binaries extracted
//!    with `dpkg-deb -x`) and `systemd-analyze security --offline=yes`, whose exposure
//!    must stay at or under each unit's bound below;
//! 3. as root with debootstrap: an install with apt into a clean Debian 12 root
//!    (`debootstrap --variant=minbase`, from the mirror this machine's apt uses; the
//!    base is cached in `target/package-check/`), then the users, the config files'
//!    owners and modes, `systemd-analyze verify --root` of the installed units, each
//!    binary's `--version` inside the root, and a purge. Without root or debootstrap this
//!    part is skipped and says so.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use crate::exec::{cargo, is_root, must, output, show, step, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Then check the packages: layout, `systemd-analyze verify` and `security` of every
    /// unit, and (as root) an install into a clean Debian root.
    #[arg(long)]
    check: bool,
    /// With --check: skip the install into a clean Debian root (the debootstrap part).
    #[arg(long, requires = "check")]
    no_install: bool,
}

/// One Debian package: the crate it comes from and what it must hold.
struct Package {
    /// The Cargo package (`cargo deb -p`), also the Debian package's name here.
    name: &'static str,
    /// Files in the .deb: path, mode, and the postinst's owner:group once installed.
    files: &'static [(&'static str, u32, &'static str)],
    /// Units in /usr/lib/systemd/system and the highest `systemd-analyze security`
    /// exposure each may have (measured when written; a change that weakens a unit fails).
    units: &'static [(&'static str, f64)],
    /// Its binary, run with `--version` in the clean root.
    binary: &'static str,
    /// Users its install must create.
    users: &'static [&'static str],
}

const PACKAGES: &[Package] = &[
    Package {
        name: "lastmiled",
        files: &[
            ("usr/bin/lastmiled", 0o755, "root:root"),
            ("etc/lastmile/lastmiled-node.toml", 0o640, "root:root"),
            (
                "etc/lastmile/lastmiled-gateway.toml",
                0o640,
                "root:lastmile-gateway",
            ),
            (
                "usr/lib/systemd/system/lastmiled-node.service",
                0o644,
                "root:root",
            ),
            (
                "usr/lib/systemd/system/lastmiled-gateway.service",
                0o644,
                "root:root",
            ),
            ("usr/lib/sysusers.d/lastmiled.conf", 0o644, "root:root"),
            ("usr/share/doc/lastmiled/README.md", 0o644, "root:root"),
        ],
        units: &[
            ("lastmiled-node.service", 2.7),
            ("lastmiled-gateway.service", 1.7),
        ],
        binary: "lastmiled",
        users: &["lastmile-gateway"],
    },
    Package {
        name: "lastmile-api",
        files: &[
            ("usr/bin/lastmile-api", 0o755, "root:root"),
            ("etc/lastmile/lastmile-api.toml", 0o640, "root:lastmile-api"),
            (
                "usr/lib/systemd/system/lastmile-api.service",
                0o644,
                "root:root",
            ),
            ("usr/lib/sysusers.d/lastmile-api.conf", 0o644, "root:root"),
            ("usr/share/doc/lastmile-api/README.md", 0o644, "root:root"),
        ],
        units: &[("lastmile-api.service", 1.1)],
        binary: "lastmile-api",
        users: &["lastmile-api"],
    },
    Package {
        name: "lastmile-audit",
        files: &[
            ("usr/bin/lastmile-audit", 0o755, "root:root"),
            (
                "etc/lastmile/lastmile-audit.toml",
                0o640,
                "root:lastmile-audit",
            ),
            (
                "usr/lib/systemd/system/lastmile-audit.service",
                0o644,
                "root:root",
            ),
            ("usr/lib/sysusers.d/lastmile-audit.conf", 0o644, "root:root"),
            ("usr/share/doc/lastmile-audit/README.md", 0o644, "root:root"),
        ],
        units: &[("lastmile-audit.service", 1.1)],
        binary: "lastmile-audit",
        users: &["lastmile-audit"],
    },
    Package {
        name: "lastmile",
        files: &[
            ("usr/bin/lastmile", 0o755, "root:root"),
            ("usr/share/doc/lastmile/README.md", 0o644, "root:root"),
        ],
        units: &[],
        binary: "lastmile",
        users: &[],
    },
];

/// Directories the postinst scripts make: path, mode, owner:group.
const POSTINST_DIRS: &[(&str, u32, &str)] = &[
    ("var/lib/lastmile/node", 0o700, "root:root"),
    (
        "var/lib/lastmile/gateway",
        0o700,
        "lastmile-gateway:lastmile-gateway",
    ),
    ("var/lib/lastmile-api", 0o700, "lastmile-api:lastmile-api"),
    (
        "var/lib/lastmile-audit",
        0o700,
        "lastmile-audit:lastmile-audit",
    ),
    ("etc/lastmile-audit", 0o750, "root:lastmile-audit"),
    (
        "etc/lastmile-audit/keys",
        0o700,
        "lastmile-audit:lastmile-audit",
    ),
];

/// The groups the packages create besides each user's own.
const GROUPS: &[&str] = &["lastmile"];

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::cargo_deb().context("installing cargo-deb")?;
    let debs = build()?;
    if args.check {
        let started = Instant::now();
        check(&debs, !args.no_install)?;
        step(&format!(
            "package --check: passed in {:.0} s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the binaries once and every package from them; the .deb paths, by package.
fn build() -> anyhow::Result<Vec<(&'static Package, PathBuf)>> {
    step("release binaries (one cargo build)");
    let mut build = cargo();
    build.args(["build", "--release", "--bins"]);
    for p in PACKAGES {
        build.args(["-p", p.name]);
    }
    must(&mut build)?;
    if output(cargo().args(["deb", "--version"])).is_none() {
        bail!("cargo-deb is not installed; run `cargo xtask setup`");
    }
    let mut debs = Vec::new();
    for p in PACKAGES {
        step(&format!("package {}", p.name));
        let mut deb = cargo();
        deb.args(["deb", "--no-build", "-p", p.name]);
        let shown = show(&deb);
        eprintln!("    $ {shown}");
        let out = deb
            .output()
            .with_context(|| format!("could not start `{shown}`"))?;
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "`{shown}` failed ({})", out.status);
        // cargo-deb prints the package's path as its last line.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .with_context(|| format!("`{shown}` printed no .deb path: {stdout}"))?;
        ensure!(path.is_file(), "{} is not a file", path.display());
        debs.push((p, path));
    }
    step("packages");
    for (_, path) in &debs {
        println!("{}", path.display());
    }
    Ok(debs)
}

fn check(debs: &[(&'static Package, PathBuf)], install: bool) -> anyhow::Result<()> {
    let work = target_dir().join("package-check");
    let tree = work.join("extracted");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree)?;
    let result = (|| {
        for (p, deb) in debs {
            check_layout(p, deb)?;
            must(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
        }
        check_units(&tree, &work)?;
        if !install {
            eprintln!("    SKIPPED: the install into a clean Debian root (--no-install)");
        } else if !is_root() {
            eprintln!(
                "    SKIPPED: the install into a clean Debian root needs root \
                 (debootstrap, chroot); run `sudo cargo xtask package --check`"
            );
        } else if output(Command::new("debootstrap").arg("--version")).is_none() {
            eprintln!(
                "    SKIPPED: the install into a clean Debian root needs debootstrap \
                 (`cargo xtask setup` installs it)"
            );
        } else {
            check_install(debs, &work)?;
        }
        anyhow::Ok(())
    })();
    let _ = fs::remove_dir_all(&tree);
    result
}

/// `dpkg-deb -c`: every expected file with its mode (owned by root in the archive);
/// `dpkg-deb -f`, `-e`: Depends, conffiles, the maintainer scripts.
fn check_layout(p: &Package, deb: &Path) -> anyhow::Result<()> {
    step(&format!("layout of {}", deb.display()));
    let listing = output(Command::new("dpkg-deb").arg("-c").arg(deb))
        .with_context(|| format!("dpkg-deb -c {}", deb.display()))?;
    for (path, mode, _) in p.files {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!("./{path}")))
            .with_context(|| format!("{} lacks /{path}", p.name))?;
        let (perms, owner) = line
            .split_once(' ')
            .with_context(|| format!("unexpected dpkg-deb -c line {line:?}"))?;
        let want = mode_string(*mode);
        ensure!(
            perms == want,
            "{}: /{path} is {perms}, expected {want}",
            p.name
        );
        ensure!(
            owner.trim_start().starts_with("0/0") || owner.trim_start().starts_with("root/root"),
            "{}: /{path} is not root's in the archive: {line}",
            p.name
        );
        eprintln!("    ok  {perms} /{path}");
    }
    let depends =
        output(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends")).unwrap_or_default();
    eprintln!("    Depends: {}", depends.trim());
    ensure!(depends.contains("libc6"), "{}: Depends lacks libc6", p.name);
    if !p.units.is_empty() {
        ensure!(
            depends.contains("systemd"),
            "{}: Depends lacks systemd",
            p.name
        );
    }
    let control = env::temp_dir().join(format!(
        "lastmile-control-{}-{}",
        p.name,
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&control);
    must(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control))?;
    let result = (|| {
        let conffiles = fs::read_to_string(control.join("conffiles")).unwrap_or_default();
        for (path, _, _) in p.files.iter().filter(|(f, _, _)| f.starts_with("etc/")) {
            ensure!(
                conffiles.lines().any(|l| l.trim() == format!("/{path}")),
                "{}: /{path} is not a conffile (conffiles: {conffiles:?})",
                p.name
            );
        }
        if !p.users.is_empty() {
            let postinst = fs::read_to_string(control.join("postinst"))
                .with_context(|| format!("{} has no postinst", p.name))?;
            ensure!(
                postinst.contains("systemd-sysusers"),
                "{}: postinst does not run systemd-sysusers",
                p.name
            );
            ensure!(
                !postinst.contains("#DEBHELPER#"),
                "{}: postinst kept #DEBHELPER#",
                p.name
            );
        }
        anyhow::Ok(())
    })();
    let _ = fs::remove_dir_all(&control);
    result
}

fn mode_string(mode: u32) -> String {
    let mut s = String::from("-");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `systemd-analyze verify` of each unit as extracted, its binaries pointed at the
/// extracted tree (verify checks that ExecStart's program exists), and `systemd-analyze
/// security --offline=yes` of the unit as shipped.
fn check_units(tree: &Path, work: &Path) -> anyhow::Result<()> {
    let units_dir = tree.join("usr/lib/systemd/system");
    let rewritten = work.join("units");
    let _ = fs::remove_dir_all(&rewritten);
    fs::create_dir_all(&rewritten)?;
    let tree_bin = format!("{}/usr/bin/", tree.display());
    let mut scores = Vec::new();
    for p in PACKAGES {
        for (unit, bound) in p.units {
            step(&format!("systemd-analyze verify, security: {unit}"));
            let shipped = units_dir.join(unit);
            let text = fs::read_to_string(&shipped)
                .with_context(|| format!("reading {}", shipped.display()))?;
            let copy = rewritten.join(unit);
            fs::write(&copy, text.replace("/usr/bin/", &tree_bin))?;
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .output()
                .context("could not start systemd-analyze")?;
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                out.status.success() && said.trim().is_empty(),
                "systemd-analyze verify {unit}: {}",
                said.trim()
            );
            eprintln!("    verify: clean");
            let score = exposure(
                Command::new("systemd-analyze")
                    .args(["security", "--offline=yes", "--no-pager"])
                    .arg(&shipped),
            )?;
            ensure!(
                score.0 <= *bound + 1e-9,
                "{unit}: exposure {} {} is over its bound {bound}",
                score.0,
                score.1
            );
            eprintln!("    security: {} {} (bound {bound})", score.0, score.1);
            scores.push((*unit, score));
        }
    }
    let _ = fs::remove_dir_all(&rewritten);
    step("exposure (systemd-analyze security)");
    for (unit, (score, class)) in scores {
        println!("{unit:28} {score:.1} {class}");
    }
    Ok(())
}

/// The overall exposure `systemd-analyze security` prints:
/// `→ Overall exposure level for X.service: 1.1 OK 🙂`.
fn exposure(cmd: &mut Command) -> anyhow::Result<(f64, String)> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| {
            format!(
                "`{shown}` printed no exposure: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let after = line.rsplit_once(": ").map(|(_, a)| a).unwrap_or_default();
    let mut words = after.split_whitespace();
    let score = words
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no score in {line:?}"))?;
    let class = words.next().unwrap_or_default().to_string();
    Ok((score, class))
}

/// The mirror this machine's apt uses for Debian itself (not -security).
fn apt_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| fs::read_to_string(p).ok()));
    }
    for text in &texts {
        for line in text.lines().map(str::trim) {
            // deb822: `URIs: http://deb.debian.org/debian`; one-line: `deb URI suite …`.
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            };
            if let Some(uri) = uri
                && !uri.contains("security")
            {
                return Ok(uri.to_string());
            }
        }
    }
    bail!("no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d")
}

/// Installs the packages into a fresh minbase Debian 12 root with apt and checks the
/// result; the root is removed afterwards, the base tarball kept for the next run.
fn check_install(debs: &[(&'static Package, PathBuf)], work: &Path) -> anyhow::Result<()> {
    let mirror = apt_mirror()?;
    let tarball = work.join("bookworm-minbase.tgz");
    let root = work.join(format!("root-{}", std::process::id()));
    if !tarball.is_file() {
        step(&format!(
            "debootstrap --variant=minbase bookworm from {mirror} (cached in {})",
            tarball.display()
        ));
        let dl = work.join("debootstrap-download");
        let _ = fs::remove_dir_all(&dl);
        let made = quiet(
            Command::new("debootstrap")
                .args(["--variant=minbase", "--make-tarball"])
                .arg(&tarball)
                .arg("bookworm")
                .arg(&dl)
                .arg(&mirror),
        );
        let _ = fs::remove_dir_all(&dl);
        made.with_context(|| format!("debootstrap could not fetch Debian 12 from {mirror}"))?;
    }
    step(&format!("a clean Debian 12 root in {}", root.display()));
    let _ = fs::remove_dir_all(&root);
    let result = (|| {
        quiet(
            Command::new("debootstrap")
                .args(["--variant=minbase", "--unpack-tarball"])
                .arg(&tarball)
                .arg("bookworm")
                .arg(&root)
                .arg(&mirror),
        )
        .with_context(|| format!("debootstrap from {mirror} into {}", root.display()))?;
        install_and_check(debs, &root)
    })();
    step(&format!("removing {}", root.display()));
    let _ = fs::remove_dir_all(&root);
    result
}

/// Runs `cmd` with its output captured (debootstrap and apt print hundreds of lines);
/// when it fails, shows the last 40 of them.
fn quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = show(cmd);
    eprintln!("    $ {shown}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        for line in lines.iter().skip(lines.len().saturating_sub(40)) {
            eprintln!("    | {line}");
        }
        bail!("`{shown}` failed ({})", out.status);
    }
    Ok(())
}

fn chroot(root: &Path) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    cmd
}

fn chroot_output(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = chroot(root);
    cmd.args(args);
    let shown = show(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "`{shown}` failed ({}): {text}",
        out.status
    );
    Ok(text)
}

fn install_and_check(debs: &[(&'static Package, PathBuf)], root: &Path) -> anyhow::Result<()> {
    let incoming = root.join("tmp/lastmile-debs");
    fs::create_dir_all(&incoming)?;
    let mut inside = Vec::new();
    for (_, deb) in debs {
        let name = deb.file_name().context("a .deb without a file name")?;
        fs::copy(deb, incoming.join(name))?;
        inside.push(format!("/tmp/lastmile-debs/{}", name.to_string_lossy()));
    }
    step("apt-get install of the packages (and their dependencies, from the mirror)");
    quiet(chroot(root).args(["apt-get", "update", "-q"]))?;
    quiet(
        chroot(root)
            .args(["apt-get", "install", "-y", "-q", "--no-install-recommends"])
            .args(&inside),
    )?;

    step("users, groups, owners and modes");
    for p in PACKAGES {
        for user in p.users {
            let entry = chroot_output(root, &["getent", "passwd", user])?;
            ensure!(
                entry.trim_end().ends_with("/usr/sbin/nologin"),
                "{user} has a login shell: {entry}"
            );
            eprintln!("    ok  user {}", entry.trim());
        }
    }
    for group in GROUPS {
        let entry = chroot_output(root, &["getent", "group", group])?;
        eprintln!("    ok  group {}", entry.trim());
    }
    let mut expected: Vec<(&str, u32, &str)> = PACKAGES
        .iter()
        .flat_map(|p| p.files.iter().copied())
        .collect();
    expected.extend(POSTINST_DIRS.iter().copied());
    for (path, mode, owner) in expected {
        let abs = format!("/{path}");
        let got = chroot_output(root, &["stat", "-c", "%a %U:%G", &abs])?;
        let want = format!("{mode:o} {owner}");
        ensure!(got.trim() == want, "{abs}: {}, expected {want}", got.trim());
        eprintln!("    ok  {want} {abs}");
    }

    step("systemd-analyze verify inside the root");
    for p in PACKAGES {
        for (unit, _) in p.units {
            let said = chroot_output(root, &["systemd-analyze", "verify", unit])?;
            ensure!(
                said.trim().is_empty(),
                "systemd-analyze verify {unit}: {said}"
            );
            eprintln!("    ok  {unit}");
        }
    }

    step("the binaries run inside the root");
    for p in PACKAGES {
        let version = chroot_output(root, &[p.binary, "--version"])?;
        eprintln!("    ok  {}", version.trim());
    }

    step("purge");
    let names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
    quiet(
        chroot(root)
            .args(["apt-get", "purge", "-y", "-q"])
            .args(&names),
    )?;
    for p in PACKAGES {
        for (path, _, _) in p.files {
            ensure!(
                !root.join(path).exists(),
                "/{path} is still there after purging {}",
                p.name
            );
        }
    }
    // `--list` exits 1 when there are none, which is what we want.
    let overrides = chroot(root)
        .args(["dpkg-statoverride", "--list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .context("could not start dpkg-statoverride")?;
    ensure!(
        !overrides.contains("/etc/lastmile/"),
        "stat overrides left after purge: {overrides}"
    );
    eprintln!("    ok  every file and stat override gone");
    Ok(())
}
