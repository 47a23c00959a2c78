//! Telling the argument forms apart (shared/PROTOCOL.md section 7).
//!
//! - SSH: `[USER@]HOST:PATH`, exactly as sqlite3_rsync's `hostSeparator()`
//!   decides: a `:` with no `/` or `\` before it.
//! - LOCAL: starts with `/`, `./`, `../` or `~/`, or contains no `/`.
//! - REMOTE: anything else, `namespace/…/name.db` with an optional `@VERSION`,
//!   unless a file of that name exists here ([`refuse_lookalikes`]).
//!
//! [`explain`] says which rule read each argument, for `--dry`.

use std::path::{Path, PathBuf};

pub use crate::client::target::{Form, RemoteRef};
pub use crate::dropin::is_ssh_form;
use crate::wire::VersionRef;

/// One positional argument, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A database on this machine (with `~/` expanded).
    Local(PathBuf),
    /// A replica on an SQLRsync server.
    Remote(RemoteRef),
    /// `[USER@]HOST:PATH`, handled by sqlite3_rsync over ssh.
    Ssh(String),
}

/// The starts that make an argument with '/' a local path.
const LOCAL_PREFIXES: [&str; 4] = ["/", "./", "../", "~/"];

/// True for the LOCAL form.
pub fn is_local_form(arg: &str) -> bool {
    LOCAL_PREFIXES.iter().any(|p| arg.starts_with(p)) || !arg.contains('/')
}

/// How one argument is read, in words.
struct Reading {
    /// `LOCAL`, `REMOTE` or `SSH`.
    form: &'static str,
    /// The rule that decided, naming the argument.
    rule: String,
    /// What that makes the argument.
    makes: &'static str,
    /// How to write a local file instead, when that is not what it is and
    /// it could have been meant (no `@VERSION`, no `HOST:/path`).
    hint: Option<String>,
}

fn reading(arg: &str) -> Reading {
    let hint = |plausible: bool| plausible.then(|| format!("write ./{arg} for a local file"));
    let (form, rule, makes, hint) = if is_ssh_form(arg) {
        let rule = format!("{arg:?} has ':' before any '/'");
        let makes = "[USER@]HOST:PATH, as sqlite3_rsync reads it";
        ("SSH", rule, makes, hint(!arg.contains('/')))
    } else if let Some(p) = LOCAL_PREFIXES.iter().find(|p| arg.starts_with(**p)) {
        (
            "LOCAL",
            format!("{arg:?} starts with {p}"),
            "a local path",
            None,
        )
    } else if !arg.contains('/') {
        ("LOCAL", format!("{arg:?} has no '/'"), "a local path", None)
    } else {
        let rule = format!("{arg:?} has '/' and does not start with / ./ ../ ~/");
        (
            "REMOTE",
            rule,
            "a replica on the server",
            hint(!arg.contains('@')),
        )
    };
    Reading {
        form,
        rule,
        makes,
        hint,
    }
}

/// Which form the arguments take and why, naming each argument as typed:
/// what `--dry` prints on its `form:` line (and `--json` as `form`, `why`).
pub fn explain(origin: &str, replica: Option<&str>) -> Form {
    let o = reading(origin);
    let r = replica.map(reading);
    let name = match (o.form, r.as_ref().map(|r| r.form)) {
        ("SSH", _) | (_, Some("SSH")) => "SSH",
        ("LOCAL", Some("LOCAL")) => "LOCAL",
        _ => "REMOTE",
    };
    let mut parts = vec![format!("ORIGIN {}: {}", o.rule, o.makes)];
    match &r {
        Some(r) => parts.push(format!("REPLICA {}: {}", r.rule, r.makes)),
        None if o.form == "LOCAL" => parts.push("no REPLICA: pushed to the server".into()),
        None => {
            let name = origin.split('@').next().unwrap_or(origin);
            let name = name.rsplit('/').next().unwrap_or(name);
            parts.push(format!("no REPLICA: pulled into ./{name}"));
        }
    }
    // The argument that decided the form says how to make it a local file.
    let decided = [Some(&o), r.as_ref()]
        .into_iter()
        .flatten()
        .find(|x| x.form == name);
    parts.extend(decided.and_then(|x| x.hint.clone()));
    Form {
        name,
        why: parts.join("; "),
    }
}

/// Refuses an argument read as a replica on the server that also names a
/// file or directory here (`data/app.db` with `./data/app.db` present):
/// the user almost surely meant the local one, and the server would be
/// asked for something else, or a pull would write `./app.db`. Checked
/// before anything is read, written or sent. `--server` does not change
/// it. Two spellings still mean the server: the other argument being that
/// same file (`sqlrsync ./ns/app.db ns/app.db`: a file cannot sync onto
/// itself), and an explicit `@VERSION`, which no local file name has
/// (`ns/app.db@latest`).
pub fn refuse_lookalikes(origin: &str, replica: Option<&str>) -> Result<(), String> {
    let pairs = [
        (Some(origin), replica, true),
        (replica, Some(origin), false),
    ];
    for (arg, other, is_origin) in pairs {
        let Some(arg) = arg.filter(|a| !is_ssh_form(a) && !is_local_form(a)) else {
            continue;
        };
        let Ok(meta) = std::fs::symlink_metadata(arg) else {
            continue;
        };
        let other_local = other.filter(|o| !is_ssh_form(o) && is_local_form(o));
        if other_local.is_some_and(|o| crate::sqlite::same_file(&expand_home(o), Path::new(arg))) {
            continue;
        }
        let what = if meta.is_dir() { "directory" } else { "file" };
        let hatch = if arg.contains('@') {
            String::new()
        } else if is_origin {
            format!(" (for the replica on the server, write {arg}@latest)")
        } else if other_local.is_some() {
            " (to push to the replica on the server, run sqlrsync from another directory)".into()
        } else {
            String::new()
        };
        return Err(format!(
            "{arg} is read as a replica on the server (a relative path with '/'), \
             but a local {what} {arg} exists: did you mean ./{arg}?{hatch}"
        ));
    }
    Ok(())
}

/// Classifies one positional argument; a bad `@VERSION` or remote path is an
/// error here, before any connection is made.
pub fn classify(arg: &str) -> Result<Place, String> {
    if arg.is_empty() {
        return Err("an empty argument is neither a local file nor a remote replica".into());
    }
    if is_ssh_form(arg) {
        return Ok(Place::Ssh(arg.to_string()));
    }
    if is_local_form(arg) {
        return Ok(Place::Local(expand_home(arg)));
    }
    let (path, version) = match arg.rsplit_once('@') {
        Some((p, v)) => (p, Some(VersionRef::parse_user(v)?)),
        None => (arg, None),
    };
    validate_remote_path(path)?;
    Ok(Place::Remote(RemoteRef {
        path: path.to_string(),
        version,
    }))
}

/// A remote path must be `namespace/…/name`, each part non-empty, none `.`
/// or `..`, none starting with `.`, no control characters, bounded length:
/// [`crate::wire::remote_path_problem`], the rule a server's `replicaPath`
/// is held to as well.
pub fn validate_remote_path(path: &str) -> Result<(), String> {
    match crate::wire::remote_path_problem(path) {
        Some(why) => Err(format!("invalid remote path {path:?}: {why}")),
        None => Ok(()),
    }
}

/// Expands a leading `~/` to the home directory (shells do this for unquoted
/// arguments; quoted ones and config values reach us as typed).
pub fn expand_home(arg: &str) -> PathBuf {
    if let Some(rest) = arg.strip_prefix("~/")
        && let Some(home) = dirs::home_dir()
    {
        return home.join(rest);
    }
    PathBuf::from(arg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert!(matches!(classify("data.db"), Ok(Place::Local(_))));
        assert!(matches!(classify("./x/data.db"), Ok(Place::Local(_))));
        assert!(matches!(classify("/tmp/data.db"), Ok(Place::Local(_))));
        assert!(matches!(
            classify("user@host:/x/data.db"),
            Ok(Place::Ssh(_))
        ));
        assert!(matches!(classify("host:data.db"), Ok(Place::Ssh(_))));
        assert!(matches!(classify("./a:b"), Ok(Place::Local(_))));
        let Ok(Place::Remote(r)) = classify("ns/sub/data.db@latest-2") else {
            panic!()
        };
        assert_eq!(r.path, "ns/sub/data.db");
        assert_eq!(r.version, Some(VersionRef::BeforeLatest(2)));
        assert_eq!(r.file_name(), "data.db");
        for bad in [
            "ns/data.db@latest+1",
            "ns/data.db@0",
            "ns/data.db@-1",
            "ns/data.db@x",
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
        assert!(classify("ns/../x.db").is_err());
        assert!(classify("ns//x.db").is_err());
    }

    #[test]
    fn a_replica_path_a_server_may_send_reads_back_as_that_replica() {
        // What passes crate::wire::replica_path_problem is, to the command
        // line, a REMOTE replica of exactly that path (the -sqlrsync
        // script's first argument), and the forms the issue found are not.
        let samples = [
            "team/x.db",
            "ns/host/srv/app/data.db",
            "ns/it's $(x).db",
            "ns/a:b.db",
            "other.db",
            "~/x.db",
            "~x/y.db",
            "host:/p",
            "a@host:p/x.db",
            "/abs/p.db",
            "./ns/x.db",
            "ns/../x.db",
            "ns/x.db@7",
            "ns/a@b.db",
            "ns//x.db",
        ];
        for s in samples {
            if crate::wire::replica_path_problem(s).is_none() {
                assert!(
                    matches!(classify(s), Ok(Place::Remote(ref r)) if r.path == s && r.version.is_none()),
                    "{s} passes the CONFIG rule but is not that remote replica"
                );
            }
        }
        for s in ["other.db", "~/x.db", "host:/p", "/abs/p.db", "ns/../x.db"] {
            assert!(crate::wire::replica_path_problem(s).is_some(), "{s}");
        }
    }

    #[test]
    fn explained() {
        let f = explain("app.db", Some("snap:2024-01-01.db"));
        assert_eq!(f.name, "SSH");
        assert!(
            f.why
                .ends_with("; write ./snap:2024-01-01.db for a local file"),
            "{}",
            f.why
        );
        assert!(
            !explain("a.db", Some("u@h:/x/a.db"))
                .why
                .contains("write ./")
        );
        assert_eq!(explain("a.db", Some("~/b.db")).name, "LOCAL");
        let f = explain("a.db", Some("backup/a.db"));
        assert_eq!(f.name, "REMOTE");
        assert!(f.why.contains("write ./backup/a.db for a local file"));
        let f = explain("ns/x/a.db@3", None);
        assert_eq!(f.name, "REMOTE");
        assert!(
            f.why.contains("no REPLICA: pulled into ./a.db"),
            "{}",
            f.why
        );
        assert!(!f.why.contains("write ./"), "{}", f.why);
        assert!(explain("a.db", None).why.contains("pushed to the server"));
        // Only replica-looking arguments are checked against the disk.
        assert!(refuse_lookalikes("/", Some("./")).is_ok());
    }
}
