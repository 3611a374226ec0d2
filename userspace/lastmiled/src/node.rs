//! The node role at run time: listeners for redirected connections, the agent socket, the
//! kernel event reader, and configuration reload, on one tokio runtime.

mod agents;
mod connection;
pub mod targets;

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use lastmile_audit_sink::error_chain;
use lastmile_handoff::TargetRef;
use tokio::{io::unix::AsyncFd, net::TcpListener, signal::unix::SignalKind};
use tracing::{error, info, warn};

use crate::{
    config::{NodeConfig, TargetConfig},
    events::{Event, EventBody, EventSink, ProcCache, kernel_connect},
    intercept::{Interceptor, RedirectPolicy, TargetId, record_from_event},
    mounts::{cgroup2_root, on_bpffs},
    target::ProtectedTarget,
};

pub use agents::Agents;

/// The protected targets, each known to the kernel by [`target_id`] of its name.
#[derive(Debug, Default)]
pub struct TargetTable(Vec<TargetConfig>);

/// A target's kernel id: FNV-1a (32 bits) of its name, so the same name has the same id
/// in every run. Entries a previous run pinned therefore still name the right target
/// (or, when the name is gone, none, and such connections are refused), which lets a
/// start leave the pinned set alone until it knows the new list. The function must
/// never change: pinned maps outlive the binary that wrote them.
pub fn target_id(name: &str) -> TargetId {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    TargetId(h)
}

impl TargetTable {
    pub fn get(&self, id: u32) -> Option<TargetRef> {
        let t = self.0.iter().find(|t| target_id(&t.name).0 == id)?;
        Some(TargetRef {
            name: t.name.clone(),
            kind: t.kind,
        })
    }

    fn kernel_entries(&self) -> anyhow::Result<Vec<(ProtectedTarget, TargetId)>> {
        let mut out = Vec::new();
        for (i, t) in self.0.iter().enumerate() {
            let id = target_id(&t.name);
            if let Some(other) = self.0.iter().take(i).find(|o| target_id(&o.name) == id) {
                anyhow::bail!(
                    "targets `{}` and `{}` have the same kernel id; rename one of them",
                    other.name,
                    t.name
                );
            }
            out.extend(t.protect.iter().map(|p| (*p, id)));
        }
        Ok(out)
    }
}

/// What every task shares.
#[derive(Debug)]
pub struct Shared {
    pub interceptor: Mutex<Interceptor>,
    /// The configured targets, and those from the API; `targets` is both (configured
    /// names win).
    static_targets: Mutex<Vec<TargetConfig>>,
    api_targets: Mutex<Vec<TargetConfig>>,
    pub targets: RwLock<TargetTable>,
    pub agents: Agents,
    pub sink: EventSink,
    pub proc_cache: ProcCache,
    pub metrics: crate::metrics::NodeMetrics,
}

impl Shared {
    pub fn event(&self, body: EventBody) {
        self.sink.write(&Event::now(body));
    }
}

/// Runs the node until SIGINT or SIGTERM. Interception stays in place afterwards (pinned);
/// `lastmiled node detach` removes it.
pub fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = crate::config::Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(
        config.node,
        config.api,
        config_path.map(Path::to_owned),
    ))
}

async fn serve(
    config: NodeConfig,
    api: crate::config::ApiConfig,
    config_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    ensure_bpffs(&config.pin_dir)?;
    let cgroup = match &config.cgroup {
        Some(c) => c.clone(),
        None => cgroup2_root().context("finding the cgroup v2 root")?,
    };
    let listener_v4 = TcpListener::bind(config.listen_v4)
        .await
        .with_context(|| format!("cannot listen on {} (listen_v4)", config.listen_v4))?;
    let listener_v6 = match config.listen_v6 {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(%addr, error = %e, "no IPv6 listener; IPv6 targets will not be redirected");
                None
            }
        },
        None => None,
    };
    let listen_v4 = listener_v4.local_addr()?;
    let listen_v6 = listener_v6
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;

    // Everything that can refuse the start is checked before the kernel's maps are
    // touched: a start that fails must leave the pinned interception as it was.
    let api_client = if config.resources_from_api {
        let identity = crate::gateway::Identity::load(&api.state_dir)
            .context("node.resources_from_api needs this host's identity with the API")?;
        Some(identity.api(&api.url)?)
    } else {
        None
    };
    let remembered = if config.resources_from_api {
        ApiList::load(&api.state_dir)?
    } else {
        None
    };
    let enrolled = crate::gateway::node_audit_identity(&api.state_dir);
    let sink = EventSink::start("node", config.events.as_deref(), &config.audit, enrolled)
        .with_context(|| format!("cannot open the event file {:?}", config.events))?;

    let mut interceptor = Interceptor::load_pinned(&config.pin_dir)?;
    let events = interceptor.take_events()?;
    let api_targets_now = remembered.as_deref().map(api_targets).unwrap_or_default();
    let targets = TargetTable(merge(&config.targets, &api_targets_now));
    interceptor.set_policy(&policy(&config, listen_v4, listen_v6))?;
    if config.resources_from_api && remembered.is_none() {
        // Nothing known of the API's list yet: add the configured targets and leave
        // whatever a previous run pinned, until the first list arrives.
        interceptor.add_targets(&targets.kernel_entries()?)?;
    } else {
        interceptor.replace_targets(&targets.kernel_entries()?)?;
    }
    let attached = interceptor.attach(&cgroup)?;
    info!(
        cgroup = %cgroup.display(), %listen_v4,
        listen_v6 = %listen_v6.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        pin_dir = %config.pin_dir.display(),
        newly_attached = attached.new, replaced = attached.replaced, moved_here = attached.moved, targets = targets.0.len(),
        from_api = remembered.as_ref().map_or(0, |_| api_targets_now.len()), enforce = config.enforce,
        "interception in place"
    );
    if config.resources_from_api {
        match &remembered {
            Some(_) => info!(
                targets = api_targets_now.len(),
                "protecting the API's last list until it answers"
            ),
            None => {
                info!("no list from the API yet; what was pinned stays protected until it answers")
            }
        }
    }
    for t in &targets.0 {
        info!(target = %t.name, kind = %t.kind, protect = %t.protect.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), "protecting");
    }

    let shared = Arc::new(Shared {
        interceptor: Mutex::new(interceptor),
        static_targets: Mutex::new(config.targets.clone()),
        api_targets: Mutex::new(api_targets_now),
        targets: RwLock::new(targets),
        agents: Agents::default(),
        proc_cache: ProcCache::default(),
        sink,
        metrics: crate::metrics::NodeMetrics::default(),
    });
    let mut registry = lastmile_metrics::Registry::with_prefix("lastmile_node");
    shared.metrics.register(&mut registry);
    shared.sink.metrics().register(&mut registry);
    registry.register_collector(Box::new(crate::metrics::NodeState(Arc::downgrade(&shared))));
    crate::metrics::serve(config.metrics_listen, registry).await?;
    // Bound once interception is in place: the socket's appearance says the node is
    // ready (tests and service managers wait for it). A failure here leaves the new
    // targets protected, which is safe.
    let agent_listener = agents::bind(&config.agent_socket)?;
    info!(socket = %config.agent_socket.display(), "agents register here");

    if let Some(client) = api_client {
        tokio::spawn(follow_api_resources(
            client,
            config.resource_refresh,
            ApiList::path(&api.state_dir),
            remembered.is_some(),
            shared.clone(),
        ));
    }
    tokio::spawn(read_kernel_events(events, shared.clone()));
    tokio::spawn(agents::accept_loop(agent_listener, shared.clone()));
    tokio::spawn(connection::accept_loop(listener_v4, shared.clone()));
    if let Some(l) = listener_v6 {
        tokio::spawn(connection::accept_loop(l, shared.clone()));
    }

    let mut hangup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(config_path.as_deref(), &shared, listen_v4, listen_v6),
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let counters = shared
        .interceptor
        .lock()
        .ok()
        .and_then(|i| i.counters().ok());
    match counters {
        // `detach --force` removed the pins under us: nothing stays.
        _ if !config.pin_dir.join("links").exists() => {
            warn!(
                "stopping; interception was removed while running (`lastmiled node detach --force`): nothing is intercepted"
            )
        }
        Some(counters) => info!(
            %counters,
            "stopping; interception stays pinned (`lastmiled node detach` removes it)"
        ),
        None => info!("stopping; interception stays pinned (`lastmiled node detach` removes it)"),
    }
    let _ = std::fs::remove_file(&config.agent_socket);
    Ok(())
}

fn policy(config: &NodeConfig, v4: SocketAddr, v6: Option<SocketAddr>) -> RedirectPolicy {
    RedirectPolicy {
        listener_v4: Some(v4),
        listener_v6: v6,
        exempt_mark: config.exempt_mark,
        enforce: config.enforce,
    }
}

/// SIGHUP: re-read the configuration and apply targets and policy without detaching
/// anything. A bad file is reported and the running configuration kept.
fn reload(path: Option<&Path>, shared: &Shared, v4: SocketAddr, v6: Option<SocketAddr>) {
    let config = match NodeConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %error_chain(&e), "reload refused; keeping the running configuration");
            return;
        }
    };
    let result = shared
        .interceptor
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))
        .and_then(|mut i| Ok(i.set_policy(&policy(&config, v4, v6))?));
    if let Ok(mut t) = shared.static_targets.lock() {
        t.clone_from(&config.targets);
    }
    match result.and_then(|()| apply_targets(shared)) {
        Ok(n) => info!(
            targets = n,
            enforce = config.enforce,
            "configuration reloaded"
        ),
        Err(e) => {
            error!(error = %format!("{e:#}"), "reload failed part way; run `lastmiled node status` and reload again")
        }
    }
}

/// The configured targets and the API's; a configured name wins.
fn merge(configured: &[TargetConfig], from_api: &[TargetConfig]) -> Vec<TargetConfig> {
    let mut all = configured.to_vec();
    for t in from_api {
        if !all.iter().any(|s| s.name == t.name) {
            all.push(t.clone());
        }
    }
    all
}

/// Puts the configured and the API's targets into the kernel map and the table.
fn apply_targets(shared: &Shared) -> anyhow::Result<usize> {
    let poisoned = || anyhow::anyhow!("poisoned");
    let all = merge(
        &shared.static_targets.lock().map_err(|_| poisoned())?,
        &shared.api_targets.lock().map_err(|_| poisoned())?,
    );
    let table = TargetTable(all);
    let entries = table.kernel_entries()?;
    shared
        .interceptor
        .lock()
        .map_err(|_| poisoned())?
        .replace_targets(&entries)?;
    let n = table.0.len();
    if let Ok(mut t) = shared.targets.write() {
        *t = table;
    }
    Ok(n)
}

/// The API's last list of resources, kept in the state directory so that a start with
/// the API down protects what it protected before.
struct ApiList;

impl ApiList {
    const FILE: &str = "api-resources.json";

    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(Self::FILE)
    }

    /// The remembered list; `None` when there is none yet. A file that cannot be read
    /// refuses the start: guessing would shrink what is protected.
    fn load(state_dir: &Path) -> anyhow::Result<Option<Vec<lastmile_proto::wire::Resource>>> {
        let path = Self::path(state_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_slice(&text).map(Some).with_context(|| {
            format!(
                "{} is not a list of resources; remove it and start again with the API reachable",
                path.display()
            )
        })
    }

    /// Replaces the file whole (write, sync, rename), so a crash leaves the old list or
    /// the new one.
    fn store(path: &Path, resources: &[lastmile_proto::wire::Resource]) -> anyhow::Result<()> {
        use std::io::Write as _;
        let tmp = path.with_extension("json.tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(resources)?)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }
}

/// Keeps the API's resources protected: every `refresh`, the list from `GET
/// /v1/resources` (as this host's gateway identity) becomes the API part of the targets
/// and is remembered in `remember`. When the API cannot be reached, the last list stays
/// in force. `applied` says whether the targets in force already are a full list (the
/// remembered one); until then the first list is applied even when it looks unchanged,
/// since it also clears what a previous run left pinned.
async fn follow_api_resources(
    client: lastmile_api_client::ApiClient,
    refresh: std::time::Duration,
    remember: PathBuf,
    mut applied: bool,
    shared: Arc<Shared>,
) {
    loop {
        match client
            .get::<Vec<lastmile_proto::wire::Resource>>("/v1/resources")
            .await
        {
            Ok(resources) => {
                let targets = api_targets(&resources);
                let changed = shared
                    .api_targets
                    .lock()
                    .map(|mut cur| {
                        let changed = *cur != targets;
                        *cur = targets;
                        changed
                    })
                    .unwrap_or(false);
                if changed || !applied {
                    match apply_targets(&shared) {
                        Ok(n) => {
                            applied = true;
                            info!(targets = n, "protected targets updated from the API");
                            if let Err(e) = ApiList::store(&remember, &resources) {
                                warn!(error = %format!("{e:#}"), "cannot remember the API's list; a start with the API down will protect an older one");
                            }
                        }
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "cannot apply the API's targets")
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot fetch resources from the API; keeping the last list")
            }
        }
        tokio::time::sleep(refresh).await;
    }
}

/// The API's resources as node targets: those that protect something.
fn api_targets(resources: &[lastmile_proto::wire::Resource]) -> Vec<TargetConfig> {
    resources
        .iter()
        .filter_map(|r| {
            let protect: Vec<ProtectedTarget> = r
                .protect
                .iter()
                .filter_map(|p| match p.parse() {
                    Ok(t) => Some(t),
                    Err(e) => {
                        warn!(resource = %r.name, protect = %p, error = %e, "unusable protect entry skipped");
                        None
                    }
                })
                .collect();
            (!protect.is_empty()).then(|| TargetConfig {
                name: r.name.clone(),
                kind: r.kind,
                protect,
            })
        })
        .collect()
}

/// A safety net: the kernel wakes us when events arrive, but a missed wakeup must not
/// leave events unread for long.
const EVENT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads kernel connect events and writes them, enriched, to the sink.
async fn read_kernel_events(events: RingBuf<MapData>, shared: Arc<Shared>) {
    let mut fd = match register(events) {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the event ring buffer; kernel events are lost");
            return;
        }
    };
    let mut tick = tokio::time::interval(EVENT_POLL);
    loop {
        tokio::select! {
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    drain_events(guard.get_inner_mut(), &shared);
                    guard.clear_ready();
                }
                Err(e) => {
                    error!(error = %e, "event ring buffer failed; kernel events are lost");
                    return;
                }
            },
            _ = tick.tick() => drain_events(fd.get_mut(), &shared),
        }
    }
}

fn drain_events(ring: &mut RingBuf<MapData>, shared: &Shared) {
    while let Some(item) = ring.next() {
        let Some(record) = record_from_event(&item) else {
            warn!(len = item.len(), "short kernel event ignored");
            continue;
        };
        let target = shared
            .targets
            .read()
            .ok()
            .and_then(|t| t.get(record.target_id))
            .map(|t| t.name);
        let proc_info = shared.proc_cache.take_or_read(&record);
        shared.event(EventBody::KernelConnect(kernel_connect(
            &record, target, proc_info,
        )));
    }
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory lives there and nothing is mounted.
fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    if on_bpffs(pin_dir).context("reading /proc/self/mounts")? {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        anyhow::bail!(
            "{} is not on a bpffs; mount one (`mount -t bpf bpf DIR`) or use /sys/fs/bpf",
            pin_dir.display()
        );
    }
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .context("mounting bpffs at /sys/fs/bpf")?;
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Registers `inner` with the tokio reactor.
pub(crate) fn register<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: only called with owners of their descriptor (OwnedFd, aya's RingBuf), which
    // keep the same open descriptor until they are dropped together with the AsyncFd.
    Ok(unsafe { AsyncFd::register(inner) }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned maps outlive the binary: the id of a name must never change.
    #[test]
    fn target_ids_are_fnv1a_of_the_name() {
        // FNV-1a 32-bit reference values.
        assert_eq!(target_id("").0, 0x811c_9dc5);
        assert_eq!(target_id("a").0, 0xe40c_292c);
        assert_eq!(target_id("foobar").0, 0xbf9c_f968);
    }

    #[test]
    fn configured_names_win_over_the_apis() {
        let t = |name: &str, port: u16| TargetConfig {
            name: name.into(),
            kind: lastmile_handoff::ResourceKind::Tcp,
            protect: vec![format!("127.0.0.2:{port}").parse().unwrap()],
        };
        let all = merge(&[t("db", 1)], &[t("db", 2), t("web", 3)]);
        assert_eq!(all, vec![t("db", 1), t("web", 3)]);
        let table = TargetTable(all);
        assert_eq!(table.get(target_id("web").0).unwrap().name, "web");
        assert!(table.get(target_id("gone").0).is_none());
    }
}
