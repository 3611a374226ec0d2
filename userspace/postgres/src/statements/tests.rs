use super::*;
use crate::message::ErrorFields;

/// A connection's two directions with a clock that ticks 1 ms per message.
struct Conn {
    log: StatementLog,
    t0: Instant,
    ms: u64,
    out: Vec<Statement>,
}

impl Conn {
    fn new(keep_params: bool) -> Self {
        Self {
            log: StatementLog::new(keep_params),
            t0: Instant::now(),
            ms: 0,
            out: Vec::new(),
        }
    }

    fn now(&mut self) -> Instant {
        self.ms += 1;
        self.t0 + Duration::from_millis(self.ms)
    }

    fn client(&mut self, msgs: &[Frontend<'_>]) {
        for m in msgs {
            let now = self.now();
            self.log.frontend(m, now);
        }
    }

    fn server(&mut self, msgs: &[Backend<'_>]) {
        for m in msgs {
            let now = self.now();
            self.out.extend(self.log.backend(m, now));
        }
    }

    fn take(&mut self) -> Vec<Statement> {
        std::mem::take(&mut self.out)
    }
}

fn q(text: &str) -> Frontend<'_> {
    Frontend::Query { text }
}
fn cc(tag: &str) -> Backend<'_> {
    Backend::CommandComplete { tag }
}
fn rfq() -> Backend<'static> {
    Backend::ReadyForQuery { status: b'I' }
}
fn err<'a>(code: &'a str, message: &'a str) -> Backend<'a> {
    Backend::ErrorResponse(ErrorFields {
        severity: "ERROR",
        code,
        message,
        fields: vec![],
    })
}
fn parse<'a>(statement: &'a str, text: &'a str) -> Frontend<'a> {
    Frontend::Parse {
        statement,
        text,
        param_types: vec![],
    }
}
fn bind<'a>(portal: &'a str, statement: &'a str, params: Vec<Option<&'a [u8]>>) -> Frontend<'a> {
    Frontend::Bind {
        portal,
        statement,
        param_formats: vec![],
        params,
        result_formats: vec![],
    }
}
fn execute(portal: &str) -> Frontend<'_> {
    Frontend::Execute {
        portal,
        max_rows: 0,
    }
}
fn ok(tags: &[&str], rows: Option<u64>) -> Outcome {
    Outcome::Ok {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        rows,
    }
}

#[test]
fn simple_query() {
    let mut c = Conn::new(false);
    c.client(&[q("SELECT * FROM t")]);
    c.server(&[cc("SELECT 5")]);
    assert!(c.take().is_empty(), "only ReadyForQuery ends a Query");
    c.server(&[rfq()]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].text, "SELECT * FROM t");
    assert_eq!(s[0].protocol, Protocol::Simple);
    assert_eq!(s[0].outcome, ok(&["SELECT 5"], Some(5)));
    assert_eq!(s[0].params, None);
    assert_eq!(s[0].copy, None);
    assert_eq!(s[0].started, c.t0 + Duration::from_millis(1));
    assert_eq!(s[0].duration, Duration::from_millis(2));
    assert_eq!(c.log.pending(), 0);
}

#[test]
fn multi_statement_query_is_one_statement_with_every_tag() {
    let mut c = Conn::new(false);
    c.client(&[q(
        "BEGIN; INSERT INTO t VALUES (1),(2),(3); UPDATE t SET a = 1; COMMIT",
    )]);
    c.server(&[
        cc("BEGIN"),
        cc("INSERT 0 3"),
        cc("UPDATE 2"),
        cc("COMMIT"),
        rfq(),
    ]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].outcome,
        ok(&["BEGIN", "INSERT 0 3", "UPDATE 2", "COMMIT"], None)
    );
}

#[test]
fn rows_from_the_last_tag() {
    for (tag, rows) in [
        ("SELECT 5", Some(5)),
        ("INSERT 0 3", Some(3)),
        ("UPDATE 2", Some(2)),
        ("DELETE 0", Some(0)),
        ("COPY 10", Some(10)),
        ("MERGE 4", Some(4)),
        ("FETCH 7", Some(7)),
        ("CREATE TABLE", None),
        ("SELECT", None),
    ] {
        assert_eq!(super::rows(tag), rows, "{tag}");
    }
}

#[test]
fn error_in_a_simple_query() {
    let mut c = Conn::new(false);
    c.client(&[q("SELECT 1; SELECT * FROM nope; SELECT 3")]);
    c.server(&[
        cc("SELECT 1"),
        err("42P01", "relation \"nope\" does not exist"),
        rfq(),
    ]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].outcome,
        Outcome::Error {
            sqlstate: "42P01".into(),
            message: "relation \"nope\" does not exist".into()
        }
    );
    // The connection goes on.
    c.client(&[q("SELECT 2")]);
    c.server(&[cc("SELECT 1"), rfq()]);
    assert_eq!(c.take()[0].outcome, ok(&["SELECT 1"], Some(1)));
}

#[test]
fn empty_query() {
    let mut c = Conn::new(false);
    c.client(&[q(";")]);
    c.server(&[Backend::EmptyQueryResponse, rfq()]);
    assert_eq!(c.take()[0].outcome, ok(&[], None));
}

#[test]
fn extended_with_unnamed_statements() {
    // What psql's \bind and most drivers send: unnamed statement, unnamed portal.
    let mut c = Conn::new(true);
    c.client(&[
        parse("", "SELECT $1::int + $2::int"),
        bind("", "", vec![Some(b"1"), Some(b"41")]),
        Frontend::Other { tag: b'D' },
        execute(""),
        Frontend::Sync,
    ]);
    c.server(&[
        Backend::ParseComplete,
        Backend::BindComplete,
        Backend::Other { tag: b'T' },
        cc("SELECT 1"),
    ]);
    let s = c.take();
    assert_eq!(s.len(), 1, "an Execute completes at its CommandComplete");
    assert_eq!(s[0].text, "SELECT $1::int + $2::int");
    assert_eq!(s[0].protocol, Protocol::Extended);
    assert_eq!(s[0].params, Some(vec![Some("1".into()), Some("41".into())]));
    assert_eq!(s[0].outcome, ok(&["SELECT 1"], Some(1)));
    assert_eq!(
        s[0].duration,
        Duration::from_millis(5),
        "from Execute (4) to CommandComplete (9)"
    );
    c.server(&[rfq()]);
    assert!(c.take().is_empty());
    // The next Parse replaces the unnamed statement.
    c.client(&[
        parse("", "SELECT 2"),
        bind("", "", vec![]),
        execute(""),
        Frontend::Sync,
    ]);
    c.server(&[cc("SELECT 1"), rfq()]);
    let s = c.take();
    assert_eq!(s[0].text, "SELECT 2");
    assert_eq!(s[0].params, Some(vec![]));
}

#[test]
fn prepared_statement_executed_three_times() {
    // pgbench -M prepared: Parse once, then Bind/Execute/Sync per transaction.
    let mut c = Conn::new(true);
    c.client(&[
        parse(
            "P0_1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        ),
        Frontend::Sync,
    ]);
    c.server(&[Backend::ParseComplete, rfq()]);
    assert!(c.take().is_empty(), "a successful Parse is not a statement");
    for aid in ["1", "2", "3"] {
        c.client(&[
            bind("", "P0_1", vec![Some(aid.as_bytes())]),
            execute(""),
            Frontend::Sync,
        ]);
        c.server(&[Backend::BindComplete, cc("SELECT 1"), rfq()]);
    }
    let s = c.take();
    assert_eq!(s.len(), 3);
    for (s, aid) in s.iter().zip(["1", "2", "3"]) {
        assert_eq!(
            s.text,
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        );
        assert_eq!(s.params, Some(vec![Some(aid.to_owned())]));
        assert_eq!(s.outcome, ok(&["SELECT 1"], Some(1)));
    }
}

#[test]
fn pipelined_execute_sync_pairs() {
    // pgbench -M extended sends several Parse/Bind/Describe/Execute/Sync before reading.
    let mut c = Conn::new(false);
    let texts = ["UPDATE a SET x = 1", "SELECT 2", "INSERT INTO h VALUES (3)"];
    for t in texts {
        c.client(&[
            parse("", t),
            bind("", "", vec![]),
            Frontend::Other { tag: b'D' },
            execute(""),
            Frontend::Sync,
        ]);
    }
    assert_eq!(c.log.pending(), 3);
    c.server(&[
        Backend::ParseComplete,
        Backend::BindComplete,
        cc("UPDATE 1"),
        rfq(),
    ]);
    c.server(&[
        Backend::ParseComplete,
        Backend::BindComplete,
        cc("SELECT 1"),
        rfq(),
    ]);
    c.server(&[
        Backend::ParseComplete,
        Backend::BindComplete,
        cc("INSERT 0 1"),
        rfq(),
    ]);
    let s = c.take();
    assert_eq!(s.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(), texts);
    assert_eq!(s[2].outcome, ok(&["INSERT 0 1"], Some(1)));
    assert_eq!(c.log.pending(), 0);
}

#[test]
fn several_executes_in_one_batch() {
    let mut c = Conn::new(false);
    c.client(&[
        parse("a", "SELECT 1"),
        parse("b", "SELECT 2"),
        bind("pa", "a", vec![]),
        bind("pb", "b", vec![]),
        execute("pa"),
        execute("pb"),
        Frontend::Sync,
    ]);
    // Without ParseComplete/BindComplete inspected, too.
    c.server(&[cc("SELECT 1"), cc("SELECT 1"), rfq()]);
    let s = c.take();
    assert_eq!(
        s.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(),
        ["SELECT 1", "SELECT 2"]
    );
}

#[test]
fn error_mid_pipeline_drops_the_skipped_executes() {
    let mut c = Conn::new(false);
    c.client(&[
        parse("", "SELECT 1"),
        bind("", "", vec![]),
        execute(""),
        parse("", "SELECT 1/0"),
        bind("", "", vec![]),
        execute(""),
        parse("", "SELECT 3"),
        bind("", "", vec![]),
        execute(""),
        Frontend::Sync,
        // The next batch runs again.
        parse("", "SELECT 4"),
        bind("", "", vec![]),
        execute(""),
        Frontend::Sync,
    ]);
    c.server(&[cc("SELECT 1"), err("22012", "division by zero"), rfq()]);
    let s = c.take();
    assert_eq!(s.len(), 2, "{s:#?}");
    assert_eq!(s[0].outcome, ok(&["SELECT 1"], Some(1)));
    assert_eq!(s[1].text, "SELECT 1/0");
    assert_eq!(
        s[1].outcome,
        Outcome::Error {
            sqlstate: "22012".into(),
            message: "division by zero".into()
        }
    );
    // "SELECT 3" was skipped by the server and is not logged.
    c.server(&[cc("SELECT 1"), rfq()]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].text, "SELECT 4");
    assert_eq!(c.log.pending(), 0);
}

#[test]
fn failed_parse_is_logged_with_its_text() {
    let mut c = Conn::new(false);
    c.client(&[parse("s1", "SELEC 1"), Frontend::Sync]);
    c.server(&[err("42601", "syntax error at or near \"SELEC\""), rfq()]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].text, "SELEC 1");
    assert!(matches!(&s[0].outcome, Outcome::Error { sqlstate, .. } if sqlstate == "42601"));
    // In a full batch, the Parse's error is recorded on the Execute it stopped.
    c.client(&[
        parse("", "SELEC 2"),
        bind("", "", vec![]),
        execute(""),
        Frontend::Sync,
    ]);
    c.server(&[err("42601", "syntax error"), rfq()]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].text, "SELEC 2");
}

#[test]
fn a_query_inside_a_skipped_batch_is_dropped_too() {
    let mut c = Conn::new(false);
    c.client(&[
        parse("", "SELECT 1/0"),
        bind("", "", vec![]),
        execute(""),
        q("SELECT 'ignored'"),
        Frontend::Sync,
    ]);
    c.server(&[err("22012", "division by zero"), rfq()]);
    assert_eq!(c.take().len(), 1);
    assert_eq!(c.log.pending(), 0);
}

#[test]
fn portal_suspended_completes_an_execute() {
    let mut c = Conn::new(false);
    c.client(&[
        parse("", "SELECT * FROM big"),
        bind("c", "", vec![]),
        Frontend::Execute {
            portal: "c",
            max_rows: 100,
        },
        Frontend::Sync,
    ]);
    c.server(&[Backend::PortalSuspended, rfq()]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].outcome, ok(&[], None));
}

#[test]
fn copy_in_counts_client_bytes() {
    let mut c = Conn::new(false);
    c.client(&[q("COPY t FROM STDIN")]);
    c.server(&[Backend::CopyInResponse]);
    c.client(&[
        Frontend::CopyData { len: 100 },
        Frontend::CopyData { len: 23 },
        Frontend::CopyDone,
    ]);
    // A gateway that streams CopyData reports it this way instead.
    c.log.copy_data(true, 7);
    c.server(&[cc("COPY 3"), rfq()]);
    let s = c.take();
    assert_eq!(s.len(), 1);
    assert_eq!(
        s[0].copy,
        Some(Copy {
            direction: CopyDirection::In,
            bytes: 130
        })
    );
    assert_eq!(s[0].outcome, ok(&["COPY 3"], Some(3)));
}

#[test]
fn copy_out_counts_server_bytes() {
    let mut c = Conn::new(false);
    c.client(&[q("COPY t TO STDOUT")]);
    c.server(&[
        Backend::CopyOutResponse,
        Backend::CopyData { len: 10 },
        Backend::CopyData { len: 20 },
        Backend::CopyDone,
        cc("COPY 2"),
        rfq(),
    ]);
    let s = c.take();
    assert_eq!(
        s[0].copy,
        Some(Copy {
            direction: CopyDirection::Out,
            bytes: 30
        })
    );
    assert_eq!(s[0].outcome, ok(&["COPY 2"], Some(2)));
}

#[test]
fn copy_through_the_extended_protocol() {
    let mut c = Conn::new(false);
    c.client(&[
        parse("", "COPY t TO STDOUT"),
        bind("", "", vec![]),
        execute(""),
        Frontend::Sync,
    ]);
    c.server(&[
        Backend::CopyOutResponse,
        Backend::CopyData { len: 5 },
        Backend::CopyDone,
        cc("COPY 1"),
        rfq(),
    ]);
    let s = c.take();
    assert_eq!(s[0].copy.map(|c| c.bytes), Some(5));
}

#[test]
fn copy_fail_is_an_error() {
    let mut c = Conn::new(false);
    c.client(&[q("COPY t FROM STDIN")]);
    c.server(&[Backend::CopyInResponse]);
    c.client(&[
        Frontend::CopyData { len: 4 },
        Frontend::CopyFail { message: "stop" },
    ]);
    c.server(&[err("57014", "COPY from stdin failed: stop"), rfq()]);
    let s = c.take();
    assert!(matches!(&s[0].outcome, Outcome::Error { sqlstate, .. } if sqlstate == "57014"));
    assert_eq!(s[0].copy.map(|c| c.bytes), Some(4));
}

#[test]
fn close_forgets_statements_and_portals() {
    let mut c = Conn::new(false);
    c.client(&[
        parse("s1", "SELECT 1"),
        bind("p1", "s1", vec![]),
        Frontend::Close {
            kind: b'S',
            name: "s1",
        },
        // The portal outlives its statement (§55.2.3), with the text it was bound with.
        execute("p1"),
        Frontend::Close {
            kind: b'P',
            name: "p1",
        },
        execute("p1"),
        bind("p2", "s1", vec![]),
        execute("p2"),
        Frontend::Sync,
    ]);
    c.server(&[cc("SELECT 1"), cc("SELECT 1"), cc("SELECT 1"), rfq()]);
    let s = c.take();
    assert_eq!(
        s.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(),
        [
            "SELECT 1",
            "(unknown portal \"p1\")",
            "(unknown prepared statement \"s1\")"
        ]
    );
    assert!(c.log.prepared.is_empty());
}

#[test]
fn params_rendering() {
    let mut c = Conn::new(true);
    let big = vec![0xab_u8; 100];
    c.client(&[
        parse("", "INSERT INTO t VALUES ($1, $2, $3, $4)"),
        Frontend::Bind {
            portal: "",
            statement: "",
            param_formats: vec![0, 1, 1, 0],
            params: vec![Some(b"text"), Some(&[0, 0, 0, 42]), Some(&big), None],
            result_formats: vec![],
        },
        execute(""),
    ]);
    c.server(&[cc("INSERT 0 1")]);
    let s = c.take();
    assert_eq!(
        s[0].params,
        Some(vec![
            Some("text".into()),
            Some("\\x0000002a".into()),
            Some("(binary, 100 bytes)".into()),
            None
        ])
    );
    // One format for all.
    let (p, _) = render_params(&[1], &[Some(b"ab")], 1000);
    assert_eq!(p, [Some("\\x6162".to_owned())]);
    // Text that is not UTF-8 is shown as bytes.
    let (p, _) = render_params(&[], &[Some(b"\xff")], 1000);
    assert_eq!(p, [Some("\\xff".to_owned())]);
    // A long text parameter is cut; past the budget, parameters are not kept.
    let long = "x".repeat(5000);
    let (p, used) = render_params(&[], &[Some(long.as_bytes()), Some(b"y")], 1000);
    assert!(
        p[0].as_ref()
            .unwrap()
            .starts_with(&"x".repeat(MAX_PARAM_TEXT))
    );
    assert!(
        p[0].as_ref()
            .unwrap()
            .ends_with("(truncated: 5000 bytes in all)")
    );
    assert_eq!(p[1].as_deref(), Some(NOT_KEPT));
    assert!(used > 1000);
}

#[test]
fn params_not_kept_unless_asked() {
    let mut c = Conn::new(false);
    c.client(&[
        parse("", "SELECT $1"),
        bind("", "", vec![Some(b"secret")]),
        execute(""),
    ]);
    c.server(&[cc("SELECT 1")]);
    assert_eq!(c.take()[0].params, None);
}

#[test]
fn long_text_is_cut_with_a_marker() {
    let mut c = Conn::new(false);
    // Multi-byte characters across the cut.
    let text = "é".repeat(MAX_STATEMENT_TEXT);
    c.client(&[q(&text)]);
    c.server(&[cc("SELECT 1"), rfq()]);
    let s = c.take();
    let kept = &s[0].text;
    let marker = format!("… (truncated: {} bytes in all)", text.len());
    assert!(kept.ends_with(&marker));
    assert_eq!(kept.len() - marker.len(), MAX_STATEMENT_TEXT);
}

#[test]
fn a_million_prepared_statements_do_not_grow_the_tracker() {
    let mut c = Conn::new(false);
    let now = c.now();
    let names: Vec<String> = (0..MAX_PREPARED_STATEMENTS + 5_000)
        .map(|i| format!("s{i}"))
        .collect();
    for name in &names {
        c.log.frontend(&parse(name, "SELECT 1"), now);
        c.log.frontend(&Frontend::Sync, now);
        c.log.backend(&Backend::ParseComplete, now);
        c.log.backend(&rfq(), now);
    }
    assert_eq!(named(&c.log.prepared), MAX_PREPARED_STATEMENTS);
    assert_eq!(c.log.queue.len(), 0);
    c.client(&[
        bind("", "s0", vec![]),
        execute(""),
        bind("", names.last().unwrap(), vec![]),
        execute(""),
        // The unnamed statement is always kept.
        parse("", "SELECT 'unnamed'"),
        bind("", "", vec![]),
        execute(""),
        Frontend::Sync,
    ]);
    c.server(&[cc("SELECT 1"), cc("SELECT 1"), cc("SELECT 1"), rfq()]);
    let s = c.take();
    assert_eq!(
        s.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(),
        ["SELECT 1", TOO_MANY_STATEMENTS, "SELECT 'unnamed'"]
    );
    // Closing makes room again.
    c.client(&[Frontend::Close {
        kind: b'S',
        name: "s0",
    }]);
    c.client(&[parse("again", "SELECT 2")]);
    assert_eq!(c.log.prepared.get("again").map(|t| &**t), Some("SELECT 2"));
}

#[test]
fn prepared_text_has_a_byte_budget() {
    let mut log = StatementLog::new(false);
    let now = Instant::now();
    let text = "x".repeat(MAX_STATEMENT_TEXT);
    let fit = MAX_PREPARED_TEXT / MAX_STATEMENT_TEXT;
    for i in 0..fit + 10 {
        log.frontend(&parse(&format!("s{i}"), &text), now);
    }
    assert_eq!(log.prepared.len(), fit);
    assert!(log.prepared_bytes <= MAX_PREPARED_TEXT);
}

#[test]
fn portals_are_capped() {
    let mut log = StatementLog::new(true);
    let now = Instant::now();
    log.frontend(&parse("s", "SELECT $1"), now);
    for i in 0..MAX_PORTALS + 10 {
        log.frontend(&bind(&format!("p{i}"), "s", vec![Some(b"v")]), now);
    }
    assert_eq!(log.portals.len(), MAX_PORTALS);
    log.frontend(&execute(&format!("p{}", MAX_PORTALS + 1)), now);
    log.frontend(&execute("p0"), now);
    let first = log.backend(&cc("SELECT 1"), now).unwrap();
    assert_eq!(first.text, TOO_MANY_PORTALS);
    assert_eq!(log.backend(&cc("SELECT 1"), now).unwrap().text, "SELECT $1");
}

#[test]
fn tags_are_capped_but_the_last_is_right() {
    let mut c = Conn::new(false);
    c.client(&[q("SELECT 1; ...")]);
    for _ in 0..MAX_TAGS + 10 {
        c.server(&[cc("SELECT 1")]);
    }
    c.server(&[cc("DELETE 9"), rfq()]);
    let s = c.take();
    let Outcome::Ok { tags, rows } = &s[0].outcome else {
        panic!()
    };
    assert_eq!(tags.len(), MAX_TAGS);
    assert_eq!(tags.last().map(String::as_str), Some("DELETE 9"));
    assert_eq!(*rows, Some(9));
}

#[test]
fn server_messages_without_a_request_yield_nothing() {
    let mut c = Conn::new(false);
    // The ReadyForQuery after login, a FATAL at shutdown, stray completions.
    c.server(&[
        rfq(),
        cc("SELECT 1"),
        err("57P01", "terminating"),
        Backend::CopyData { len: 3 },
    ]);
    assert!(c.take().is_empty());
}
