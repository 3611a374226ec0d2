//! `lastmiled` configuration: a TOML file with a `[node]` table. Every field has a default
//! that works on one machine; `lastmiled node run` without `--config` uses them all.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use lastmile_handoff::ResourceKind;
use serde::Deserialize;

use crate::target::ProtectedTarget;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid lastmiled config", path.display())]
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
    #[serde(default)]
    gateway: GatewayConfig,
    #[serde(default)]
    api: ApiConfig,
}

/// `[api]`: the control plane, and this host's identity with it (made by
/// `lastmiled gateway enroll`). The gateway role needs it; the node role uses it when
/// `node.resources_from_api` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `https://HOST:PORT` of `lastmile-api`. Default https://127.0.0.1:8443.
    pub url: String,
    /// Holds `gateway.key` (0600), `gateway.pem` and `ca.pem`. Default
    /// /var/lib/lastmile/lastmiled.
    pub state_dir: PathBuf,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            url: "https://127.0.0.1:8443".into(),
            state_dir: PathBuf::from("/var/lib/lastmile/lastmiled"),
        }
    }
}

/// `[gateway]`: the end of users' tunnels, and the last hop to resources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where agents' tunnels arrive. Default 127.0.0.1:15443.
    pub listen: SocketAddr,
    /// `HOST:PORT` announced to agents; HOST must be in the gateway certificate. Default:
    /// the certificate's first address and the listening port.
    pub announce: Option<String>,
    /// JSON-lines file for the gateway's events (connection.close, gateway.refused).
    /// Absent, with no `[gateway.audit.service]`: standard output.
    pub events: Option<PathBuf>,
    pub audit: AuditConfig,
    /// SO_MARK on upstream connections, so a node on this host lets them through.
    /// Default 0x4c4d0001 (the node's default `exempt_mark`).
    pub exempt_mark: u32,
    /// How long connecting to a resource may take. Default 5s.
    #[serde(with = "lastmile_proto::duration")]
    pub connect_timeout: std::time::Duration,
    /// Renew the gateway certificate (24 h) this long before it ends. Default 8h.
    #[serde(with = "lastmile_proto::duration")]
    pub renew_before: std::time::Duration,
    /// How long a connection may take to finish its TLS handshake. Default 10s.
    #[serde(with = "lastmile_proto::duration")]
    pub handshake_timeout: std::time::Duration,
    /// TLS handshakes in progress at once; connections past it are closed at once (the
    /// handshake runs before the peer has proven anything). Default 256.
    pub max_handshakes: usize,
    /// Whether `db.query` events carry the statement's bound parameters (extended
    /// protocol). Off by default: parameters are often the sensitive part. The audit
    /// policy's `query_text` applies to the text either way.
    pub log_query_params: bool,
    /// Where `ssh` resources' interactive sessions are recorded (asciicast v2, one file
    /// per channel, referenced from `ssh.recording` events by SHA-256); created 0700.
    /// Default `<state_dir>/recordings`.
    pub recordings: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP: a local or
    /// monitoring-only address). Default: not served.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 15443)),
            announce: None,
            events: Some(PathBuf::from("/var/log/lastmile/gateway-events.jsonl")),
            audit: AuditConfig::default(),
            exempt_mark: 0x4c4d_0001,
            connect_timeout: std::time::Duration::from_secs(5),
            log_query_params: false,
            handshake_timeout: std::time::Duration::from_secs(10),
            max_handshakes: 256,
            renew_before: std::time::Duration::from_secs(8 * 3600),
            recordings: None,
            metrics_listen: None,
        }
    }
}

/// Everything `lastmiled` reads from its file.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub gateway: GatewayConfig,
    pub api: ApiConfig,
}

impl Config {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = read(path)?;
        file.node.validate()?;
        Ok(Self {
            node: file.node,
            gateway: file.gateway,
            api: file.api,
        })
    }
}

fn read(path: Option<&Path>) -> Result<ConfigFile, ConfigError> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
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
    /// Also protect every resource the API lists (with the `[api]` identity), kept
    /// current every `resource_refresh`; the last list is remembered in
    /// `[api] state_dir`/api-resources.json for starts with the API down. Default false.
    pub resources_from_api: bool,
    /// Default 5s.
    #[serde(with = "lastmile_proto::duration")]
    pub resource_refresh: std::time::Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP). Default: not
    /// served.
    pub metrics_listen: Option<SocketAddr>,
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
            resources_from_api: false,
            resource_refresh: std::time::Duration::from_secs(5),
            metrics_listen: None,
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
    pub kind: ResourceKind,
    /// Addresses to intercept: `ADDRESS:PORT`, `NETWORK/BITS:PORT`, `[IPV6]:PORT`.
    pub protect: Vec<ProtectedTarget>,
}

impl NodeConfig {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Ok(Config::load(path)?.node)
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
        assert_eq!(c.targets[0].kind, ResourceKind::Postgres);
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
        let err = lastmile_audit_sink::error_chain(&parse(typo).unwrap_err());
        assert!(err.contains("enforced"), "{err}");
        let bad_target = "[[node.targets]]\nname='a'\nkind='tcp'\nprotect=['db:5432']\n";
        let err = lastmile_audit_sink::error_chain(&parse(bad_target).unwrap_err());
        assert!(err.contains("not an IP address"), "{err}");
        let bad_kind = "[[node.targets]]\nname='a'\nkind='mysql'\nprotect=['127.0.0.2:1']\n";
        assert!(parse(bad_kind).is_err());
    }
}
