//! A delta push ([`crate::wire::delta`]): the client's changed pages,
//! applied to a copy of the latest version without running the helper.
//!
//! Only a client we answered [`headers::DELTA`] sends one, in place of the
//! sqlite3_rsync stream, after the pre-stream CONFIG told it the latest
//! version (under this session's push lock, so the latest cannot move).
//! The base must be that latest, by number and versionXxh3. The pages go
//! into the same staging copy a stream would update, and the commit is the
//! one every push goes through ([`super::Push::commit`]), told the
//! versionXxh3 the client hashed: a result that hashes otherwise stores
//! nothing ([`NotTheHashedVersion`](crate::server::store::NotTheHashedVersion)),
//! and the client falls back to a full push.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use super::{Abort, Done, Push, PushEnd, Session, StagingGuard, prepare_staging, recv};
use crate::link::Frame;
use crate::wire::ServerConfig;
use crate::wire::delta::{DELTA_BEGIN, DeltaBegin, DeltaFrame, MAX_DELTA_BYTES, xxh3_bytes};

/// What the client reads when its delta does not make what it hashed.
pub(super) const NOT_HASHED: &str =
    "the delta's pages do not make the database the client hashed; nothing was stored";

impl Push<'_> {
    /// The delta a frame starts, if it is DELTA_BEGIN before any stream of
    /// a client that may send one.
    pub(super) fn delta_begin(&self, msg: &Frame) -> Result<Option<DeltaBegin>, Abort> {
        let Frame::Binary(b) = msg else {
            return Ok(None);
        };
        if !self.ctx.delta || self.frames.stream_begun() || b.first() != Some(&DELTA_BEGIN) {
            return Ok(None);
        }
        match DeltaFrame::parse(b) {
            Ok(DeltaFrame::Begin(begin)) => Ok(Some(begin)),
            Ok(_) => unreachable!("a DELTA_BEGIN byte parses as a begin or fails"),
            Err(e) => Err(Abort::Client(format!("bad delta: {e}"))),
        }
    }

    /// Receives the delta that `begin` started, applies it to a staging
    /// copy of the latest version and commits it.
    pub(super) async fn delta(
        mut self,
        link: &mut Session,
        begin: DeltaBegin,
    ) -> Result<PushEnd, Abort> {
        let base_pages = self.check_base(&begin)?;
        let (st, r) = (self.st, &self.ctx.replica);
        let guard = StagingGuard(st.store.staging_path(r));
        let copied =
            prepare_staging(st, r, self.latest.as_deref(), &guard.0, begin.page_size).await?;
        if copied != base_pages {
            return Err(Abort::server(
                "the server could not prepare the push",
                format!("staging copy has {copied} pages, the base {base_pages}"),
            ));
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&guard.0)
            .map_err(|e| Abort::server("the server could not prepare the push", e))?;
        let mut out = PageWriter {
            file: std::sync::Arc::new(file),
            size: begin.page_size as u64,
            batch: Vec::new(),
        };
        let (sent_pages, expect) = self.receive_pages(link, &begin, &mut out).await?;
        if let Some(p) = (base_pages + 1..=begin.page_count).find(|p| !sent_pages.contains(p)) {
            return Err(Abort::Client(format!(
                "the delta makes {} pages but never sent page {p}",
                begin.page_count
            )));
        }
        out.finish(begin.page_count).await?;
        self.staging = Some(guard);
        let done = Done {
            final_count: begin.page_count,
            sent_pages,
            expect_xxh3: Some(hex::encode(expect)),
        };
        Ok(match self.commit(done).await? {
            PushEnd::Committed(cfg, row) => PushEnd::Delta(cfg, Some(row)),
            PushEnd::NoChange(cfg, _) => PushEnd::Delta(cfg, None),
            other => other,
        })
    }

    /// The base must be the latest version as the push lock holds it, with
    /// its page size; returns its page count.
    fn check_base(&self, begin: &DeltaBegin) -> Result<u32, Abort> {
        let (st, r) = (self.st, &self.ctx.replica);
        let refuse = |why: String| Abort::rejected(format!("{why}; nothing was stored"), &why);
        let latest = self.latest.as_ref().map_or(0, |f| f.number);
        if latest == 0 || latest != begin.base_version {
            return Err(refuse(format!(
                "the delta is against version {}, but the latest is {latest}",
                begin.base_version
            )));
        }
        let row = super::latest_row(st, r, latest)?
            .ok_or_else(|| Abort::server("the server could not read the latest version", ""))?;
        let same = row.version_xxh3.as_deref() == Some(hex::encode(begin.base_xxh3).as_str());
        if !same || row.page_size != begin.page_size {
            return Err(refuse(format!(
                "the delta's base is not version {latest} as stored"
            )));
        }
        let bytes = begin.page_size as u64 * begin.page_count as u64;
        if bytes > st.config.max_db_bytes {
            return Err(Abort::Client(format!(
                "the delta makes a {bytes}-byte database, over this server's limit"
            )));
        }
        Ok(row.page_count)
    }

    /// The DELTA_PAGE frames until DELTA_END (the versionXxh3 it names),
    /// each written to the staging copy through `out`, bounded by
    /// [`MAX_DELTA_BYTES`] and the idle timeout; returns the pages sent.
    async fn receive_pages(
        &self,
        link: &mut Session,
        begin: &DeltaBegin,
        out: &mut PageWriter,
    ) -> Result<(BTreeSet<u32>, [u8; 16]), Abort> {
        let st = self.st;
        let mut shutdown = st.shutdown.clone();
        let activity = link.activity.clone();
        let mut pages = BTreeSet::new();
        let mut bytes = 0usize;
        loop {
            let frame = tokio::select! {
                f = recv(&mut link.rx, &activity) => f,
                _ = crate::server::app::stopped(&mut shutdown) => return Err(Abort::Shutdown),
                _ = activity.idle(st.config.idle_timeout) => {
                    return Err(Abort::Client("no data from the client for too long".into()));
                }
            };
            let b = match frame {
                Some(Ok(Frame::Binary(b))) => b,
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
                Some(Ok(Frame::Text(_))) => {
                    return Err(Abort::Client(
                        "a text frame in the middle of a delta".into(),
                    ));
                }
                Some(Err(e)) => return Err(Abort::from_read_error(e, st.config.max_frame)),
                None | Some(Ok(Frame::Close(..))) => {
                    return Err(Abort::Cut("client closed before the delta ended".into()));
                }
            };
            match DeltaFrame::parse(&b).map_err(|e| Abort::Client(format!("bad delta: {e}")))? {
                DeltaFrame::Page { pgno, data } => {
                    check_page(begin, pgno, &data, pages.contains(&pgno))?;
                    bytes += data.len();
                    if bytes > MAX_DELTA_BYTES {
                        return Err(Abort::Client(format!(
                            "the delta carries more than {MAX_DELTA_BYTES} bytes of pages"
                        )));
                    }
                    pages.insert(pgno);
                    out.put(pgno, data).await?;
                }
                DeltaFrame::End { version_xxh3 } => return Ok((pages, version_xxh3)),
                DeltaFrame::Begin(_) => {
                    return Err(Abort::Client("a second DELTA_BEGIN".into()));
                }
                DeltaFrame::Done { .. } => {
                    return Err(Abort::Client("DELTA_DONE is the server's frame".into()));
                }
            }
        }
    }
}

/// The DELTA_DONE answer to a delta push, from the CONFIG it would have
/// been (None when the version lacks a versionXxh3, which a committed
/// delta always has).
pub(super) fn done_frame(cfg: &ServerConfig) -> Option<Vec<u8>> {
    let version = cfg.committed_version_id.as_deref()?.parse().ok()?;
    let version_xxh3 = xxh3_bytes(cfg.version_xxh3.as_deref()?)?;
    let version_hash = hex::decode(cfg.version_hash.as_deref()?)
        .ok()?
        .try_into()
        .ok()?;
    Some(
        DeltaFrame::Done {
            version,
            version_xxh3,
            version_hash,
        }
        .encode(),
    )
}

/// Writes a delta's pages into the staging copy as they come, a batch at a
/// time on the blocking pool: a session holds at most one batch in memory,
/// however large the delta.
struct PageWriter {
    file: std::sync::Arc<std::fs::File>,
    size: u64,
    batch: Vec<(u32, Vec<u8>)>,
}

impl PageWriter {
    /// Pages kept before a write.
    const BATCH: usize = 256;

    async fn put(&mut self, pgno: u32, data: Vec<u8>) -> Result<(), Abort> {
        self.batch.push((pgno, data));
        if self.batch.len() >= Self::BATCH {
            self.flush(None).await?;
        }
        Ok(())
    }

    /// Writes the batch (and, with `len`, sets the file's length).
    async fn flush(&mut self, len: Option<u64>) -> Result<(), Abort> {
        let (file, size) = (self.file.clone(), self.size);
        let batch = std::mem::take(&mut self.batch);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for (pgno, data) in batch {
                file.write_all_at(&data, (pgno as u64 - 1) * size)?;
            }
            match len {
                Some(l) => file.set_len(l),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| Abort::server("the server could not apply the delta", e))?
        .map_err(|e| {
            let e = anyhow::Error::from(e);
            Abort::server(
                super::store_failure(&e, "the server could not apply the delta"),
                format!("{e:#}"),
            )
        })
    }

    /// The last pages, and the result's length.
    async fn finish(mut self, page_count: u32) -> Result<(), Abort> {
        let len = page_count as u64 * self.size;
        self.flush(Some(len)).await
    }
}

/// One DELTA_PAGE must be a whole page of the result, sent once.
fn check_page(begin: &DeltaBegin, pgno: u32, data: &[u8], seen: bool) -> Result<(), Abort> {
    if pgno > begin.page_count {
        return Err(Abort::Client(format!(
            "delta page {pgno} is past the result's {} pages",
            begin.page_count
        )));
    }
    if data.len() != begin.page_size as usize {
        return Err(Abort::Client(format!(
            "delta page {pgno} is {} bytes, not {}",
            data.len(),
            begin.page_size
        )));
    }
    if seen {
        return Err(Abort::Client(format!("delta page {pgno} came twice")));
    }
    Ok(())
}
