//! Being sqlite3_rsync: the `sqlite3_rsync` link and the pass-through forms.
//!
//! The process is replaced by the embedded helper (`exec`), so options, help
//! text, output and exit codes are sqlite3_rsync's own, signals (Ctrl-C,
//! SIGTERM) go straight to it, and no sqlrsync process is left to orphan it.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::client::Form;
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

/// `--dry` with an ssh form (sqlite3_rsync has no dry run of its own): the
/// arguments it needs to say what would run. Nothing is run, sent or
/// written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SshDry {
    pub origin: String,
    pub replica: String,
    ssh: Option<String>,
    exe: Option<String>,
    port: Option<String>,
    json: bool,
}

impl SshDry {
    /// Some when `args` ask for `--dry` of `ORIGIN REPLICA` with one of them
    /// `[USER@]HOST:PATH`; None leaves them to the helper.
    pub fn from_args(args: &[OsString]) -> Option<SshDry> {
        let mut d = SshDry::default();
        let (mut dry, mut positionals) = (false, Vec::new());
        let mut i = 0;
        while i < args.len() {
            let arg = args[i].to_string_lossy().into_owned();
            let Some(name) = option_name(&arg).filter(|_| arg != "-") else {
                positionals.push(arg);
                i += 1;
                continue;
            };
            let value = match arg.split_once('=') {
                Some((_, v)) => Some(v.to_string()),
                None if VALUE_OPTIONS.contains(&name) => {
                    i += 1;
                    args.get(i).map(|v| v.to_string_lossy().into_owned())
                }
                None => None,
            };
            match name {
                "dry" => dry = true,
                "json" => d.json = true,
                "ssh" => d.ssh = value,
                "exe" => d.exe = value,
                "p" | "port" => d.port = value,
                n if HELPER_ONLY_OPTIONS.contains(&n) => return None,
                _ => {}
            }
            i += 1;
        }
        let [origin, replica] = <[String; 2]>::try_from(positionals).ok()?;
        if !dry || is_ssh_form(&origin) == is_ssh_form(&replica) {
            return None;
        }
        (d.origin, d.replica) = (origin, replica);
        Some(d)
    }

    /// Prints what sqlite3_rsync would run (the ssh command line, as it
    /// builds it, without its shell quoting) and the form's reason.
    pub fn print(&self, form: &Form) {
        let printer = Printer {
            json: self.json,
            ..Printer::default()
        };
        let pulls = is_ssh_form(&self.origin);
        let (remote, local) = match pulls {
            true => (&self.origin, &self.replica),
            false => (&self.replica, &self.origin),
        };
        let (host, path) = remote.split_once(':').unwrap_or((remote, ""));
        let local_abs = std::path::absolute(local).unwrap_or_else(|_| local.into());
        let tail = Path::new(local)
            .file_name()
            .map_or(local.clone(), |t| t.to_string_lossy().into_owned());
        let (side, a, b) = match pulls {
            true => ("--origin", path, tail.as_str()),
            false => ("--replica", tail.as_str(), path),
        };
        let command = format!(
            "{}{} -e none {host} {} {side} {a} {b}",
            self.ssh.as_deref().unwrap_or("ssh"),
            self.port
                .as_ref()
                .map(|p| format!(" -p {p}"))
                .unwrap_or_default(),
            self.exe.as_deref().unwrap_or("sqlite3_rsync"),
        );
        let here = if local_abs.exists() {
            "exists"
        } else {
            "does not exist"
        };
        let local_line = format!("{} (this machine; {here})", local_abs.display());
        let remote_line = format!("{remote} (host {host}, path {path})");
        let (origin, replica) = match pulls {
            true => (remote_line, local_line),
            false => (local_line, remote_line),
        };
        if printer.json {
            printer.json(&serde_json::json!({
                "mode": "SSH", "dry": true, "form": form.name, "why": form.why,
                "origin": if pulls { remote.clone() } else { local_abs.display().to_string() },
                "replica": if pulls { local_abs.display().to_string() } else { remote.clone() },
                "host": host, "remotePath": path, "command": command,
            }));
            return;
        }
        printer
            .stdout("mode:       SSH (sqlite3_rsync over ssh, sqlite3_rsync on the far side too)");
        printer.stdout(&form.line(12));
        printer.stdout(&format!("origin:     {origin}"));
        printer.stdout(&format!("replica:    {replica}"));
        printer.stdout(&format!("would:      run {command}"));
        printer.stdout("dry run:    nothing was run, sent or written");
    }
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

    #[test]
    fn dry_of_the_ssh_form() {
        let d = SshDry::from_args(&os(&["a.db", "h:b.db", "--dry", "-p", "22", "--exe=x"]))
            .expect("a dry run");
        assert_eq!((d.origin.as_str(), d.replica.as_str()), ("a.db", "h:b.db"));
        assert_eq!(
            (d.port.as_deref(), d.exe.as_deref()),
            (Some("22"), Some("x"))
        );
        // Without --dry, or with sqlite3_rsync's own far-side forms, or with
        // no ssh side: the helper's business.
        assert!(SshDry::from_args(&os(&["a.db", "h:b.db"])).is_none());
        assert!(SshDry::from_args(&os(&["--origin", "a.db", "h:b.db", "--dry"])).is_none());
        assert!(SshDry::from_args(&os(&["a.db", "b.db", "--dry"])).is_none());
        assert!(SshDry::from_args(&os(&["--ssh", "h:x", "a.db", "b.db", "--dry"])).is_none());
    }
}
