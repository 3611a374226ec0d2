//! What an `exec` request (RFC 4254 §6.5) runs, as the audit log records it.
//!
//! The command is bytes on the wire (RFC 4254 §6.5: "command" is a `string`, with no
//! encoding promised); the log keeps a lossy UTF-8 rendering and says when it was lossy.
//! A legacy scp (`scp -O` on the user's side runs `scp -t PATH` or `scp -f PATH` here) is
//! recognised so the log can call it a transfer.

use std::fmt;

use serde::Serialize;

/// One `exec` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecCommand {
    /// The exact bytes the client sent.
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// `raw` as UTF-8, invalid sequences replaced by U+FFFD.
    pub text: String,
    /// False when `text` is not exactly `raw`.
    pub valid_utf8: bool,
    /// Set when the command is the receiving or sending end of a legacy scp.
    pub scp: Option<ScpTransfer>,
}

/// Which way a legacy scp moves files, seen from the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScpDirection {
    /// `scp -t`: the target receives, the user uploads.
    Upload,
    /// `scp -f`: the target sends, the user downloads.
    Download,
}

impl fmt::Display for ScpDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Upload => "upload",
            Self::Download => "download",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScpTransfer {
    pub direction: ScpDirection,
    /// The path on the target, as the remote shell will see it after word splitting.
    pub path: String,
    pub recursive: bool,
}

impl ExecCommand {
    pub fn parse(raw: &[u8]) -> Self {
        let text = String::from_utf8_lossy(raw).into_owned();
        let valid_utf8 = std::str::from_utf8(raw).is_ok();
        let scp = legacy_scp(&text);
        Self {
            raw: raw.to_vec(),
            text,
            valid_utf8,
            scp,
        }
    }
}

/// Recognise `scp [-options] -t|-f [--] PATH`. Anything else (including `scp` used as a
/// client on the target) is a plain command.
fn legacy_scp(command: &str) -> Option<ScpTransfer> {
    let words = shell_words(command)?;
    let mut words = words.into_iter();
    let program = words.next()?;
    if program.rsplit('/').next() != Some("scp") {
        return None;
    }
    let mut direction = None;
    let mut recursive = false;
    let mut rest = Vec::new();
    let mut options_done = false;
    for word in words {
        if options_done {
            rest.push(word);
            continue;
        }
        if word == "--" {
            options_done = true;
            continue;
        }
        match word.strip_prefix('-') {
            Some(flags) if !flags.is_empty() => {
                for flag in flags.chars() {
                    match flag {
                        't' => direction = Some(ScpDirection::Upload),
                        'f' => direction = Some(ScpDirection::Download),
                        'r' => recursive = true,
                        _ => {}
                    }
                }
            }
            _ => {
                options_done = true;
                rest.push(word);
            }
        }
    }
    Some(ScpTransfer {
        direction: direction?,
        path: rest.join(" "),
        recursive,
    })
}

/// POSIX-shell-like word splitting: whitespace separates, single quotes are literal,
/// double quotes and backslashes escape. Returns None for a command with shell syntax
/// we do not model (`;`, `|`, `&`, `$`, backquotes, unbalanced quotes): then it is not a
/// plain scp invocation.
fn shell_words(command: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        other => current.push(other),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => current.push(chars.next()?),
                        '$' | '`' => return None,
                        other => current.push(other),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).push(chars.next()?),
            ';' | '|' | '&' | '$' | '`' | '<' | '>' | '(' | ')' => return None,
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    if let Some(done) = word {
        words.push(done);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_kept_exactly() {
        let command = ExecCommand::parse(b"echo hi; exit 3");
        assert_eq!(command.text, "echo hi; exit 3");
        assert!(command.valid_utf8);
        assert_eq!(command.scp, None);
    }

    #[test]
    fn invalid_utf8_is_flagged_and_the_bytes_kept() {
        let raw = b"cat \xff\xfe.txt";
        let command = ExecCommand::parse(raw);
        assert!(!command.valid_utf8);
        assert_eq!(command.text, "cat \u{fffd}\u{fffd}.txt");
        assert_eq!(command.raw, raw.to_vec());
    }

    #[test]
    fn legacy_scp_is_a_transfer() {
        // What OpenSSH 9's `scp -O` sends (scp.c: "%s -t %s%s", "-v -r -p -d" options).
        let upload = ExecCommand::parse(b"scp -v -d -t -- /tmp/dir");
        assert_eq!(
            upload.scp,
            Some(ScpTransfer {
                direction: ScpDirection::Upload,
                path: "/tmp/dir".to_owned(),
                recursive: false
            })
        );
        let download = ExecCommand::parse(b"/usr/bin/scp -rf 'my file'");
        assert_eq!(
            download.scp,
            Some(ScpTransfer {
                direction: ScpDirection::Download,
                path: "my file".to_owned(),
                recursive: true
            })
        );
    }

    #[test]
    fn other_commands_are_not_scp() {
        for command in [
            &b"scp file other:/tmp"[..],
            b"scp -t /tmp; rm -rf /",
            b"scpx -t /tmp",
            b"echo scp -t /tmp",
            b"scp -t '/tmp",
            b"",
        ] {
            assert_eq!(ExecCommand::parse(command).scp, None, "{command:?}");
        }
    }
}
