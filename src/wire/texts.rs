//! The server's text frames (`CONFIG=`, `MESSAGE=`, `ABORT=`; PROTOCOL.md
//! section 3) and the subscribe endpoint's JSON messages (section 5).

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::keys::is_key_shaped;
use super::limits::{
    MAX_CONFIG_ID_LEN, MAX_CONFIG_PATH_LEN, MAX_SHOWN_MESSAGE_BYTES, MAX_SHOWN_MESSAGES,
    MAX_SHOWN_TEXT,
};
use super::paths::replica_path_problem;

/// The JSON of the server's `CONFIG=` text frame. Every field is optional;
/// unknown fields from other servers are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerConfig {
    #[serde(rename = "replicaID", default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_path: Option<String>,
    #[serde(
        rename = "committedVersionID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub committed_version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_pull_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_push_key: Option<String>,
    /// Hex SHA-256 of the version's database bytes (our server only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_hash: Option<String>,
    /// Hex XXH3-128 of the same (our server only, for versions committed
    /// since it keeps one): the cheaper check of a pull, see
    /// [`VersionHasher`].
    #[serde(
        rename = "versionXxh3",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub version_xxh3: Option<String>,
}

impl ServerConfig {
    /// Checks what a client will store, print or act on: ids and the path
    /// are of sane length without control characters (they go into files,
    /// headers and the terminal), the path is a REMOTE replica path as the
    /// command line reads one ([`replica_path_problem`]: it becomes the
    /// `-sqlrsync` script's first argument), keys look like keys, and a
    /// versionHash is 64 hex digits. `Err` names the first bad field, with
    /// its value made [`visible`], for one line.
    pub fn check(&self) -> Result<(), String> {
        // Tabs too: these values go into headers and a shell script.
        let printable = |v: &str| !v.chars().any(|c| c.is_control() || hidden(c));
        let field = |name: &str, v: &Option<String>, max: usize| -> Result<(), String> {
            match v {
                Some(v) if v.len() > max => Err(format!("{name} is {} bytes long", v.len())),
                Some(v) if !printable(v) => Err(format!("{name} holds control characters")),
                _ => Ok(()),
            }
        };
        field("replicaID", &self.replica_id, MAX_CONFIG_ID_LEN)?;
        field(
            "committedVersionID",
            &self.committed_version_id,
            MAX_CONFIG_ID_LEN,
        )?;
        field("replicaPath", &self.replica_path, MAX_CONFIG_PATH_LEN)?;
        if let Some(p) = &self.replica_path
            && let Some(why) = replica_path_problem(p)
        {
            return Err(format!(
                "replicaPath \"{}\" is not a remote replica path: {why}",
                visible(p)
            ));
        }
        for (name, k) in [
            ("newPullKey", &self.new_pull_key),
            ("newPushKey", &self.new_push_key),
        ] {
            if let Some(k) = k
                && !is_key_shaped(k)
            {
                return Err(format!("{name} is not a key"));
            }
        }
        if let Some(h) = &self.version_hash
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("versionHash is not a SHA-256 in hex".into());
        }
        if let Some(h) = &self.version_xxh3
            && (h.len() != 32 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("versionXxh3 is not an XXH3-128 in hex".into());
        }
        Ok(())
    }
}

/// A text frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerText {
    Config(ServerConfig),
    Message(String),
    Abort(String),
}

impl ServerText {
    /// Parses `CONFIG={json}`, `MESSAGE=text` or `ABORT=reason`.
    pub fn parse(text: &str) -> Result<ServerText, String> {
        if let Some(json) = text.strip_prefix("CONFIG=") {
            serde_json::from_str(json)
                .map(ServerText::Config)
                .map_err(|e| {
                    format!("the server sent a bad CONFIG (not the JSON object expected): {e}")
                })
        } else if let Some(m) = text.strip_prefix("MESSAGE=") {
            Ok(ServerText::Message(m.to_string()))
        } else if let Some(m) = text.strip_prefix("ABORT=") {
            Ok(ServerText::Abort(m.to_string()))
        } else {
            let head: String = text.chars().take(40).collect();
            Err(format!("server sent an unknown text frame: {head:?}"))
        }
    }

    pub fn encode(&self) -> String {
        match self {
            ServerText::Config(c) => format!(
                "CONFIG={}",
                serde_json::to_string(c).expect("config serialises")
            ),
            ServerText::Message(m) => format!("MESSAGE={m}"),
            ServerText::Abort(m) => format!("ABORT={m}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Version hashes: what a pulling client checks its copy against.

/// One text frame on `/sapi/subscribe/...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub timestamp: String,
}

impl SubscribeMessage {
    pub fn new(kind: &str, data: serde_json::Value) -> Self {
        SubscribeMessage {
            kind: kind.to_string(),
            data,
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("subscribe message serialises")
    }
}

/// A peer's text (an ABORT reason, a MESSAGE, an HTTP body, a helper's
/// stderr) as one line: newlines become "; " and every other invisible
/// character is made [`visible`]. Every error sqlrsync prints is one line,
/// whatever the far side sent.
pub fn one_line(s: &str) -> String {
    let joined = s
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match visible(&joined) {
        Cow::Borrowed(_) => joined,
        Cow::Owned(v) => v,
    }
}

/// True for a character that must not reach a terminal as it is: C0
/// controls but tab, DEL, C1 controls (U+009B is a one-byte CSI to some
/// terminals) and the bidirectional overrides and isolates (U+202A-U+202E,
/// U+2066-U+2069), which reorder what follows them on screen.
pub fn hidden(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every [`hidden`] character written as a visible escape: `\x1b`
/// below U+0080, `\u{9b}` above. A server's text (MESSAGE, ABORT, an HTTP
/// body, a close reason, CONFIG values) is printed only this way, so it
/// can neither set the window title, clear the screen, move the cursor nor
/// dress itself up as our own lines. Backslashes are kept: what they spell
/// is only text, and this makes the function idempotent.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c as u32 {
            _ if !hidden(c) => out.push(c),
            n @ 0..=0x7f => {
                let _ = write!(out, "\\x{n:02x}");
            }
            n => {
                let _ = write!(out, "\\u{{{n:x}}}");
            }
        }
    }
    Cow::Owned(out)
}

/// Marks a text cut at [`MAX_SHOWN_TEXT`].
pub const TRUNCATED: &str = "…[truncated]";

/// A server's text as it is shown and kept: [`one_line`] (so
/// [`visible`]), cut at [`MAX_SHOWN_TEXT`] bytes and then marked
/// [`TRUNCATED`]. Only the head of a long text is ever copied.
pub fn shown_text(raw: &str) -> String {
    let head = cut(raw, MAX_SHOWN_TEXT);
    let mut s = one_line(head);
    let mut truncated = head.len() < raw.len();
    if s.len() > MAX_SHOWN_TEXT {
        // Escapes made it longer.
        let keep = cut(&s, MAX_SHOWN_TEXT).len();
        s.truncate(keep);
        truncated = true;
    }
    if truncated {
        s.push_str(TRUNCATED);
    }
    s
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The `MESSAGE=` texts of one sync as they are shown and kept for the
/// report: each [`shown_text`], at most [`MAX_SHOWN_MESSAGES`] of them
/// and [`MAX_SHOWN_MESSAGE_BYTES`] in all; the rest are only counted.
#[derive(Debug, Default, Clone)]
pub struct ShownMessages {
    /// The messages kept, in order.
    pub kept: Vec<String>,
    /// Bytes of `kept`.
    bytes: usize,
    /// Messages that came after the bounds were reached.
    pub not_shown: u64,
}

impl ShownMessages {
    /// Takes one message: its shown form when it is kept (to print now),
    /// `None` when it is only counted.
    pub fn take(&mut self, raw: &str) -> Option<&str> {
        if self.not_shown > 0 || self.kept.len() >= MAX_SHOWN_MESSAGES {
            self.not_shown += 1;
            return None;
        }
        let s = shown_text(raw);
        if self.bytes + s.len() > MAX_SHOWN_MESSAGE_BYTES {
            self.not_shown += 1;
            return None;
        }
        self.bytes += s.len();
        self.kept.push(s);
        self.kept.last().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::keys::new_key;

    #[test]
    fn server_config_checks() {
        let good = ServerConfig {
            replica_id: Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into()),
            replica_path: Some("ns/host/it's $(x).db".into()),
            committed_version_id: Some("7".into()),
            new_pull_key: Some(new_key()),
            new_push_key: None,
            version_hash: Some("ab".repeat(32)),
            version_xxh3: Some("cd".repeat(16)),
        };
        assert_eq!(good.check(), Ok(()));
        let bad = |f: fn(&mut ServerConfig)| {
            let mut c = good.clone();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(bad(|c| c.replica_id = Some("x".repeat(300))).contains("replicaID"));
        assert!(bad(|c| c.replica_path = Some("ns/a\nb.db".into())).contains("control"));
        assert!(bad(|c| c.replica_path = Some("/etc/passwd".into())).contains("replicaPath"));
        for p in ["other.db", "~/x.db", "host:/p", "ns/../x.db", "ns/x.db@2"] {
            let mut c = good.clone();
            c.replica_path = Some(p.into());
            let e = c.check().unwrap_err();
            assert!(
                e.contains(&format!("\"{p}\" is not a remote replica path")),
                "{e}"
            );
        }
        assert!(bad(|c| c.replica_id = Some("r\u{202e}1".into())).contains("control"));
        assert!(bad(|c| c.replica_id = Some("r\t1".into())).contains("control"));
        assert!(bad(|c| c.new_pull_key = Some("$(touch x)".into())).contains("newPullKey"));
        assert!(bad(|c| c.version_hash = Some("zz".into())).contains("versionHash"));
        assert!(bad(|c| c.version_xxh3 = Some("ab".repeat(32))).contains("versionXxh3"));
    }

    #[test]
    fn server_text_is_made_visible() {
        assert!(matches!(visible("plain\ttext ü"), Cow::Borrowed(_)));
        assert_eq!(
            visible("\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{7f}\u{202e}x"),
            "\\x1b]0;pwned\\x07\\x1b[2J\\u{9b}31m\\x7f\\u{202e}x"
        );
        let once = visible("a\u{1b}b").into_owned();
        assert_eq!(visible(&once), once);
        assert_eq!(one_line(" a\r\n\u{1b}[2J b \n\n c\r "), "a; \\x1b[2J b; c");
        assert!(!one_line("\u{9b}\u{2066}").chars().any(hidden));
    }

    #[test]
    fn shown_texts_and_messages_are_bounded() {
        assert_eq!(shown_text("hello"), "hello");
        let long = shown_text(&"é".repeat(1 << 20));
        assert!(long.ends_with(TRUNCATED));
        assert!(long.len() <= MAX_SHOWN_TEXT + TRUNCATED.len());
        let escaped = shown_text(&"\u{1b}".repeat(MAX_SHOWN_TEXT));
        assert!(escaped.ends_with(TRUNCATED), "{}", escaped.len());
        assert!(escaped.len() <= MAX_SHOWN_TEXT + TRUNCATED.len());
        let mut m = ShownMessages::default();
        assert_eq!(m.take("\u{1b}[2Jhi"), Some("\\x1b[2Jhi"));
        for _ in 0..1000 {
            m.take(&"m".repeat(10_000));
        }
        assert!(m.kept.len() <= MAX_SHOWN_MESSAGES);
        assert!(m.kept.iter().map(String::len).sum::<usize>() <= MAX_SHOWN_MESSAGE_BYTES);
        assert_eq!(m.kept.len() as u64 + m.not_shown, 1001);
        // Once one is dropped, later short ones are too: the kept ones are
        // the first, in order.
        assert_eq!(m.take("short"), None);
    }
}
