//! `lastmile status` and `lastmile why`: what this machine knows of the user's session,
//! the agent, the node and the gateways, and why connections were refused. Status works
//! with the API down: it then prints what the saved files and the agent say, and since
//! when the API is unreachable.

use lastmile_api_client::ClientError;
use lastmile_proto::wire::Me;
use reqwest::Method;

use crate::{
    agent::{AgentState, RefusalRecord},
    home::Home,
    session::{Output, when},
};

/// How many refusals `status` shows (`why` shows them all).
const RECENT: usize = 3;

pub async fn status(out: Output) -> anyhow::Result<std::process::ExitCode> {
    let home = Home::locate()?;
    let agent = crate::agent::running(&home);
    let refusals = crate::agent::read_refusals(&home);
    let Some((client, session)) = home.load()? else {
        match out {
            Output::Json => println!("{}", serde_json::json!({"logged_in": false})),
            Output::Text => println!("not logged in: run `lastmile login`"),
        }
        return Ok(std::process::ExitCode::from(1));
    };
    let l = &session.login;
    let me = match client.call(&session, Method::GET, "/v1/me", None).await {
        Ok(answer) => answer.json::<Me>().map_err(Answer::Refused),
        Err(e) => Err(Answer::Unreachable(e)),
    };
    let recent: Vec<&RefusalRecord> = refusals.iter().rev().take(RECENT).collect();
    let shown = |facts: Facts<'_>, api: Option<String>| -> anyhow::Result<()> {
        print_status(
            out,
            &facts,
            api.as_deref(),
            l.certificate_expires_at,
            agent.as_ref(),
            &recent,
        )
    };
    match me {
        Ok(me) => {
            shown(
                Facts {
                    user: &me.user,
                    admin: Some(me.admin),
                    device: &me.device,
                    session: &me.session,
                    session_expires_at: me.session_expires_at,
                },
                None,
            )?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Err(Answer::Unreachable(e)) => {
            // What the saved files know; the API's word on the session is not to be had.
            shown(
                Facts {
                    user: &l.user,
                    admin: None,
                    device: &l.device,
                    session: &l.session,
                    session_expires_at: l.session_expires_at,
                },
                Some(unreachable_line(agent.as_ref(), &e)),
            )?;
            // Connections still work while the agent runs (established tunnels, and new
            // ones once the API is back): not a failure of this command.
            Ok(if agent.is_some() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            })
        }
        Err(Answer::Refused(e)) => {
            match out {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"logged_in": false, "user": l.user, "session": l.session, "error": e.code(), "message": e.to_string(), "agent": agent})
                ),
                Output::Text => println!(
                    "session {} of {} is no longer valid ({e}): run `lastmile login`",
                    l.session, l.user
                ),
            }
            Ok(std::process::ExitCode::from(1))
        }
    }
}

/// Who is logged in, as the API says (`admin` known) or as the saved files say.
struct Facts<'a> {
    user: &'a str,
    admin: Option<bool>,
    device: &'a str,
    session: &'a str,
    session_expires_at: i64,
}

/// The status, with `api` saying why the API's word is missing when it is.
fn print_status(
    out: Output,
    f: &Facts<'_>,
    api: Option<&str>,
    certificate_expires_at: i64,
    agent: Option<&AgentState>,
    recent: &[&RefusalRecord],
) -> anyhow::Result<()> {
    match out {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "logged_in": true, "api_reachable": api.is_none(), "api": api,
                "user": f.user, "admin": f.admin, "device": f.device, "session": f.session,
                "session_expires_at": f.session_expires_at, "session_expires": when(f.session_expires_at),
                "certificate_expires_at": certificate_expires_at, "certificate_expires": when(certificate_expires_at),
                "agent": agent, "recent_refusals": recent,
            }))?
        ),
        Output::Text => {
            if let Some(api) = api {
                println!("api:         {api}");
            }
            let (admin, saved) = match f.admin {
                Some(true) => (" (admin)", ""),
                Some(false) => ("", ""),
                None => ("", " (as saved at login)"),
            };
            println!("user:        {}{admin}{saved}", f.user);
            println!("device:      {}", f.device);
            println!(
                "session:     {} until {}",
                f.session,
                when(f.session_expires_at)
            );
            println!("certificate: until {}", when(certificate_expires_at));
            print_agent(agent, recent);
        }
    }
    Ok(())
}

/// The API's answer to `GET /v1/me`, when it is not the user.
enum Answer {
    /// It answered no (a session revoked or expired).
    Refused(ClientError),
    /// It did not answer.
    Unreachable(ClientError),
}

/// "unreachable since …" from the agent's record when it has one, else this call's cause.
fn unreachable_line(agent: Option<&AgentState>, e: &ClientError) -> String {
    let cause = lastmile_audit_sink::error_chain(e);
    match agent.and_then(|a| a.api.failing_since) {
        Some(since) => format!(
            "unreachable since {} ({}; last reached {})",
            when(since),
            agent.and_then(|a| a.api.error.clone()).unwrap_or(cause),
            agent
                .and_then(|a| a.api.reached_at)
                .map_or_else(|| "never".to_owned(), when)
        ),
        None => format!("unreachable: {cause}"),
    }
}

fn print_agent(agent: Option<&AgentState>, recent: &[&RefusalRecord]) {
    let Some(a) = agent else {
        println!("agent:       not running (`lastmile login` starts it, or `lastmile agent`)");
        print_refusals(recent);
        return;
    };
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    println!(
        "agent:       running (pid {}), {} connection{} carried, {} refused",
        a.pid,
        a.carried,
        plural(a.carried),
        a.refused
    );
    println!("node:        {}", a.node);
    if let Some(why) = &a.revoked {
        println!("             the session can no longer be used ({why}): run `lastmile login`");
    }
    if a.gateways.is_empty() {
        println!("gateways:    none listed by the API");
    }
    let now = lastmile_api_client::now();
    for g in &a.gateways {
        let age = g
            .checked_at
            .map(|t| format!(", {}", ago(now, t)))
            .unwrap_or_default();
        match &g.error {
            Some(e) => println!(
                "gateway:     {} at {}: {} ({e}){age}",
                g.name, g.tunnel, g.state
            ),
            None => println!("gateway:     {} at {}: {}{age}", g.name, g.tunnel, g.state),
        }
    }
    print_refusals(recent);
}

fn print_refusals(recent: &[&RefusalRecord]) {
    if recent.is_empty() {
        return;
    }
    println!(
        "refused:     the last {} (all: `lastmile why`)",
        recent.len()
    );
    for r in recent {
        println!("  {}  {}: {}", when(r.at), r.resource, r.reason);
        println!("  {:20}  → {}", "", r.what_to_do);
    }
}

/// "checked 4 s ago", "checked 3 min ago".
fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0);
    if s < 120 {
        format!("checked {s} s ago")
    } else {
        format!("checked {} min ago", s / 60)
    }
}

/// `lastmile why`: every refusal kept, newest first.
pub fn why(out: Output) -> anyhow::Result<()> {
    let list = crate::agent::read_refusals(&Home::locate()?);
    match out {
        Output::Json => {
            let newest: Vec<_> = list.iter().rev().collect();
            println!("{}", serde_json::to_string_pretty(&newest)?);
        }
        Output::Text => {
            if list.is_empty() {
                println!("no refused connections recorded here");
            }
            for r in list.iter().rev() {
                println!("{}  {}: {}", when(r.at), r.resource, r.reason);
                println!("{:20}  → {}", "", r.what_to_do);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(ago(100, 96), "checked 4 s ago");
        assert_eq!(ago(1000, 800), "checked 3 min ago");
        assert_eq!(
            ago(5, 10),
            "checked 0 s ago",
            "a clock step back is not negative"
        );
    }
}
