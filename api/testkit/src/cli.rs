//! Running a command-line program the way a user does, answering its prompts, and
//! reading its error report as a user would.

use std::{
    collections::HashSet,
    io::Write as _,
    path::Path,
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

/// Runs `cmd`, which is pointed at `missing` (a file that does not exist), and checks what
/// its user is told: it fails, and its standard error names the file, says why (the OS's
/// "No such file or directory") and says each cause once. Returns that standard error,
/// or what is wrong with it.
pub fn reports_missing_file(cmd: &mut Command, missing: &Path) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let not_found = std::io::Error::from_raw_os_error(nix::errno::Errno::ENOENT as i32);
    if out.status.success() {
        Err(format!("{cmd:?} succeeded; stderr: {stderr}"))
    } else if !stderr.contains(&missing.display().to_string()) {
        Err(format!(
            "stderr does not name {}: {stderr}",
            missing.display()
        ))
    } else if stderr.matches(&not_found.to_string()).count() != 1 {
        Err(format!("stderr does not say `{not_found}` once: {stderr}"))
    } else if let Some(twice) = repeated_cause(&stderr) {
        Err(format!("stderr says `{twice}` twice: {stderr}"))
    } else {
        Ok(stderr)
    }
}

/// The first part of an error report that appears in it twice: a part is what lies
/// between `: ` separators (anyhow's `{:#}`) or on a line of its own (its `Caused by:`
/// list). An error whose message includes its source, and which also returns that source
/// from `source()`, is reported with the source twice.
pub fn repeated_cause(report: &str) -> Option<&str> {
    let mut seen = HashSet::new();
    report
        .lines()
        .flat_map(|line| line.split(": "))
        .map(str::trim)
        .filter(|part| !part.is_empty() && *part != "Caused by:")
        .find(|part| !seen.insert(*part))
}

#[cfg(test)]
mod tests {
    use super::repeated_cause;

    #[test]
    fn a_cause_said_twice_is_found_in_either_form() {
        let os = "No such file or directory (os error 2)";
        assert_eq!(
            repeated_cause(&format!("lastmiled: cannot read /x.toml: {os}: {os}")),
            Some(os)
        );
        assert_eq!(
            repeated_cause(&format!(
                "Error: cannot read /x.toml: {os}\n\nCaused by:\n    {os}\n"
            )),
            Some(os)
        );
        assert_eq!(
            repeated_cause(&format!("lastmiled: cannot read /x.toml: {os}")),
            None
        );
        assert_eq!(
            repeated_cause(&format!(
                "Error: cannot read /x.toml\n\nCaused by:\n    {os}\n"
            )),
            None
        );
    }
}
