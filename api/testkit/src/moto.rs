//! moto's server on loopback: a real implementation of the AWS KMS API (and others) for
//! tests. `moto_server` comes from `pip install 'moto[server]'` (`cargo xtask setup`).

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum MotoError {
    #[error("cannot start moto_server ({0}): run `cargo xtask setup`, which installs moto[server]")]
    Spawn(std::io::Error),
    #[error("moto_server did not listen on 127.0.0.1:{port} within 30 s; its output: {output}")]
    NotListening { port: u16, output: String },
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
}

/// A moto server; stopped when dropped.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    pub fn start() -> Result<Self, MotoError> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(MotoError::Port)?
            .port();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(MotoError::Spawn)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let output = child
                    .wait_with_output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                return Err(MotoError::NotListening { port, output });
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(Self { child, port })
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
