//! Telling the argument forms apart (shared/PROTOCOL.md section 7).
//!
//! - SSH: `[USER@]HOST:PATH`, exactly as sqlite3_rsync's `hostSeparator()`
//!   decides: a `:` with no `/` or `\` before it.
//! - LOCAL: starts with `/`, `./`, `../` or `~/`, or contains no `/`.
//! - REMOTE: anything else, `namespace/…/name.db` with an optional `@VERSION`.

use std::path::PathBuf;

pub use crate::client::target::RemoteRef;
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

/// True for the LOCAL form.
pub fn is_local_form(arg: &str) -> bool {
    arg.starts_with('/')
        || arg.starts_with("./")
        || arg.starts_with("../")
        || arg.starts_with("~/")
        || !arg.contains('/')
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
}
