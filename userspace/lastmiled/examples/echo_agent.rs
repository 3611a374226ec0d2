//! The smallest agent there is: registers with lastmiled for the calling user, prints
//! each handed-off connection as a JSON line, and answers every read on it with
//! `agent-<uid>: <what it read>`. Re-registers when lastmiled restarts.
//!
//! It shows the agent side of the hand-off (`lastmile_handoff::AgentLink`) and serves the
//! hand-off tests; the real agent (`lastmile`) carries the connection to a gateway instead.
//!
//! ```sh
//! cargo run --example echo_agent -- /run/lastmile/node.sock
//! ```

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    thread,
    time::Duration,
};

use lastmile_handoff::{AgentLink, HandoffError};

fn main() -> anyhow::Result<()> {
    let socket = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/run/lastmile/node.sock".into()),
    );
    loop {
        let link = match AgentLink::register(&socket) {
            Ok(link) => link,
            Err(e) => {
                eprintln!("echo_agent: {e}; retrying");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let uid = link.uid();
        println!("{}", serde_json::json!({ "registered": uid }));
        std::io::stdout().flush()?;
        loop {
            match link.next() {
                Ok((handoff, fd)) => {
                    println!("{}", serde_json::to_string(&handoff)?);
                    std::io::stdout().flush()?;
                    let stream = TcpStream::from(fd);
                    thread::spawn(move || echo(stream, uid));
                }
                Err(HandoffError::Closed) => break,
                Err(e) => {
                    eprintln!("echo_agent: {e}");
                    break;
                }
            }
        }
    }
}

fn echo(mut stream: TcpStream, uid: u32) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            return;
        }
        let reply = format!(
            "agent-{uid}: {}",
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default())
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
