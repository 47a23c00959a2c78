//! Validation of namespaces and remote paths (`namespace/…/name.db`).
//!
//! Paths name rows, never files (replica files are named by id), but they
//! still appear in URLs, HTML and logs, so they are held to a strict
//! alphabet: no `..`, no empty parts (`//`), no leading `.` or `/`, no
//! encoded slashes or NULs, bounded lengths.

/// Longest part between slashes.
pub const MAX_PART: usize = 128;
/// Longest whole path.
pub const MAX_PATH: usize = 512;
/// Most parts in a path.
pub const MAX_PARTS: usize = 16;

fn part_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~' | b'+')
}

/// Checks a path as a push names it, whole: no percent escapes at all
/// (so no encoded slashes or NULs), then [`validate_path`]. The one rule a
/// new replica path is held to, whether a push makes it or `replica
/// rename` does.
pub fn validate_new_path(path: &str) -> Result<(), String> {
    if path.contains('%') || has_encoded_separator(path) {
        return Err("percent-escapes are not allowed in replica paths".into());
    }
    validate_path(path).map(|_| ())
}

/// Checks a namespace name.
pub fn validate_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() || ns.len() > 64 {
        return Err("namespace must be 1 to 64 characters".into());
    }
    if !ns
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "namespace {ns:?} may only hold letters, digits, '_' and '-'"
        ));
    }
    if ns.starts_with('-') || ns.eq_ignore_ascii_case("sapi") {
        return Err(format!("namespace {ns:?} is reserved or malformed"));
    }
    Ok(())
}

/// Checks a remote path; returns its namespace.
pub fn validate_path(path: &str) -> Result<&str, String> {
    if path.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    if path.starts_with('/') {
        return Err("path must not be absolute".into());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 2 {
        return Err("path must be namespace/name".into());
    }
    if parts.len() > MAX_PARTS {
        return Err(format!("path has more than {MAX_PARTS} parts"));
    }
    for p in &parts {
        if p.is_empty() {
            return Err("path has an empty part (//)".into());
        }
        if *p == "." || *p == ".." || p.starts_with('.') {
            return Err(format!("path part {p:?} may not start with '.'"));
        }
        if p.len() > MAX_PART {
            return Err(format!("path part longer than {MAX_PART} bytes"));
        }
        if !p.bytes().all(part_char_ok) {
            return Err(format!(
                "path part {:?} may only hold letters, digits and . _ - ~ +",
                p.escape_debug().to_string()
            ));
        }
    }
    validate_namespace(parts[0])?;
    Ok(parts[0])
}

/// True when the raw (still percent-encoded) request path hides a slash,
/// backslash or NUL in an escape: those never reach path validation intact.
pub fn has_encoded_separator(raw: &str) -> bool {
    let lower = raw.to_ascii_lowercase();
    ["%2f", "%5c", "%00", "%2e"]
        .iter()
        .any(|e| lower.contains(e))
}

/// One path part made from free text (a hostname or a file name): bad
/// characters become `_`, leading dots are dropped, length bounded.
pub fn sanitise_part(s: &str) -> String {
    let mut out: String = s
        .bytes()
        .map(|b| if part_char_ok(b) { b as char } else { '_' })
        .collect();
    while out.starts_with('.') {
        out.remove(0);
    }
    out.truncate(MAX_PART);
    if out.is_empty() {
        out.push_str("db");
    }
    out
}

/// The path a push without one is stored under:
/// `namespace/host/<absolute path of the database>` (PROTOCOL.md section
/// 2), from the key's namespace and the client's hostname and local path
/// (headers that may be missing or hold anything), so that `d1/data.db`
/// and `d2/data.db` of one machine never share a replica. A path too deep
/// or too long for a replica path keeps its last parts.
pub fn default_push_path(
    namespace: &str,
    hostname: Option<&str>,
    local_path: Option<&str>,
) -> String {
    let host = sanitise_part(hostname.unwrap_or("host"));
    let mut parts: Vec<String> = local_path
        .map(|p| {
            p.split('/')
                .filter(|s| !s.is_empty() && *s != "." && *s != "..")
                .map(sanitise_part)
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        parts.push("db.sqlite".into());
    }
    let fixed = namespace.len() + host.len() + 2;
    while parts.len() > 1
        && (parts.len() + 2 > MAX_PARTS
            || fixed + parts.iter().map(|p| p.len() + 1).sum::<usize>() > MAX_PATH)
    {
        parts.remove(0);
    }
    format!("{namespace}/{host}/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(validate_path("ns/a.db"), Ok("ns"));
        assert_eq!(validate_path("ns/host/a.db"), Ok("ns"));
        for bad in [
            "ns",
            "/ns/a.db",
            "ns//a.db",
            "ns/../a.db",
            "ns/.a",
            "ns/a\0b",
            "ns/a b",
            "ns/a@1",
            "sapi/x.db",
            "",
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_path(&format!("ns/{}", "a".repeat(200))).is_err());
        assert!(has_encoded_separator("/sapi/pull/ns%2Fa.db"));
        assert!(!has_encoded_separator("/sapi/pull/ns/a.db"));
        assert_eq!(sanitise_part("..my host"), "my_host");
    }

    #[test]
    fn default_names_keep_the_whole_local_path() {
        let name = |p| default_push_path("ns", Some("homelab1"), Some(p));
        assert_eq!(
            name("/path/to/app/data.db"),
            "ns/homelab1/path/to/app/data.db"
        );
        assert_ne!(name("/srv/d1/data.db"), name("/srv/d2/data.db"));
        assert_eq!(name("/a/../b/./c.db"), "ns/homelab1/a/b/c.db");
        assert_eq!(default_push_path("ns", None, None), "ns/host/db.sqlite");
        let deep = format!("/{}x.db", "d/".repeat(40));
        let n = name(&deep);
        assert!(validate_path(&n).is_ok(), "{n}");
        assert!(n.ends_with("/d/x.db"), "{n}");
    }
}
