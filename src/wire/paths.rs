//! Remote replica paths (`namespace/…/name.db`, PROTOCOL.md sections 2 and
//! 7): the one rule for a string that names a replica on a server.
//!
//! The command line holds the user's arguments to it
//! ([`remote_path_problem`]), and a server's CONFIG `replicaPath` is held
//! to it and more ([`replica_path_problem`]): that value becomes the first
//! argument of the `-sqlrsync` script and the `remotePath` of
//! local-secrets.toml, so it must read back as the same REMOTE replica.
//! A server that answers `other.db`, `~/x.db` or `host:/p` would otherwise
//! turn the script's "pull" into a LOCAL or ssh sync that overwrites a
//! file the user meant to keep.

use super::limits::MAX_CONFIG_PATH_LEN;

/// Longest part between slashes of a remote path.
pub const MAX_PATH_PART: usize = 255;

/// Why `path` is not `namespace/…/name` (each part non-empty, none
/// starting with `.`, so no `.` or `..`; no control characters or
/// backslashes; bounded length); `None` when it is. The command line
/// asks this after it took off `@VERSION` and ruled out the LOCAL and ssh
/// forms.
pub fn remote_path_problem(path: &str) -> Option<&'static str> {
    if path.len() > MAX_CONFIG_PATH_LEN {
        return Some("longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Some("it must not start with /");
    }
    if path.contains("//") {
        return Some("it has an empty part (//)");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Some("it has control characters or backslashes");
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Some("expected namespace/name");
    }
    if parts.iter().any(|p| p.starts_with('.')) {
        return Some("no part may start with '.'");
    }
    if parts.iter().any(|p| p.len() > MAX_PATH_PART) {
        return Some("a part is longer than 255 bytes");
    }
    None
}

/// Why a server's `replicaPath` is not a path the command line would read
/// back as this very REMOTE replica; `None` when it is. Beyond
/// [`remote_path_problem`]: not the LOCAL form (a `/` is needed; no
/// leading `/`, `~` or `.`), not the ssh form `HOST:PATH` (a `:` before
/// the first `/`), no `@` (the command line reads what follows it as a
/// version), no invisible characters ([`super::texts::hidden`]).
pub fn replica_path_problem(path: &str) -> Option<&'static str> {
    if path.chars().any(super::texts::hidden) {
        return Some("it holds control characters");
    }
    if !path.contains('/') {
        return Some("it names a local file (no '/')");
    }
    if path.starts_with(['/', '~', '.']) {
        return Some("it starts with '/', '~' or '.', as a local path does");
    }
    if path.find(':').is_some_and(|c| !path[..c].contains('/')) {
        return Some("it is the ssh form HOST:PATH");
    }
    if path.contains('@') {
        return Some("it holds '@', which the command line reads as a version");
    }
    remote_path_problem(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_remote_replica_paths_pass() {
        for good in [
            "team/x.db",
            "ns/host/srv/app/data.db",
            "ns/it's $(x).db",
            "ns/a:b.db",
            "ns/~x.db",
        ] {
            assert_eq!(replica_path_problem(good), None, "{good}");
        }
        for bad in [
            "other.db",
            "~/x.db",
            "~x/y.db",
            "host:/p",
            "host:p/q.db",
            "user@host:/p",
            "/abs/p.db",
            "./ns/x.db",
            "../ns/x.db",
            ".ns/x.db",
            "ns/../x.db",
            "ns/./x.db",
            "ns//x.db",
            "ns/x.db/",
            "ns/x.db@7",
            "ns\\x.db",
            "ns/\u{1b}[2Jx.db",
            "ns/\u{9b}x.db",
            "ns/\u{202e}bd.x",
            "",
        ] {
            assert!(replica_path_problem(bad).is_some(), "{bad:?}");
        }
        assert!(replica_path_problem(&format!("ns/{}", "x".repeat(256))).is_some());
        assert!(replica_path_problem(&"ns/x".repeat(300)).is_some());
    }
}
