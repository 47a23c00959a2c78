//! Delta pulls (our extension, SERVER.md "Delta pulls"; frames in
//! [`crate::wire::delta`]): a client whose database is an older version of
//! the replica gets only the pages that differ from the latest, in place of
//! a sqlite3_rsync session that would hash every page on both ends.
//!
//! The client offers it with [`headers::DELTA`] and [`headers::DELTA_HAVE`]
//! (`N:VERSIONXXH3` of the version it holds). The offer is taken at upgrade
//! time, when the answer header is written, and only when everything is
//! known to fit ([`decide`]): the pull is of the latest version, version N
//! exists with that exact versionXxh3 and the latest's page size, and the
//! pages that differ ([`crate::server::store::Store::pages_changed_since`])
//! come to at most [`MAX_DELTA_BYTES`]. Anything else, a malformed header
//! included, is no error: the pull is served as before, with no answer
//! header, so a client never gets frames it did not ask for.
//!
//! The pages come from the pinned latest file (no commit removes it while
//! it is read), a small batch at a time through the session's bounded
//! queue, so memory stays a few pages whatever the delta's size. After
//! DELTA_END the session sends the CONFIG a normal pull sends (its
//! versionXxh3 is what the client checks its result against) and waits for
//! the client to close, answering a KEYREQUEST like a normal pull.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use axum::http::HeaderMap;
use tokio::sync::oneshot;

use super::app::AppState;
use super::pull::{NewerCheck, PullContext, Serve, config};
use super::session::{Abort, Session, config_text, send_out};
use super::store::{ReplicaRow, Store, VersionFile, VersionRow};
use crate::link::{Out, OutTx};
use crate::wire::delta::{DeltaBegin, DeltaFrame, MAX_DELTA_BYTES, page_frame, xxh3_bytes};
use crate::wire::{CTRL_NEWREPLICAVERSION, headers};

/// Pages read from the file at once (off the async threads).
const BATCH: usize = 16;

/// A delta the server decided to send.
#[derive(Debug)]
pub struct DeltaPlan {
    /// The version the client holds.
    base: VersionRow,
    /// Its versionXxh3.
    base_xxh3: [u8; 16],
    /// The latest version, pinned.
    latest: Arc<VersionFile>,
    /// Its row.
    target: VersionRow,
    /// Its versionXxh3.
    target_xxh3: [u8; 16],
    /// The pages to send, in increasing order.
    pages: Vec<u32>,
}

impl DeltaPlan {
    /// The version the delta starts from.
    pub fn base_version(&self) -> u64 {
        self.base.number
    }
}

/// The client's offer: (version number, its versionXxh3 in hex), when the
/// headers make one. Anything malformed is no offer.
pub fn offer(h: &HeaderMap) -> Option<(u64, String)> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    if get(headers::DELTA)?.trim() != headers::DELTA_V1 {
        return None;
    }
    let (n, hex_text) = get(headers::DELTA_HAVE)?.trim().split_once(':')?;
    let n: u64 = n.parse().ok()?;
    let hex_ok = hex_text.len() == 32 && hex_text.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_ok && n >= 1).then(|| (n, hex_text.to_ascii_lowercase()))
}

/// Whether this pull is served as a delta (made at upgrade time, since
/// the answer header says so). Failures to read the metadata are logged
/// and mean a normal pull.
pub async fn decide(
    st: &AppState,
    r: &ReplicaRow,
    target: &VersionRow,
    h: &HeaderMap,
) -> Option<Arc<DeltaPlan>> {
    let (n, have) = offer(h)?;
    let (store, r, target) = (st.store.clone(), r.clone(), target.clone());
    let path = r.path.clone();
    match tokio::task::spawn_blocking(move || plan(&store, &r, &target, n, &have)).await {
        Ok(Ok(p)) => p.map(Arc::new),
        Ok(Err(e)) => {
            tracing::warn!(path = %path, error = %format!("{e:#}"), "no delta pull: the metadata could not be read");
            None
        }
        Err(_) => None,
    }
}

/// The delta from version `n` (whose versionXxh3 the client says is
/// `have`) to `target`, when every condition of the module doc holds.
fn plan(
    store: &Store,
    r: &ReplicaRow,
    target: &VersionRow,
    n: u64,
    have: &str,
) -> anyhow::Result<Option<DeltaPlan>> {
    let latest = store.replica_state(r).latest();
    let Some(latest) = latest.filter(|l| l.number == target.number) else {
        return Ok(None);
    };
    let Some(target_xxh3) = target.version_xxh3.as_deref().and_then(xxh3_bytes) else {
        return Ok(None);
    };
    if n >= target.number {
        return Ok(None);
    }
    let Some(base) = store.meta().version(r, n)? else {
        return Ok(None);
    };
    let same = base
        .version_xxh3
        .as_deref()
        .is_some_and(|x| x.eq_ignore_ascii_case(have));
    let Some(base_xxh3) = xxh3_bytes(have).filter(|_| same) else {
        return Ok(None);
    };
    let max_pages = MAX_DELTA_BYTES / target.page_size.max(512) as usize;
    let Some(pages) = store.pages_changed_since(r, &base, target, max_pages)? else {
        return Ok(None);
    };
    Ok(Some(DeltaPlan {
        base,
        base_xxh3,
        latest,
        target: target.clone(),
        target_xxh3,
        pages,
    }))
}

/// Serves the delta, then the CONFIG, then waits for the client's close;
/// returns the pages sent.
pub(super) async fn run(
    link: &mut Session,
    st: &AppState,
    ctx: &PullContext,
    plan: &Arc<DeltaPlan>,
) -> Result<u64, Abort> {
    let (ended_tx, ended_rx) = oneshot::channel::<()>();
    let newer = NewerCheck {
        state: st.store.replica_state(&ctx.replica),
        pulled: ctx.version.number,
    };
    let sender = tokio::spawn(send_delta(link.out.clone(), plan.clone(), ended_tx, newer));
    let mut serve = Serve::new(st, ctx, None);
    let sent = serve.serve(link, sender, ended_rx).await??;
    send_out(&link.out, config_text(config(ctx, serve.pull_key_shown()))).await;
    serve.store_pull_key()?;
    serve.await_close(link, true).await;
    Ok(sent)
}

/// Queues DELTA_BEGIN, the pages and DELTA_END (and NEWREPLICAVERSION
/// when the latest moved on meanwhile), waiting on the queue whenever the
/// client is slower than the disk.
async fn send_delta(
    out: OutTx,
    plan: Arc<DeltaPlan>,
    ended: oneshot::Sender<()>,
    newer: NewerCheck,
) -> Result<u64, Abort> {
    let begin = DeltaFrame::Begin(DeltaBegin {
        base_version: plan.base.number,
        base_xxh3: plan.base_xxh3,
        page_size: plan.target.page_size,
        page_count: plan.target.page_count,
    });
    queue(&out, begin.encode()).await?;
    let unreadable = |e: std::io::Error| {
        Abort::server(
            format!("the server could not read version {}", plan.target.number),
            e,
        )
    };
    let file = Arc::new(File::open(&plan.latest.path).map_err(unreadable)?);
    for batch in plan.pages.chunks(BATCH) {
        let (f, nums, size) = (file.clone(), batch.to_vec(), plan.target.page_size);
        let frames = tokio::task::spawn_blocking(move || read_frames(&f, &nums, size))
            .await
            .map_err(|e| Abort::server("the server's delta failed", e))?
            .map_err(unreadable)?;
        for f in frames {
            queue(&out, f).await?;
        }
    }
    let end = DeltaFrame::End {
        version_xxh3: plan.target_xxh3,
    };
    queue(&out, end.encode()).await?;
    if newer.moved_on() {
        queue(&out, vec![CTRL_NEWREPLICAVERSION]).await?;
    }
    let _ = ended.send(());
    Ok(plan.pages.len() as u64)
}

/// DELTA_PAGE frames of pages `nums` of `f` (pages of `size` bytes).
fn read_frames(f: &File, nums: &[u32], size: u32) -> std::io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; size as usize];
    nums.iter()
        .map(|&pgno| {
            f.read_exact_at(&mut buf, (pgno as u64 - 1) * size as u64)?;
            Ok(page_frame(pgno, &buf))
        })
        .collect()
}

/// Queues one frame; the client's connection being gone ends the delta.
async fn queue(out: &OutTx, frame: Vec<u8>) -> Result<(), Abort> {
    out.send(Out::binary(frame))
        .await
        .map_err(|_| Abort::Cut("the client's connection is gone".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_parsed_and_malformed_ones_are_none() {
        let mut h = HeaderMap::new();
        let hex_text = "0123456789abcdef0123456789ABCDEF";
        h.insert(headers::DELTA, "1".parse().unwrap());
        h.insert(
            headers::DELTA_HAVE,
            format!("7:{hex_text}").parse().unwrap(),
        );
        assert_eq!(offer(&h), Some((7, hex_text.to_ascii_lowercase())));
        for bad in [
            "7",
            "x:00",
            "7:0123",
            "-1:0123456789abcdef0123456789abcdef",
            "0:0123456789abcdef0123456789abcdef",
            "7:0123456789abcdef0123456789abcdeg",
        ] {
            h.insert(headers::DELTA_HAVE, bad.parse().unwrap());
            assert_eq!(offer(&h), None, "{bad}");
        }
        h.insert(
            headers::DELTA_HAVE,
            format!("7:{hex_text}").parse().unwrap(),
        );
        h.insert(headers::DELTA, "2".parse().unwrap());
        assert_eq!(offer(&h), None);
        h.remove(headers::DELTA);
        assert_eq!(offer(&h), None);
    }
}
