//! `/sapi/pull/<path>`: our ORIGIN (a stored version) against the client's
//! REPLICA.
//!
//! The version named by `X-ReplicaVersion` is pinned (a commit or cache
//! clean-up never removes a file a pull reads) and, when older than the
//! latest, materialised on demand. The helper `--origin` runs on it; its
//! stream is carried to the client as read, never buffered whole. A
//! client that offers a delta and holds a version the latest can be
//! reached from gets one instead ([`super::pull_delta`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::admission;
use super::app::AppState;
use super::frames::{Frame as FrameIn, PullAction, PullFrames};
use super::keys::{self, KeyKind, KeyRecord, MintedOn, PendingKey};
use super::metrics::Kind;
use super::pull_delta::DeltaPlan;
use super::session::{
    Abort, CLOSE_NORMAL, Session, config_text, recv, send_out, spawn_helper, split_file,
};
use super::store::{ReplicaRow, VersionFile, VersionRow};
use crate::helper::HelperCommand;
use crate::link::{Controls, Frame, Framing, Out, OutTx, PumpCtx, PumpEnd, PumpError, Stats, pump};
use crate::wire::{CTRL_NEWREPLICAVERSION, ClientControl, Direction, ServerConfig, headers};

/// How long a pull whose stream went out whole waits for the client to
/// close before closing itself (PROTOCOL.md section 3): the clients that
/// exist close once their replica finished, and drop the frames they have
/// not read yet when the server closes first.
const CLIENT_CLOSE_WAIT: Duration = Duration::from_secs(5);

pub(super) struct PullContext {
    /// The replica.
    pub(super) replica: ReplicaRow,
    /// The version being pulled.
    pub(super) version: VersionRow,
    /// The key used (may ask for a pull key), if any.
    key: Option<KeyRecord>,
    /// Connection-limit permit.
    _permit: super::limits::Permit,
    /// How our frames to this client are cut.
    framing: Framing,
    /// Whom a pull key minted here is for ([`keys::destination`]).
    destination: String,
    /// The delta this pull is served as, when the client offered one that
    /// fits ([`super::pull_delta::decide`]).
    delta: Option<Arc<DeltaPlan>>,
}

pub async fn handler(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    h: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let admitted = st
        .key_throttle
        .admit(peer.ip(), &h, || admission::admit_pull(&st, &uri, &h, peer))
        .await;
    let (reader, version) = match admitted {
        Ok(x) => x,
        Err(r) => {
            super::metrics::refused(&st, Kind::Pull, uri.path());
            return r.into_response();
        }
    };
    let delta = super::pull_delta::decide(&st, &reader.replica, &version, &h).await;
    let answer_delta = delta.is_some();
    let version_number = version.number;
    let ctx = PullContext {
        replica: reader.replica,
        version,
        key: reader.key,
        _permit: reader.permit,
        framing: st.config.framing_for(&h),
        destination: keys::destination(
            header(&h, headers::CLIENT_ID),
            header(&h, headers::LOCAL_ABSOLUTE_PATH),
        ),
        delta,
    };
    let config = st.config.clone();
    let mut resp = super::session::bounded_upgrade(ws, st.config.max_frame)
        .on_upgrade(move |socket| session(socket, st, ctx));
    config.answer_offer(&h, &mut resp);
    if h.contains_key(headers::VERSION_AT) {
        // The point in time was understood: the version it resolved to.
        resp.headers_mut().insert(
            headers::VERSION_AT,
            axum::http::HeaderValue::from(version_number),
        );
    }
    if answer_delta {
        resp.headers_mut().insert(
            headers::DELTA,
            axum::http::HeaderValue::from_static(headers::DELTA_V1),
        );
    }
    resp
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn session(socket: WebSocket, st: AppState, ctx: PullContext) {
    let mut link = Session::open(socket, st.config.idle_timeout);
    let started = std::time::Instant::now();
    let mut track = st
        .metrics
        .session_started(Kind::Pull, &ctx.replica.namespace);
    let served = match &ctx.delta {
        Some(plan) => super::pull_delta::run(&mut link, &st, &ctx, plan).await,
        None => run(&mut link, &st, &ctx).await,
    };
    match served {
        Ok(pages) => {
            track.succeeded();
            let delta_from = ctx.delta.as_ref().map(|d| d.base_version());
            tracing::info!(path = %ctx.replica.path, version = ctx.version.number, pages,
                delta = delta_from.is_some(), delta_from,
                secs = started.elapsed().as_secs_f64(), "pull served");
            send_out(&link.out, Out::Close(CLOSE_NORMAL, "done".into())).await;
        }
        Err(a) => {
            tracing::warn!(path = %ctx.replica.path, reason = %a.reason(), "pull ended early");
            a.send(&link.out).await;
        }
    }
    let (received, sent) = link.finish().await;
    track.bytes(received, sent);
}

/// The CONFIG of this pull (with the pull key minted, if any).
pub(super) fn config(ctx: &PullContext, new_pull_key: Option<String>) -> ServerConfig {
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
/// needs it in CONFIG), stored only once our side of the pull completed,
/// replacing the ones the same admin key minted for this copy before
/// (only hashes are kept, so an old key cannot be handed out again): at
/// once those never used, the others when the new one is first used
/// ([`keys::note_use`]).
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
                .replace_minted_key(&k.record())
                .map_err(|e| Abort::server("the server could not issue a key", format!("{e:#}")))?;
            self.stored = true;
        }
        Ok(())
    }
}

/// Serves the pinned version: CONFIG first, then the helper's ORIGIN
/// stream, answering the client's control frames and feeding it its hashes.
async fn run(link: &mut Session, st: &AppState, ctx: &PullContext) -> Result<u64, Abort> {
    let store = st.store.clone();
    let r = ctx.replica.clone();
    let n = ctx.version.number;
    let file: Arc<VersionFile> = tokio::task::spawn_blocking(move || store.version_file(&r, n))
        .await
        .map_err(|e| Abort::server(format!("the server could not read version {n}"), e))?
        .map_err(|e| {
            Abort::server(
                format!("the server could not read version {n}"),
                format!("{e:#}"),
            )
        })?;
    send_out(&link.out, config_text(config(ctx, None))).await;
    let (dir, name) = split_file(&file.path);
    let mut helper =
        spawn_helper(&HelperCommand::origin(name, &ctx.replica.path).current_dir(dir))?;
    let stdout = helper.stdout.take().expect("piped stdout");
    let (ended_tx, ended_rx) = oneshot::channel::<()>();
    let newer = NewerCheck {
        state: st.store.replica_state(&ctx.replica),
        pulled: n,
    };
    let pump = tokio::spawn(pump_origin(
        stdout,
        ctx.framing,
        link.out.clone(),
        ended_tx,
        newer,
    ));
    let mut serve = Serve::new(st, ctx, helper.stdin.take());
    let pumped = serve.serve(link, pump, ended_rx).await?;
    let mut summary = pumped.origin;
    if let Some(PumpError::Stream(e)) = pumped.error {
        summary.errors.push(format!("helper stream: {e}"));
    }
    drop(serve.stdin.take());
    let _ = helper.wait(Duration::from_secs(10)).await;
    drop(file);
    if let Some(e) = summary.errors.first() {
        return Err(Abort::server("the server's origin side failed", e));
    }
    if !summary.complete() {
        return Err(Abort::server("the server's origin side stopped early", ""));
    }
    serve.pull_key.store(st)?;
    serve.await_close(link, false).await;
    Ok(summary.pages_sent)
}

/// A pull session's state between the client's frames.
pub(super) struct Serve<'a> {
    st: &'a AppState,
    ctx: &'a PullContext,
    /// The helper's stdin: the client's hashes go there.
    stdin: Option<tokio::process::ChildStdin>,
    frames: PullFrames,
    pull_key: PullKey,
    /// ORIGIN_END went out.
    origin_ended: bool,
    /// The client closed (or its connection ended).
    client_closed: bool,
}

impl<'a> Serve<'a> {
    /// A session feeding `stdin` (None: there is no helper, a delta).
    pub(super) fn new(
        st: &'a AppState,
        ctx: &'a PullContext,
        stdin: Option<tokio::process::ChildStdin>,
    ) -> Serve<'a> {
        Serve {
            st,
            ctx,
            stdin,
            frames: PullFrames::new(
                st.config.stream_limits(),
                ctx.version.page_count,
                ctx.version.page_size,
            ),
            pull_key: PullKey::default(),
            origin_ended: false,
            client_closed: false,
        }
    }

    /// The pull key to show in CONFIG, if one was asked for.
    pub(super) fn pull_key_shown(&self) -> Option<String> {
        self.pull_key.shown()
    }

    /// Stores the pull key asked for, once our side is complete.
    pub(super) fn store_pull_key(&mut self) -> Result<(), Abort> {
        self.pull_key.store(self.st)
    }

    /// Runs until `pump` (the task sending our stream, which reports its
    /// end on `ended_rx`) is done and the client has what it sent, or the
    /// session fails; returns what the task returned.
    pub(super) async fn serve<T>(
        &mut self,
        link: &mut Session,
        mut pump: tokio::task::JoinHandle<T>,
        mut ended_rx: oneshot::Receiver<()>,
    ) -> Result<T, Abort> {
        let st = self.st;
        let mut shutdown = st.shutdown.clone();
        let activity = link.activity.clone();
        loop {
            tokio::select! {
                res = &mut pump => {
                    return res.map_err(|e| Abort::server("the server's origin side failed", e));
                }
                _ = &mut ended_rx, if !self.origin_ended => {
                    // ORIGIN_END sent: the helper waits for the replica's EOF,
                    // which the client never sends; give it ours. Our side is
                    // complete, so a key the client asked for is now kept.
                    self.origin_ended = true;
                    self.stdin = None;
                    self.pull_key.store(st)?;
                }
                _ = super::app::stopped(&mut shutdown) => return Err(Abort::Shutdown),
                _ = activity.idle(st.config.idle_timeout) => {
                    return Err(Abort::Client("no data from the client for too long".into()));
                }
                frame = recv(&mut link.rx, &activity) => {
                    let msg = match frame {
                        None | Some(Ok(Frame::Close(..))) => {
                            self.client_closed = true;
                            if self.origin_ended {
                                // The client has everything; wait for the helper.
                                self.stdin = None;
                                return tokio::time::timeout(Duration::from_secs(30), &mut pump).await
                                    .map_err(|_| Abort::Cut("helper did not finish".into()))?
                                    .map_err(|e| Abort::server("the server's origin side failed", e));
                            }
                            return Err(Abort::Cut("client left before the pull finished".into()));
                        }
                        Some(Err(e)) => return Err(Abort::from_read_error(e, st.config.max_frame)),
                        Some(Ok(m)) => m,
                    };
                    self.on_frame(&link.out, msg).await?;
                }
            }
        }
    }

    /// Once the whole stream went out: waits (at most [`CLIENT_CLOSE_WAIT`])
    /// for the client to close, dropping what it still sends, or with
    /// `answer` answering its control frames (a delta client's KEYREQUEST
    /// may come after the delta went out, and it waits for the answer).
    pub(super) async fn await_close(&mut self, link: &mut Session, answer: bool) {
        if self.client_closed {
            return;
        }
        let mut shutdown = self.st.shutdown.clone();
        let activity = link.activity.clone();
        let waited = tokio::time::timeout(CLIENT_CLOSE_WAIT, async {
            loop {
                tokio::select! {
                    f = recv(&mut link.rx, &activity) => match f {
                        None | Some(Ok(Frame::Close(..)) | Err(_)) => break,
                        Some(Ok(m)) if answer => {
                            if self.on_frame(&link.out, m).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(_)) => {}
                    },
                    _ = super::app::stopped(&mut shutdown) => break,
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::debug!(path = %self.ctx.replica.path, "the client did not close; closing");
        }
        self.client_closed = true;
    }

    /// Does what [`PullFrames`] decides for a client frame.
    async fn on_frame(&mut self, out: &OutTx, msg: Frame) -> Result<(), Abort> {
        let (st, ctx) = (self.st, self.ctx);
        let action = match &msg {
            Frame::Binary(b) => self.frames.frame(FrameIn::Binary(b)),
            Frame::Text(t) => self.frames.frame(FrameIn::Text(t)),
            _ => return Ok(()),
        };
        match action.map_err(|e| Abort::Client(e.0))? {
            PullAction::Skip => {}
            PullAction::Control(c) => {
                // Only the namespace's admin key gets a Replica Pull key
                // to keep (keys::mints_on_pull); anyone else is answered
                // with CONFIG and no key.
                if c == ClientControl::KeyRequest
                    && self.pull_key.key.is_none()
                    && let Some(by) = ctx
                        .key
                        .as_ref()
                        .filter(|k| keys::mints_on_pull(k, &ctx.replica))
                {
                    self.pull_key.key = Some(PendingKey {
                        minted_for: Some(ctx.destination.clone()),
                        ..PendingKey::minted(KeyKind::ReplicaPull, &ctx.replica, by, MintedOn::Pull)
                    });
                    if self.origin_ended {
                        self.pull_key.store(st)?;
                    }
                }
                send_out(out, config_text(config(ctx, self.pull_key.shown()))).await;
            }
            PullAction::Forward => {
                if let (Some(s), Frame::Binary(b)) = (self.stdin.as_mut(), &msg)
                    && s.write_all(b).await.is_err()
                {
                    self.stdin = None;
                }
            }
        }
        Ok(())
    }
}

/// Carries the helper's ORIGIN stream to the client, reporting ORIGIN_END.
/// What the pump needs to tell the client that a newer version exists.
pub(super) struct NewerCheck {
    /// The replica's live state (its latest version moves on commits).
    pub(super) state: Arc<crate::server::store::ReplicaState>,
    /// The version this pull serves.
    pub(super) pulled: u64,
}

impl NewerCheck {
    /// A version newer than the one pulled exists now.
    pub(super) fn moved_on(&self) -> bool {
        self.state.latest().is_some_and(|l| l.number > self.pulled)
    }
}

async fn pump_origin(
    stdout: tokio::process::ChildStdout,
    framing: Framing,
    out: OutTx,
    ended: oneshot::Sender<()>,
    newer: NewerCheck,
) -> PumpEnd {
    // Once the stream is whole (a message boundary: the one place a
    // control frame may go), say if the pulled version is no longer the
    // latest (one was committed, or an older one asked).
    let at_end = move || {
        let moved_on = newer.moved_on();
        let _ = ended.send(());
        if moved_on {
            vec![vec![CTRL_NEWREPLICAVERSION]]
        } else {
            Vec::new()
        }
    };
    let controls = Controls {
        at_end: Some(Box::new(at_end)),
        ..Default::default()
    };
    let ctx = PumpCtx {
        stats: Arc::new(Stats::default()),
        observer: None,
        keep_reading: false,
    };
    pump(stdout, Direction::FromOrigin, framing, controls, out, ctx).await
}
