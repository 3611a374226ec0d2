//! `$LASTMILE_HOME`: what this machine keeps for its user, and the one way it is written.
//!
//! The directory (default `$XDG_CONFIG_HOME/lastmile`, else `~/.config/lastmile`) is
//! 0700; every file in it is written whole (a temporary file, synced, renamed over the
//! old one) and 0600:
//! - `device.key`: the device key's seed (Ed25519), made on first use and never sent
//!   anywhere; only its signatures leave the machine.
//! - `ca.pem`: the organisation's CA, pinned by the first login that succeeds with it
//!   (`--ca`); a login that fails keeps the CA pinned before it.
//! - `session.json`: the current session (its key seed, ids, certificate).
//! - `login.json`: the API URL and user name of the last login, kept by `logout`, so the
//!   next `login` needs neither `--api` nor `--user`.
//! - the agent's `agent.json`, `agent.log` and `refusals.json` (see `agent`).

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::SigningKey;
use lastmile_api_client::{ApiClient, Session};
use lastmile_proto::wire::LoginResponse;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const DEVICE_KEY: &str = "device.key";
pub const CA: &str = "ca.pem";
pub const SESSION: &str = "session.json";
pub const REMEMBERED: &str = "login.json";

/// The user's lastmile directory.
#[derive(Debug, Clone)]
pub struct Home(PathBuf);

/// The session as kept on disk.
#[derive(Serialize, Deserialize)]
struct Saved {
    api: String,
    session_key: String,
    login: LoginResponse,
}

/// What the next `login` takes by default: the last login's API and user.
#[derive(Debug, Serialize, Deserialize)]
pub struct Remembered {
    pub api: String,
    pub user: String,
}

impl std::ops::Deref for Home {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Home {
    /// `$LASTMILE_HOME`, else `$XDG_CONFIG_HOME/lastmile`, else `~/.config/lastmile`.
    pub fn locate() -> anyhow::Result<Self> {
        if let Some(h) = std::env::var_os("LASTMILE_HOME") {
            return Ok(Self(PathBuf::from(h)));
        }
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
            return Ok(Self(PathBuf::from(x).join("lastmile")));
        }
        let home = std::env::var_os("HOME")
            .context("neither LASTMILE_HOME, XDG_CONFIG_HOME nor HOME is set")?;
        Ok(Self(PathBuf::from(home).join(".config/lastmile")))
    }

    #[cfg(test)]
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// Makes the directory (0700) if it is not there.
    pub fn ensure(&self) -> anyhow::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))
    }

    /// Writes `name` whole, 0600: a reader sees the old contents or the new, never a part.
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        write_private(&self.0.join(name), bytes)
    }

    /// The device key: loaded, or made on first use.
    pub fn device_key(&self) -> anyhow::Result<SigningKey> {
        let path = self.join(DEVICE_KEY);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let seed = Zeroizing::new(
                    B64.decode(text.trim())
                        .with_context(|| format!("{} is damaged", path.display()))?,
                );
                let seed: [u8; 32] = seed
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("{} is damaged", path.display()))?;
                Ok(SigningKey::from_bytes(&seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = lastmile_api_client::new_key()?;
                self.write_private(DEVICE_KEY, B64.encode(key.to_bytes()).as_bytes())?;
                eprintln!("made this machine's device key: {}", path.display());
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn saved(&self) -> anyhow::Result<Option<Saved>> {
        let text = match std::fs::read_to_string(self.join(SESSION)) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("reading the session"),
        };
        serde_json::from_str(&text)
            .context("the saved session is damaged: run `lastmile login`")
            .map(Some)
    }

    /// The saved session and a client for its API; `None` when not logged in.
    pub fn load(&self) -> anyhow::Result<Option<(ApiClient, Session)>> {
        let Some(saved) = self.saved()? else {
            return Ok(None);
        };
        let ca = std::fs::read_to_string(self.join(CA))
            .context("the pinned CA is missing: run `lastmile login --ca …`")?;
        let seed = Zeroizing::new(
            B64.decode(&saved.session_key)
                .context("the saved session is damaged")?,
        );
        let seed: [u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("the saved session is damaged"))?;
        let client = ApiClient::new(&saved.api, &ca, None)?;
        Ok(Some((
            client,
            Session {
                device_key: self.device_key()?,
                session_key: SigningKey::from_bytes(&seed),
                login: saved.login,
            },
        )))
    }

    /// The saved session's id, without its keys.
    pub fn saved_session_id(&self) -> anyhow::Result<Option<String>> {
        Ok(self.saved()?.map(|s| s.login.session))
    }

    /// Saves a new session (a login).
    pub fn save_session(&self, api: &str, session: &Session) -> anyhow::Result<()> {
        let saved = Saved {
            api: api.to_owned(),
            session_key: B64.encode(session.session_key.to_bytes()),
            login: session.login.clone(),
        };
        self.write_private(
            SESSION,
            Zeroizing::new(serde_json::to_vec(&saved)?).as_slice(),
        )
    }

    /// Saves a renewed session certificate (the agent renews it before it ends).
    pub fn save_certificate(&self, session: &Session) -> anyhow::Result<()> {
        let mut saved = self.saved()?.context("the saved session is gone")?;
        if saved.login.session != session.login.session {
            bail!("the saved session changed (a new login); not overwriting it");
        }
        saved
            .login
            .certificate
            .clone_from(&session.login.certificate);
        saved.login.certificate_expires_at = session.login.certificate_expires_at;
        self.write_private(
            SESSION,
            Zeroizing::new(serde_json::to_vec(&saved)?).as_slice(),
        )
    }

    /// Forgets the session (`logout`).
    pub fn remove_session(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.join(SESSION)).context("removing the session")
    }

    /// The last login's API and user: `login.json`, else (a home from before it existed)
    /// the saved session.
    pub fn remembered(&self) -> Option<Remembered> {
        let read = |f: &str| std::fs::read_to_string(self.join(f)).ok();
        if let Some(r) = read(REMEMBERED).and_then(|t| serde_json::from_str(&t).ok()) {
            return Some(r);
        }
        let saved = self.saved().ok()??;
        Some(Remembered {
            api: saved.api,
            user: saved.login.user,
        })
    }

    pub fn remember(&self, api: &str, user: &str) -> anyhow::Result<()> {
        let r = Remembered {
            api: api.to_owned(),
            user: user.to_owned(),
        };
        self.write_private(REMEMBERED, &serde_json::to_vec(&r)?)
    }
}

/// Writes `path` whole, 0600 (a temporary file beside it, synced, renamed over it).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        home.ensure().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home), 0o700);
        home.write_private("x.json", b"one").unwrap();
        home.write_private("x.json", b"two").unwrap();
        assert_eq!(std::fs::read(home.join("x.json")).unwrap(), b"two");
        assert_eq!(mode(&home.join("x.json")), 0o600);
        assert!(!home.join("x.new").exists());
        // No session yet: nothing to load, nothing remembered.
        assert!(home.load().unwrap().is_none());
        assert!(home.remembered().is_none());
        home.remember("https://api", "alice").unwrap();
        assert_eq!(home.remembered().unwrap().user, "alice");
        let key = home.device_key().unwrap();
        assert_eq!(home.device_key().unwrap().to_bytes(), key.to_bytes());
    }
}
