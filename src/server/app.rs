//! The HTTP side: shared state, routes, limits, TLS and graceful shutdown.
//!
//! [`run`] serves on already bound listeners (several `--listen`, plain and
//! TLS in one process) until `shutdown` resolves
//! (mini-redis style), so tests and the CLI bind port 0 and print the real
//! address. Shutdown stops accepting, tells every session (a `watch`
//! channel), and waits for them: each session holds a permit of the
//! session semaphore, so taking all permits back means all have finished.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use super::conn::DeadlineAcceptor;
use super::limits::{Budget, Limits, Permit, Sizes};
use super::store::Store;
use super::{metrics, names, pull, push, subscribe, versions_api, web};

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where everything is stored.
    pub data_dir: PathBuf,
    /// PEM certificate chain and key for https/wss.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Most concurrent push and pull sessions; more get 503.
    pub max_sessions: usize,
    /// Most concurrent subscribers (a budget of their own, see
    /// [`super::limits`]).
    pub max_subscribers: usize,
    /// Most concurrent web downloads.
    pub max_downloads: usize,
    /// Percent of each budget one client address may hold.
    pub address_share: u8,
    /// How long a download's writes may wait for its client to take data
    /// before the connection is closed (a stalled reader must not hold a
    /// download slot and its pinned file forever).
    pub download_timeout: Duration,
    /// Largest websocket frame/message accepted, in bytes.
    pub max_frame: usize,
    /// Offer and send large frames to clients that offer them (SERVER.md
    /// "Extensions"); off: every client gets compatible frames.
    pub large_frames: bool,
    /// zstd level for stored pages (0: none).
    pub compression: i32,
    /// Largest database a push may announce; also scales how much a pull
    /// client may send ([`super::frames`]).
    pub max_db_bytes: u64,
    /// A push or pull with no frame in either direction, or a subscriber
    /// that sent nothing (not even a pong), for this long is ended: an
    /// idle client must not hold a session slot (or a push lock) forever.
    pub idle_timeout: Duration,
    /// A connection must send its HTTP request head, and a push its first
    /// frame, within this long ([`super::conn`]).
    pub handshake_timeout: Duration,
    /// Longest wait before checking a key from an address that sent wrong
    /// keys ([`super::throttle`]); zero: no wait.
    pub max_key_delay: Duration,
    /// Who may read `/metrics` ([`super::metrics`]).
    pub metrics: super::metrics::Access,
    /// How often retention policies are applied and packs compacted
    /// ([`super::maintenance`]); None: never.
    pub prune_every: Option<Duration>,
    /// Dead-man notifications ([`super::notify`]); off unless a command or
    /// a webhook is configured.
    pub notify: super::notify::NotifyConfig,
}

impl ServeConfig {
    /// The defaults of `sqlrsync-server serve` for `data_dir`.
    pub fn new(data_dir: PathBuf) -> ServeConfig {
        ServeConfig {
            data_dir,
            tls: None,
            max_sessions: 256,
            max_subscribers: 4096,
            max_downloads: 64,
            address_share: 25,
            download_timeout: Duration::from_secs(60),
            max_frame: 1024 * 1024,
            large_frames: true,
            compression: super::store::DEFAULT_COMPRESSION,
            max_db_bytes: crate::wire::DEFAULT_MAX_DB_BYTES,
            idle_timeout: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(30),
            max_key_delay: Duration::from_secs(1),
            metrics: super::metrics::Access::default(),
            prune_every: Some(Duration::from_secs(3600)),
            notify: super::notify::NotifyConfig::new(),
        }
    }

    /// How to frame what a session sends its client, from the offer in
    /// the upgrade request (see [`crate::wire::framing`]).
    pub fn framing_for(&self, h: &axum::http::HeaderMap) -> crate::link::Framing {
        crate::link::Framing::for_peer(self.large_frame_offer(h))
    }

    /// The client's offer of large frames, when we take it.
    fn large_frame_offer(&self, h: &axum::http::HeaderMap) -> Option<usize> {
        let v = h.get(crate::wire::headers::MAX_FRAME)?.to_str().ok();
        crate::wire::offered_max_frame(v).filter(|_| self.large_frames)
    }

    /// Answers a client's offer of large frames on the upgrade response
    /// with our own limit; a client that offered none gets no header.
    pub fn answer_offer(&self, h: &axum::http::HeaderMap, resp: &mut axum::response::Response) {
        if self.large_frame_offer(h).is_some() {
            resp.headers_mut().insert(
                crate::wire::headers::MAX_FRAME,
                axum::http::HeaderValue::from(self.max_frame),
            );
        }
    }

    /// What a session's client may send.
    pub fn stream_limits(&self) -> super::frames::StreamLimits {
        super::frames::StreamLimits {
            max_db_bytes: self.max_db_bytes,
            ..Default::default()
        }
    }
}

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<Store>,
    /// Session budgets: the connection limits and the shutdown wait.
    pub limits: Arc<Limits>,
    /// Becomes true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Limits and options.
    pub config: Arc<ServeConfig>,
    /// Addresses that sent wrong keys.
    pub key_throttle: Arc<super::throttle::KeyThrottle>,
    /// What `/metrics` reports.
    pub metrics: Arc<super::metrics::Metrics>,
}

impl AppState {
    /// A slot of `budget` for the client at `peer`, or 503 when that budget
    /// is full, the client holds its share of it, or the server is stopping.
    pub fn session_permit(&self, budget: Budget, peer: SocketAddr) -> Result<Permit, Refusal> {
        if *self.shutdown.borrow() {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down",
            ));
        }
        self.limits.acquire(budget, peer.ip())
    }
}

/// Resolves once the server is shutting down.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A refusal: HTTP status and a short plain-text body (PROTOCOL.md 2).
pub fn refuse(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        format!("{body}\n"),
    )
        .into_response()
}

pub fn internal(e: anyhow::Error) -> Response {
    Refusal::internal(e).into_response()
}

/// A request refused before any session starts: the status and short body
/// that [`refuse`] sends. Small, so that the `Result`s of admission stay
/// cheap to return; it becomes the response at the handler.
#[derive(Debug)]
pub struct Refusal {
    /// The HTTP status.
    status: StatusCode,
    /// The plain-text body (without its newline).
    body: String,
}

impl Refusal {
    pub fn new(status: StatusCode, body: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body: body.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// A 500 for an error of ours, logged here (the client sees no detail).
    pub fn internal(e: anyhow::Error) -> Refusal {
        tracing::error!(error = %format!("{e:#}"), "internal error");
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.status, &self.body)
    }
}

/// The remote path after `prefix` in a request path, validated.
pub fn remote_path<'a>(raw_path: &'a str, prefix: &str) -> Result<&'a str, Refusal> {
    let rest = raw_path.strip_prefix(prefix).unwrap_or("");
    names::validate_new_path(rest)
        .map(|_| rest)
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, format!("invalid path: {e}")))
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/sapi/push", get(push::handler))
        .route("/sapi/push/", get(push::handler))
        .route("/sapi/push/{*path}", get(push::handler))
        .route("/sapi/pull/{*path}", get(pull::handler))
        .route("/sapi/subscribe/{*path}", get(subscribe::handler))
        .route("/sapi/versions/{*path}", get(versions_api::handler))
        .route("/healthz", get(metrics::healthz))
        .route("/metrics", get(metrics::handler))
        .route("/", get(web::home))
        .route("/{*path}", get(web::page_route))
        .with_state(state)
}

/// Serves `app` on one listener (TLS when `tls` is given) until its handle
/// shuts it down.
async fn serve_one(
    tcp: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    handle: axum_server::Handle,
    handshake: Duration,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
) -> Result<()> {
    match tls {
        Some(tls) => {
            // TCP_NODELAY: protocol 2 is a ping-pong of small frames, which
            // Nagle + delayed ACKs would stall by tens of milliseconds a round.
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .handshake_timeout(handshake)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            let mut server = axum_server::from_tcp(tcp)
                .acceptor(DeadlineAcceptor::new(acceptor, handshake))
                .handle(handle);
            configure_http(&mut server, handshake);
            server.serve(app).await?;
        }
        None => {
            let mut server = axum_server::from_tcp(tcp)
                .acceptor(DeadlineAcceptor::new(
                    axum_server::accept::NoDelayAcceptor::new(),
                    handshake,
                ))
                .handle(handle);
            configure_http(&mut server, handshake);
            server.serve(app).await?;
        }
    }
    Ok(())
}

/// hyper's header timeout (it needs a timer) bounds reading a request
/// head, and how long an idle keep-alive connection waits for its next
/// request; HTTP/2 connections are pinged so dead peers go away.
fn configure_http<A>(server: &mut axum_server::Server<A>, handshake: Duration) {
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(handshake);
    server
        .http_builder()
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
}

/// On `shutdown`: tells sessions (`stop_tx`), stops accepting on every
/// listener and gives the connections 10 s to end.
fn watch_shutdown(
    handles: Vec<axum_server::Handle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop_tx: watch::Sender<bool>,
) {
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, finishing sessions");
        let _ = stop_tx.send(true);
        for h in &handles {
            h.graceful_shutdown(Some(Duration::from_secs(10)));
        }
        // Keep the sender alive so receivers never see a closed channel
        // before the server has stopped.
        std::future::pending::<()>().await;
    });
}

/// Tells the caller once every listener really accepts connections (the
/// store is open, TLS loaded), so "listening" is never premature.
fn report_ready(handles: Vec<axum_server::Handle>, ready: tokio::sync::oneshot::Sender<()>) {
    tokio::spawn(async move {
        for h in handles {
            if h.listening().await.is_none() {
                return;
            }
        }
        let _ = ready.send(());
    });
}

/// One bound `--listen` address.
pub struct Listener {
    pub tcp: std::net::TcpListener,
    /// Serve TLS (https/wss) there.
    pub tls: bool,
}

/// Serves on every listener until `shutdown` resolves, then drains sessions.
pub async fn run(
    listeners: Vec<Listener>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let compression = config.compression;
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir, compression))
        .await
        .context("opening the store")??;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState {
        store: Arc::new(store),
        limits: Arc::new(Limits::new(Sizes {
            syncs: config.max_sessions,
            subscribers: config.max_subscribers,
            downloads: config.max_downloads,
            share: config.address_share,
        })),
        shutdown: stop_rx,
        config: Arc::new(config.clone()),
        key_throttle: super::throttle::KeyThrottle::new(config.max_key_delay),
        metrics: metrics::Metrics::new(&config.data_dir, config.metrics),
    };
    let tls = match &config.tls {
        Some((cert, key)) if listeners.iter().any(|l| l.tls) => Some(
            axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?,
        ),
        _ => None,
    };
    if let Some(every) = config.prune_every {
        tokio::spawn(super::maintenance::schedule(
            state.store.clone(),
            every,
            state.shutdown.clone(),
        ));
    }
    let handles: Vec<_> = listeners
        .iter()
        .map(|_| axum_server::Handle::new())
        .collect();
    if config.notify.enabled() {
        let (store, stop) = (state.store.clone(), state.shutdown.clone());
        tokio::spawn(super::notify::run(store, config.notify.clone(), stop));
    }
    watch_shutdown(handles.clone(), shutdown, stop_tx);
    report_ready(handles.clone(), ready);
    let mut servers = tokio::task::JoinSet::new();
    for (l, handle) in listeners.into_iter().zip(handles) {
        let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        l.tcp.set_nonblocking(true)?;
        let tls = if l.tls { tls.clone() } else { None };
        servers.spawn(serve_one(l.tcp, tls, handle, config.handshake_timeout, app));
    }
    while let Some(r) = servers.join_next().await {
        r.context("a listener's task failed")??;
    }
    // Every session holds a permit; getting them all back means all ended.
    if !state.limits.drain(Duration::from_secs(15)).await {
        tracing::warn!("some sessions did not finish in time");
    }
    tracing::info!("stopped");
    Ok(())
}
