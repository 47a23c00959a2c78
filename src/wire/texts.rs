//! The server's text frames (`CONFIG=`, `MESSAGE=`, `ABORT=`; PROTOCOL.md
//! section 3) and the subscribe endpoint's JSON messages (section 5).

use serde::{Deserialize, Serialize};

use super::keys::is_key_shaped;
use super::limits::{MAX_CONFIG_ID_LEN, MAX_CONFIG_PATH_LEN};

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

/// Longest `replicaID` or `committedVersionID` a client accepts.
impl ServerConfig {
    /// Checks what a client will store or act on: ids and the path are of
    /// sane length without control characters (they go into files and
    /// headers), a path is relative, keys look like keys, and a versionHash
    /// is 64 hex digits. `Err` names the first bad field, for one line.
    pub fn check(&self) -> Result<(), String> {
        let printable = |v: &str| !v.chars().any(char::is_control);
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
            && (p.starts_with('/') || p.starts_with('.'))
        {
            return Err(format!("replicaPath {p:?} is not a replica path"));
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
/// stderr) as one line: newlines become "; ". Every error sqlrsync prints
/// is one line, whatever the far side sent.
pub fn one_line(s: &str) -> String {
    s.trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
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
        assert!(bad(|c| c.new_pull_key = Some("$(touch x)".into())).contains("newPullKey"));
        assert!(bad(|c| c.version_hash = Some("zz".into())).contains("versionHash"));
        assert!(bad(|c| c.version_xxh3 = Some("ab".repeat(32))).contains("versionXxh3"));
    }
}
