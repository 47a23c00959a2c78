//! One plain HTTP GET to the server, for what is not a websocket session
//! (`--versions`, [`super::versions`]).
//!
//! HTTP/1.0 with `Connection: close` over TCP or TLS (the roots
//! tokio-tungstenite trusts for the websockets: the system's, which
//! `SSL_CERT_FILE` can name, and webpki's), the answer read to its end and
//! bounded. A 1.0 request is answered without chunking by any server, and
//! a chunked answer is decoded anyway; no HTTP client library is needed
//! for one request.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

/// An answer: its status, headers (names lowercase) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why there is no answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("invalid server URL {0}")]
    Url(String),
    #[error("cannot reach the server {host}: {io}")]
    Unreachable { host: String, io: std::io::Error },
    #[error("TLS with {host} failed: {io} (a private CA can be trusted with SSL_CERT_FILE=ca.pem)")]
    Tls { host: String, io: std::io::Error },
    #[error("cannot reach the server {host}: no answer within {}s", .wait.as_secs())]
    Timeout { host: String, wait: Duration },
    #[error("the answer of {host} is larger than {limit} bytes")]
    TooLarge { host: String, limit: usize },
    #[error("the answer of {host} is not HTTP ({detail})")]
    NotHttp { host: String, detail: String },
}

/// GETs `url` (`http://` or `https://`) with `headers`, within `wait`,
/// reading at most `limit` bytes of answer.
pub async fn get(
    url: &str,
    headers: &[(&str, String)],
    wait: Duration,
    limit: usize,
) -> Result<Answer, GetError> {
    let uri: http::Uri = url.parse().map_err(|_| GetError::Url(url.to_string()))?;
    let host = uri
        .host()
        .ok_or_else(|| GetError::Url(url.to_string()))?
        .to_string();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(GetError::Url(url.to_string())),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = format!(
        "GET {target} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|io| GetError::Unreachable {
                host: authority.clone(),
                io,
            })?;
        let raw = if tls {
            let name =
                ServerName::try_from(host.clone()).map_err(|_| GetError::Url(url.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, tcp)
                .await
                .map_err(|io| GetError::Tls {
                    host: authority.clone(),
                    io,
                })?;
            exchange(stream, &request, &authority, limit).await?
        } else {
            exchange(tcp, &request, &authority, limit).await?
        };
        parse(&raw, &authority)
    };
    match tokio::time::timeout(wait, exchange).await {
        Ok(r) => r,
        Err(_) => Err(GetError::Timeout {
            host: authority,
            wait,
        }),
    }
}

/// Sends the request and reads the whole answer (the server closes).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
    host: &str,
    limit: usize,
) -> Result<Vec<u8>, GetError> {
    let io = |io| GetError::Unreachable {
        host: host.to_string(),
        io,
    };
    s.write_all(request.as_bytes()).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the answer is
            // judged by its length and parse below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return Ok(raw);
        }
        if raw.len() + n > limit {
            return Err(GetError::TooLarge {
                host: host.to_string(),
                limit,
            });
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// The status line, headers and body of a whole answer.
fn parse(raw: &[u8], host: &str) -> Result<Answer, GetError> {
    let not_http = |detail: &str| GetError::NotHttp {
        host: host.to_string(),
        detail: detail.to_string(),
    };
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut slots);
    let head = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(not_http("cut short")),
        Err(e) => return Err(not_http(&e.to_string())),
    };
    let status = resp.code.ok_or_else(|| not_http("no status"))?;
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let mut answer = Answer {
        status,
        headers,
        body: raw[head..].to_vec(),
    };
    if answer
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        answer.body = unchunk(&answer.body).ok_or_else(|| not_http("bad chunked body"))?;
    } else if let Some(len) = answer
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if answer.body.len() < len {
            return Err(not_http("body cut short"));
        }
        answer.body.truncate(len);
    }
    Ok(answer)
}

/// A chunked body decoded; None when it is malformed.
fn unchunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The TLS client configuration, built once.
fn tls_config() -> Arc<ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let a = parse(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcdef",
            "h",
        )
        .unwrap();
        assert_eq!(
            (a.status, a.header("x-a"), a.body.as_slice()),
            (404, Some("b"), &b"abc"[..])
        );
        let a = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n",
            "h",
        )
        .unwrap();
        assert_eq!(a.body, b"abcde");
        assert!(parse(b"SSH-2.0-x\r\n", "h").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", "h").is_err());
    }
}
