//! `/sapi/pull/<path>`: our ORIGIN (a stored version) against the client's
//! REPLICA.
//!
//! The version named by `X-ReplicaVersion` is pinned (a commit or cache
//! clean-up never removes a file a pull reads) and, when older than the
//! latest, materialised on demand. The helper `--origin` runs on it; its
//! stream is carried to the client as read, never buffered whole.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::admission;
use super::app::AppState;
use super::frames::{Frame, PullAction, PullFrames};
use super::keys::{KeyKind, KeyRecord, PendingKey};
use super::session::{
    Abort, Activity, CLOSE_NORMAL, HelperProcess, Out, OutTx, config_text, drain_until_closed,
    finish_writer, send_out, spawn_writer,
};
use super::store::{ReplicaRow, VersionFile, VersionRow};
use crate::helper::Side;
use crate::wire::{
    CTRL_NEWREPLICAVERSION, ClientControl, Direction, OriginSummary, ServerConfig, StreamParser,
    keepalive_interval,
};

struct PullContext {
    /// The replica.
    replica: ReplicaRow,
    /// The version being pulled.
    version: VersionRow,
    /// The key used (may ask for a pull key), if any.
    key: Option<KeyRecord>,
    /// Connection-limit permit.
    _permit: OwnedSemaphorePermit,
}

pub async fn handler(
    State(st): State<AppState>,
    uri: Uri,
    h: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let (reader, version) = match admission::admit_pull(&st, &uri, &h) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let ctx = PullContext {
        replica: reader.replica,
        version,
        key: reader.key,
        _permit: reader.permit,
    };
    ws.max_frame_size(st.config.max_frame)
        .max_message_size(st.config.max_frame)
        .on_upgrade(move |socket| session(socket, st, ctx))
}

async fn session(socket: WebSocket, st: AppState, ctx: PullContext) {
    let (sink, mut stream) = socket.split();
    let activity = Activity::new();
    let (out, writer) = spawn_writer(
        sink,
        activity.clone(),
        keepalive_interval(st.config.idle_timeout),
        super::session::stall_limit(st.config.idle_timeout),
    );
    let started = std::time::Instant::now();
    match run(&mut stream, &out, &activity, &st, &ctx).await {
        Ok(pages) => {
            tracing::info!(path = %ctx.replica.path, version = ctx.version.number, pages,
                secs = started.elapsed().as_secs_f64(), "pull served");
            send_out(&out, Out::Close(CLOSE_NORMAL, "done".into())).await;
        }
        Err(a) => {
            tracing::warn!(path = %ctx.replica.path, reason = %a.reason(), "pull ended early");
            a.send(&out).await;
        }
    }
    drop(out);
    finish_writer(writer).await;
    drain_until_closed(&mut stream).await;
}

fn config(ctx: &PullContext, new_pull_key: Option<String>) -> ServerConfig {
    ServerConfig {
        replica_id: Some(ctx.replica.uid.clone()),
        replica_path: Some(ctx.replica.path.clone()),
        committed_version_id: Some(ctx.version.number.to_string()),
        new_pull_key,
        new_push_key: None,
        version_hash: Some(ctx.version.version_hash.clone()),
        version_xxh3: ctx.version.version_xxh3.clone(),
    }
}

/// The Replica Pull key a puller asked for: made at once (the client
/// needs it in CONFIG), stored only once our side of the pull completed.
#[derive(Default)]
struct PullKey {
    /// The key, once made.
    key: Option<PendingKey>,
    /// Stored already.
    stored: bool,
}

impl PullKey {
    fn shown(&self) -> Option<String> {
        self.key.as_ref().map(|k| k.key.clone())
    }

    /// Stores the key if there is one and it is not stored yet.
    fn store(&mut self, st: &AppState) -> Result<(), Abort> {
        if let Some(k) = &self.key
            && !self.stored
        {
            st.store
                .meta()
                .add_key(&k.record())
                .map_err(|e| Abort::Server(format!("issuing a key: {e:#}")))?;
            self.stored = true;
        }
        Ok(())
    }
}

async fn run(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &OutTx,
    activity: &Activity,
    st: &AppState,
    ctx: &PullContext,
) -> Result<u64, Abort> {
    let store = st.store.clone();
    let r = ctx.replica.clone();
    let n = ctx.version.number;
    let file: Arc<VersionFile> = tokio::task::spawn_blocking(move || store.version_file(&r, n))
        .await
        .map_err(|e| Abort::Server(format!("materialise task failed: {e}")))?
        .map_err(|e| Abort::Server(format!("cannot read version {n}: {e:#}")))?;
    send_out(out, config_text(config(ctx, None))).await;
    let mut helper = HelperProcess::spawn(Side::Origin, &file.path, &ctx.replica.path)
        .map_err(|e| Abort::Server(format!("cannot start the helper: {e:#}")))?;
    let stdout = helper.stdout.take().expect("piped stdout");
    let (ended_tx, mut ended_rx) = oneshot::channel::<()>();
    let newer = NewerCheck {
        state: st.store.replica_state(&ctx.replica),
        pulled: n,
    };
    let mut pump = tokio::spawn(pump_origin(stdout, out.clone(), ended_tx, newer));
    let mut stdin = helper.stdin.take();
    let mut frames = PullFrames::new(
        st.config.stream_limits(),
        ctx.version.page_count,
        ctx.version.page_size,
    );
    let mut pull_key = PullKey::default();
    let mut shutdown = st.shutdown.clone();
    let mut origin_ended = false;
    let summary = loop {
        tokio::select! {
            res = &mut pump => {
                break res.map_err(|e| Abort::Server(format!("origin task failed: {e}")))?;
            }
            _ = &mut ended_rx, if !origin_ended => {
                // ORIGIN_END sent: the helper waits for the replica's EOF,
                // which the client never sends; give it ours. Our side is
                // complete, so a key the client asked for is now kept.
                origin_ended = true;
                stdin = None;
                pull_key.store(st)?;
            }
            _ = super::app::stopped(&mut shutdown) => return Err(Abort::Shutdown),
            _ = activity.idle(st.config.idle_timeout) => {
                return Err(Abort::Client("no data from the client for too long".into()));
            }
            frame = stream.next() => {
                let msg = match frame {
                    None | Some(Ok(WsMessage::Close(_))) => {
                        if origin_ended {
                            // The client has everything; wait for the helper.
                            stdin = None;
                            break tokio::time::timeout(Duration::from_secs(30), &mut pump).await
                                .map_err(|_| Abort::Cut("helper did not finish".into()))?
                                .map_err(|e| Abort::Server(format!("origin task failed: {e}")))?;
                        }
                        return Err(Abort::Cut("client left before the pull finished".into()));
                    }
                    Some(Err(e)) => return Err(Abort::from_read_error(e, st.config.max_frame)),
                    Some(Ok(m)) => m,
                };
                // A Pong is the websocket library answering our keepalive, not
                // the client doing anything: a client stuck mid-stream that
                // still pongs must still time out. Its own Pings do count.
                if !matches!(msg, WsMessage::Pong(_)) {
                    activity.touch();
                }
                let action = match &msg {
                    WsMessage::Binary(b) => frames.frame(Frame::Binary(b)),
                    WsMessage::Text(t) => frames.frame(Frame::Text(t.as_str())),
                    _ => continue,
                };
                match action.map_err(|e| Abort::Client(e.0))? {
                    PullAction::Skip => {}
                    PullAction::Control(c) => {
                        // Only someone who may already pull with a key gets
                        // a Replica Pull key to keep.
                        if c == ClientControl::KeyRequest && ctx.key.is_some() && pull_key.key.is_none() {
                            let r = &ctx.replica;
                            pull_key.key = Some(PendingKey::new(KeyKind::ReplicaPull, &r.namespace, Some(r.id)));
                            if origin_ended {
                                pull_key.store(st)?;
                            }
                        }
                        send_out(out, config_text(config(ctx, pull_key.shown()))).await;
                    }
                    PullAction::Forward => {
                        if let (Some(s), WsMessage::Binary(b)) = (stdin.as_mut(), &msg)
                            && s.write_all(b).await.is_err()
                        {
                            stdin = None;
                        }
                    }
                }
            }
        }
    };
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(10), helper.child.wait()).await;
    drop(file);
    if let Some(e) = summary.errors.first() {
        return Err(Abort::Server(format!("origin error: {e}")));
    }
    if !summary.complete() {
        return Err(Abort::Server("the origin side stopped early".into()));
    }
    pull_key.store(st)?;
    Ok(summary.pages_sent)
}

/// Carries the helper's ORIGIN stream to the client, reporting ORIGIN_END.
/// What the pump needs to tell the client that a newer version exists.
struct NewerCheck {
    /// The replica's live state (its latest version moves on commits).
    state: Arc<crate::server::store::ReplicaState>,
    /// The version this pull serves.
    pulled: u64,
}

async fn pump_origin(
    mut stdout: tokio::process::ChildStdout,
    out: OutTx,
    ended: oneshot::Sender<()>,
    newer: NewerCheck,
) -> OriginSummary {
    let mut parser = StreamParser::new(Direction::FromOrigin);
    let mut summary = OriginSummary::default();
    let mut ended = Some(ended);
    loop {
        // A fresh buffer per frame, handed to the writer as it is: the
        // whole database passes here, and a copy of it costs a pull time.
        let mut buf = Vec::with_capacity(64 * 1024);
        match stdout.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Err(e) = parser.feed(&buf, |m| summary.observe(&m)) {
            summary.errors.push(format!("helper stream: {e}"));
        }
        if out.send(Out::Binary(buf)).await.is_err() {
            break;
        }
        if parser.ended()
            && let Some(tx) = ended.take()
        {
            // The stream is whole, so this is a message boundary: the one
            // place a control frame may go. Say if the pulled version is no
            // longer the latest (one was committed, or an older one asked).
            if newer
                .state
                .latest()
                .is_some_and(|l| l.number > newer.pulled)
            {
                let _ = out.send(Out::Binary(vec![CTRL_NEWREPLICAVERSION])).await;
            }
            let _ = tx.send(());
        }
    }
    summary
}
