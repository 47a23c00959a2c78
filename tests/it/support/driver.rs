//! Test-side websocket peer for the server tests: the real sqlite3_rsync
//! helper (embedded in our library) on one side, carried to the server's
//! websocket by the library's link (`sqlrsync::link::drive`), as the
//! `sqlrsync` client does.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sqlrsync::helper::{HelperCommand, Stderr};
use sqlrsync::link::{Controls, DriveCtx, DriveSpec, Framing, PeerEnd, Stats, drive};
use sqlrsync::wire::{ClientControl, ServerConfig, ServerText};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What a session came to.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// HTTP status when the upgrade was refused.
    pub http_status: Option<u16>,
    /// Body of the refusal.
    pub http_body: String,
    /// Every CONFIG received, in order.
    pub configs: Vec<ServerConfig>,
    /// MESSAGE texts.
    pub messages: Vec<String>,
    /// ABORT reason, if any.
    pub abort: Option<String>,
    /// Close code from the server.
    pub close_code: Option<u16>,
    /// Binary bytes received.
    pub bytes_in: u64,
    /// The server sent NEWREPLICAVERSION (after the stream ended).
    pub newer_version: bool,
    /// Why the driver stopped, when not by a close frame (diagnostics).
    pub ended_by: Option<String>,
}

impl Outcome {
    /// Merged CONFIG fields (later frames win).
    pub fn config(&self) -> ServerConfig {
        let mut c = ServerConfig::default();
        for x in &self.configs {
            macro_rules! take {
                ($f:ident) => {
                    if x.$f.is_some() {
                        c.$f = x.$f.clone();
                    }
                };
            }
            take!(replica_id);
            take!(replica_path);
            take!(committed_version_id);
            take!(new_pull_key);
            take!(new_push_key);
            take!(version_hash);
            take!(version_xxh3);
        }
        c
    }

    pub fn ok(&self) -> bool {
        self.http_status.is_none() && self.abort.is_none() && self.close_code == Some(1000)
    }

    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.ok(), "session failed: {self:#?}");
    }

    pub fn version(&self) -> u64 {
        self.config()
            .committed_version_id
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Options of a session.
#[derive(Debug, Default, Clone)]
pub struct Opts {
    pub key: Option<String>,
    /// `X-Visibility`.
    pub visibility: Option<&'static str>,
    pub message: Option<String>,
    pub key_request: bool,
    /// `X-ReplicaVersion` (pull).
    pub version: Option<String>,
    pub hostname: Option<String>,
    pub abs_path: Option<String>,
    /// Cut the connection (no close frame) after sending this many stream bytes.
    pub cut_after: Option<u64>,
    /// More upgrade headers (an extension's offer).
    pub headers: Vec<(&'static str, String)>,
}

/// Options with `key` in the Authorization header and nothing else.
pub fn with_key(key: &str) -> Opts {
    Opts {
        key: Some(key.to_string()),
        ..Default::default()
    }
}

fn request(url: &str, opts: &Opts) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    if let Some(k) = &opts.key {
        h.insert("Authorization", k.parse().unwrap());
    }
    if let Some(v) = opts.visibility {
        h.insert("X-Visibility", v.parse().unwrap());
    }
    if let Some(v) = &opts.version {
        h.insert("X-ReplicaVersion", v.parse().unwrap());
    }
    if let Some(v) = &opts.hostname {
        h.insert("X-LocalHostname", v.parse().unwrap());
    }
    if let Some(v) = &opts.abs_path {
        h.insert("X-LocalAbsolutePath", v.parse().unwrap());
    }
    h.insert("X-ClientVersion", "server-tests".parse().unwrap());
    for (n, v) in &opts.headers {
        h.insert(*n, v.parse().unwrap());
    }
    req
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, opts: &Opts) -> Result<Ws, Outcome> {
    match tokio_tungstenite::connect_async(request(url, opts)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Outcome {
            http_status: Some(resp.status().as_u16()),
            http_body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
            ..Default::default()
        }),
        Err(e) => panic!("websocket connect to {url} failed: {e}"),
    }
}

fn note_text(out: &mut Outcome, t: &str) {
    match ServerText::parse(t) {
        Ok(ServerText::Config(c)) => out.configs.push(c),
        Ok(ServerText::Message(m)) => out.messages.push(m),
        Ok(ServerText::Abort(a)) => out.abort = Some(a),
        Err(_) => out.messages.push(t.to_string()),
    }
}

/// Pushes `db` to `server/sapi/push/<path>` with the real helper as ORIGIN.
pub async fn push(server_ws: &str, path: &str, db: &Path, opts: &Opts) -> Outcome {
    let url = format!("{server_ws}/sapi/push/{path}");
    let mut controls = Controls::default();
    if let Some(m) = &opts.message {
        controls
            .before
            .push(ClientControl::CommitMessage(m.clone()).encode());
    }
    session(&url, HelperCommand::origin(db, path), controls, opts, false).await
}

/// Pulls `server/sapi/pull/<path>` into `db` with the real helper as REPLICA.
pub async fn pull(server_ws: &str, path: &str, db: &Path, opts: &Opts) -> Outcome {
    let url = format!("{server_ws}/sapi/pull/{path}");
    session(
        &url,
        HelperCommand::replica(path, db),
        Controls::default(),
        opts,
        true,
    )
    .await
}

/// Connects (through a [`Cutter`] when `opts.cut_after` is set) and runs
/// the helper over the connection with the library's link, as the client
/// does.
async fn session(
    url: &str,
    helper: HelperCommand,
    mut controls: Controls,
    opts: &Opts,
    want_config: bool,
) -> Outcome {
    controls.after_first.push(ClientControl::Config.encode());
    if opts.key_request {
        controls
            .after_first
            .push(ClientControl::KeyRequest.encode());
    }
    let spec = DriveSpec {
        // Piped and kept (Outcome.helper_stderr), so a passing run prints
        // only test results.
        helper: helper.stderr(Stderr::Piped),
        controls,
        framing: Framing::LARGE,
        want_config,
        live_stderr: false,
        idle_timeout: Duration::from_secs(60),
    };
    match opts.cut_after {
        None => match connect(url, opts).await {
            Ok(ws) => bridge(ws, spec).await,
            Err(o) => o,
        },
        Some(limit) => {
            let addr = url.split("://").nth(1).unwrap().split('/').next().unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let cutter = Cutter {
                inner: tcp,
                left: limit,
            };
            match tokio_tungstenite::client_async(request(url, opts), cutter).await {
                Ok((ws, _)) => bridge(ws, spec).await,
                Err(e) => panic!("websocket connect to {url} failed: {e}"),
            }
        }
    }
}

/// Runs the link over `ws` and tells what the session came to.
async fn bridge<S: sqlrsync::link::Socket>(ws: S, spec: DriveSpec) -> Outcome {
    let ctx = DriveCtx {
        stats: Arc::new(Stats::default()),
        observer: None,
    };
    // Never fires: a test session is not interrupted.
    let (_never, interrupt) = tokio::sync::watch::channel(false);
    let linked = drive(ws, spec, ctx.clone(), |feed| feed, interrupt);
    let (o, _) = match tokio::time::timeout(Duration::from_secs(120), linked).await {
        Ok(r) => r.expect("the helper runs"),
        Err(_) => panic!("session timed out"),
    };
    let mut out = Outcome {
        configs: o.configs.clone(),
        messages: o.messages.clone(),
        bytes_in: Stats::get(&ctx.stats.stream_in),
        newer_version: o.newer_version,
        ..Default::default()
    };
    match o.end {
        PeerEnd::Closed(code, _) => out.close_code = Some(code),
        PeerEnd::Aborted(a) => out.abort = Some(a),
        other => out.ended_by = Some(format!("{other:?}")),
    }
    out
}

/// A TCP stream that vanishes (no close frame, like a dead network) once
/// `left` more bytes were to be written: it shuts the socket down both
/// ways, so the server sees the connection end at once.
struct Cutter {
    inner: tokio::net::TcpStream,
    left: u64,
}

impl tokio::io::AsyncRead for Cutter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Cutter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown(2) on a socket we own; it only ends the
            // connection.
            unsafe {
                libc::shutdown(self.inner.as_raw_fd(), libc::SHUT_RDWR);
            }
            return std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.left -= *n as u64;
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Opens a session and sends raw frames (for hostile-input tests); returns
/// what the server said.
pub async fn raw(
    server_ws: &str,
    endpoint_and_path: &str,
    opts: &Opts,
    frames: Vec<Message>,
) -> Outcome {
    let url = format!("{server_ws}{endpoint_and_path}");
    let ws = match connect(&url, opts).await {
        Ok(ws) => ws,
        Err(o) => return o,
    };
    let (mut tx, mut rx) = ws.split();
    let mut out = Outcome::default();
    for f in frames {
        if tx.send(f).await.is_err() {
            break;
        }
    }
    let read = async {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Text(t)) => note_text(&mut out, t.as_str()),
                Ok(Message::Close(c)) => {
                    out.close_code = Some(c.map_or(1005, |c| u16::from(c.code)));
                    break;
                }
                Ok(Message::Binary(b)) => out.bytes_in += b.len() as u64,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    let _ = CloseCode::Normal;
    out
}

/// A plain HTTP GET on loopback: (status, headers text, body bytes).
pub fn http_get(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    http_get_with(addr, path, "")
}

/// The same with more request header lines (each ending in `\r\n`).
pub fn http_get_with(addr: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = all[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A raw websocket upgrade request for `path` with `key` (if any) as the
/// Authorization header: (status, body). A 101 is returned as soon as its
/// head arrived (the socket is then dropped).
pub fn http_upgrade(addr: &str, path: &str, key: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: {k}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let split = loop {
        if let Some(i) = all.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (0, String::from_utf8_lossy(&all).into_owned()),
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status == 101 {
        return (status, String::new());
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = all[split + 4..].to_vec();
    while body.len() < len {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}
