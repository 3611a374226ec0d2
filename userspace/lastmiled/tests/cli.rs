//! `lastmiled` as its user meets it at the command line: a config file that is not there
//! is reported by name, with its cause said once.

// Tests fail by panicking; the workspace lints against it are for product code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

#[test]
fn a_missing_config_is_named_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("lastmiled.toml");
    for role in [["node", "status"], ["gateway", "run"]] {
        let stderr = lastmile_testkit::reports_missing_file(
            Command::new(env!("CARGO_BIN_EXE_lastmiled"))
                .args(role)
                .arg("--config")
                .arg(&missing)
                .env("RUST_LOG", "off"),
            &missing,
        )
        .unwrap_or_else(|why| panic!("lastmiled {}: {why}", role.join(" ")));
        assert!(
            stderr.starts_with(&format!("lastmiled: cannot read {}: ", missing.display())),
            "{stderr}"
        );
    }
}
