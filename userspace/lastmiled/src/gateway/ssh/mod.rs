//! `ssh` resources: the gateway is the SSH server the user's `ssh`, `scp` and `sftp`
//! reach through the tunnel, and logs in to the target with a credential the user never
//! sees. The protocol is `lastmile-ssh`'s; here is what the gateway adds:
//!
//! - [`host`]: the gateway's host key and, per resource, its certificate from the
//!   organisation's SSH host CA (what the user's `@cert-authority` line checks), and how
//!   the target's own host key is trusted (pinned keys, the resource's host CAs, or the
//!   organisation's SSH host CA; never on first use);
//! - [`audit`]: the bridge's events as the gateway's `ssh.*` events.
//!
//! The login upstream is the API's short-lived user certificate for this connection's
//! own key (`ssh-certificate`), or the vault's stored key (`ssh-key`), both opened in
//! `streams::open` and dropped (zeroized) with the connection.

mod audit;
mod host;

use lastmile_proto::wire::ErrorCode;
use std::sync::{Arc, Mutex};

use lastmile_audit_sink::error_chain;
use lastmile_ssh::{
    bridge::{self, GatewaySession, SshResource, UpstreamLogin},
    policy::ChannelPolicy,
    recording::{LocalDirStore, RecordingStore},
};
use lastmile_tunnel::{header::Refusal, server::Incoming, stream::ClientStream};
use russh::keys::PrivateKey;
use tracing::{info, warn};

pub(super) use host::{SshHosts, load_or_create_host_key};

use super::streams::{Connection, Credential};
use super::upstream::connect_upstream;

/// A fresh key for one connection's certificate login.
pub(super) fn connection_key() -> Result<PrivateKey, String> {
    host::new_ed25519()
}

/// The channel policy of `resource`: the bridge's safe defaults, with port forwarding
/// only where the resource allows it.
fn policy(resource: &lastmile_proto::wire::Resource) -> ChannelPolicy {
    ChannelPolicy {
        direct_tcpip: resource.ssh_allow_port_forwarding,
        ..ChannelPolicy::default()
    }
}

pub(super) async fn serve(mut conn: Connection, incoming: Incoming) {
    let gw = conn.gw.clone();
    let resource = conn.authorized.resource.clone();
    let refuse =
        |conn: &Connection, incoming: Incoming, status, code: ErrorCode, message: String| {
            let r = Refusal::new(status, code, message);
            gw.refused(&conn.identity, Some(&conn.header), &r);
            incoming.refuse(&r);
        };
    let login = match conn.credential.take() {
        Some(Credential::SshCertificate { key, certificate }) => UpstreamLogin {
            key: Arc::new(*key),
            certificate: Some(*certificate),
        },
        Some(Credential::SshKey(key)) => UpstreamLogin {
            key: Arc::new(*key),
            certificate: None,
        },
        Some(Credential::Password(_)) | None => {
            return refuse(
                &conn,
                incoming,
                http::StatusCode::BAD_GATEWAY,
                ErrorCode::SshCredentialMissing,
                format!(
                    "ssh resource `{}` needs credential = ssh-certificate (with ssh_principals) or ssh-key; an administrator must set one",
                    resource.name
                ),
            );
        }
    };
    let host = match gw.ssh_hosts.identity(&gw, &resource).await {
        Ok(h) => h,
        Err(e) => {
            warn!(error = %e, "no SSH host certificate for this resource");
            return refuse(
                &conn,
                incoming,
                http::StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::SshHostCertificateUnavailable,
                format!(
                    "the gateway has no SSH host certificate for `{}`: {e}",
                    resource.name
                ),
            );
        }
    };
    let host_trust = match gw.ssh_hosts.trust(&gw, &resource).await {
        Ok(t) => t,
        Err(e) => {
            return refuse(
                &conn,
                incoming,
                http::StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::SshHostTrustUnavailable,
                e,
            );
        }
    };
    let target = match connect_upstream(&gw, &resource.host, resource.port).await {
        Ok(s) => s,
        Err(e) => {
            return refuse(
                &conn,
                incoming,
                http::StatusCode::BAD_GATEWAY,
                ErrorCode::UpstreamUnreachable,
                format!(
                    "cannot reach {}:{} for `{}`: {e}",
                    resource.host, resource.port, resource.name
                ),
            );
        }
    };
    conn.record.upstream = target.peer_addr().ok();
    let (send, recv) = match incoming.accept() {
        Ok(s) => s,
        Err(e) => {
            conn.record.error = Some(error_chain(&e));
            return;
        }
    };
    let user = ClientStream::new(send, recv, conn.meter.clone());
    let audit = Arc::new(audit::Audit {
        gw: gw.clone(),
        context: audit::Context {
            connection: conn.id.clone(),
            session: conn.identity.session.clone(),
            user: conn.identity.user.clone(),
            resource: resource.name.clone(),
            gateway: gw.name.clone(),
        },
        principal: Mutex::new(None),
        failure: Mutex::new(None),
    });
    let recordings = gw
        .ssh_recordings
        .clone()
        .map(|store| store as Arc<dyn RecordingStore>);
    let session = GatewaySession {
        connection: conn.id.clone(),
        resource: SshResource {
            name: resource.name.clone(),
            ssh_principals: resource.ssh_principals.clone(),
            policy: policy(&resource),
            host_trust,
        },
        login,
        recordings,
        events: audit.clone(),
    };
    info!(upstream = %conn.record.upstream_text(), "ssh connection open");
    let mut ending = conn.ending.clone();
    let result = bridge::serve(
        user,
        target,
        &host,
        session,
        async move { ending.wait().await },
    )
    .await;
    if let Err(e) = result {
        conn.record.error = Some(error_chain(&e));
    } else if let Some(why) = audit.failure.lock().ok().and_then(|f| f.clone()) {
        conn.record.error = Some(why);
    }
    if let Some(p) = audit.principal.lock().ok().and_then(|p| p.clone()) {
        conn.record.extra.insert("principal".into(), p.into());
    }
    info!(
        up = conn.meter.up(),
        down = conn.meter.down(),
        "ssh connection closed"
    );
}

/// The local directory store for `[gateway] recordings`, created owner-only.
pub(super) fn recordings(dir: &std::path::Path) -> anyhow::Result<Arc<LocalDirStore>> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the recordings directory {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} owner-only", dir.display()))?;
    Ok(Arc::new(LocalDirStore::new(dir)))
}
