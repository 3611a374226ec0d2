//! Debian kernel packages through a private apt configuration.
//!
//! The machine's own apt sources are left alone: the suites the kernels come from are
//! listed in `<work>/apt/sources.list`, with their own package lists and cache beside it,
//! and every `apt-get`/`apt-cache` call here points at them (`Dir::Etc::SourceList`,
//! `Dir::Etc::SourceParts=/dev/null`, `Dir::State::Lists`, `Dir::Cache`). The archive and
//! its keyring are the machine's own (Debian's keyring package holds the keys of every
//! suite below).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

const ARCHIVE: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The suites kernels are taken from.
pub const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
];
/// A Debian kernel series and the suite whose default kernel it is.
const SERIES: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "bookworm-backports"),
];
/// Package lists younger than this are used as they are.
const LISTS_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// One kernel, resolved to an exact package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// What was asked for (`6.12`, `trixie-backports`, a package name).
    pub spec: String,
    /// `linux-image-…`
    pub package: String,
    pub version: String,
    /// The package holding `/boot/vmlinuz-*`: the image itself, or the
    /// `linux-binary-…` it depends on where Debian splits the kernel (7.x).
    pub vmlinuz_package: String,
    /// The package holding `/lib/modules/RELEASE/kernel/…`: the image itself, or the
    /// `linux-modules-…` it depends on where the kernel is split.
    pub modules_package: String,
}

#[derive(Debug)]
pub struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Writes the private sources file and the directories apt needs under `work/apt`.
    pub fn new(work: &Path) -> anyhow::Result<Self> {
        let dir = work.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let sources: String = SUITES
            .iter()
            .map(|suite| format!("deb [signed-by={KEYRING}] {ARCHIVE} {suite} main\n"))
            .collect();
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&path, sources).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Self { dir })
    }

    /// The options that keep apt to the private files.
    fn options(&self) -> Vec<String> {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        [
            format!("Dir::Etc::SourceList={}", d("sources.list")),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            // The machine's apt.conf.d turns the binary cache off; here it saves
            // re-reading five suites' lists on every look-up.
            "Dir::Cache::pkgcache=pkgcache.bin".to_owned(),
            "Dir::Cache::srcpkgcache=srcpkgcache.bin".to_owned(),
            // Only the Packages lists: no AppStream metadata, no translations.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::Languages=none".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect()
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        cmd.args(self.options());
        cmd
    }

    /// `apt-get update` on the private lists, unless they are fresh. A failed update with
    /// lists from before is a warning: those still name packages that exist.
    pub fn update(&self) -> anyhow::Result<()> {
        let stamp = self.dir.join("updated");
        let sources_changed = || -> Option<bool> {
            let s = fs::metadata(&stamp).ok()?.modified().ok()?;
            let l = fs::metadata(self.dir.join("sources.list"))
                .ok()?
                .modified()
                .ok()?;
            Some(l > s)
        };
        let age = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if let Some(age) = age
            && age < LISTS_MAX_AGE
            && sources_changed() == Some(false)
        {
            eprintln!(
                "==> apt: package lists of {} are {} min old; not updating",
                SUITES.join(", "),
                age.as_secs() / 60
            );
            return Ok(());
        }
        eprintln!(
            "==> apt: updating the lists of {} (private sources {})",
            SUITES.join(", "),
            self.dir.join("sources.list").display()
        );
        let status = self
            .command("apt-get")
            .args(["-q", "update"])
            .status()
            .context("running apt-get update")?;
        if status.success() {
            fs::write(&stamp, b"")?;
            return Ok(());
        }
        if age.is_some() {
            eprintln!("==> apt: update failed; using the lists from before");
            return Ok(());
        }
        bail!("apt-get update with the private sources failed")
    }

    /// `apt-cache show --no-all-versions PKG`: the candidate's fields.
    fn show(&self, package: &str) -> anyhow::Result<Stanza> {
        let out = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .context("running apt-cache show")?;
        if !out.status.success() {
            bail!(
                "`apt-cache show {package}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Stanza(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// `5.10`, `6.1`, `6.12` (the series of bullseye, bookworm and bookworm-backports),
    /// a suite (its default kernel, `linux-image-amd64`'s dependency), another series
    /// (the newest `linux-image-X.Y…-amd64` of any suite) or an exact package name.
    pub fn resolve(&self, spec: &str) -> anyhow::Result<Kernel> {
        let series = SERIES.iter().find(|(s, _)| *s == spec);
        let suite = series
            .map(|(_, suite)| *suite)
            .or_else(|| SUITES.iter().copied().find(|s| *s == spec));
        let package = if spec.starts_with("linux-image-") {
            spec.to_owned()
        } else if let Some(suite) = suite {
            let meta = self.show(&format!("linux-image-amd64/{suite}"))?;
            let package = meta
                .depends()
                .into_iter()
                .find(|d| d.starts_with("linux-image-"))
                .with_context(|| format!("linux-image-amd64 of {suite} names no linux-image"))?;
            match series {
                Some((s, _)) if !is_of_series(&package, s) => {
                    // The suite moved on to another series: look the series up by name.
                    self.newest_of_series(s)?
                }
                _ => package,
            }
        } else if spec.split('.').all(|p| p.parse::<u32>().is_ok()) && spec.contains('.') {
            self.newest_of_series(spec)?
        } else {
            bail!(
                "unknown kernel {spec:?}: give a series ({}), a suite ({}) or a linux-image-… package",
                SERIES
                    .iter()
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(", "),
                SUITES.join(", ")
            );
        };
        let image = self.show(&package)?;
        let version = image
            .field("Version")
            .with_context(|| format!("{package} has no Version"))?;
        // Debian 7.x splits the image: linux-image-X depends on linux-binary-X (the
        // kernel) and linux-modules-X (100 MB the VM does not need).
        let depends = image.depends();
        let split = |prefix: &str| {
            depends
                .iter()
                .find(|d| d.starts_with(prefix))
                .cloned()
                .unwrap_or_else(|| package.clone())
        };
        let vmlinuz_package = split("linux-binary-");
        let modules_package = split("linux-modules-");
        Ok(Kernel {
            spec: spec.to_owned(),
            package,
            version,
            vmlinuz_package,
            modules_package,
        })
    }

    fn newest_of_series(&self, series: &str) -> anyhow::Result<String> {
        let pattern = format!("^linux-image-{}[.-].*-amd64$", series.replace('.', "\\."));
        let out = self
            .command("apt-cache")
            .args(["search", "--names-only", &pattern])
            .output()
            .context("running apt-cache search")?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| {
                is_of_series(name, series)
                    && !["-cloud-", "-rt-", "-dbg", "-unsigned"]
                        .iter()
                        .any(|flavour| name.contains(flavour))
            })
            .max_by_key(|name| numbers(name))
            .map(str::to_owned)
            .with_context(|| format!("no linux-image-{series}…-amd64 in {}", SUITES.join(", ")))
    }

    /// Downloads the package holding the kernel into `dir` (once); returns the `.deb`.
    pub fn download(&self, kernel: &Kernel, dir: &Path) -> anyhow::Result<PathBuf> {
        self.download_package(&kernel.vmlinuz_package, &kernel.version, dir)
    }

    /// Downloads the package holding the kernel's modules into `dir` (once; the kernel's
    /// own where it is not split); returns the `.deb`.
    pub fn download_modules(&self, kernel: &Kernel, dir: &Path) -> anyhow::Result<PathBuf> {
        self.download_package(&kernel.modules_package, &kernel.version, dir)
    }

    fn download_package(
        &self,
        package: &str,
        version: &str,
        dir: &Path,
    ) -> anyhow::Result<PathBuf> {
        let find = || {
            fs::read_dir(dir)
                .ok()?
                .filter_map(Result::ok)
                .find_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    (name.starts_with(&format!("{package}_")) && name.ends_with(".deb"))
                        .then(|| e.path())
                })
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        fs::create_dir_all(dir)?;
        eprintln!("==> apt: downloading {package}={version}");
        let status = self
            .command("apt-get")
            .args(["-q", "download"])
            // Into the work dir, which apt's own _apt user may not be able to write.
            .args(["-o", "APT::Sandbox::User=root"])
            .arg(format!("{package}={version}"))
            .current_dir(dir)
            .status()
            .context("running apt-get download")?;
        if !status.success() {
            bail!("`apt-get download {package}` failed");
        }
        find().context("apt-get download left no .deb")
    }
}

/// `linux-image-6.1.0-50-amd64` is of series `6.1`; `linux-image-6.12.95+deb12-amd64` is not.
fn is_of_series(package: &str, series: &str) -> bool {
    package
        .strip_prefix("linux-image-")
        .and_then(|rest| rest.strip_prefix(series))
        .is_some_and(|rest| rest.starts_with(['.', '-']))
}

/// The runs of digits in a name, for ordering versions: 6.12.95 < 6.12.117.
fn numbers(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// One `apt-cache show` stanza.
struct Stanza(String);

impl Stanza {
    fn field(&self, name: &str) -> Option<String> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    }

    /// Package names in `Depends`, without versions; of alternatives, the first.
    fn depends(&self) -> Vec<String> {
        self.field("Depends")
            .unwrap_or_default()
            .split(',')
            .filter_map(|d| {
                d.split('|')
                    .next()?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_match_whole_components() {
        assert!(is_of_series("linux-image-6.1.0-50-amd64", "6.1"));
        assert!(!is_of_series("linux-image-6.12.95+deb12-amd64", "6.1"));
        assert!(is_of_series("linux-image-6.12.95+deb12-amd64", "6.12"));
        assert!(is_of_series("linux-image-5.10.0-32-amd64", "5.10"));
    }

    #[test]
    fn versions_order_numerically() {
        assert!(
            numbers("linux-image-6.12.117+deb13-amd64")
                > numbers("linux-image-6.12.95+deb12-amd64")
        );
    }

    #[test]
    fn depends_are_names() {
        let s = Stanza(
            "Package: linux-image-7.3.4+deb13-amd64\nVersion: 7.3.4-1~bpo13+1\nDepends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n"
                .to_owned(),
        );
        assert_eq!(s.depends(), ["dracut", "linux-binary-7.3.4+deb13-amd64"]);
        assert_eq!(s.field("Version").as_deref(), Some("7.3.4-1~bpo13+1"));
    }
}
