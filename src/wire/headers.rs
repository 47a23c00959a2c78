//! The HTTP upgrade headers of PROTOCOL.md section 2, and the visibility
//! one of them carries.

use serde::{Deserialize, Serialize};

pub const AUTHORIZATION: &str = "authorization";
pub const CLIENT_VERSION: &str = "x-clientversion";
pub const CLIENT_ID: &str = "x-clientid";
pub const LOCAL_HOSTNAME: &str = "x-localhostname";
pub const LOCAL_ABSOLUTE_PATH: &str = "x-localabsolutepath";
pub const REPLICA_VERSION: &str = "x-replicaversion";
pub const REPLICA_ID: &str = "x-replicaid";
pub const VISIBILITY: &str = "x-visibility";
/// Our extension (SERVER.md "Extensions"): the largest binary frame the
/// sender of this header accepts; see [`super::framing`].
pub const MAX_FRAME: &str = "x-sqlrsync-max-frame";
/// Our extension: a verified push. The client offers it with the value
/// [`STREAM_DIGEST_XXH3`]; a server that answers with the same sends
/// nothing different but expects the client's
/// [`super::control::CTRL_STREAMDIGEST`] after ORIGIN_END, and commits
/// only a stream that matches it.
pub const STREAM_DIGEST: &str = "x-sqlrsync-stream-digest";
/// The one digest offered today.
pub const STREAM_DIGEST_XXH3: &str = "xxh3-128";
/// Our extension: delta syncs ([`super::delta`]). A client offers it with
/// the value [`DELTA_V1`]; a server that answers with the same on a push
/// takes a delta in place of a stream, and on a pull sends one (a pull
/// offers it with [`DELTA_HAVE`]).
pub const DELTA: &str = "x-sqlrsync-delta";
/// The one delta format today.
pub const DELTA_V1: &str = "1";
/// On a pull offering a delta: the version the client's database is, as
/// `NUMBER:VERSIONXXH3` (decimal, 32 hex digits).
pub const DELTA_HAVE: &str = "x-sqlrsync-delta-have";

/// Our extension: a pull of a point in time ([`super::VersionRef::At`]).
/// The client sends the instant (RFC 3339, milliseconds, `Z`) with an
/// empty `X-ReplicaVersion`; our server serves the last version committed
/// at or before it and answers with the same header holding that version's
/// number. A client that gets no answer (any other server, which serves
/// the latest) closes before using the stream.
pub const VERSION_AT: &str = "x-sqlrsync-version-at";

/// Who may read a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    #[default]
    Private,
    Unlisted,
    Public,
}

impl Visibility {
    /// `X-Visibility` value: absent private, `1` unlisted, `2` public.
    pub fn header_value(self) -> Option<&'static str> {
        match self {
            Visibility::Private => None,
            Visibility::Unlisted => Some("1"),
            Visibility::Public => Some("2"),
        }
    }

    pub fn from_header(v: Option<&str>) -> Result<Visibility, String> {
        match v.map(str::trim) {
            None | Some("") | Some("0") => Ok(Visibility::Private),
            Some("1") => Ok(Visibility::Unlisted),
            Some("2") => Ok(Visibility::Public),
            Some(other) => Err(format!("invalid X-Visibility {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Unlisted => "unlisted",
            Visibility::Public => "public",
        }
    }
}

// ---------------------------------------------------------------------------
