//! `lastmile-api init`: the organisation's keys, database and first admin, and the public
//! copy of its CA certificate that users and hosts are given.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use lastmile_api::{ApiConfig, App, admin};

use crate::cli::{Output, print};

pub(crate) async fn init(
    config: ApiConfig,
    org: &str,
    admin_name: &str,
    ca_out: &std::path::Path,
    out: Output,
) -> anyhow::Result<()> {
    if !lastmile_proto::wire::valid_name(org) {
        bail!(
            "`{org}` is not a valid organisation name: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        );
    }
    let keys = config.keys_dir();
    let kms = lastmile_vault::Kms::open(&config.kms, &config.kms_dir())
        .await
        .context("opening the KMS")?;
    lastmile_api::pki::Pki::create(&keys, org, &config.names, &kms)
        .await
        .with_context(|| format!("creating the organisation's keys in {}", keys.display()))?;
    let done = async {
        let app = App::open(config).await?;
        let otp = admin::bootstrap(&app, admin_name).await?;
        anyhow::Ok((app, otp))
    }
    .await;
    let done = match done {
        Ok((app, otp)) => publish_ca(&keys.join("ca.crt"), ca_out).map(|ca| (app, otp, ca)),
        Err(e) => Err(e),
    };
    let (app, otp, ca_copy) = match done {
        Ok(v) => v,
        Err(e) => {
            // Leave nothing half made: the keys were new, so they go.
            let _ = std::fs::remove_dir_all(&keys);
            return Err(e.context("creating the organisation failed; its new keys were removed"));
        }
    };
    print(
        out,
        &serde_json::json!({
            "organisation": org,
            "keys": keys,
            "database": lastmile_api::db::redact(&app.config.database_url()),
            "admin": otp.user,
            "one_time_password": otp.one_time_password,
            "ca_certificate": ca_copy,
        }),
        |_| {
            format!(
                "organisation {org} created\n  keys:     {}\n  database: {}\n  CA certificate (public; give it to users and hosts for --ca): {}\n  admin:    {}\n  one-time password (shown once, changed at first login): {}",
                keys.display(),
                lastmile_api::db::redact(&app.config.database_url()),
                ca_copy.display(),
                otp.user,
                otp.one_time_password
            )
        },
    )
}

/// Writes a copy of the organisation's CA certificate to `to`, mode 0644 (the key
/// stays in the 0700 keys directory). An existing file is replaced only if it already
/// holds this certificate; another organisation's CA is never overwritten.
pub(crate) fn publish_ca(ca: &std::path::Path, to: &std::path::Path) -> anyhow::Result<PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    match std::fs::read(to) {
        Ok(existing) if existing == pem => {}
        Ok(_) => bail!(
            "{} already holds another certificate: move it away or give `--ca-out` another path",
            to.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = to.with_extension("pem.tmp");
            // A leftover of an init that was killed here.
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            // Whatever the umask: the point of the copy is that everyone can read it.
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
            file.write_all(&pem)?;
            file.sync_all()?;
            std::fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", to.display())),
    }
    Ok(std::path::absolute(to).unwrap_or_else(|_| to.to_owned()))
}
