//! The protected targets as `lastmiled node status` lists them: what the kernel's tries
//! hold, named by the configuration and the API's last list, the way a running node
//! names them.

use std::path::Path;

use lastmile_handoff::ResourceKind;
use serde::Serialize;

use super::{ApiList, api_targets, merge, target_id};
use crate::{
    config::{Config, TargetConfig},
    intercept::PinnedTarget,
};

/// Where a target's definition comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSource {
    /// A `[[node.targets]]` entry of the configuration file.
    Config,
    /// The API's list of resources, as last fetched (remembered in the state directory).
    Api,
}

impl std::fmt::Display for TargetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Config => "config",
            Self::Api => "API",
        })
    }
}

/// A target this node protects, and where it was defined.
#[derive(Clone, Debug)]
pub struct KnownTarget {
    pub target: TargetConfig,
    pub source: TargetSource,
}

/// The targets a node with `config` protects: the configured ones and, with
/// `resources_from_api`, those of the API's last list (a configured name wins, as at run).
pub fn known(config: &Config) -> anyhow::Result<Vec<KnownTarget>> {
    let from_api = if config.node.resources_from_api {
        ApiList::load(&config.api.state_dir)?
            .as_deref()
            .map(api_targets)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(merge(&config.node.targets, &from_api)
        .into_iter()
        .map(|target| KnownTarget {
            source: if config.node.targets.iter().any(|c| c.name == target.name) {
                TargetSource::Config
            } else {
                TargetSource::Api
            },
            target,
        })
        .collect())
}

/// One line of the listing: an address the kernel intercepts, or one that a known target
/// names and the kernel does not (yet) intercept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetRow {
    /// The target's name; `None` for a kernel entry whose id no known target has.
    pub name: Option<String>,
    pub kind: Option<String>,
    /// `ADDRESS:PORT` or `NETWORK/BITS:PORT`, as the configuration writes it.
    pub protect: String,
    pub source: Option<TargetSource>,
    /// Whether the kernel intercepts connections to it now.
    pub in_kernel: bool,
}

/// Joins what the kernel holds with what the node knows: every kernel entry (named when a
/// known target has its id and address), then every known address missing from the
/// kernel.
pub fn rows(known: &[KnownTarget], pinned: &[PinnedTarget]) -> Vec<TargetRow> {
    let named = |p: &PinnedTarget| {
        known
            .iter()
            .find(|k| target_id(&k.target.name) == p.id && k.target.protect.contains(&p.protect))
    };
    let mut rows: Vec<TargetRow> = pinned
        .iter()
        .map(|p| match named(p) {
            Some(k) => row(&k.target.name, k.target.kind, k.source, &p.protect, true),
            None => TargetRow {
                name: None,
                kind: None,
                protect: p.protect.to_string(),
                source: None,
                in_kernel: true,
            },
        })
        .collect();
    for k in known {
        for p in &k.target.protect {
            let id = target_id(&k.target.name);
            if !pinned.iter().any(|e| e.id == id && e.protect == *p) {
                rows.push(row(&k.target.name, k.target.kind, k.source, p, false));
            }
        }
    }
    rows.sort_by(|a, b| {
        (a.name.is_none(), &a.name, &a.protect).cmp(&(b.name.is_none(), &b.name, &b.protect))
    });
    rows
}

fn row(
    name: &str,
    kind: ResourceKind,
    source: TargetSource,
    protect: &crate::target::ProtectedTarget,
    in_kernel: bool,
) -> TargetRow {
    TargetRow {
        name: Some(name.to_owned()),
        kind: Some(kind.to_string()),
        protect: protect.to_string(),
        source: Some(source),
        in_kernel,
    }
}

/// The listing as a user reads it, one line per row, with what to do about the odd ones.
pub fn describe(rows: &[TargetRow], pin_dir: &Path) -> Vec<String> {
    if rows.is_empty() {
        return vec!["protected targets: none".to_owned()];
    }
    let width = rows
        .iter()
        .map(|r| r.name.as_deref().map_or(9, str::len))
        .max()
        .unwrap_or(0);
    let mut out = vec!["protected targets:".to_owned()];
    for r in rows {
        let name = r.name.as_deref().unwrap_or("(unnamed)");
        let kind = r.kind.as_deref().unwrap_or("-");
        let note = match (r.source, r.in_kernel) {
            (Some(s), true) => format!("from {s}"),
            (Some(s), false) => format!(
                "from {s}, NOT intercepted: the kernel has no entry for it under {} \
                 (is `lastmiled node run` running? it applies the list at start and on SIGHUP)",
                pin_dir.display()
            ),
            (None, _) => "intercepted, but neither the configuration nor the API's last list \
                          names it: connections to it are refused; `lastmiled node run` \
                          removes it when it applies its list"
                .to_owned(),
        };
        out.push(format!(
            "  {name:<width$}  {kind:<8}  {:<22}  {note}",
            r.protect
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::TargetId;

    fn known(
        name: &str,
        kind: ResourceKind,
        protect: &[&str],
        source: TargetSource,
    ) -> KnownTarget {
        KnownTarget {
            target: TargetConfig {
                name: name.into(),
                kind,
                protect: protect.iter().map(|p| p.parse().unwrap()).collect(),
            },
            source,
        }
    }

    fn pinned(name: &str, protect: &str) -> PinnedTarget {
        PinnedTarget {
            protect: protect.parse().unwrap(),
            id: target_id(name),
        }
    }

    #[test]
    fn kernel_entries_are_named_and_missing_or_stray_ones_are_said() {
        let k = [
            known(
                "orders-db",
                ResourceKind::Postgres,
                &["127.0.0.2:5432"],
                TargetSource::Config,
            ),
            known(
                "web",
                ResourceKind::Tcp,
                &["[::1]:8080", "127.0.0.4:8080"],
                TargetSource::Api,
            ),
        ];
        let p = [
            pinned("orders-db", "127.0.0.2:5432"),
            pinned("web", "[::1]:8080"),
            pinned("gone", "127.0.0.9:22"),
        ];
        let rows = rows(&k, &p);
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(rows[0].name.as_deref(), Some("orders-db"));
        assert_eq!(rows[0].source, Some(TargetSource::Config));
        assert!(rows[0].in_kernel);
        let missing = rows.iter().find(|r| r.protect == "127.0.0.4:8080").unwrap();
        assert!(!missing.in_kernel);
        assert_eq!(missing.source, Some(TargetSource::Api));
        let stray = rows.last().unwrap();
        assert_eq!(
            (stray.name.as_ref(), stray.protect.as_str()),
            (None, "127.0.0.9:22")
        );
        let text = describe(&rows, Path::new("/sys/fs/bpf/lastmile")).join("\n");
        assert!(
            text.contains("orders-db  postgres  127.0.0.2:5432"),
            "{text}"
        );
        assert!(
            text.contains("[::1]:8080") && text.contains("from API"),
            "{text}"
        );
        assert!(text.contains("NOT intercepted"), "{text}");
        assert!(
            text.contains("(unnamed)") && text.contains("refused"),
            "{text}"
        );
    }

    #[test]
    fn the_same_address_under_another_name_is_not_that_name() {
        let k = [known(
            "a",
            ResourceKind::Tcp,
            &["127.0.0.2:80"],
            TargetSource::Config,
        )];
        let p = [PinnedTarget {
            protect: "127.0.0.2:80".parse().unwrap(),
            id: TargetId(target_id("b").0),
        }];
        let rows = rows(&k, &p);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().any(|r| r.name.is_none() && r.in_kernel));
        assert!(
            rows.iter()
                .any(|r| r.name.as_deref() == Some("a") && !r.in_kernel)
        );
    }
}
