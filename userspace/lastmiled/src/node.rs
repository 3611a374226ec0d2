//! The node role: interception on this host.

use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;
use lastmiled::{
    cgroup::cgroup2_root,
    intercept::{Interceptor, TargetId},
    target::ProtectedTarget,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// `lastmiled node` configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// cgroup v2 directory to attach to; default: the root of the cgroup2 hierarchy,
    /// which intercepts every process on the host.
    #[serde(default)]
    pub cgroup: Option<std::path::PathBuf>,
    /// Where redirected connections arrive.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Destinations to intercept.
    #[serde(default)]
    pub protect: Vec<ProtectedTarget>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15001))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    node: Option<NodeConfig>,
}

fn load_config(path: Option<&Path>) -> anyhow::Result<NodeConfig> {
    let Some(path) = path else {
        return Ok(NodeConfig {
            cgroup: None,
            listen: default_listen(),
            protect: Vec::new(),
        });
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: ConfigFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid lastmiled config", path.display()))?;
    Ok(file.node.unwrap_or(NodeConfig {
        cgroup: None,
        listen: default_listen(),
        protect: Vec::new(),
    }))
}

pub fn run(config: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    let cgroup = match config.cgroup {
        Some(c) => c,
        None => cgroup2_root().context("finding the cgroup v2 root")?,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen = listener.local_addr()?;
    let mut interceptor = Interceptor::load()?;
    interceptor.set_listener(listen, 0)?;
    for (i, target) in config.protect.iter().enumerate() {
        let id = u32::try_from(i).context("too many targets")?;
        interceptor.protect(target, TargetId(id))?;
        info!(%target, "protecting");
    }
    interceptor.attach(&cgroup)?;
    info!(cgroup = %cgroup.display(), %listen, "interception attached");

    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (conn, peer) = accepted?;
                // The hand-off to the user's agent is not built yet: say so and close.
                warn!(%peer, "redirected connection accepted; hand-off to an agent is not built yet, closing");
                drop(conn);
            }
            _ = tokio::signal::ctrl_c() => {
                info!(counts = ?interceptor.counts()?, "stopping; detaching programs");
                return Ok(());
            }
        }
    }
}
