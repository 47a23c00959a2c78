//! The "nothing to push" check: a push of a database that has not changed
//! since it was last pushed ends after one CONFIG exchange, instead of a
//! full sqlite3_rsync run that hashes every page on both ends to find
//! nothing (about as long as copying the database over loopback).
//!
//! It is LOCAL mode's "nothing to send" shortcut for the network, and it is
//! just as careful: nothing is skipped on a guess. A cheap fingerprint of
//! the file (size, mtime, inode, the WAL's size and mtime, the header's
//! change counter) recorded after each sync only decides whether checking
//! is worth it; the decision to skip is made by hashing the whole database
//! (in one read transaction, as SQLite reads it) and comparing the result
//! with the `versionHash` our server reports for its latest version. Other
//! servers send no `versionHash`, and then the push simply runs.
//!
//! The fingerprint and hash are kept in the database's match record
//! ([`super::matched`]), which the overwrite checks of [`super::guard`]
//! also read; [`ask_latest`] is the CONFIG exchange both use.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Socket;
use crate::wire::{ClientControl, MAX_SERVER_TEXT_BYTES, ServerConfig, ServerText, shown_text};

/// How long to wait for the CONFIG answer before giving up on the check
/// (the push then runs as usual).
const CONFIG_WAIT: Duration = Duration::from_secs(10);

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
    // An empty WAL holds nothing: one that a reader just created (a
    // watch's probe opening the database) is no change.
    let w = std::fs::metadata(PathBuf::from(wal))
        .ok()
        .filter(|w| w.len() > 0)
        .map(|w| format!("{}:{}.{}", w.len(), w.mtime(), w.mtime_nsec()))
        .unwrap_or_else(|| "-".into());
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

/// Asks the server for CONFIG before any stream: its latest version and
/// that version's hash, plus the wire bytes the exchange took. None when
/// it does not answer in time (the push then runs as usual on the same
/// connection); an ABORT or a close is an error.
pub async fn ask_latest(ws: &mut Socket) -> anyhow::Result<Option<(ServerConfig, u64)>> {
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
    Ok(config.map(|c| (c, wire)))
}

/// Ends a push that sends nothing: a normal close before any stream, after
/// which the server stores nothing. The server's close reply is awaited
/// briefly; the verdict is made.
pub async fn close(ws: &mut Socket, reason: &str) {
    let _ = ws
        .send(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: reason.to_string().into(),
        })))
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
