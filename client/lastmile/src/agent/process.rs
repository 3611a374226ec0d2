//! The agent as a process of its own: started in the background by `lastmile login`,
//! found by its state file and a live pid, stopped with SIGTERM.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{AgentState, STATE_FILE};

/// The running agent of this home, if any: its state, with a live pid.
pub fn running(home: &Path) -> Option<AgentState> {
    let text = std::fs::read_to_string(home.join(STATE_FILE)).ok()?;
    let state: AgentState = serde_json::from_str(&text).ok()?;
    let pid = i32::try_from(state.pid).ok()?;
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).any(|a| a == b"agent"))
        .unwrap_or(false);
    (alive && ours).then_some(state)
}

/// Stops the running agent of this home (SIGTERM), waiting up to 2 s.
pub fn stop(home: &Path) {
    let Some(state) = running(home) else { return };
    let Ok(pid) = i32::try_from(state.pid) else {
        return;
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && nix::sys::signal::kill(pid, None).is_ok() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(home.join(STATE_FILE));
}

/// Starts `lastmile agent` in the background, logging to `$LASTMILE_HOME/agent.log`.
pub fn spawn(home: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt as _;
    stop(home);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("agent.log"))
        .context("opening the agent log")?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("agent")
        .env("LASTMILE_HOME", home)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    // Until the agent writes its own state, this says it runs, so that a `logout` right
    // after the `login` still finds it.
    let state = AgentState {
        pid: child.id(),
        node: "starting".into(),
        updated_at: lastmile_api_client::now(),
        ..AgentState::default()
    };
    crate::home::write_private(&home.join(STATE_FILE), &serde_json::to_vec_pretty(&state)?)?;
    Ok(child.id())
}
