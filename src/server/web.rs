//! The web pages: a namespace's public replicas, one replica's versions with
//! its pull command (a page of them at a time, as the JSON listing pages
//! them), and downloads of any version as a file.
//!
//! Private replicas and unknown paths answer the same 404, so a page never
//! tells an outsider that a private replica exists.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};

use super::app::{AppState, internal, refuse};
use super::conn::WriteStall;
use super::download::CheckedVersion;
use super::limits::{Budget, Permit};
use super::metrics::{Kind, SessionGuard};
use super::names;
use super::store::ReplicaRow;
use super::store::prune::VersionPruned;
use crate::ui::human_bytes;
use crate::wire::{VersionRef, Visibility};

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The style sheet of every page, inline so a page is one request; the
/// Content-Security-Policy allows exactly this text by its hash.
const STYLE: &str = "\
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #ddd}\
td.num{text-align:right;font-variant-numeric:tabular-nums}code,pre{background:#f4f4f4;padding:.2rem .4rem;border-radius:4px}";

fn page(title: &str, body: &str) -> Response {
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{t} · sqlrsync</title><style>{STYLE}</style></head><body><h1>{t}</h1>\n{body}\n\
<footer><p><small>served by sqlrsync-server {v}</small></p></footer></body></html>\n",
        t = esc(title),
        v = env!("CARGO_PKG_VERSION"),
    ))
    .into_response()
}

/// The Content-Security-Policy of every web response: nothing may load or
/// run but the page's own style sheet (by its hash); no scripts, images,
/// frames, forms or base URL; and no other site may frame the page. The
/// pages show text that pushers chose (commit messages, paths): escaped,
/// and were an escape ever missed, this keeps it inert.
fn content_security_policy() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        use sha2::Digest;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// Adds the security headers to a web response (pages, downloads and
/// refusals alike): the CSP, `nosniff` (a download is never run as a page
/// or script, whatever its bytes), `X-Frame-Options` for browsers that
/// predate `frame-ancestors`, and no Referer to other sites.
fn secured(mut resp: Response) -> Response {
    use axum::http::HeaderValue;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(content_security_policy()),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn not_found() -> Response {
    refuse(StatusCode::NOT_FOUND, "not found")
}

pub async fn home() -> Response {
    secured(page(
        "sqlrsync server",
        "<p>This server keeps versioned SQLite replicas pushed with \
<a href=\"https://sqlrsync.com\">sqlrsync</a>. Open <code>/&lt;namespace&gt;</code> to list a \
namespace's public replicas.</p>",
    ))
}

/// The connection a web request came on.
pub struct Conn {
    /// The client's address (its share of the download budget).
    pub peer: SocketAddr,
    /// The connection's write bound (see [`super::conn`]).
    pub stall: Option<WriteStall>,
}

/// `GET /<namespace>`, `GET /<namespace>/<path>`, `GET /<namespace>/<path>@<version>`.
pub async fn page_handler(st: AppState, uri: Uri, h: HeaderMap, conn: Conn) -> Response {
    let raw = uri.path().trim_start_matches('/');
    if raw.contains('%') || raw.len() > names::MAX_PATH + 32 {
        return refuse(StatusCode::BAD_REQUEST, "invalid path");
    }
    let raw = raw.trim_end_matches('/');
    if !raw.contains('/') {
        if names::validate_namespace(raw).is_err() {
            return not_found();
        }
        return namespace_page(&st, raw);
    }
    let (path, version) = match raw.rsplit_once('@') {
        Some((p, v)) => match VersionRef::parse_user(v) {
            Ok(v) => (p, Some(v)),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
        },
        None => (raw, None),
    };
    if names::validate_path(path).is_err() {
        return not_found();
    }
    let replica = match st.store.meta().replica(path) {
        Ok(Some(r)) if r.visibility != Visibility::Private.as_str() => r,
        Ok(_) => return not_found(),
        Err(e) => return internal(e),
    };
    match version {
        Some(v) => download(&st, replica, v, conn).await,
        None => match crate::wire::versions::parse_query(uri.query()) {
            Ok((_, before)) => replica_page(&st, &replica, &h, before),
            Err(e) => refuse(StatusCode::BAD_REQUEST, &e),
        },
    }
}

pub async fn page_route(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    stall: Option<Extension<WriteStall>>,
    uri: Uri,
    h: HeaderMap,
) -> Response {
    let conn = Conn {
        peer,
        stall: stall.map(|Extension(s)| s),
    };
    secured(page_handler(st, uri, h, conn).await)
}

/// The same page for a namespace that does not exist as for one with no
/// public replicas (one query either way), so the page does not tell
/// which namespaces exist.
fn namespace_page(st: &AppState, ns: &str) -> Response {
    let replicas = match st.store.meta().replicas_of(ns) {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let public: Vec<&ReplicaRow> = replicas
        .iter()
        .filter(|r| r.visibility == Visibility::Public.as_str() && r.latest > 0)
        .collect();
    let mut body = String::new();
    if public.is_empty() {
        body.push_str("<p>No public replicas.</p>");
    } else {
        body.push_str(
            "<table id=\"replicas\"><thead><tr><th>Replica</th><th>Latest version</th></tr></thead><tbody>\n",
        );
        for r in public {
            body.push_str(&format!(
                "<tr><td><a href=\"/{p}\">{p}</a></td><td class=\"num\">{v}</td></tr>\n",
                p = esc(&r.path),
                v = r.latest
            ));
        }
        body.push_str("</tbody></table>");
    }
    page(ns, &body)
}

/// The websocket scheme a client of this page must use: what a TLS reverse
/// proxy in front says (`X-Forwarded-Proto`), else whether we serve TLS.
/// Trusting the header is harmless: it only changes the text of the page
/// sent to whoever sent it.
fn ws_scheme(st: &AppState, h: &HeaderMap) -> &'static str {
    let forwarded = h
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match forwarded.as_deref() {
        Some("https" | "wss") => "wss",
        Some("http" | "ws") => "ws",
        _ if st.config.tls.is_some() => "wss",
        _ => "ws",
    }
}

/// Versions on one replica page; older ones are a link away (`?before=N`),
/// so a replica pushed every minute still has a page of bounded size.
const PAGE_VERSIONS: u32 = 100;

/// A replica's page: its pull command, then its versions, newest first,
/// [`PAGE_VERSIONS`] at a time, from the listing's query (`before`).
fn replica_page(st: &AppState, r: &ReplicaRow, h: &HeaderMap, before: Option<u64>) -> Response {
    let mut versions = match st.store.meta().versions_page(r, before, PAGE_VERSIONS + 1) {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    let older = versions.len() > PAGE_VERSIONS as usize;
    versions.truncate(PAGE_VERSIONS as usize);
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = ws_scheme(st, h);
    let name = r.path.rsplit('/').next().unwrap_or("replica.db");
    let mut body = format!(
        "<p>Visibility: <strong>{vis}</strong>. Pull the latest version with:</p>\n\
<pre id=\"pull-command\">sqlrsync {p} {n} --server {scheme}://{host}</pre>\n",
        vis = esc(&r.visibility),
        p = esc(&r.path),
        n = esc(name),
        host = esc(host),
    );
    if versions.is_empty() {
        body.push_str("<p>No versions yet.</p>");
    } else {
        body.push_str(
            "<table id=\"versions\"><thead><tr><th>Version</th><th>Time (UTC)</th><th>Size</th>\
<th>Pages changed</th><th>Message</th><th>Download</th></tr></thead><tbody>\n",
        );
        for v in &versions {
            let download = match &v.pruned {
                Some(p) => format!(
                    "<span class=\"pruned\" title=\"{why}\">pruned {at}</span>",
                    why = esc(&format!("by the retention policy {}", p.reason)),
                    at = esc(p.at.split('T').next().unwrap_or("")),
                ),
                None => format!(
                    "<a href=\"/{p}@{n}\">{file}@{n}</a>",
                    p = esc(&r.path),
                    n = v.number,
                    file = esc(name),
                ),
            };
            body.push_str(&format!(
                "<tr><td class=\"num\">{n}</td><td>{t}</td><td class=\"num\">{s}</td>\
<td class=\"num\">{c} of {pc}</td><td>{m}</td><td>{download}</td></tr>\n",
                n = v.number,
                t = esc(v.created.replace('T', " ").trim_end_matches('Z')),
                s = esc(&human_bytes(v.size())),
                c = v.changed_pages,
                pc = v.page_count,
                m = esc(&v.message),
            ));
        }
        body.push_str("</tbody></table>");
    }
    if let (true, Some(last)) = (older, versions.last()) {
        body.push_str(&format!(
            "<p><a id=\"older\" href=\"/{p}?before={n}\">Older versions</a></p>",
            p = esc(&r.path),
            n = last.number
        ));
    }
    page(&r.path, &body)
}

/// The answer to a download that could not start: 410 for a pruned
/// version, else 500 (logged: damage, or a read error).
fn open_failed(r: &ReplicaRow, n: u64, e: anyhow::Error) -> Response {
    if e.is::<VersionPruned>() {
        return refuse(StatusCode::GONE, &e.to_string());
    }
    tracing::error!(path = %r.path, version = n, error = %format!("{e:#}"), "download refused");
    internal(e)
}

/// A download in progress: what it reads, and what it holds until it
/// ends, however it ends (whole, cut for damage, its client gone or
/// stalled past `--download-timeout`).
struct Transfer {
    version: CheckedVersion,
    /// Its slot of the download budget.
    _permit: Permit,
    /// It, for `/metrics`: whole, or cut short.
    track: SessionGuard,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if self.version.finished() {
            self.track.succeeded();
            self.track.bytes(0, self.version.row().size());
        } else {
            tracing::info!(path = %self.version.path(), version = self.version.row().number,
                "download ended before the end of the file");
        }
    }
}

/// `@version`: the version's file, streamed from the store and checked as
/// it goes ([`CheckedVersion`]). Damage found before the first byte is a
/// 500; found later, it aborts the body, so the client sees a broken
/// transfer (short of its Content-Length), never a whole file with bad
/// bytes. Either way it is logged. A download holds a slot of the
/// download budget, and its connection's writes may wait at most
/// `--download-timeout` for the client to take data.
async fn download(st: &AppState, r: ReplicaRow, v: VersionRef, conn: Conn) -> Response {
    let n = match super::resolve::version_for(st, &r, v) {
        Ok(row) => row.number,
        Err(_) => return not_found(),
    };
    let permit = match st.session_permit(Budget::Download, conn.peer) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let store = st.store.clone();
    let rr = r.clone();
    let first = tokio::task::spawn_blocking(move || {
        let mut version = CheckedVersion::open(store, &rr, n)?;
        let chunk = version.next_chunk()?;
        Ok::<_, anyhow::Error>((version, chunk))
    })
    .await;
    let (version, first) = match first {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return open_failed(&r, n, e),
        Err(e) => return internal(e.into()),
    };
    let len = version.row().size();
    // For the rest of the connection: the body's last bytes are still
    // being written when the Transfer ends, and they are bounded too.
    if let Some(s) = &conn.stall {
        s.set(Some(st.config.download_timeout));
    }
    let transfer = Transfer {
        version,
        _permit: permit,
        track: st.metrics.session_started(Kind::Download, &r.namespace),
    };
    let stream = futures_util::stream::unfold(
        (first.map(bytes::Bytes::from), Some(transfer)),
        |(ready, transfer)| async move {
            if let Some(chunk) = ready {
                return Some((Ok(chunk), (None, transfer)));
            }
            let mut t = transfer?;
            // Blocking reads, one chunk at a time: a stalled client holds
            // no thread, only its Transfer.
            let read = tokio::task::spawn_blocking(move || {
                let chunk = t.version.next_chunk();
                (t, chunk)
            })
            .await;
            match read {
                Ok((_, Ok(None))) => None,
                Ok((t, Ok(Some(chunk)))) => Some((Ok(bytes::Bytes::from(chunk)), (None, Some(t)))),
                Ok((t, Err(e))) => {
                    tracing::error!(path = %t.version.path(), version = t.version.row().number,
                        error = %format!("{e:#}"), "download cut");
                    Some((Err(std::io::Error::other(e)), (None, None)))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), (None, None))),
            }
        },
    );
    let name = r.path.rsplit('/').next().unwrap_or("replica.db");
    let stem = name.strip_suffix(".db").unwrap_or(name);
    (
        [
            (header::CONTENT_TYPE, "application/vnd.sqlite3".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-v{n}.db\"",
                    names::sanitise_part(stem)
                ),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
