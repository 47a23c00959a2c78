//! Being sqlite3_rsync: the `sqlite3_rsync` link and the pass-through forms.
//!
//! The process is replaced by the embedded helper (`exec`), so options, help
//! text, output and exit codes are sqlite3_rsync's own, signals (Ctrl-C,
//! SIGTERM) go straight to it, and no sqlrsync process is left to orphan it.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::helper;
use crate::ui::Printer;

/// True when argv[0] names `sqlite3_rsync` (a link or copy of our binary).
pub fn invoked_as_sqlite3_rsync(arg0: Option<&OsString>) -> bool {
    arg0.and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == OsStr::new("sqlite3_rsync"))
}

/// True when sqlite3_rsync would treat `arg` as `[USER@]HOST:PATH`.
pub fn is_ssh_form(arg: &str) -> bool {
    match arg.find(':') {
        Some(colon) => !arg[..colon].contains(['/', '\\']),
        None => false,
    }
}

/// Options that take a value, ours and sqlite3_rsync's, in either dash form;
/// needed to tell a positional argument from an option's value.
const VALUE_OPTIONS: &[&str] = &[
    "server",
    "m",
    "message",
    "protocol",
    "pullKey",
    "pushKey",
    "replicaID",
    "adminKey",
    "exe",
    "ssh",
    "p",
    "port",
    "logfile",
    "errorfile",
    "remote-errorfile",
    "debugfile",
    "remote-debugfile",
];

/// Options only sqlite3_rsync has: their presence means its form.
const HELPER_ONLY_OPTIONS: &[&str] = &[
    "origin",
    "replica",
    "commcheck",
    "arg-escape-check",
    "logfile",
    "errorfile",
    "remote-errorfile",
    "debugfile",
    "remote-debugfile",
];

/// True when the arguments are sqlite3_rsync's forms: a `USER@HOST:PATH`
/// positional, or one of its own options such as `--origin`/`--replica`
/// (what ssh runs on the far side with `--exe sqlrsync`).
pub fn is_sqlite3_rsync_form(args: &[OsString]) -> bool {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_string_lossy();
        if let Some(name) = option_name(&arg) {
            if HELPER_ONLY_OPTIONS.contains(&name) {
                return true;
            }
            if VALUE_OPTIONS.contains(&name) && !arg.contains('=') {
                i += 1;
            }
        } else if arg != "-" && is_ssh_form(&arg) {
            return true;
        }
        i += 1;
    }
    false
}

/// `--name`, `-name` or `--name=value` to `name`; None for positionals.
fn option_name(arg: &str) -> Option<&str> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if body.is_empty() {
        return None;
    }
    Some(body.split('=').next().unwrap_or(body))
}

/// Replaces this process with the helper run with `args`. Returns only when
/// the helper could not be started. Where the OS refuses to execute the
/// helper, the next place it can be put is tried (see
/// [`helper::refused`]); `printer` says with `-v` where it ran from. From
/// the `exec` on, what is printed is the helper's own output, not ours (the
/// documented exception to [`crate::ui`]).
pub fn exec_helper(args: &[OsString], printer: &Printer) -> ExitCode {
    loop {
        let h = match helper::prepared() {
            Ok(h) => h,
            Err(e) => {
                printer.stderr(&format!("sqlrsync: error: {e:#}"));
                return ExitCode::FAILURE;
            }
        };
        printer.verbose(&format!("sqlrsync: {}", h.note));
        // LOCAL: the helper starts its replica side as its own argv[0].
        h.keep_across_exec();
        let err = Command::new(&h.path).args(args).exec();
        if helper::refused(&h, &err) {
            continue;
        }
        printer.stderr(&format!(
            "sqlrsync: error: cannot run {}: {err}",
            h.path.display()
        ));
        return ExitCode::FAILURE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn forms() {
        assert!(is_sqlite3_rsync_form(&os(&["a.db", "u@h:/b.db"])));
        assert!(is_sqlite3_rsync_form(&os(&["--origin", "a.db", "b.db"])));
        assert!(is_sqlite3_rsync_form(&os(&["-replica", "a.db", "b.db"])));
        assert!(!is_sqlite3_rsync_form(&os(&["a.db", "b.db", "-v"])));
        assert!(!is_sqlite3_rsync_form(&os(&[
            "a.db", "--server", "ws://h:1", "ns/a.db"
        ])));
        assert!(!is_sqlite3_rsync_form(&os(&[
            "a.db", "-m", "x:y", "ns/a.db"
        ])));
        assert!(invoked_as_sqlite3_rsync(Some(&OsString::from(
            "/usr/bin/sqlite3_rsync"
        ))));
        assert!(!invoked_as_sqlite3_rsync(Some(&OsString::from("sqlrsync"))));
    }
}
