//! The "nothing to push" check: a push of a database that has not changed
//! since it was last pushed ends after one CONFIG exchange, instead of a
//! full sqlite3_rsync run that hashes every page on both ends to find
//! nothing (about as long as copying the database over loopback).
//!
//! It is LOCAL mode's "nothing to send" shortcut for the network, and it is
//! just as careful: nothing is skipped on a guess. A cheap fingerprint of
//! the file (size, mtime, inode, the WAL's size and mtime, the header's
//! change counter) recorded after each push only decides whether checking
//! is worth it; the decision to skip is made by hashing the whole database
//! (in one read transaction, as SQLite reads it) and comparing the result
//! with the `versionHash` our server reports for its latest version. Other
//! servers send no `versionHash`, and then the push simply runs.
//!
//! The records live in the cache directory (`~/.cache/sqlrsync/pushed/`),
//! one small JSON file per (server, database); deleting them only costs
//! the shortcut once.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Socket;
use crate::wire::{ClientControl, MAX_SERVER_TEXT_BYTES, ServerConfig, ServerText, shown_text};

/// How long to wait for the CONFIG answer before giving up on the check
/// (the push then runs as usual).
const CONFIG_WAIT: Duration = Duration::from_secs(10);

/// What the last successful push of a database left behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PushRecord {
    /// [`fingerprint`] of the file taken before that push read it.
    pub fingerprint: String,
    /// The server's `versionHash` of the version that push left latest.
    pub version_hash: String,
}

/// A cheap summary of the file's state: if it is unchanged, the database
/// very probably is too (and the full hash then makes sure). `None` when
/// the file cannot be read.
pub fn fingerprint(db: &Path) -> Option<String> {
    use std::io::Read;
    let m = std::fs::metadata(db).ok()?;
    let mut head = [0u8; crate::sqlite::header::HEADER_LEN];
    std::fs::File::open(db).ok()?.read_exact(&mut head).ok()?;
    let header = crate::sqlite::header::decode(&head).ok()?;
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let w = std::fs::metadata(PathBuf::from(wal))
        .map(|w| format!("{}:{}.{}", w.len(), w.mtime(), w.mtime_nsec()))
        .unwrap_or_else(|_| "-".into());
    Some(format!(
        "{}:{}:{}:{}.{}|{w}|{:08x}{:08x}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        // As hex of header bytes 24..32, the form records were written in.
        header.change_counter,
        header.raw_page_count
    ))
}

/// Where the record for `db` pushed to `server` is kept.
fn record_path(server: &str, db: &Path) -> Option<PathBuf> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(server.as_bytes());
    h.update([0u8]);
    h.update(db.as_os_str().as_encoded_bytes());
    let name = hex::encode(&h.finalize()[..16]);
    Some(
        dirs::cache_dir()?
            .join("sqlrsync")
            .join("pushed")
            .join(format!("{name}.json")),
    )
}

/// The record of `db`'s last push to `server`, when the file still has the
/// fingerprint it had then.
pub fn matching_record(server: &str, db: &Path, now: &str) -> Option<PushRecord> {
    let text = std::fs::read_to_string(record_path(server, db)?).ok()?;
    let rec: PushRecord = serde_json::from_str(&text).ok()?;
    (rec.fingerprint == now).then_some(rec)
}

/// Remembers a successful push. Failures only cost the shortcut next time,
/// so they are ignored.
pub fn save_record(server: &str, db: &Path, rec: &PushRecord) {
    let Some(path) = record_path(server, db) else {
        return;
    };
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
        return;
    };
    let json = serde_json::to_vec(rec).expect("record serialises");
    if std::io::Write::write_all(&mut tmp, &json).is_ok() {
        let _ = tmp.persist(&path);
    }
}

/// What the check found.
pub enum Probe {
    /// The server's latest version has exactly this content.
    Unchanged {
        /// The server's answer (ids, path, latest version, its hash).
        config: ServerConfig,
        /// Bytes the exchange took on the wire.
        wire_bytes: u64,
    },
    /// Different content, or the server did not say: push as usual on the
    /// same connection.
    Push,
}

/// Asks the server for CONFIG before any stream and compares its
/// `versionHash` with `local_hash` (computed meanwhile by the caller).
/// On "unchanged" it closes the socket normally; the server, seeing a
/// close before any stream, stores nothing. The CONFIG is held to the
/// same check as a sync's (its replicaPath is printed and its hash
/// trusted), and the texts to the same budget.
pub async fn probe(
    ws: &mut Socket,
    local_hash: tokio::task::JoinHandle<anyhow::Result<String>>,
) -> anyhow::Result<Probe> {
    let request = ClientControl::Config.encode();
    let mut wire = crate::link::frame_len(request.len(), true);
    ws.send(WsMessage::Binary(request.into())).await?;
    let mut text_bytes = 0u64;
    let config = tokio::time::timeout(CONFIG_WAIT, async {
        while let Some(frame) = ws.next().await {
            match frame? {
                WsMessage::Text(t) => {
                    wire += crate::link::frame_len(t.len(), false);
                    text_bytes += t.len() as u64;
                    if text_bytes > MAX_SERVER_TEXT_BYTES {
                        anyhow::bail!(
                            "the server sent more than {} MiB of text frames before its CONFIG; nothing was sent",
                            MAX_SERVER_TEXT_BYTES >> 20
                        );
                    }
                    match ServerText::parse(t.as_str()) {
                        Ok(ServerText::Config(c)) => {
                            if let Err(e) = c.check() {
                                anyhow::bail!(
                                    "the server sent a bad CONFIG: {e}; nothing was sent"
                                );
                            }
                            return Ok(Some(c));
                        }
                        Ok(ServerText::Abort(why)) => {
                            anyhow::bail!("the server refused the push: {}", shown_text(&why))
                        }
                        Err(e) if t.as_str().starts_with("CONFIG=") => {
                            anyhow::bail!("{e}; nothing was sent")
                        }
                        _ => {}
                    }
                }
                WsMessage::Close(_) => anyhow::bail!("the server closed the connection"),
                // NEWREPLICAVERSION or pings: nothing to act on here.
                _ => {}
            }
        }
        anyhow::bail!("the server closed the connection")
    })
    .await
    .unwrap_or(Ok(None))?;
    let Some(config) = config else {
        return Ok(Probe::Push);
    };
    let Some(server_hash) = config.version_hash.clone() else {
        return Ok(Probe::Push);
    };
    let local = match local_hash.await {
        Ok(Ok(h)) => h,
        // The push itself will report an unreadable database.
        _ => return Ok(Probe::Push),
    };
    if local != server_hash {
        return Ok(Probe::Push);
    }
    let _ = ws
        .send(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "unchanged".into(),
        })))
        .await;
    // Let the server's close reply arrive, briefly; the verdict is made.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(Probe::Unchanged {
        config,
        wire_bytes: wire,
    })
}
