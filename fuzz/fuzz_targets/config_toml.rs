//! The TOML configuration files of every component, through their own loaders:
//! lastmiled's (`config::Config::load`: `[node]`, `[gateway]`, `[api]`), the API's
//! (`lastmile_api::ApiConfig::load`) and the audit service's (`service::ServeConfig::load`).
//!
//! Input: the file's text, given to all three. The loaders only read from a path, so it
//! goes through a scratch file (in /dev/shm when there is one).
//!
//! Checked beyond "no panic": whatever they refuse, they say why (the error renders, with
//! its causes), and a file that loads is valid by the loader's own rules.

#![no_main]

use lastmile_fuzz::scratch_file;
use libfuzzer_sys::fuzz_target;

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let path = scratch_file("toml", data);

    match lastmiled::config::Config::load(Some(&path)) {
        Ok(c) => {
            assert!(c.node.listen_v4.is_ipv4());
            assert!(c.node.listen_v6.is_none_or(|l| l.is_ipv6()));
            assert!(c.node.targets.iter().all(|t| !t.protect.is_empty()));
        }
        Err(e) => assert!(!chain(&e).is_empty()),
    }

    match lastmile_api::ApiConfig::load(Some(&path)) {
        Ok(c) => {
            assert!(c.certificate_ttl <= c.session_ttl);
            assert!(c.max_body_bytes >= 1024 && c.max_concurrent_logins >= 1);
            let _ = (c.database_url(), c.keys_dir(), c.audit_file());
        }
        Err(e) => assert!(!chain(&e).is_empty()),
    }

    match lastmile_audit::service::ServeConfig::load(&path) {
        Ok(c) => {
            assert!(c.signing_key.is_none() || c.signing_kms.is_none());
            let _ = c.signing_key();
        }
        Err(e) => assert!(!format!("{e:#}").is_empty()),
    }
});
