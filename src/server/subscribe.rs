//! `/sapi/subscribe/<path>`: LATEST_VERSION to every subscriber of a replica
//! when a version commits (PROTOCOL.md section 5).
//!
//! Each replica has a tokio broadcast channel that the commit sends the new
//! version number on; every subscriber session receives it. A subscriber that
//! falls behind gets the newest number (it pulls the latest anyway).
//!
//! A subscriber follows a replica by path. When `replica rename` moved it
//! (the notices come by row id, so they keep coming), the next notice finds
//! the path changed and closes the subscriber (1008) instead: its client
//! reconnects to the old path, which is not found, rather than being told
//! to pull a path that no longer serves.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::admission::{Reader, admit_reader};
use super::app::AppState;
use super::limits::Budget;
use super::metrics::Kind;
use super::session::{CLOSE_NORMAL, CLOSE_POLICY, CLOSE_SERVICE_RESTART};
use super::store::{ReplicaRow, ReplicaState};
use crate::wire::SubscribeMessage;

/// Longest text frame a subscriber may send.
const MAX_SUBSCRIBER_TEXT: usize = 4096;

/// What the websocket library reads at a time for a subscriber. Its
/// default, 128 KiB, is allocated up front for every socket: a subscriber
/// cost 133 KB of server memory. A subscriber sends a few short texts; a
/// larger frame (up to the 64 KiB limit) still arrives, over several reads.
const SUBSCRIBER_READ_BUFFER: usize = 4096;

/// What the library may queue for a subscriber that does not read (our
/// texts are short; the rest is pongs to its pings). At the bound the
/// next ping or notice fails and the session ends, instead of the queue
/// growing without end. Texts are written at once (write buffer 0).
const SUBSCRIBER_WRITE_BUFFER_MAX: usize = 64 * 1024;

pub async fn handler(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    h: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let slot = (Budget::Subscriber, peer);
    let admitted = st
        .key_throttle
        .admit(peer.ip(), &h, || {
            admit_reader(&st, &uri, &h, "/sapi/subscribe/", slot)
        })
        .await;
    let Reader {
        permit, replica, ..
    } = match admitted {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    ws.max_frame_size(64 * 1024)
        .max_message_size(64 * 1024)
        .read_buffer_size(SUBSCRIBER_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(SUBSCRIBER_WRITE_BUFFER_MAX)
        .on_upgrade(move |socket| async move {
            let _track = st
                .metrics
                .session_started(Kind::Subscribe, &replica.namespace);
            session(socket, st, replica).await;
            drop(permit);
        })
}

fn text(kind: &str, data: serde_json::Value) -> WsMessage {
    WsMessage::Text(SubscribeMessage::new(kind, data).to_text().into())
}

/// Sends one frame unless the subscriber has stopped reading (its socket
/// buffers are full) for several seconds; false ends the session.
async fn send(
    tx: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
    m: WsMessage,
) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tx.send(m)).await,
        Ok(Ok(()))
    )
}

/// The LATEST_VERSION a commit notice becomes; Err: the session ends, with
/// the reason of its close when there is one (the replica was renamed).
fn notice(
    st: &AppState,
    r: &ReplicaRow,
    state: &ReplicaState,
    v: Result<super::store::VersionNotice, RecvError>,
) -> Result<WsMessage, Option<&'static str>> {
    let (version, committed_at) = match v {
        Ok(v) => (v.number, Some(v.committed_at)),
        Err(RecvError::Lagged(_)) => (state.latest().map_or(0, |f| f.number), None),
        Err(RecvError::Closed) => return Err(None),
    };
    if moved(st, r) {
        tracing::info!(path = %r.path, "subscriber closed: the replica was renamed");
        return Err(Some("the replica is no longer at this path"));
    }
    Ok(text(
        "LATEST_VERSION",
        json!({
            "version": version.to_string(),
            "replicaID": r.uid,
            "replicaPath": r.path,
            "committedAt": committed_at,
        }),
    ))
}

/// True when replica `r` is no longer at the path it was subscribed by (one
/// lookup by row id; an error of the lookup keeps the subscriber).
fn moved(st: &AppState, r: &ReplicaRow) -> bool {
    match st.store.meta().replica_by_id(r.id) {
        Ok(Some(now)) => now.path != r.path,
        Ok(None) => true,
        Err(_) => false,
    }
}

async fn session(socket: WebSocket, st: AppState, r: ReplicaRow) {
    let state = st.store.replica_state(&r);
    let mut updates = state.notify.subscribe();
    let mut shutdown = st.shutdown.clone();
    let (mut tx, mut rx) = socket.split();
    tracing::info!(path = %r.path, "subscriber connected");
    // Idle sockets are pinged so dead peers are noticed: a subscriber that
    // sends nothing (not even the pong its websocket library answers a
    // ping with) for the idle timeout is gone or hostile, and must not keep
    // its session slot; one that never subscribes within the handshake
    // timeout likewise.
    let idle_limit = st.config.idle_timeout;
    let every = (idle_limit / 3).min(Duration::from_secs(30));
    let mut keepalive = tokio::time::interval(every);
    keepalive.tick().await;
    let mut last_inbound = tokio::time::Instant::now();
    let mut subscribed = false;
    let close = |code: u16, why: &str| {
        WsMessage::Close(Some(axum::extract::ws::CloseFrame {
            code,
            reason: why.to_string().into(),
        }))
    };
    loop {
        let limit = if subscribed {
            idle_limit
        } else {
            st.config.handshake_timeout
        };
        tokio::select! {
            _ = super::app::stopped(&mut shutdown) => {
                // 1012, not 1001: subscribers reconnect to the next server.
                let _ = send(&mut tx, close(CLOSE_SERVICE_RESTART, "server restarting")).await;
                break;
            }
            _ = tokio::time::sleep_until(last_inbound + limit) => {
                tracing::info!(path = %r.path, "subscriber silent for too long; closing");
                let _ = send(&mut tx, close(CLOSE_POLICY, "no data from the client for too long")).await;
                break;
            }
            _ = keepalive.tick() => {
                if !send(&mut tx, WsMessage::Ping(bytes::Bytes::from_static(&crate::link::KEEPALIVE_PING))).await { break; }
            }
            v = updates.recv() => match notice(&st, &r, &state, v) {
                Ok(msg) => if !send(&mut tx, msg).await { break; },
                Err(Some(why)) => {
                    let _ = send(&mut tx, close(CLOSE_POLICY, why)).await;
                    break;
                }
                Err(None) => break,
            },
            frame = rx.next() => {
                last_inbound = tokio::time::Instant::now();
                let t = match frame {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                match answer(t.as_str(), &state, &r, &mut subscribed) {
                    Answer::Send(m) => if !send(&mut tx, m).await { break; },
                    Answer::Nothing => {}
                    Answer::Leave => {
                        let _ = send(&mut tx, close(CLOSE_NORMAL, "unsubscribed")).await;
                        break;
                    }
                }
            }
        }
    }
    tracing::info!(path = %r.path, "subscriber left");
}

/// What a subscriber's text frame calls for.
enum Answer {
    /// Send this.
    Send(WsMessage),
    /// Nothing (a PONG).
    Nothing,
    /// Close the session (UNSUBSCRIBE).
    Leave,
}

/// The answer to text frame `t`; SUBSCRIBE sets `subscribed` (the idle
/// limit then replaces the handshake timeout).
fn answer(t: &str, state: &ReplicaState, r: &ReplicaRow, subscribed: &mut bool) -> Answer {
    if t.len() > MAX_SUBSCRIBER_TEXT {
        return Answer::Send(text("ERROR", json!({"message": "frame too long"})));
    }
    let t = t.trim();
    if t.eq_ignore_ascii_case("PING") {
        // JSON, like every other frame: the clients that exist parse each.
        return Answer::Send(text("PONG", json!({})));
    }
    match serde_json::from_str::<SubscribeMessage>(t) {
        Ok(m) => match m.kind.as_str() {
            "SUBSCRIBE" => {
                *subscribed = true;
                let latest = state.latest().map_or(0, |f| f.number);
                Answer::Send(text(
                    "SUBSCRIBED",
                    json!({
                        "replicaID": r.uid,
                        "replicaPath": r.path,
                        "version": latest.to_string(),
                    }),
                ))
            }
            "UNSUBSCRIBE" => Answer::Leave,
            "PING" => Answer::Send(text("PONG", json!({}))),
            "PONG" => Answer::Nothing,
            other => Answer::Send(text(
                "ERROR",
                json!({"message": format!("unknown message type {other:?}")}),
            )),
        },
        Err(_) if t.eq_ignore_ascii_case("PONG") => Answer::Nothing,
        Err(e) => Answer::Send(text(
            "ERROR",
            json!({"message": format!("not a subscribe message: {e}")}),
        )),
    }
}
