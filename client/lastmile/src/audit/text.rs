//! `lastmile audit search --text … --regex …`: matching what a user typed or ran.
//!
//! Only the fields that hold it are searched (see [`TEXT_FIELDS`]): a `db.query`'s
//! statement, an `ssh.exec`'s command line (and a legacy scp's path), an `ssh.sftp`'s
//! path(s). A word that appears only in the user name, the resource or any other field
//! does not match. Shell input typed in an interactive session is not in the log (it is
//! in the session's recording, `lastmile recordings`), so it cannot be searched here.

use anyhow::{Context as _, bail};
use regex::Regex;
use serde_json::Value;

/// Where each kind keeps what a user typed or ran, as JSON pointers into the event.
/// A pointer that names no string in an event is skipped.
pub const TEXT_FIELDS: &[(&str, &[&str])] = &[
    // The statement, when the gateway's `query_text` policy keeps it.
    ("db.query", &["/query"]),
    // `command` is an object (`text`, `valid_utf8`, `scp`); a bare string is read too.
    (
        "ssh.exec",
        &["/command/text", "/command", "/command/scp/path"],
    ),
    // Every op but rename has `path`; rename has `from` and `to`.
    ("ssh.sftp", &["/path", "/from", "/to"]),
];

/// `--text` and `--regex`, for `search`.
#[derive(Debug, Default, clap::Args)]
pub struct TextArgs {
    /// Entries whose statement, command or path holds every term of QUERY, ignoring case
    /// (terms are separated by spaces; "a quoted phrase" is one term). Repeatable: every
    /// term of every --text must be found.
    #[arg(long, value_name = "QUERY")]
    text: Vec<String>,
    /// Entries whose statement, command or path matches the regular expression RE (Rust
    /// `regex` syntax, case-sensitive unless it starts with `(?i)`). Repeatable: every
    /// one must match.
    #[arg(long, value_name = "RE")]
    regex: Vec<String>,
}

/// What a text search makes of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Matches,
    DoesNotMatch,
    /// Sealed, and of a kind that may hold text: it was not searched.
    Sealed,
    /// Of a kind that holds text, but this one holds none (a `db.query` whose statement
    /// the audit policy hashed into `query_hmac` or dropped): it was not searched.
    NoText,
}

/// Every term and regular expression an entry must match.
#[derive(Debug)]
pub struct TextQuery {
    /// Lowercased, whitespace runs made one space.
    terms: Vec<String>,
    regexes: Vec<Regex>,
}

impl TextQuery {
    /// The query of `--text` and `--regex`; `None` when neither was given.
    pub fn from_args(args: &TextArgs) -> anyhow::Result<Option<Self>> {
        if args.text.is_empty() && args.regex.is_empty() {
            return Ok(None);
        }
        let mut terms = Vec::new();
        for query in &args.text {
            terms.extend(parse_terms(query)?);
        }
        let regexes = args
            .regex
            .iter()
            .map(|re| {
                Regex::new(re)
                    .with_context(|| format!("--regex {re:?} is not a valid regular expression"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some(Self { terms, regexes }))
    }

    /// Whether `event` (an envelope's `event`, opened if it could be) matches.
    pub fn check(&self, event: &Value) -> Outcome {
        let kind = event.get("kind").and_then(Value::as_str);
        if event.get("sealed").is_some() {
            // A sealed event keeps its kind in the clear: one of a kind that never holds
            // text cannot match once opened either; one of a kind this version does not
            // know might.
            let may_hold_text = kind.is_none_or(|k| {
                pointers(k).is_some() || lastmile_audit_sink::schema::kind(k).is_none()
            });
            return if may_hold_text {
                Outcome::Sealed
            } else {
                Outcome::DoesNotMatch
            };
        }
        let Some(fields) = kind.and_then(pointers) else {
            return Outcome::DoesNotMatch;
        };
        let texts: Vec<&str> = fields
            .iter()
            .filter_map(|p| event.pointer(p).and_then(Value::as_str))
            .collect();
        if texts.is_empty() {
            return Outcome::NoText;
        }
        let folded: Vec<String> = texts.iter().map(|t| fold(t)).collect();
        let all_terms = self
            .terms
            .iter()
            .all(|term| folded.iter().any(|t| t.contains(term.as_str())));
        let all_regexes = self
            .regexes
            .iter()
            .all(|re| texts.iter().any(|t| re.is_match(t)));
        if all_terms && all_regexes {
            Outcome::Matches
        } else {
            Outcome::DoesNotMatch
        }
    }
}

/// The JSON pointers of `kind`'s text fields, if it has any.
fn pointers(kind: &str) -> Option<&'static [&'static str]> {
    TEXT_FIELDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, fields)| *fields)
}

/// `text` lowercased, each run of whitespace one space: "DROP\n  TABLE" is "drop table".
fn fold(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The terms of one `--text`: words separated by whitespace, and "quoted phrases".
pub fn parse_terms(query: &str) -> anyhow::Result<Vec<String>> {
    let mut terms = Vec::new();
    let mut rest = query;
    loop {
        rest = rest.trim_start();
        let Some(first) = rest.chars().next() else {
            break;
        };
        if first == '"' {
            let inner = rest.get(1..).unwrap_or_default();
            let Some(end) = inner.find('"') else {
                bail!(
                    "--text {query:?}: a phrase's opening quote has no closing one; \
                     write \"two words\" in quotes, e.g. --text '\"drop table\"'"
                );
            };
            let phrase = fold(inner.get(..end).unwrap_or_default());
            if phrase.is_empty() {
                bail!("--text {query:?} holds an empty phrase (\"\"), which would match anything");
            }
            terms.push(phrase);
            rest = inner.get(end + 1..).unwrap_or_default();
        } else {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            terms.push(fold(rest.get(..end).unwrap_or_default()));
            rest = rest.get(end..).unwrap_or_default();
        }
    }
    if terms.is_empty() {
        bail!("--text {query:?} holds no term to search for");
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    fn query(text: &[&str], regex: &[&str]) -> TextQuery {
        TextQuery::from_args(&TextArgs {
            text: text.iter().map(|s| s.to_string()).collect(),
            regex: regex.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
        .unwrap()
    }

    fn statement(sql: &str) -> Value {
        json!({"v": 1, "kind": "db.query", "user": "alice", "resource": "payroll-db",
               "session": "s1", "connection": "conn_1", "protocol": "simple",
               "outcome": "ok", "duration_us": 7, "query": sql})
    }

    #[test]
    fn no_text_and_no_regex_is_no_query() {
        assert!(
            TextQuery::from_args(&TextArgs::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_term_must_be_found() {
        let e = statement("DELETE FROM orders WHERE id = 7");
        assert_eq!(query(&["delete orders"], &[]).check(&e), Outcome::Matches);
        assert_eq!(
            query(&["delete", "orders"], &[]).check(&e),
            Outcome::Matches
        );
        assert_eq!(
            query(&["delete customers"], &[]).check(&e),
            Outcome::DoesNotMatch
        );
        assert_eq!(
            query(&["delete", "customers"], &[]).check(&e),
            Outcome::DoesNotMatch
        );
    }

    #[test]
    fn case_is_ignored_both_ways() {
        let e = statement("Drop Table Orders");
        assert_eq!(query(&["DROP table"], &[]).check(&e), Outcome::Matches);
        assert_eq!(query(&["orders"], &[]).check(&e), Outcome::Matches);
    }

    #[test]
    fn a_quoted_phrase_is_one_term_across_any_whitespace() {
        let words_apart = statement("drop index t; create table x");
        assert_eq!(
            query(&["drop table"], &[]).check(&words_apart),
            Outcome::Matches
        );
        assert_eq!(
            query(&["\"drop table\""], &[]).check(&words_apart),
            Outcome::DoesNotMatch
        );
        let phrase = statement("DROP\n    TABLE orders");
        assert_eq!(
            query(&["\"drop table\" orders"], &[]).check(&phrase),
            Outcome::Matches
        );
        assert_eq!(
            parse_terms(r#"x"drop  table" "y""#).unwrap(),
            ["x", "drop table", "y"]
        );
    }

    #[test]
    fn a_bad_phrase_or_an_empty_query_is_refused() {
        let err = format!("{:#}", parse_terms("\"drop table").unwrap_err());
        assert!(err.contains("closing"), "{err}");
        let err = format!("{:#}", parse_terms("  ").unwrap_err());
        assert!(err.contains("no term"), "{err}");
        let err = format!("{:#}", parse_terms("a \"\"").unwrap_err());
        assert!(err.contains("empty phrase"), "{err}");
    }

    #[test]
    fn only_text_fields_are_searched() {
        // "alice" and "payroll" are the user and resource, not the statement.
        let e = statement("select 1");
        assert_eq!(query(&["alice"], &[]).check(&e), Outcome::DoesNotMatch);
        assert_eq!(query(&["payroll"], &[]).check(&e), Outcome::DoesNotMatch);
        assert_eq!(query(&[], &["alice"]).check(&e), Outcome::DoesNotMatch);
        // A kind without text fields never matches, whatever its fields hold.
        let login = json!({"v": 1, "kind": "login", "user": "drop", "session": "s1"});
        assert_eq!(query(&["drop"], &[]).check(&login), Outcome::DoesNotMatch);
        // A channel's `type` or a recording's location is not what the user ran.
        let recording = json!({"kind": "ssh.recording", "location": "/r/rm-rf.cast"});
        assert_eq!(query(&["rm"], &[]).check(&recording), Outcome::DoesNotMatch);
    }

    #[test]
    fn ssh_commands_and_sftp_paths_are_searched() {
        let exec = json!({"kind": "ssh.exec", "user": "bob", "channel": 0,
            "command": {"text": "scp -t /etc/shadow", "valid_utf8": true,
                        "scp": {"direction": "upload", "path": "/etc/shadow", "recursive": false}}});
        assert_eq!(query(&["SCP shadow"], &[]).check(&exec), Outcome::Matches);
        assert_eq!(query(&["upload"], &[]).check(&exec), Outcome::DoesNotMatch);
        let rename = json!({"kind": "ssh.sftp", "op": "rename", "from": "/tmp/a.sql",
                            "to": "/srv/backup/dump.sql", "status": "ok"});
        // Terms may be found in different fields of one event.
        assert_eq!(
            query(&["a.sql backup"], &[]).check(&rename),
            Outcome::Matches
        );
        assert_eq!(
            query(&["rename"], &[]).check(&rename),
            Outcome::DoesNotMatch
        );
        let open = json!({"kind": "ssh.sftp", "op": "open", "path": "/home/bob/.ssh/authorized_keys", "flags": 26});
        assert_eq!(
            query(&[], &[r"\.ssh/authorized_keys$"]).check(&open),
            Outcome::Matches
        );
    }

    #[test]
    fn regexes_match_as_written_and_with_terms() {
        let e = statement("UPDATE users SET role = 'admin' WHERE id = 42");
        assert_eq!(query(&[], &[r"WHERE id = \d+"]).check(&e), Outcome::Matches);
        assert_eq!(
            query(&[], &[r"where id = \d+"]).check(&e),
            Outcome::DoesNotMatch
        );
        assert_eq!(
            query(&[], &[r"(?i)where id = \d+"]).check(&e),
            Outcome::Matches
        );
        assert_eq!(query(&["admin"], &[r"^UPDATE"]).check(&e), Outcome::Matches);
        assert_eq!(
            query(&["customers"], &[r"^UPDATE"]).check(&e),
            Outcome::DoesNotMatch
        );
        assert_eq!(
            query(&[], &[r"^UPDATE", r"^DELETE"]).check(&e),
            Outcome::DoesNotMatch
        );
    }

    #[test]
    fn an_invalid_regex_is_named() {
        let err = TextQuery::from_args(&TextArgs {
            text: vec![],
            regex: vec!["drop (table".into()],
        })
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("--regex \"drop (table\" is not a valid regular expression: "),
            "{err}"
        );
        assert!(err.contains("unclosed group"), "{err}");
    }

    #[test]
    fn sealed_and_textless_events_are_told_apart() {
        let q = query(&["orders"], &[]);
        let sealed_query = json!({"v": 1, "kind": "db.query", "session": "s1", "sealed": "YWdl"});
        assert_eq!(q.check(&sealed_query), Outcome::Sealed);
        // A sealed login holds no statement once opened either.
        let sealed_login = json!({"v": 1, "kind": "login", "user": "carol", "sealed": "YWdl"});
        assert_eq!(q.check(&sealed_login), Outcome::DoesNotMatch);
        // A kind this version does not know might hold anything.
        let sealed_unknown = json!({"v": 1, "kind": "query", "sealed": "YWdl"});
        assert_eq!(q.check(&sealed_unknown), Outcome::Sealed);
        let hashed = json!({"v": 1, "kind": "db.query", "session": "s1", "query_hmac": "9f86"});
        assert_eq!(q.check(&hashed), Outcome::NoText);
    }
}
