//! What lastmile-ssh reads from the user's client and the target: the SFTP packet log
//! (`sftp_log::SftpLog`) on both directions of a subsystem channel, the `exec` command
//! (`exec_log::ExecCommand`, legacy scp) and the channel policy's decisions on request
//! names, and the asciicast recorder on terminal bytes.
//!
//! Input: a mode byte, then
//! - 0: an SFTP session: chunks (see `Input::chunk`: low bit 0 client, 1 server);
//! - 1: an exec command / request name (the rest, as bytes);
//! - 2: a terminal session: chunks (client: input, server: output), recorded, then read back;
//! - 3: a `.cast` file, parsed.
//!
//! Checked beyond "no panic":
//! - the SFTP log gives the same operations, and the same error if it loses the stream,
//!   whatever the chunking (here: as given, and one byte at a time): the operations a
//!   chunk completed before a refused packet come with the error;
//! - ExecCommand keeps the bytes and says truthfully whether they were UTF-8; a legacy scp
//!   is allowed by `legacy_scp` and nothing else by it; the default policy's `env` decision
//!   is exactly its allow-list (LANG, LC_*);
//! - a recording of any terminal bytes parses back, and its output and input events hold
//!   exactly the lossy UTF-8 of the bytes, however they were cut into chunks.

#![no_main]

use lastmile_fuzz::Input;
use lastmile_ssh::exec_log::ExecCommand;
use lastmile_ssh::policy::{ChannelPolicy, Request};
use lastmile_ssh::principal;
use lastmile_ssh::recording::{CastEncoder, CastHeader, EventCode, cast};
use lastmile_ssh::sftp_log::{SftpLog, SftpLogError, SftpOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.byte() % 4 {
        0 => sftp(input),
        1 => exec(input.rest()),
        2 => recording(input),
        _ => {
            if let Ok(c) = cast::parse(input.rest()) {
                assert!(c.duration() >= 0.0);
            }
        }
    }
});

fn sftp(input: Input<'_>) {
    let chunks: Vec<(bool, &[u8])> = std::iter::from_fn({
        let mut input = input.clone();
        move || input.chunk()
    })
    .collect();
    let as_given = run_sftp(chunks.iter().copied());
    let bytewise = run_sftp(
        chunks
            .iter()
            .flat_map(|&(server, bytes)| bytes.chunks(1).map(move |b| (server, b))),
    );
    assert_eq!(
        as_given, bytewise,
        "the chunking changed the log or its error"
    );
}

fn run_sftp<'a>(
    chunks: impl Iterator<Item = (bool, &'a [u8])>,
) -> (Vec<SftpOp>, Option<SftpLogError>) {
    let mut log = SftpLog::default();
    let mut ops = Vec::new();
    for (server, bytes) in chunks {
        let got = if server {
            log.server_bytes(bytes).map_err(|lost| {
                // What completed before the refused packet is logged as well.
                ops.extend(lost.completed);
                lost.error
            })
        } else {
            log.client_bytes(bytes)
        };
        match got {
            Ok(more) => ops.extend(more),
            Err(e) => {
                let _ = e.to_string();
                return (ops, Some(e));
            }
        }
    }
    ops.extend(log.finish());
    for op in &ops {
        serde_json::to_string(op).expect("an SFTP op serialises");
    }
    (ops, None)
}

fn exec(raw: &[u8]) {
    let command = ExecCommand::parse(raw);
    assert_eq!(command.raw, raw);
    assert_eq!(command.text, String::from_utf8_lossy(raw));
    assert_eq!(command.valid_utf8, std::str::from_utf8(raw).is_ok());
    serde_json::to_string(&command).expect("an exec command serialises");

    // A legacy scp is governed by `legacy_scp`, any other command by `exec`.
    let only_scp = ChannelPolicy {
        exec: false,
        ..ChannelPolicy::default()
    };
    assert_eq!(
        only_scp.decide(Request::Exec(&command)).is_allowed(),
        command.scp.is_some()
    );

    let policy = ChannelPolicy::default();
    let name = command.text.as_str();
    let env_allowed = name == "LANG" || name.starts_with("LC_");
    assert_eq!(
        policy.decide(Request::Env { name }).is_allowed(),
        env_allowed
    );
    let requests = [
        Request::Exec(&command),
        Request::Subsystem { name },
        Request::OpenOther { kind: name },
        Request::ChannelRequestOther { kind: name },
        Request::GlobalRequestOther { kind: name },
        Request::RemoteForward { what: name },
        Request::OpenDirectTcpip {
            host: name,
            port: u32::from(raw.first().copied().unwrap_or(22)),
            open_channels: raw.len(),
        },
        Request::OpenSession {
            open_channels: raw.len(),
            no_more_sessions: raw.len() % 2 == 1,
        },
    ];
    for request in requests {
        let decision = policy.decide(request);
        assert_eq!(decision.message().is_none(), decision.is_allowed());
    }
    let allowed: Vec<String> = name.split(',').map(str::to_owned).collect();
    if let Some(login) = allowed.first() {
        assert!(principal::choose(login, &allowed).is_ok());
    }
    if let Err(e) = principal::choose("root", &allowed) {
        let _ = e.to_string();
    }
}

fn recording(mut input: Input<'_>) {
    let header = CastHeader::new(80, 24, 1_700_000_000);
    let (mut encoder, head) = CastEncoder::new(&header).expect("the header serialises");
    let mut lines = vec![head];
    let (mut output, mut typed) = (Vec::new(), Vec::new());
    let mut elapsed = std::time::Duration::ZERO;
    let mut resizes = 0;
    while let Some((server, bytes)) = input.chunk() {
        // Time mostly moves forward; now and then the clock steps back.
        match bytes.first() {
            Some(0) => elapsed = elapsed.saturating_sub(std::time::Duration::from_millis(5)),
            Some(&b) => elapsed += std::time::Duration::from_micros(u64::from(b) * 997),
            None => {
                resizes += 1;
                lines.extend(encoder.resize(elapsed, 80 + resizes, 24));
                continue;
            }
        }
        if server {
            output.extend_from_slice(bytes);
            lines.extend(encoder.output(elapsed, bytes));
        } else {
            typed.extend_from_slice(bytes);
            lines.extend(encoder.input(elapsed, bytes));
        }
    }
    lines.extend(encoder.finish(elapsed));
    let file = lines.join("\n") + "\n";
    let parsed = match cast::parse(file.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("our own recording does not parse: {e}\n{file}"),
    };
    assert_eq!(parsed.header, header);
    let text = |code: EventCode| -> String {
        parsed
            .events
            .iter()
            .filter(|e| e.code == code)
            .map(|e| e.data.as_str())
            .collect()
    };
    assert_eq!(text(EventCode::Output), String::from_utf8_lossy(&output));
    assert_eq!(text(EventCode::Input), String::from_utf8_lossy(&typed));
    let resized = parsed
        .events
        .iter()
        .filter(|e| e.code == EventCode::Resize)
        .count();
    assert_eq!(resized, resizes as usize);
}
