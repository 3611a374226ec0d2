//! The link to lastmiled: registration and the handed-off connections.

use std::{os::fd::OwnedFd, path::Path, time::Duration};

use lastmile_audit_sink::error_chain;
use lastmile_handoff::{AgentLink, Handoff, HandoffError};
use tracing::{info, warn};

/// The blocking side of the node link: register (again, whenever lastmiled restarts) and
/// pass each handed-off connection to the async side.
pub(super) fn node_link(
    socket: &Path,
    tx: &tokio::sync::mpsc::Sender<(Handoff, OwnedFd)>,
    state: &tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut last = String::new();
    let mut report = |s: String| {
        if s != last {
            last.clone_from(&s);
            let _ = state.send(s);
        }
    };
    loop {
        let link = match AgentLink::register(socket) {
            Ok(l) => l,
            Err(e) => {
                report(format!("not registered: {}", error_chain(&e)));
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        info!(uid = link.uid(), "registered with lastmiled");
        report(format!(
            "registered for uid {} at {}",
            link.uid(),
            socket.display()
        ));
        loop {
            match link.next() {
                Ok(conn) => {
                    if tx.blocking_send(conn).is_err() {
                        return;
                    }
                }
                Err(HandoffError::Closed) => break,
                Err(e) => {
                    warn!(error = %error_chain(&e), "bad message from lastmiled");
                    break;
                }
            }
        }
        report("not registered: lastmiled went away".into());
    }
}
