//! `cargo xtask fuzz [TARGET] --seconds N`: build the libFuzzer targets in `fuzz/` with
//! cargo-fuzz (nightly) and run each for N seconds, starting from its seed corpus.
//!
//! What a run finds goes to `target/fuzz/corpus/<target>/` (kept between runs, so each
//! run starts where the last one stopped; the committed seeds in `fuzz/corpus/<target>/`
//! are only read) and a crashing input to `target/fuzz/artifacts/<target>/`. libFuzzer's
//! output goes to `target/fuzz/logs/<target>.log`; this prints one line per target: the
//! executions, the coverage (`cov`: edges, `ft`: features) and the corpus size from its
//! final status line.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::exec::{show, step, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One target (a file name in fuzz/fuzz_targets/ without `.rs`); default: every one.
    pub target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = workspace_root();
    let all = targets(&root)?;
    let chosen: Vec<String> = match &args.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target `{t}`; the targets are: {}", all.join(", ")),
        None => all,
    };
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    check_cargo_fuzz()?;

    step("build the fuzz targets (cargo +nightly fuzz build)");
    let mut build = cargo_fuzz(&root);
    build.args(["build", "--fuzz-dir", "fuzz", "--target-dir"]);
    build.arg(target_dir(&root));
    if let [one] = chosen.as_slice() {
        build.arg(one);
    }
    crate::exec::must(&mut build)?;

    let mut results = Vec::new();
    for target in &chosen {
        step(&format!("fuzz {target} for {} s", args.seconds));
        let result = run_one(&root, target, args.seconds)?;
        eprintln!("    {}", result.line());
        results.push(result);
    }

    step(&format!(
        "{} target(s), {} s each, in {:.0?}",
        results.len(),
        args.seconds,
        started.elapsed()
    ));
    for r in &results {
        eprintln!("    {}", r.line());
    }
    let crashed: Vec<&Outcome> = results.iter().filter(|r| r.failure.is_some()).collect();
    if !crashed.is_empty() {
        let names: Vec<String> = crashed
            .iter()
            .map(|r| format!("{}: {}", r.target, r.failure.as_deref().unwrap_or_default()))
            .collect();
        bail!(
            "{} fuzz target(s) failed:\n  {}\nreproduce with `{}/<target> <artifact>`",
            crashed.len(),
            names.join("\n  "),
            binary_dir(&root).display()
        );
    }
    Ok(())
}

/// The targets: fuzz/fuzz_targets/*.rs.
fn targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            out.push(stem.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// `cargo +nightly fuzz …`, through rustup's cargo (not the `$CARGO` running xtask, which
/// is the stable toolchain's own binary and knows no `+nightly`). lastmiled's kernel
/// programs are not needed by any target, so they are not built (LASTMILE_NO_EBPF).
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"])
        .current_dir(root)
        .env("LASTMILE_NO_EBPF", "1");
    // What the stable cargo running xtask set for it (`CARGO`, `CARGO_PKG_NAME`=xtask,
    // `CARGO_MANIFEST_DIR`, ...): build scripts that rerun when one of those changes
    // (ring's) would otherwise rebuild whenever the fuzz build is run another way.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key == "CARGO"
            || key == "RUSTC"
            || key == "RUSTDOC"
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn check_cargo_fuzz() -> anyhow::Result<()> {
    let mut probe = Command::new("cargo");
    probe.args(["+nightly", "fuzz", "--version"]);
    if crate::exec::output(&mut probe).is_none() {
        bail!(
            "`cargo +nightly fuzz` does not run: install the nightly toolchain \
             (`rustup toolchain install nightly`, or `cargo xtask setup`) and cargo-fuzz \
             (`cargo install cargo-fuzz --locked`)"
        );
    }
    Ok(())
}

/// Fuzz builds have a target directory of their own: other flags (sanitizer, coverage
/// instrumentation) and another toolchain than the main build.
fn target_dir(root: &Path) -> PathBuf {
    root.join("target/fuzz")
}

fn binary_dir(root: &Path) -> PathBuf {
    target_dir(root).join("x86_64-unknown-linux-gnu/release")
}

/// What one target's run came to.
#[derive(Debug)]
struct Outcome {
    target: String,
    /// `stat::number_of_executed_units`.
    execs: Option<u64>,
    /// `cov:` and `ft:` of the last status line.
    cov: Option<u64>,
    ft: Option<u64>,
    /// `corp:` of the last status line (`units/size`).
    corpus: Option<String>,
    /// Why it failed: the artifact libFuzzer wrote, or the exit status.
    failure: Option<String>,
}

impl Outcome {
    fn line(&self) -> String {
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        format!(
            "{:<16} {:>10} execs  cov {:>6}  ft {:>7}  corpus {:<12} {}",
            self.target,
            n(self.execs),
            n(self.cov),
            n(self.ft),
            self.corpus.as_deref().unwrap_or("?"),
            match &self.failure {
                None => "ok".to_owned(),
                Some(f) => format!("FAILED: {f}"),
            }
        )
    }
}

fn run_one(root: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let work = target_dir(root);
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let logs = work.join("logs");
    for dir in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = root.join("fuzz/corpus").join(target);
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;

    let mut cmd = Command::new(binary_dir(root).join(target));
    // New inputs go to the first directory: the working corpus, never the seeds.
    cmd.arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // A slow input is a finding too, but 10 s is far from anything a parser should take.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .stdout(Stdio::null())
        .stderr(log);
    eprintln!("    $ {} 2> {}", show(&cmd), log_path.display());
    let status = cmd
        .status()
        .with_context(|| format!("could not start {target} (is it built?)"))?;
    let text = std::fs::read_to_string(&log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    let mut outcome = parse_log(target, &text);
    if !status.success() {
        let artifact = text
            .lines()
            .filter_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
            .next_back();
        // "thread … panicked at FILE:LINE:COL:" and the message on the next line, or
        // libFuzzer's own "ERROR: libFuzzer: timeout" and the like.
        let lines: Vec<&str> = text.lines().collect();
        let why = match lines.iter().position(|l| l.contains("panicked at ")) {
            Some(at) => {
                let place = lines
                    .get(at)
                    .and_then(|l| l.split("panicked at ").nth(1))
                    .unwrap_or("?")
                    .trim_end_matches(':');
                let message: String = lines
                    .get(at + 1)
                    .map_or("", |m| m.trim())
                    .chars()
                    .take(200)
                    .collect();
                Some(format!("{message} at {place}"))
            }
            None => lines
                .iter()
                .find(|l| l.contains("ERROR: "))
                .map(|l| l.trim().to_owned()),
        };
        outcome.failure = Some(match (artifact, why) {
            (Some(a), Some(w)) => format!("{a} ({w})"),
            (Some(a), None) => a.to_owned(),
            (None, _) => format!("{status}; see {}", log_path.display()),
        });
        // The panic and its backtrace, so that CI logs show them.
        let tail = lines.len().saturating_sub(40);
        for l in lines.get(tail..).unwrap_or_default() {
            eprintln!("    | {l}");
        }
    }
    Ok(outcome)
}

/// Reads libFuzzer's final stats and its last status line
/// (`#123456 DONE   cov: 812 ft: 2950 corp: 301/41Kb lim: 4096 exec/s: 2057 rss: 61Mb`).
fn parse_log(target: &str, text: &str) -> Outcome {
    let field = |line: &str, name: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        words.next().map(str::to_owned)
    };
    let status = text
        .lines()
        .rfind(|l| l.starts_with('#') && l.contains(" cov: "))
        .unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Outcome {
        target: target.to_owned(),
        execs: stat("stat::number_of_executed_units:").or_else(|| {
            status
                .split_whitespace()
                .next()
                .and_then(|n| n.trim_start_matches('#').parse().ok())
        }),
        cov: field(status, "cov:").and_then(|v| v.parse().ok()),
        ft: field(status, "ft:").and_then(|v| v.parse().ok()),
        corpus: field(status, "corp:"),
        failure: None,
    }
}
