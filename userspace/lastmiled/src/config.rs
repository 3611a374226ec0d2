//! `lastmiled` configuration: a TOML file with a `[node]` table. Every field has a default
//! that works on one machine; `lastmiled node run` without `--config` uses them all.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use lastmile_handoff::TargetKind;
use serde::Deserialize;

use crate::target::ProtectedTarget;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid lastmiled config: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("target name `{0}` is used twice; each [[node.targets]] needs its own name")]
    DuplicateName(String),
    #[error("target `{0}` protects nothing; give it `protect = [\"ADDRESS:PORT\", …]`")]
    NothingProtected(String),
    #[error("listen_v4 must be an IPv4 address, got {0}")]
    ListenV4(SocketAddr),
    #[error("listen_v6 must be an IPv6 address, got {0}")]
    ListenV6(SocketAddr),
}

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    node: NodeConfig,
}

/// The node role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Where redirected IPv4 (and v4-mapped) connections arrive. Default 127.0.0.1:15001.
    pub listen_v4: SocketAddr,
    /// Where redirected IPv6 connections arrive. Default [::1]:15001; when the host has no
    /// IPv6 loopback, IPv6 targets pass through (or are refused, with `enforce`).
    pub listen_v6: Option<SocketAddr>,
    /// The Unix socket agents register on. Default /run/lastmile/node.sock.
    pub agent_socket: PathBuf,
    /// JSON-lines file for kernel and node events (appended and synced per event).
    /// Absent, with no `[node.audit.service]`: standard output.
    pub events: Option<PathBuf>,
    /// What is logged and where else it goes: the audit service, sealing.
    pub audit: AuditConfig,
    /// bpffs directory for pinned programs and maps. Default /sys/fs/bpf/lastmile.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory to intercept; absent: the root, i.e. every process on the host.
    pub cgroup: Option<PathBuf>,
    /// Refuse (EPERM) connections to protected targets that cannot be redirected, instead
    /// of letting them through. Default false.
    pub enforce: bool,
    /// SO_MARK that exempts lastmiled's own upstream connections. Default 0x4c4d0001.
    pub exempt_mark: u32,
    /// The protected targets.
    pub targets: Vec<TargetConfig>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen_v4: SocketAddr::from(([127, 0, 0, 1], 15001)),
            listen_v6: Some(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 15001))),
            agent_socket: PathBuf::from("/run/lastmile/node.sock"),
            events: Some(PathBuf::from("/var/log/lastmile/node-events.jsonl")),
            audit: AuditConfig::default(),
            pin_dir: PathBuf::from("/sys/fs/bpf/lastmile"),
            cgroup: None,
            enforce: false,
            exempt_mark: 0x4c4d_0001,
            targets: Vec::new(),
        }
    }
}

/// `[node.audit]`: this component's logging policy and destinations.
pub type AuditConfig = lastmile_audit_sink::SinkConfig;

/// One protected resource as the node sees it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Name shown in events and to the agent, e.g. `orders-db`.
    pub name: String,
    /// `postgres`, `ssh` or `tcp`: how a refused user is told why.
    pub kind: TargetKind,
    /// Addresses to intercept: `ADDRESS:PORT`, `NETWORK/BITS:PORT`, `[IPV6]:PORT`.
    pub protect: Vec<ProtectedTarget>,
}

impl NodeConfig {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        file.node.validate()?;
        Ok(file.node)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen_v4.is_ipv4() {
            return Err(ConfigError::ListenV4(self.listen_v4));
        }
        if let Some(l) = self.listen_v6
            && !l.is_ipv6()
        {
            return Err(ConfigError::ListenV6(l));
        }
        let mut names = HashSet::new();
        for t in &self.targets {
            if !names.insert(t.name.as_str()) {
                return Err(ConfigError::DuplicateName(t.name.clone()));
            }
            if t.protect.is_empty() {
                return Err(ConfigError::NothingProtected(t.name.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "t".into(),
            source,
        })?;
        file.node.validate()?;
        Ok(file.node)
    }

    #[test]
    fn a_full_config_parses_and_defaults_fill_the_rest() {
        let c = parse(
            r#"
            [node]
            enforce = true
            [[node.targets]]
            name = "orders-db"
            kind = "postgres"
            protect = ["127.0.0.2:5432", "[::1]:5432"]
            "#,
        )
        .unwrap();
        assert!(c.enforce);
        assert_eq!(c.targets[0].kind, TargetKind::Postgres);
        assert_eq!(c.targets[0].protect.len(), 2);
        assert_eq!(c.listen_v4, NodeConfig::default().listen_v4);
    }

    #[test]
    fn mistakes_are_named() {
        let dup = "[[node.targets]]\nname='a'\nkind='tcp'\nprotect=['127.0.0.2:1']\n\
                   [[node.targets]]\nname='a'\nkind='tcp'\nprotect=['127.0.0.2:2']\n";
        assert!(matches!(parse(dup), Err(ConfigError::DuplicateName(n)) if n == "a"));
        let empty = "[[node.targets]]\nname='a'\nkind='tcp'\nprotect=[]\n";
        assert!(matches!(
            parse(empty),
            Err(ConfigError::NothingProtected(_))
        ));
        let typo = "[node]\nenforced = true\n";
        let err = parse(typo).unwrap_err().to_string();
        assert!(err.contains("enforced"), "{err}");
        let bad_target = "[[node.targets]]\nname='a'\nkind='tcp'\nprotect=['db:5432']\n";
        let err = parse(bad_target).unwrap_err().to_string();
        assert!(err.contains("not an IP address"), "{err}");
        let bad_kind = "[[node.targets]]\nname='a'\nkind='mysql'\nprotect=['127.0.0.2:1']\n";
        assert!(parse(bad_kind).is_err());
    }
}
