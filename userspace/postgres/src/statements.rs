//! The statement tracker behind the audit log's `db.query` events: it follows the client's
//! messages and the server's answers, in order, and yields one [`Statement`] per simple Query
//! or extended-protocol Execute, with its outcome and duration. Sans-IO: the caller passes in
//! the time.
//!
//! How answers are matched to requests (§55.2.2, §55.2.3): the server answers strictly in
//! order, so requests wait in one queue: Query, Execute, the Parse messages (so that a Parse
//! that fails can be logged) and Sync markers.
//!
//! - A simple Query collects every CommandComplete/EmptyQueryResponse/ErrorResponse until
//!   its ReadyForQuery, and is one Statement with all the command tags.
//! - An Execute is completed by the first CommandComplete, EmptyQueryResponse,
//!   PortalSuspended or ErrorResponse after the answers to what came before it.
//! - An ErrorResponse belongs to the first Execute before the next Sync (in a
//!   Parse/Bind/Execute/Sync batch the error of the Parse or Bind is what stopped the
//!   Execute, and the Execute's record has the text and parameters); if there is none, to
//!   the first Parse before the Sync (a prepare that failed). The server then ignores
//!   everything up to the Sync, so the Executes (and Queries) queued before it are dropped,
//!   not logged: they never ran.
//!
//! Memory is bounded whatever the client sends; see the `MAX_*` constants.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::{Backend, Frontend};

/// The most statement text kept per statement, in bytes; longer texts are cut (at a
/// character boundary) and end with "… (truncated: N bytes in all)".
pub const MAX_STATEMENT_TEXT: usize = 64 << 10;
/// The most named prepared statements remembered; past that, the text of a statement
/// prepared later is "(statement text not kept: too many prepared statements)". The unnamed
/// statement is always remembered.
pub const MAX_PREPARED_STATEMENTS: usize = 10_000;
/// The most statement text remembered over all prepared statements (worst case otherwise:
/// 10,000 × 64 KiB); past it, later statements are recorded as not kept, as above.
pub const MAX_PREPARED_TEXT: usize = 16 << 20;
/// The most named portals remembered; past that, an Execute of a later one is recorded as
/// "(statement text not kept: too many portals)". The unnamed portal is always remembered.
pub const MAX_PORTALS: usize = 10_000;
/// The most bytes of one parameter's rendering kept.
pub const MAX_PARAM_TEXT: usize = 1 << 10;
/// The most bytes of parameters kept per Bind; later parameters are "(not kept)".
pub const MAX_BIND_PARAMS_TEXT: usize = 64 << 10;
/// The most parameter bytes kept over all portals; past it, new portals keep no parameters.
pub const MAX_PORTAL_PARAMS_TEXT: usize = 16 << 20;
/// The most command tags kept per statement (a Query can hold thousands of statements);
/// past it, each new tag replaces the last so that the last tag (and `rows`) stays right.
pub const MAX_TAGS: usize = 1_000;
/// Binary parameters up to this size are shown in hex (`\x0102…`, as bytea prints).
const MAX_HEX_PARAM: usize = 64;

const TOO_MANY_STATEMENTS: &str = "(statement text not kept: too many prepared statements)";
const TOO_MANY_PORTALS: &str = "(statement text not kept: too many portals)";
const NOT_KEPT: &str = "(not kept)";

/// One statement as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL text (the whole Query string for the simple protocol), capped at
    /// [`MAX_STATEMENT_TEXT`].
    pub text: String,
    pub protocol: Protocol,
    /// The Bind parameters, when the log was built with `keep_params` and the protocol is
    /// extended: text-format ones as sent, binary ones in hex or as "(binary, N bytes)";
    /// `None` inside is SQL NULL.
    pub params: Option<Vec<Option<String>>>,
    pub outcome: Outcome,
    /// When the Query or Execute was seen.
    pub started: Instant,
    /// From then until its completion (ReadyForQuery for a Query; the Execute's own
    /// completion message for an Execute).
    pub duration: Duration,
    /// For a COPY, its direction and the CopyData bytes that went through.
    pub copy: Option<Copy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A Query message (§55.2.2).
    Simple,
    /// Parse/Bind/Execute (§55.2.3).
    Extended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every command tag in order ("SELECT 5", "INSERT 0 3"; empty for an empty query or a
    /// suspended portal), and the row count of the last one, for the commands that report
    /// one (SELECT, INSERT, UPDATE, DELETE, MERGE, FETCH, MOVE, COPY).
    Ok {
        tags: Vec<String>,
        rows: Option<u64>,
    },
    /// The ErrorResponse's SQLSTATE and message.
    Error { sqlstate: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    pub direction: CopyDirection,
    /// CopyData body bytes, both ways.
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// COPY FROM STDIN (CopyInResponse).
    In,
    /// COPY TO STDOUT (CopyOutResponse).
    Out,
    /// Replication (CopyBothResponse).
    Both,
}

/// A Query or Execute waiting for its answer.
#[derive(Debug)]
struct Pending {
    text: Arc<str>,
    protocol: Protocol,
    params: Option<Vec<Option<String>>>,
    started: Instant,
    tags: Vec<String>,
    error: Option<(String, String)>,
    copy: Option<Copy>,
}

impl Pending {
    fn finish(self, now: Instant) -> Statement {
        let outcome = match self.error {
            Some((sqlstate, message)) => Outcome::Error { sqlstate, message },
            None => Outcome::Ok {
                rows: self.tags.last().and_then(|t| rows(t)),
                tags: self.tags,
            },
        };
        Statement {
            text: self.text.to_string(),
            protocol: self.protocol,
            params: self.params,
            outcome,
            started: self.started,
            duration: now.saturating_duration_since(self.started),
            copy: self.copy,
        }
    }

    fn push_tag(&mut self, tag: &str) {
        if self.tags.len() < MAX_TAGS {
            self.tags.push(tag.to_owned());
        } else if let Some(last) = self.tags.last_mut() {
            tag.clone_into(last);
        }
    }
}

#[derive(Debug)]
enum Item {
    /// A Query (simple) or Execute (extended).
    Run(Pending),
    /// A Parse, kept only to log it if it fails.
    Parse { text: Arc<str>, started: Instant },
    /// A Sync: its ReadyForQuery closes the batch.
    Sync,
}

#[derive(Debug)]
struct Portal {
    text: Arc<str>,
    params: Option<Vec<Option<String>>>,
    params_bytes: usize,
}

/// Follows one connection's statements. See the module docs for the matching rules.
#[derive(Debug)]
pub struct StatementLog {
    keep_params: bool,
    prepared: HashMap<String, Arc<str>>,
    prepared_bytes: usize,
    prepared_overflow: bool,
    portals: HashMap<String, Portal>,
    portal_params_bytes: usize,
    portals_overflow: bool,
    queue: VecDeque<Item>,
    /// After an ErrorResponse in the extended protocol: the server skips to the next Sync.
    skipping: bool,
}

impl StatementLog {
    /// A tracker for a new connection; `keep_params`: record Bind parameter values.
    pub fn new(keep_params: bool) -> Self {
        Self {
            keep_params,
            prepared: HashMap::new(),
            prepared_bytes: 0,
            prepared_overflow: false,
            portals: HashMap::new(),
            portal_params_bytes: 0,
            portals_overflow: false,
            queue: VecDeque::new(),
            skipping: false,
        }
    }

    /// Statements (Queries and Executes) sent and not yet answered.
    pub fn pending(&self) -> usize {
        self.queue
            .iter()
            .filter(|i| matches!(i, Item::Run(_)))
            .count()
    }

    /// Takes every inspected client message, in order.
    pub fn frontend(&mut self, msg: &Frontend<'_>, now: Instant) {
        match msg {
            Frontend::Query { text } => {
                // A Query destroys the unnamed statement and portal (§55.2.3).
                self.forget_statement("");
                self.forget_portal("");
                self.queue.push_back(Item::Run(Pending {
                    text: keep_text(text),
                    protocol: Protocol::Simple,
                    params: None,
                    started: now,
                    tags: Vec::new(),
                    error: None,
                    copy: None,
                }));
            }
            Frontend::Parse {
                statement, text, ..
            } => {
                let text = self.remember_statement(statement, text);
                self.queue.push_back(Item::Parse { text, started: now });
            }
            Frontend::Bind {
                portal,
                statement,
                param_formats,
                params,
                ..
            } => self.bind(portal, statement, param_formats, params),
            Frontend::Execute { portal, .. } => {
                let (text, params) = match self.portals.get(*portal) {
                    Some(p) => (p.text.clone(), p.params.clone()),
                    None if self.portals_overflow => (Arc::from(TOO_MANY_PORTALS), None),
                    None => (Arc::from(format!("(unknown portal \"{portal}\")")), None),
                };
                self.queue.push_back(Item::Run(Pending {
                    text,
                    protocol: Protocol::Extended,
                    params,
                    started: now,
                    tags: Vec::new(),
                    error: None,
                    copy: None,
                }));
            }
            Frontend::Close { kind: b'S', name } => self.forget_statement(name),
            Frontend::Close { name, .. } => self.forget_portal(name),
            Frontend::Sync => self.queue.push_back(Item::Sync),
            Frontend::CopyData { len } => self.copy_data(true, *len),
            Frontend::Flush
            | Frontend::CopyDone
            | Frontend::CopyFail { .. }
            | Frontend::Terminate
            | Frontend::Other { .. } => {}
        }
    }

    /// Takes every inspected server message, in order; returns the statement it completes.
    pub fn backend(&mut self, msg: &Backend<'_>, now: Instant) -> Option<Statement> {
        match msg {
            Backend::CommandComplete { tag } => self.complete(now, |p| p.push_tag(tag)),
            Backend::EmptyQueryResponse | Backend::PortalSuspended => self.complete(now, |_| {}),
            Backend::ErrorResponse(e) => self.error(e.code, e.message, now),
            Backend::ReadyForQuery { .. } => self.ready(now),
            Backend::CopyInResponse => self.start_copy(CopyDirection::In),
            Backend::CopyOutResponse => self.start_copy(CopyDirection::Out),
            Backend::CopyBothResponse => self.start_copy(CopyDirection::Both),
            Backend::CopyData { len } => {
                self.copy_data(false, *len);
                None
            }
            Backend::ParseComplete => {
                // The first Parse of the batch succeeded; it cannot fail any more.
                let at = self.batch().position(|i| matches!(i, Item::Parse { .. }));
                if let Some(at) = at {
                    self.queue.remove(at);
                }
                None
            }
            _ => None,
        }
    }

    /// Counts `len` bytes of CopyData (the message body) for the COPY in progress. For a
    /// gateway that streams CopyData instead of inspecting it (`len` = the passed length
    /// − 5); one inspected through [`Self::frontend`]/[`Self::backend`] is counted there, so
    /// call one or the other for a message, not both.
    pub fn copy_data(&mut self, from_client: bool, len: usize) {
        let copying = self.queue.iter_mut().find_map(|i| match i {
            Item::Run(p) => p.copy.as_mut(),
            _ => None,
        });
        // Only the direction the COPY runs in carries data; anything else is not counted.
        let expected = |copy: &Copy| match copy.direction {
            CopyDirection::In => from_client,
            CopyDirection::Out => !from_client,
            CopyDirection::Both => true,
        };
        if let Some(copy) = copying.filter(|c| expected(c)) {
            copy.bytes = copy
                .bytes
                .saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
        }
    }

    /// The queue up to (not including) the first Sync: what the next answers are about.
    fn batch(&self) -> impl Iterator<Item = &Item> {
        self.queue.iter().take_while(|i| !matches!(i, Item::Sync))
    }

    /// The position of the first Query or Execute in the current batch.
    fn current(&self) -> Option<usize> {
        self.batch().position(|i| matches!(i, Item::Run(_)))
    }

    /// A CommandComplete, EmptyQueryResponse or PortalSuspended: adds to a Query, completes
    /// an Execute (and the Parses before it, which evidently succeeded).
    fn complete(&mut self, now: Instant, record: impl FnOnce(&mut Pending)) -> Option<Statement> {
        let at = self.current()?;
        if let Some(Item::Run(p)) = self.queue.get_mut(at) {
            record(p);
            if p.protocol == Protocol::Simple {
                return None;
            }
        }
        let mut done = self.queue.drain(..=at);
        match done.next_back() {
            Some(Item::Run(p)) => Some(p.finish(now)),
            _ => None,
        }
    }

    fn error(&mut self, sqlstate: &str, message: &str, now: Instant) -> Option<Statement> {
        let error = Some((sqlstate.to_owned(), message.to_owned()));
        if let Some(at) = self.current() {
            if let Some(Item::Run(p)) = self.queue.get_mut(at)
                && p.protocol == Protocol::Simple
            {
                p.error = error;
                return None;
            }
            self.skipping = true;
            let mut done = self.queue.drain(..=at);
            return match done.next_back() {
                Some(Item::Run(mut p)) => {
                    p.error = error;
                    Some(p.finish(now))
                }
                _ => None,
            };
        }
        // No Execute in this batch: the error is a Parse's (or a Bind's, Describe's, ...).
        let at = self.batch().position(|i| matches!(i, Item::Parse { .. }))?;
        self.skipping = true;
        match self.queue.remove(at) {
            Some(Item::Parse { text, started }) => Some(
                Pending {
                    text,
                    protocol: Protocol::Extended,
                    params: None,
                    started,
                    tags: Vec::new(),
                    error,
                    copy: None,
                }
                .finish(now),
            ),
            _ => None,
        }
    }

    /// ReadyForQuery: ends a Query, or the batch up to a Sync.
    fn ready(&mut self, now: Instant) -> Option<Statement> {
        let skipping = std::mem::take(&mut self.skipping);
        while let Some(item) = self.queue.pop_front() {
            match item {
                Item::Sync => return None,
                Item::Run(p) if p.protocol == Protocol::Simple && !skipping => {
                    return Some(p.finish(now));
                }
                // Skipped after an error, or (an Execute) never answered: it did not run.
                Item::Run(_) | Item::Parse { .. } => {}
            }
        }
        None
    }

    fn start_copy(&mut self, direction: CopyDirection) -> Option<Statement> {
        let at = self.current()?;
        if let Some(Item::Run(p)) = self.queue.get_mut(at) {
            p.copy.get_or_insert(Copy {
                direction,
                bytes: 0,
            });
        }
        None
    }

    fn remember_statement(&mut self, name: &str, text: &str) -> Arc<str> {
        self.forget_statement(name);
        let full = !name.is_empty()
            && (named(&self.prepared) >= MAX_PREPARED_STATEMENTS
                || self.prepared_bytes.saturating_add(text.len()) > MAX_PREPARED_TEXT);
        if full {
            self.prepared_overflow = true;
            return Arc::from(TOO_MANY_STATEMENTS);
        }
        let text = keep_text(text);
        self.prepared_bytes += text.len();
        self.prepared.insert(name.to_owned(), text.clone());
        text
    }

    fn forget_statement(&mut self, name: &str) {
        if let Some(text) = self.prepared.remove(name) {
            self.prepared_bytes = self.prepared_bytes.saturating_sub(text.len());
        }
    }

    fn forget_portal(&mut self, name: &str) {
        if let Some(p) = self.portals.remove(name) {
            self.portal_params_bytes = self.portal_params_bytes.saturating_sub(p.params_bytes);
        }
    }

    fn bind(&mut self, portal: &str, statement: &str, formats: &[i16], params: &[Option<&[u8]>]) {
        self.forget_portal(portal);
        if !portal.is_empty() && named(&self.portals) >= MAX_PORTALS {
            self.portals_overflow = true;
            return;
        }
        let text = match self.prepared.get(statement) {
            Some(text) => text.clone(),
            None if self.prepared_overflow => Arc::from(TOO_MANY_STATEMENTS),
            None => Arc::from(format!("(unknown prepared statement \"{statement}\")")),
        };
        let room = MAX_PORTAL_PARAMS_TEXT.saturating_sub(self.portal_params_bytes);
        let (params, params_bytes) = if self.keep_params {
            let (params, bytes) = render_params(formats, params, room.min(MAX_BIND_PARAMS_TEXT));
            (Some(params), bytes)
        } else {
            (None, 0)
        };
        self.portal_params_bytes += params_bytes;
        self.portals.insert(
            portal.to_owned(),
            Portal {
                text,
                params,
                params_bytes,
            },
        );
    }
}

/// How many entries of a statement or portal map are named (the unnamed one is not capped).
fn named<T>(map: &HashMap<String, T>) -> usize {
    map.len() - usize::from(map.contains_key(""))
}

/// The row count a command tag reports (§55.7 CommandComplete): the last number of
/// "SELECT 5", "INSERT 0 3", "UPDATE 2", "COPY 10", ...
fn rows(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let command = words.next()?;
    if !matches!(
        command,
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY"
    ) {
        return None;
    }
    words.next_back()?.parse().ok()
}

/// `text`, cut to [`MAX_STATEMENT_TEXT`] with a marker if longer.
fn keep_text(text: &str) -> Arc<str> {
    Arc::from(cut(text, MAX_STATEMENT_TEXT).as_str())
}

/// `text` up to `max` bytes at a character boundary, with a marker when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = text.get(..end).unwrap_or_default().to_owned();
    let _ = write!(out, "… (truncated: {} bytes in all)", text.len());
    out
}

/// Renders Bind parameters within `budget` bytes; returns them and the bytes used.
/// Formats (§55.7 Bind): none means all text, one applies to all, else one per parameter.
fn render_params(
    formats: &[i16],
    params: &[Option<&[u8]>],
    budget: usize,
) -> (Vec<Option<String>>, usize) {
    let mut used = 0_usize;
    let mut out = Vec::with_capacity(params.len());
    for (i, param) in params.iter().enumerate() {
        let format = match formats {
            [] => 0,
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        };
        let Some(value) = param else {
            out.push(None);
            continue;
        };
        if used >= budget {
            out.push(Some(NOT_KEPT.to_owned()));
            continue;
        }
        let text = match (format, std::str::from_utf8(value)) {
            (0, Ok(s)) => cut(s, MAX_PARAM_TEXT),
            _ if value.len() <= MAX_HEX_PARAM => {
                let mut hex = String::with_capacity(2 + 2 * value.len());
                hex.push_str("\\x");
                for b in *value {
                    let _ = write!(hex, "{b:02x}");
                }
                hex
            }
            _ => format!("(binary, {} bytes)", value.len()),
        };
        used = used.saturating_add(text.len());
        out.push(Some(text));
    }
    (out, used)
}

#[cfg(test)]
mod tests;
