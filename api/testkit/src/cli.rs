//! Running a command-line program the way a user does, answering its prompts.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

/// Runs `cmd` with `stdin` written to its standard input (then closed), and collects its
/// exit status, standard output and standard error.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        // A program that exits without reading its input is not an error here.
        match input.write_all(stdin.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e),
            _ => {}
        }
    }
    child.wait_with_output()
}
