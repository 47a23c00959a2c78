//! `GET /sapi/versions/<path>`: a replica's versions as JSON, one page at
//! a time (our extension; the shape is [`crate::wire::versions`]).
//!
//! It is read exactly as a pull is admitted ([`admission::admit_reader`],
//! behind the same wrong-key throttle): any key that may pull the replica,
//! or none for a public or unlisted one, and the same 404 for a private
//! replica without a key as for a path that does not exist. It holds a
//! slot of the download budget while it answers.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::admission;
use super::app::{AppState, Refusal, refuse};
use super::limits::Budget;
use super::store::VersionRow;
use crate::wire::versions::{self, LISTING_MARK, VERSIONS_PREFIX, VersionEntry, VersionsPage};

/// Every answer of the listing, refusals included, carries
/// [`LISTING_MARK`], so a client tells our 404 (no such replica, or no
/// access) from that of a server without the listing.
pub async fn handler(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    h: HeaderMap,
) -> Response {
    let mut resp = answer(st, peer, uri, h).await;
    let hs = resp.headers_mut();
    hs.insert(LISTING_MARK, HeaderValue::from_static("1"));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    hs.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn answer(st: AppState, peer: SocketAddr, uri: Uri, h: HeaderMap) -> Response {
    let admitted = st
        .key_throttle
        .admit(peer.ip(), &h, || {
            admission::admit_reader(&st, &uri, &h, VERSIONS_PREFIX, (Budget::Download, peer))
        })
        .await;
    let reader = match admitted {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let (limit, before) = match versions::parse_query(uri.query()) {
        Ok(q) => q,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let r = reader.replica;
    // One more than asked tells whether another page follows.
    let mut rows = match st.store.meta().versions_page(&r, before, limit + 1) {
        Ok(rows) => rows,
        Err(e) => return Refusal::internal(e).into_response(),
    };
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let page = VersionsPage {
        next_before: more.then(|| rows.last().map(|v| v.number)).flatten(),
        replica_path: r.path.clone(),
        replica_id: r.uid.clone(),
        latest: r.latest,
        versions: rows.iter().map(entry).collect(),
    };
    axum::Json(page).into_response()
}

fn entry(v: &VersionRow) -> VersionEntry {
    VersionEntry {
        version: v.number,
        created: v.created.clone(),
        size: v.size(),
        page_size: v.page_size,
        page_count: v.page_count,
        pages_changed: v.changed_pages,
        message: v.message.clone(),
        version_hash: v.version_hash.clone(),
        pruned: v.pruned.as_ref().map(|p| p.at.clone()),
    }
}
