//! `tcp` resources: the stream's bytes relayed to the resource as they are.

use lastmile_proto::wire::ErrorCode;
use lastmile_tunnel::{header::Refusal, server::Incoming, splice::splice};
use tracing::info;

use super::{streams::Connection, upstream::connect_upstream};

pub(super) async fn serve(mut conn: Connection, incoming: Incoming) {
    let resource = &conn.authorized.resource;
    let upstream = match connect_upstream(&conn.gw, &resource.host, resource.port).await {
        Ok(s) => s,
        Err(e) => {
            let r = Refusal::new(
                http::StatusCode::BAD_GATEWAY,
                ErrorCode::UpstreamUnreachable,
                format!(
                    "cannot reach {}:{} for `{}`: {e}",
                    resource.host, resource.port, resource.name
                ),
            );
            conn.gw.refused(&conn.identity, Some(&conn.header), &r);
            incoming.refuse(&r);
            return;
        }
    };
    conn.record.upstream = upstream.peer_addr().ok();
    let (send, recv) = match incoming.accept() {
        Ok(s) => s,
        Err(e) => {
            conn.record.error = Some(lastmile_audit_sink::error_chain(&e));
            return;
        }
    };
    info!(upstream = %conn.record.upstream_text(), "stream open");
    tokio::select! {
        result = splice(&upstream, send, recv, false, &conn.meter) => {
            if let Err(e) = result {
                conn.record.error = Some(e.to_string());
            }
        }
        why = conn.ending.wait() => conn.record.error = Some(why),
    }
    info!(
        up = conn.meter.up(),
        down = conn.meter.down(),
        "stream closed"
    );
}
