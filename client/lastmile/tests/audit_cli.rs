//! `lastmile audit …` on a real log: verify, search, export, tail and decrypt, with
//! events sealed on the host to an age recipient.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use lastmile_testkit::block_on;
use std::{
    path::Path,
    process::{Command, Output},
    time::SystemTime,
};

use age::secrecy::ExposeSecret as _;
use lastmile_audit::{
    checkpoints::{self, Publisher},
    log::Log,
};
use serde_json::json;

const ORIGIN: &str = "cli.lastmile/audit";

fn lastmile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lastmile"))
        .args(args)
        .output()
        .unwrap()
}

/// `lastmile audit decrypt --identity ID` with `input` on standard input.
fn decrypt(identity: &Path, input: &str) -> Output {
    lastmile_testkit::run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_lastmile")).args([
            "audit",
            "decrypt",
            "--identity",
            identity.to_str().unwrap(),
        ]),
        input,
    )
    .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The witness directory of the log in `data`.
fn witness_of(data: &Path) -> std::path::PathBuf {
    data.with_file_name("witness")
}

/// A log with six events, two of them sealed to `recipient`, and a checkpoint of them in
/// its witness; returns the verifier key.
fn make_log(data: &Path, recipient: &age::x25519::Recipient) -> String {
    let verifier = checkpoints::init_key(data, ORIGIN).unwrap();
    let (mut log, _) = Log::open(data, 1 << 20).unwrap();
    let secret = json!({"v": 1, "kind": "query", "user": "alice", "session": "s2", "query": "select * from payroll"});
    let events = vec![
        json!({"v": 1, "kind": "login", "user": "alice", "session": "s1"}),
        json!({"v": 1, "kind": "login", "user": "bob", "session": "s2"}),
        json!({"v": 1, "kind": "query", "user": "bob", "session": "s2", "query": "select 1"}),
        lastmile_audit_sink::seal(&secret, std::slice::from_ref(recipient)).unwrap(),
        json!({"v": 1, "kind": "session.revoke", "user": "bob", "session": "s2"}),
        lastmile_audit_sink::seal(
            &json!({"v": 1, "kind": "login", "user": "carol"}),
            std::slice::from_ref(recipient),
        )
        .unwrap(),
    ];
    log.append(events, "gw-1", SystemTime::now()).unwrap();
    let signer = checkpoints::Signer::File(checkpoints::load_signer(data, ORIGIN).unwrap());
    let mut publisher = Publisher::new(data, ORIGIN, signer, Some(witness_of(data))).unwrap();
    block_on(publisher.publish(log.size(), log.root(), 1_800_000_000)).unwrap();
    verifier.to_string()
}

#[test]
fn verify_search_export_and_decrypt() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let identity = age::x25519::Identity::generate();
    let key = make_log(&data, &identity.to_public());
    let id_file = tmp.path().join("security-team.age");
    std::fs::write(
        &id_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let d = data.to_str().unwrap();
    let w = witness_of(&data);
    let w = w.to_str().unwrap();

    let out = lastmile(&[
        "audit",
        "verify",
        "--data-dir",
        d,
        "--key",
        &key,
        "--witness",
        w,
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("ok: 6 entries"));

    // Search by user: bob's three events, nothing else.
    let out = lastmile(&["audit", "search", "--data-dir", d, "--user", "bob"]);
    let lines: Vec<_> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|e| e["event"]["user"] == "bob"));
    let out = lastmile(&[
        "audit",
        "search",
        "--data-dir",
        d,
        "--session",
        "s2",
        "--kind",
        "query",
    ]);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));

    // Exported without the identity, the sealed query stays unreadable…
    let exported = stdout(&lastmile(&["audit", "export", "--data-dir", d]));
    assert_eq!(exported.lines().count(), 6);
    assert!(!exported.contains("payroll"));
    // …and `decrypt` with the identity reads it back exactly.
    let opened = decrypt(&id_file, &exported);
    assert!(opened.status.success());
    let opened = stdout(&opened);
    let query: serde_json::Value = serde_json::from_str(opened.lines().nth(3).unwrap()).unwrap();
    assert_eq!(query["event"]["query"], "select * from payroll");
    assert_eq!(query["event"]["user"], "alice");

    // Another identity cannot open it, and says so.
    let stranger = tmp.path().join("stranger.age");
    std::fs::write(
        &stranger,
        format!(
            "{}\n",
            age::x25519::Identity::generate()
                .to_string()
                .expose_secret()
        ),
    )
    .unwrap();
    let out = decrypt(&stranger, &exported);
    assert!(!out.status.success());
    assert!(!stdout(&out).contains("payroll"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be opened"));

    // Search looks inside sealed events when given the identity.
    let out = lastmile(&[
        "audit",
        "search",
        "--data-dir",
        d,
        "--user",
        "carol",
        "--identity",
        id_file.to_str().unwrap(),
    ]);
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
    let out = lastmile(&["audit", "tail", "--data-dir", d, "-n", "2"]);
    assert_eq!(stdout(&out).lines().count(), 2);
}

#[test]
fn verify_fails_and_names_the_entry_after_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = make_log(&data, &age::x25519::Identity::generate().to_public());
    // Swap entries 2 and 3 in the segment, checksums and all.
    let seg = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&seg).unwrap();
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        records.push(bytes[at..at + 8 + len].to_vec());
        at += 8 + len;
    }
    records.swap(2, 3);
    std::fs::write(&seg, records.concat()).unwrap();
    let out = lastmile(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--key",
        &key,
        "--witness",
        witness_of(&data).to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("first failing entry: 2"),
        "{}",
        stdout(&out)
    );
    // A wrong key is refused with a clear message.
    let out = lastmile(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--key",
        "not-a-key",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a verifier key"));
}

/// The log's own checkpoints replaced by ones over `data`'s present entries, signed with
/// the log's own key, as whoever holds its host can.
fn resign(data: &Path) {
    let (log, _) = Log::open(data, 1 << 20).unwrap();
    std::fs::remove_dir_all(checkpoints::checkpoints_dir(data)).unwrap();
    let signer = checkpoints::Signer::File(checkpoints::load_signer(data, ORIGIN).unwrap());
    let mut publisher = Publisher::new(data, ORIGIN, signer, None).unwrap();
    block_on(publisher.publish(log.size(), log.root(), 1_900_000_000)).unwrap();
}

#[test]
fn verify_needs_a_trust_anchor_besides_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = make_log(&data, &age::x25519::Identity::generate().to_public());
    // Rewritten on the log's host: entry 0's user changed, the log built again from the
    // edited events, and the log's own key signs the result.
    let mut events: Vec<serde_json::Value> = lastmile_audit::log::read_entries(&data)
        .unwrap()
        .records()
        .map(|(_, r)| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["event"].clone()
        })
        .collect();
    events[0]["user"] = json!("mallory");
    std::fs::remove_dir_all(data.join("segments")).unwrap();
    let (mut log, _) = Log::open(&data, 1 << 20).unwrap();
    log.append(events, "gw-1", SystemTime::now()).unwrap();
    drop(log);
    resign(&data);
    let d = data.to_str().unwrap();

    let out = lastmile(&["audit", "verify", "--data-dir", d, "--key", &key]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a trust anchor"), "{err}");
    assert!(err.contains("--witness"), "{err}");

    let w = witness_of(&data);
    let out = lastmile(&[
        "audit",
        "verify",
        "--data-dir",
        d,
        "--key",
        &key,
        "--witness",
        w.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("first failing entry: 0"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_witness_that_is_not_there_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = make_log(&data, &age::x25519::Identity::generate().to_public());
    let gone = tmp.path().join("unmounted");
    let out = lastmile(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--key",
        &key,
        "--witness",
        gone.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("cannot be read") && stdout(&out).contains("is it mounted"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn verify_says_which_entries_the_witness_vouches_for() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = make_log(&data, &age::x25519::Identity::generate().to_public());
    // Two entries the witness has no checkpoint of: acknowledged after its last one.
    let (mut log, _) = Log::open(&data, 1 << 20).unwrap();
    log.append(
        vec![json!({"v": 1, "kind": "login", "user": "dan"}); 2],
        "gw-1",
        SystemTime::now(),
    )
    .unwrap();
    drop(log);
    let out = lastmile(&[
        "audit",
        "verify",
        "--data-dir",
        data.to_str().unwrap(),
        "--key",
        &key,
        "--witness",
        witness_of(&data).to_str().unwrap(),
    ]);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("6 entries (0-5) are covered by checkpoint"),
        "{said}"
    );
    assert!(said.contains("which the witness holds"), "{said}");
    assert!(
        said.contains("2 entries (6-7) are after the last checkpoint: not signed yet"),
        "{said}"
    );
}

/// `lastmile` has no config file; the file it is most often pointed at is an age identity.
#[test]
fn a_missing_identity_is_named_with_its_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("reader.key");
    let stderr = lastmile_testkit::reports_missing_file(
        Command::new(env!("CARGO_BIN_EXE_lastmile"))
            .args(["audit", "decrypt", "--identity"])
            .arg(&missing)
            .env("RUST_LOG", "off"),
        &missing,
    )
    .unwrap();
    assert!(
        stderr.starts_with(&format!("lastmile: cannot read {}: ", missing.display())),
        "{stderr}"
    );
}

/// `search --text` and `--regex`: statements, commands and paths, never the other fields;
/// sealed entries only with the identity, and those not searched are counted on stderr.
#[test]
fn search_by_text_and_regex() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let identity = age::x25519::Identity::generate();
    let id_file = tmp.path().join("security-team.age");
    std::fs::write(
        &id_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let query = |user: &str, resource: &str, sql: &str| {
        json!({"v": 1, "kind": "db.query", "user": user, "session": "s1", "connection": "conn_1",
               "resource": resource, "protocol": "simple", "outcome": "ok", "duration_us": 9,
               "query": sql})
    };
    let mut hashed = query("alice", "orders-db", "");
    hashed.as_object_mut().unwrap().remove("query");
    hashed["query_hmac"] = json!("9f86d081884c7d65");
    let events = vec![
        query("alice", "orders-db", "DROP\n  TABLE orders"),
        // "drop" and "table" only in the resource's name.
        query("bob", "drop-table-db", "select 1"),
        // Both words, not as the phrase.
        query(
            "bob",
            "orders-db",
            "drop index orders_idx; create table t (id int)",
        ),
        json!({"v": 1, "kind": "ssh.exec", "user": "carol", "session": "s3", "connection": "conn_2",
               "resource": "db-host", "channel": 0,
               "command": {"text": "rm -rf /var/lib/postgres", "valid_utf8": true, "scp": null}}),
        json!({"v": 1, "kind": "ssh.sftp", "user": "carol", "session": "s3", "connection": "conn_2",
               "resource": "db-host", "channel": 1, "op": "remove", "path": "/etc/passwd",
               "result": "ok"}),
        lastmile_audit_sink::seal(
            &query("alice", "payroll-db", "drop table payroll"),
            &[identity.to_public()],
        )
        .unwrap(),
        hashed,
        json!({"v": 1, "kind": "login", "user": "droptable", "device": "d1", "session": "s4"}),
    ];
    let (mut log, _) = Log::open(&data, 1 << 20).unwrap();
    log.append(events, "gw-1", SystemTime::now()).unwrap();
    drop(log);
    let d = data.to_str().unwrap();
    let search = |extra: &[&str]| {
        let mut args = vec!["audit", "search", "--data-dir", d];
        args.extend_from_slice(extra);
        let out = lastmile(&args);
        assert!(out.status.success(), "{out:?}");
        let seqs: Vec<u64> = stdout(&out)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        (seqs, String::from_utf8_lossy(&out.stderr).into_owned())
    };

    // The phrase: only the first statement; the sealed one and the hashed one are counted.
    let (seqs, err) = search(&["--text", "\"drop table\""]);
    assert_eq!(seqs, [0]);
    assert!(
        err.contains("1 sealed entry was not searched: give --identity"),
        "{err}"
    );
    assert!(err.contains("1 db.query entry was not searched"), "{err}");
    // The identity opens the sealed one, and its statement matches.
    let id = id_file.to_str().unwrap();
    let (seqs, err) = search(&["--text", "\"DROP TABLE\"", "--identity", id]);
    assert_eq!(seqs, [0, 5]);
    assert!(!err.contains("sealed"), "{err}");
    // Two terms, in either form: not the statement whose resource holds them.
    for args in [
        &["--text", "drop table"][..],
        &["--text", "drop", "--text", "TABLE"],
    ] {
        assert_eq!(search(args).0, [0, 2], "{args:?}");
    }
    // With a filter, entries it excludes are neither searched nor counted.
    let (seqs, err) = search(&["--text", "drop", "--user", "bob"]);
    assert_eq!((seqs, err.as_str()), (vec![2], ""));
    // SSH commands and SFTP paths; a regex as written.
    assert_eq!(search(&["--text", "postgres"]).0, [3]);
    assert_eq!(search(&["--text", "passwd"]).0, [4]);
    assert_eq!(search(&["--regex", r"^rm -rf /"]).0, [3]);
    assert_eq!(search(&["--regex", r"^(?i)drop\s+table"]).0, [0]);
    assert_eq!(search(&["--regex", r"^drop\s+table"]).0, Vec::<u64>::new());
    // A user name is not text.
    assert_eq!(search(&["--text", "droptable"]).0, Vec::<u64>::new());

    let out = lastmile(&["audit", "search", "--data-dir", d, "--regex", "drop (table"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--regex \"drop (table\" is not a valid regular expression"),
        "{err}"
    );
    let out = lastmile(&["audit", "search", "--data-dir", d, "--text", "\"drop"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
