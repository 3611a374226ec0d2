//! The login name the user typed (`ssh deploy@host`) picks the upstream principal.
//!
//! RFC 4252 §5: the user name is part of every authentication request; on the first hop
//! it names no account of ours (the tunnel already proved who the user is), so it can only
//! choose among the principals the resource lets this gateway log in as.

use std::fmt;

use thiserror::Error;

/// A login name on the target that the resource allows (one of its `ssh_principals`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrincipalError {
    #[error(
        "`{login}` is not a login allowed on this resource; use one of: {} (as in `ssh {}@host`)",
        allowed.join(", "),
        allowed.first().map(String::as_str).unwrap_or_default()
    )]
    NotAllowed { login: String, allowed: Vec<String> },
    #[error(
        "this resource names no ssh principals, so no login (`{login}`) can be used; an administrator must add `ssh_principals` to the resource"
    )]
    NoneConfigured { login: String },
}

/// Map the typed login name to an allowed principal. Exact, case-sensitive match: Unix
/// account names are case-sensitive, and a near match must not log in as someone else.
pub fn choose(login: &str, allowed: &[String]) -> Result<Principal, PrincipalError> {
    if allowed.is_empty() {
        return Err(PrincipalError::NoneConfigured {
            login: login.to_owned(),
        });
    }
    if allowed.iter().any(|name| name == login) {
        Ok(Principal(login.to_owned()))
    } else {
        Err(PrincipalError::NotAllowed {
            login: login.to_owned(),
            allowed: allowed.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn an_allowed_login_is_the_principal() {
        let chosen = choose("deploy", &names(&["app", "deploy"]));
        assert_eq!(chosen.map(|p| p.to_string()), Ok("deploy".to_owned()));
    }

    #[test]
    fn messages_say_what_to_do() {
        let refused = choose("root", &names(&["deploy", "app"]));
        assert_eq!(
            refused.map_err(|e| e.to_string()),
            Err(
                "`root` is not a login allowed on this resource; use one of: deploy, app \
                 (as in `ssh deploy@host`)"
                    .to_owned()
            )
        );
        let none = choose("deploy", &[]).map_err(|e| e.to_string());
        assert!(
            matches!(&none, Err(m) if m.contains("names no ssh principals") && m.contains("administrator")),
            "{none:?}"
        );
    }

    #[test]
    fn matching_is_exact() {
        assert!(choose("Deploy", &names(&["deploy"])).is_err());
        assert!(choose("deploy ", &names(&["deploy"])).is_err());
        assert!(choose("", &names(&["deploy"])).is_err());
    }
}
