//! Opening the websocket to a server, and every way that can fail.
//!
//! [`ConnectError`] is the connection layer's error: a refused upgrade
//! keeps its HTTP status as a number, so a caller decides on it by matching
//! (a pull asks for a key on 401/403; a subscription does not retry a 4xx),
//! never by reading the message. Each variant's message is the one line the
//! user sees.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::wire::{CLIENT_MAX_FRAME, one_line, visible};

/// Longest wait for the TCP connection and the websocket upgrade (or the
/// idle timeout, when that is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The websocket type every connection uses.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An opened websocket and what the server's upgrade answer said of it.
pub struct Connected {
    pub ws: Socket,
    /// The largest frame the server said it takes, when it answered our
    /// offer of large frames (see [`crate::wire::framing`]); `None`: it
    /// gets compatible frames.
    pub max_frame: Option<usize>,
    /// The server answered our offer of a verified push: it expects the
    /// stream's digest after ORIGIN_END.
    pub stream_digest: bool,
    /// The server answered our offer of a delta sync
    /// ([`crate::wire::delta`]): on a push it takes one, on a pull it sends
    /// one.
    pub delta: bool,
    /// The version our server's answer to a point-in-time pull names
    /// ([`crate::wire::headers::VERSION_AT`]); None: not offered, or not
    /// understood (the server serves something else).
    pub version_at: Option<u64>,
}

/// The header that offers the server large frames: we take frames up to
/// [`CLIENT_MAX_FRAME`] bytes, exactly what [`connect`] lets the websocket
/// library read.
pub fn frame_offer() -> (&'static str, String) {
    (
        crate::wire::headers::MAX_FRAME,
        CLIENT_MAX_FRAME.to_string(),
    )
}

/// Why no websocket was opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL cannot be turned into a request.
    #[error("invalid server URL {url}")]
    InvalidUrl {
        url: String,
        #[source]
        source: tungstenite::Error,
    },
    /// A header value (a key, a path) has bytes HTTP cannot carry.
    #[error("the value of {name} cannot be sent in an HTTP header")]
    BadHeader { name: &'static str },
    /// Nothing answered in time.
    #[error("cannot reach the server {host}: no answer within {}s", .wait.as_secs_f64())]
    Timeout { host: String, wait: Duration },
    /// The server answered the upgrade with an HTTP error.
    #[error("server refused: HTTP {status} {reason}{}", body_suffix(.body))]
    Http {
        status: u16,
        reason: &'static str,
        /// The body, as one line of at most 300 characters, made visible
        /// (see [`crate::wire::visible`]).
        body: String,
    },
    /// The server's certificate was not trusted.
    #[error("TLS with {host} failed: {io} (a private CA can be trusted with SSL_CERT_FILE=ca.pem)")]
    Certificate { host: String, io: std::io::Error },
    /// TCP failed (refused, no route, reset).
    #[error("cannot reach the server {host}: {io}")]
    Unreachable { host: String, io: std::io::Error },
    /// TLS failed for another reason.
    #[error("TLS with {host} failed: {tls}")]
    Tls {
        host: String,
        tls: tungstenite::error::TlsError,
    },
    /// The peer hung up before answering the upgrade.
    #[error("cannot reach the server {host}: it closed the connection without answering")]
    ClosedWithoutAnswer { host: String },
    /// The peer answered something that is not HTTP.
    #[error(
        "websocket handshake with {host} failed: the answer is not HTTP ({detail}); is this an SQLRsync server?"
    )]
    NotHttp { host: String, detail: String },
    /// Any other handshake failure.
    #[error("websocket handshake with {host} failed: {detail}")]
    Handshake { host: String, detail: String },
}

fn body_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

impl ConnectError {
    /// Worth trying again later: the server may come back. A refusal (HTTP
    /// 4xx) or a request that cannot be made will not change by waiting.
    pub fn retryable(&self) -> bool {
        match self {
            ConnectError::Http { status, .. } => !(400..500).contains(status),
            ConnectError::InvalidUrl { .. } | ConnectError::BadHeader { .. } => false,
            _ => true,
        }
    }

    fn from_handshake(host: &str, e: tungstenite::Error) -> ConnectError {
        use tungstenite::Error as E;
        let host = host.to_string();
        match e {
            E::Http(resp) => {
                let status = resp.status();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| one_line(&String::from_utf8_lossy(b)))
                    .unwrap_or_default();
                ConnectError::Http {
                    status: status.as_u16(),
                    reason: status.canonical_reason().unwrap_or(""),
                    body: body.chars().take(300).collect(),
                }
            }
            E::Io(io) if io.to_string().contains("certificate") => {
                ConnectError::Certificate { host, io }
            }
            E::Io(io) => ConnectError::Unreachable { host, io },
            E::Tls(tls) => ConnectError::Tls { host, tls },
            E::Protocol(ProtocolError::HandshakeIncomplete) => {
                ConnectError::ClosedWithoutAnswer { host }
            }
            E::Protocol(ProtocolError::HttparseError(e)) => ConnectError::NotHttp {
                host,
                detail: visible(&e.to_string()).into_owned(),
            },
            // The library's text may quote what the server answered.
            other => ConnectError::Handshake {
                host,
                detail: one_line(&other.to_string()).chars().take(300).collect(),
            },
        }
    }
}

/// Opens the websocket with `headers`, waiting at most the connect timeout
/// (or `idle`, when shorter).
pub async fn connect(
    url: &str,
    hdrs: &[(&'static str, String)],
    idle: Duration,
) -> Result<Connected, ConnectError> {
    let mut req = url
        .into_client_request()
        .map_err(|source| ConnectError::InvalidUrl {
            url: url.to_string(),
            source,
        })?;
    for (name, value) in hdrs {
        let v = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| ConnectError::BadHeader { name })?;
        req.headers_mut().insert(*name, v);
    }
    // The largest frame we take is the one we offer; a message (nobody
    // fragments) is bounded by the same figure. The library's defaults
    // (64 MiB messages, 16 MiB frames) would let a server make us buffer
    // sixteen times more.
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(CLIENT_MAX_FRAME);
    cfg.max_frame_size = Some(CLIENT_MAX_FRAME);
    cfg.read_buffer_size = 128 * 1024;
    // Frames queued in a burst are written together (see
    // link::writer); each burst's last frame flushes.
    cfg.write_buffer_size = 128 * 1024;
    let host = host_of(url);
    let attempt = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true);
    let wait = CONNECT_TIMEOUT.min(idle);
    match tokio::time::timeout(wait, attempt).await {
        Err(_) => Err(ConnectError::Timeout { host, wait }),
        Ok(Err(e)) => Err(ConnectError::from_handshake(&host, e)),
        Ok(Ok((ws, resp))) => {
            // Only an answer to an offer we made counts.
            let offered = hdrs
                .iter()
                .any(|(n, _)| *n == crate::wire::headers::MAX_FRAME);
            let answer = resp
                .headers()
                .get(crate::wire::headers::MAX_FRAME)
                .and_then(|v| v.to_str().ok());
            let max_frame = crate::wire::offered_max_frame(answer).filter(|_| offered);
            let stream_digest = offered_digest(hdrs)
                && resp
                    .headers()
                    .get(crate::wire::headers::STREAM_DIGEST)
                    .is_some_and(|v| {
                        v.as_bytes() == crate::wire::headers::STREAM_DIGEST_XXH3.as_bytes()
                    });
            let delta = hdrs.iter().any(|(n, _)| *n == crate::wire::headers::DELTA)
                && resp
                    .headers()
                    .get(crate::wire::headers::DELTA)
                    .is_some_and(|v| v.as_bytes() == crate::wire::headers::DELTA_V1.as_bytes());
            let version_at = hdrs
                .iter()
                .any(|(n, _)| *n == crate::wire::headers::VERSION_AT)
                .then(|| resp.headers().get(crate::wire::headers::VERSION_AT))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            Ok(Connected {
                ws,
                max_frame,
                stream_digest,
                delta,
                version_at,
            })
        }
    }
}

/// True when `hdrs` offer a verified push.
fn offered_digest(hdrs: &[(&'static str, String)]) -> bool {
    hdrs.iter()
        .any(|(n, _)| *n == crate::wire::headers::STREAM_DIGEST)
}

fn host_of(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let e = ConnectError::Http {
            status: 401,
            reason: "Unauthorized",
            body: String::new(),
        };
        assert_eq!(e.to_string(), "server refused: HTTP 401 Unauthorized");
        assert!(!e.retryable());
        let e = ConnectError::Http {
            status: 503,
            reason: "Service Unavailable",
            body: "later".into(),
        };
        assert_eq!(
            e.to_string(),
            "server refused: HTTP 503 Service Unavailable: later"
        );
        assert!(e.retryable());
        let e = ConnectError::Timeout {
            host: "h:1".into(),
            wait: Duration::from_millis(1500),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach the server h:1: no answer within 1.5s"
        );
    }
}
