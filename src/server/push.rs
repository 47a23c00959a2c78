//! `/sapi/push/<path>`: a client's ORIGIN against our REPLICA, making a new
//! version.
//!
//! The key is checked at the upgrade. The session then takes the replica's
//! push lock, reads the client's stream with a [`StreamParser`] (which finds
//! message boundaries, so control frames can be told apart, and records the
//! pages sent and the final size), starts the helper `--replica` on a
//! staging copy of the latest version once ORIGIN_BEGIN has told the page
//! size, and bridges the two. A version is committed only when the origin's
//! stream ended cleanly (ORIGIN_TXN, ORIGIN_END, no ORIGIN_ERROR), the
//! helper's own stream carried no REPLICA_ERROR, and the helper exited.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use futures_util::StreamExt;
use futures_util::stream::SplitStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use super::app::{AppState, internal, refuse, remote_path};
use super::keys::{self, KeyKind, KeyRecord};
use super::names;
use super::session::{
    Abort, CLOSE_NORMAL, HelperProcess, IDLE_TIMEOUT, Out, OutTx, config_text, drain_until_closed,
    spawn_writer,
};
use super::store::meta::{self, ReplicaRow};
use super::store::{CommitOutcome, ReplicaState};
use crate::helper::Side;
use crate::protocol::{
    ClientControl, Direction, Message, OriginSummary, ReplicaSummary, ServerConfig, ServerText,
    StreamParser, Visibility, headers, is_control_byte,
};

/// Everything a push session needs, settled at the upgrade.
struct PushContext {
    /// The replica (created by this request if it was new).
    replica: ReplicaRow,
    /// The key that authorised the push.
    key: KeyRecord,
    /// The session permit (connection limit, shutdown wait).
    _permit: OwnedSemaphorePermit,
}

pub async fn handler(
    State(st): State<AppState>,
    uri: Uri,
    headers_in: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let permit = match st.session_permit() {
        Ok(p) => p,
        Err(r) => return r,
    };
    let key = match st.presented_key(&headers_in) {
        Ok(Some(k)) => k,
        Ok(None) => return refuse(StatusCode::UNAUTHORIZED, "a key is required to push"),
        Err(r) => return r,
    };
    let header = |name: &str| {
        headers_in
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let raw = uri
        .path()
        .trim_start_matches("/sapi/push")
        .trim_start_matches('/');
    let path = if raw.is_empty() {
        // No path: name it namespace/host/file from the key's namespace.
        if key.kind != KeyKind::Admin {
            return refuse(
                StatusCode::FORBIDDEN,
                "an account admin key is needed to push a new replica without a path",
            );
        }
        let host = header(headers::LOCAL_HOSTNAME).unwrap_or_else(|| "host".into());
        let file = header(headers::LOCAL_ABSOLUTE_PATH)
            .and_then(|p| {
                Path::new(&p)
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "db.sqlite".into());
        format!(
            "{}/{}/{}",
            key.namespace,
            names::sanitise_part(&host),
            names::sanitise_part(&file)
        )
    } else {
        match remote_path(uri.path(), "/sapi/push/") {
            Ok(p) => p.to_string(),
            Err(r) => return r,
        }
    };
    let namespace = path.split('/').next().unwrap_or_default().to_string();
    let visibility = match Visibility::from_header(header(headers::VISIBILITY).as_deref()) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let existing = match st.store.with_meta(|c| meta::replica_by_path(c, &path)) {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let replica = match existing {
        Some(r) => {
            if !keys::may_push(&key, &r) {
                tracing::warn!(path = %path, key_id = key.id, "refused push: key does not allow it");
                return refuse(
                    StatusCode::FORBIDDEN,
                    "key does not allow push to this replica",
                );
            }
            r
        }
        None => {
            if !(key.kind == KeyKind::Admin && key.namespace == namespace) {
                tracing::warn!(path = %path, key_id = key.id, "refused push: cannot create replica");
                return refuse(
                    StatusCode::FORBIDDEN,
                    "key does not allow creating replicas in this namespace",
                );
            }
            match st.store.with_meta(|c| {
                anyhow::ensure!(meta::namespace_exists(c, &namespace)?, "no namespace");
                meta::create_replica(c, &namespace, &path, visibility.as_str())
            }) {
                Ok(r) => {
                    tracing::info!(path = %r.path, visibility = r.visibility, "created replica");
                    r
                }
                Err(e) => return internal(e),
            }
        }
    };
    let ctx = PushContext {
        replica,
        key,
        _permit: permit,
    };
    ws.max_frame_size(st.config.max_frame)
        .max_message_size(st.config.max_frame)
        .on_upgrade(move |socket| session(socket, st, ctx))
}

async fn session(socket: WebSocket, st: AppState, ctx: PushContext) {
    let (sink, mut stream) = socket.split();
    let (out, writer) = spawn_writer(sink);
    let path = ctx.replica.path.clone();
    let started = std::time::Instant::now();
    match run(&mut stream, &out, &st, &ctx).await {
        Ok(end) => {
            match &end {
                PushEnd::Committed(cfg, row) => {
                    tracing::info!(path = %path, version = row.number, changed = row.changed_pages,
                        pages = row.page_count, secs = started.elapsed().as_secs_f64(), "push committed");
                    let _ = out
                        .send(Out::Text(
                            ServerText::Message(format!(
                                "version {} committed: {} of {} pages changed",
                                row.number, row.changed_pages, row.page_count
                            ))
                            .encode(),
                        ))
                        .await;
                    let _ = out.send(config_text(cfg.clone())).await;
                }
                PushEnd::NoChange(cfg, latest) => {
                    tracing::info!(path = %path, "push changed nothing");
                    let _ = out
                        .send(Out::Text(
                            ServerText::Message(format!(
                                "no changes: version {latest} is still the latest; no new version stored"
                            ))
                            .encode(),
                        ))
                        .await;
                    let _ = out.send(config_text(cfg.clone())).await;
                }
            }
            let _ = out.send(Out::Close(CLOSE_NORMAL, "done".into())).await;
        }
        Err(abort) => {
            tracing::warn!(path = %path, reason = %abort.reason(), "push aborted; nothing stored");
            abort.send(&out).await;
        }
    }
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    drain_until_closed(&mut stream).await;
}

enum PushEnd {
    Committed(ServerConfig, meta::VersionRow),
    NoChange(ServerConfig, u64),
}

/// Removes the staging file unless the commit took it.
struct StagingGuard(PathBuf);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        for ext in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.0.as_os_str().to_owned();
            p.push(ext);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Largest stream prefix buffered before ORIGIN_BEGIN completes.
const MAX_PREFIX: usize = 64 * 1024;

/// How the helper's stdout pump ended.
struct PumpResult {
    replica: ReplicaSummary,
    stream_error: Option<String>,
}

async fn run(
    stream: &mut SplitStream<WebSocket>,
    out: &OutTx,
    st: &AppState,
    ctx: &PushContext,
) -> Result<PushEnd, Abort> {
    let r = &ctx.replica;
    let state = st.store.replica_state(r);
    let mut shutdown = st.shutdown.clone();
    let _push_lock = tokio::select! {
        g = state.push_lock.clone().lock_owned() => g,
        _ = super::app::stopped(&mut shutdown) => return Err(Abort::Shutdown),
    };
    let latest = state.latest();
    let mut keys_issued = KeysIssued::default();
    let mut parser = StreamParser::new(Direction::FromOrigin);
    let mut summary = OriginSummary::default();
    let mut sent_pages: BTreeSet<u32> = BTreeSet::new();
    let mut prefix: Vec<u8> = Vec::new();
    let mut helper: Option<HelperProcess> = None;
    let mut pump: Option<tokio::task::JoinHandle<PumpResult>> = None;
    let mut staging: Option<StagingGuard> = None;
    let mut message = String::new();
    let mut first_message = true;
    let mut bad_start = false;

    // Only data counts as activity: pongs answering our keepalive pings
    // must not let a silent pusher hold the push lock forever.
    let mut idle_deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
    loop {
        let frame = tokio::select! {
            f = tokio::time::timeout_at(idle_deadline, stream.next()) => match f {
                Ok(f) => f,
                Err(_) => return Err(Abort::Client("no data from the client for too long".into())),
            },
            _ = super::app::stopped(&mut shutdown) => return Err(Abort::Shutdown),
            res = async { pump.as_mut().unwrap().await }, if pump.is_some() => {
                // The helper stopped before the origin finished: it failed.
                let why = match res {
                    Ok(p) => p.replica.errors.first().cloned().or(p.stream_error)
                        .unwrap_or_else(|| "the replica side stopped early".into()),
                    Err(e) => format!("replica task failed: {e}"),
                };
                return Err(Abort::Server(format!("replica side failed: {why}")));
            }
        };
        let data = match frame {
            None | Some(Err(_)) => {
                return Err(Abort::Cut(
                    "connection closed before the push finished".into(),
                ));
            }
            Some(Ok(WsMessage::Close(_))) => {
                return Err(Abort::Cut("client closed before the push finished".into()));
            }
            Some(Ok(WsMessage::Text(t))) => {
                idle_deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
                tracing::debug!(text = %t.as_str(), "ignoring text frame on a push");
                continue;
            }
            Some(Ok(WsMessage::Binary(b))) => {
                idle_deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
                b
            }
            Some(Ok(_)) => continue,
        };
        if data.is_empty() {
            continue;
        }
        if parser.at_boundary() && is_control_byte(data[0]) {
            match ClientControl::parse(&data) {
                Ok(ClientControl::Config) => {
                    let cfg = config_for(st, ctx, latest_number(&state), false, &mut keys_issued)?;
                    let _ = out.send(config_text(cfg)).await;
                }
                Ok(ClientControl::KeyRequest) => {
                    let cfg = config_for(st, ctx, latest_number(&state), true, &mut keys_issued)?;
                    let _ = out.send(config_text(cfg)).await;
                }
                Ok(ClientControl::CommitMessage(m)) => {
                    if helper.is_some() || !prefix.is_empty() {
                        return Err(Abort::Client(
                            "COMMITMESSAGE must come before ORIGIN_BEGIN".into(),
                        ));
                    }
                    message = m;
                }
                Err(e) => return Err(Abort::Client(format!("bad control frame: {e}"))),
            }
            continue;
        }
        if parser.ended() {
            return Err(Abort::Client("data after ORIGIN_END".into()));
        }
        let mut begin_page_size = None;
        parser
            .feed(&data, |m| {
                if first_message {
                    first_message = false;
                    // An origin that cannot even open its database says so
                    // with ORIGIN_ERROR before any ORIGIN_BEGIN.
                    if !matches!(
                        m,
                        Message::OriginBegin { .. }
                            | Message::OriginError(_)
                            | Message::OriginMsg(_)
                    ) {
                        bad_start = true;
                    }
                }
                summary.observe(&m);
                match m {
                    Message::OriginBegin { page_size, .. } => begin_page_size = Some(page_size),
                    Message::OriginPage { pgno, .. } => {
                        sent_pages.insert(pgno);
                    }
                    _ => {}
                }
            })
            .map_err(|e| Abort::Client(format!("not a sqlite3_rsync stream: {e}")))?;
        if bad_start {
            return Err(Abort::Client(
                "not a sqlite3_rsync stream: it must start with ORIGIN_BEGIN".into(),
            ));
        }
        if helper.is_none() {
            prefix.extend_from_slice(&data);
            if let Some(page_size) = begin_page_size {
                let guard = StagingGuard(st.store.staging_path(r));
                prepare_staging(st, r, latest.as_deref(), &guard.0, page_size).await?;
                let mut h = HelperProcess::spawn(Side::Replica, &guard.0, &r.path)
                    .map_err(|e| Abort::Server(format!("cannot start the helper: {e:#}")))?;
                let stdout = h.stdout.take().expect("piped stdout");
                pump = Some(tokio::spawn(pump_replica(stdout, out.clone())));
                staging = Some(guard);
                let input = std::mem::take(&mut prefix);
                write_helper(&mut h, &input).await;
                helper = Some(h);
            } else if parser.ended() {
                // ORIGIN_ERROR / ORIGIN_END without ever beginning.
                let why = summary.errors.first().cloned().unwrap_or_default();
                return Err(Abort::Client(format!("the origin failed: {why}")));
            } else if prefix.len() > MAX_PREFIX {
                return Err(Abort::Client(
                    "not a sqlite3_rsync stream: no ORIGIN_BEGIN".into(),
                ));
            }
        } else if let Some(h) = helper.as_mut() {
            write_helper(h, &data).await;
        }
        if parser.ended() {
            break;
        }
    }

    // ORIGIN_END is in: let the replica finish, then judge.
    let mut h = helper.expect("helper started before ORIGIN_END");
    h.stdin = None;
    let pumped = match pump.take() {
        Some(p) => tokio::time::timeout(Duration::from_secs(600), p)
            .await
            .map_err(|_| Abort::Server("the replica side did not finish".into()))?
            .map_err(|e| Abort::Server(format!("replica task failed: {e}")))?,
        None => return Err(Abort::Server("replica side missing".into())),
    };
    let status = tokio::time::timeout(Duration::from_secs(60), h.child.wait())
        .await
        .map_err(|_| Abort::Server("the helper did not exit".into()))?
        .map_err(|e| Abort::Server(format!("waiting for the helper: {e}")))?;
    if let Some(e) = pumped.stream_error {
        return Err(Abort::Server(format!("replica stream: {e}")));
    }
    if let Some(e) = pumped.replica.errors.first() {
        return Err(Abort::Client(format!(
            "the replica side refused the push: {e}"
        )));
    }
    if let Some(e) = summary.errors.first() {
        return Err(Abort::Client(format!("the origin reported an error: {e}")));
    }
    if !summary.complete() || !status.success() {
        return Err(Abort::Client(
            "the push ended without a complete transaction".into(),
        ));
    }
    let final_count = summary.txn_page_count.unwrap_or(0);
    let store = st.store.clone();
    let replica = r.clone();
    let staging = staging.expect("staging with helper");
    let outcome = tokio::task::spawn_blocking(move || {
        let res = store.commit(&replica, &staging.0, &sent_pages, final_count, &message);
        drop(staging);
        res
    })
    .await
    .map_err(|e| Abort::Server(format!("commit task failed: {e}")))?
    .map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "commit failed");
        Abort::Server(format!("could not store the version: {e:#}"))
    })?;
    match outcome {
        CommitOutcome::Committed(row) => {
            let mut cfg = config_for(st, ctx, row.number, false, &mut keys_issued)?;
            cfg.version_hash = Some(row.version_hash.clone());
            Ok(PushEnd::Committed(cfg, row))
        }
        CommitOutcome::NoChange(row) => {
            let n = row.as_ref().map_or(0, |r| r.number);
            let mut cfg = config_for(st, ctx, n, false, &mut keys_issued)?;
            cfg.version_hash = row.map(|r| r.version_hash);
            Ok(PushEnd::NoChange(cfg, n))
        }
    }
}

fn latest_number(state: &ReplicaState) -> u64 {
    state.latest().map_or(0, |f| f.number)
}

/// Keys already issued in this session (each kind at most once).
#[derive(Default)]
struct KeysIssued {
    pull: Option<String>,
    push: Option<String>,
}

/// The CONFIG answer; on KEYREQUEST a new Replica Pull key, and for a push
/// authorised by the Account Admin key a new Replica Push key.
fn config_for(
    st: &AppState,
    ctx: &PushContext,
    version: u64,
    key_request: bool,
    issued: &mut KeysIssued,
) -> Result<ServerConfig, Abort> {
    let r = &ctx.replica;
    if key_request {
        let res = st.store.with_meta(|c| {
            if issued.pull.is_none() {
                issued.pull = Some(keys::create(
                    c,
                    KeyKind::ReplicaPull,
                    &r.namespace,
                    Some(r.id),
                )?);
            }
            if ctx.key.kind == KeyKind::Admin && issued.push.is_none() {
                issued.push = Some(keys::create(
                    c,
                    KeyKind::ReplicaPush,
                    &r.namespace,
                    Some(r.id),
                )?);
            }
            Ok(())
        });
        res.map_err(|e| Abort::Server(format!("issuing keys: {e:#}")))?;
    }
    Ok(ServerConfig {
        replica_id: Some(r.uid.clone()),
        replica_path: Some(r.path.clone()),
        committed_version_id: Some(version.to_string()),
        new_pull_key: if key_request {
            issued.pull.clone()
        } else {
            None
        },
        new_push_key: if key_request {
            issued.push.clone()
        } else {
            None
        },
        version_hash: None,
    })
}

/// The staging file: a copy of the latest version when the page size
/// matches (so only changed pages travel), otherwise a new empty database.
async fn prepare_staging(
    st: &AppState,
    r: &ReplicaRow,
    latest: Option<&super::store::VersionFile>,
    staging: &Path,
    page_size: u32,
) -> Result<(), Abort> {
    let Some(latest) = latest else { return Ok(()) };
    let src = latest.path.clone();
    let dst = staging.to_path_buf();
    let store = st.store.clone();
    let number = latest.number;
    let rr = r.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let v = store
            .with_meta(|c| meta::version(c, rr.id, number))?
            .ok_or_else(|| anyhow::anyhow!("latest version row missing"))?;
        if v.page_size == page_size {
            std::fs::copy(&src, &dst)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| Abort::Server(format!("staging task failed: {e}")))?
    .map_err(|e| Abort::Server(format!("preparing the staging copy: {e:#}")))
}

/// Writes to the helper's stdin; a failure means the helper stopped, which
/// the pump reports.
async fn write_helper(h: &mut HelperProcess, data: &[u8]) {
    if let Some(stdin) = h.stdin.as_mut()
        && stdin.write_all(data).await.is_err()
    {
        h.stdin = None;
    }
}

/// Carries the helper's REPLICA stream to the client, parsing it for
/// REPLICA_ERROR (the helper always exits 0).
async fn pump_replica(mut stdout: tokio::process::ChildStdout, out: OutTx) -> PumpResult {
    let mut parser = StreamParser::new(Direction::FromReplica);
    let mut replica = ReplicaSummary::default();
    let mut stream_error = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stream_error.is_none()
            && let Err(e) = parser.feed(&buf[..n], |m| replica.observe(&m))
        {
            stream_error = Some(e.to_string());
        }
        if out.send(Out::Binary(buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    PumpResult {
        replica,
        stream_error,
    }
}
