//! Delta pulls, the client's side (our extension; the frames in
//! [`crate::wire::delta`], the server's side in `server::pull_delta`).
//!
//! A pull over a database that is a known version of the replica (the
//! overwrite guard passed, its match record names the version, and the
//! page cache holds that version's versionXxh3) offers the server that
//! version ([`Offer`]). A server that answers sends only the pages in
//! which the latest differs. They are kept in an anonymous temp file next
//! to the database until the delta and its CONFIG are all in, so a pull
//! cut or killed while they arrive has not touched the database, nor held
//! its write lock; then they are written in one write transaction, as
//! sqlite3_rsync's replica writes its pages (through `sqlite_dbpage`, a WAL
//! database kept in WAL mode, a smaller result truncated), and the
//! transaction commits only when every page read back makes the
//! versionXxh3 that DELTA_END and CONFIG name. So a stale
//! cache, a lying server or a damaged frame leaves the database exactly as
//! it was: the caller then forgets the cache entry and pulls in full over a
//! fresh connection ([`DeltaFailed::Fallback`]). A server that aborts or
//! goes away mid-delta fails the pull like any pull ([`DeltaFailed::Sync`]).
//!
//! Bounds: at most [`MAX_DELTA_BYTES`] of pages are taken (on disk, one
//! page in memory at a time), and the server's text frames are bounded as
//! on every pull.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::apply::PendingNote;
use super::page_cache::{self, PageCache};
use super::pull::Plan;
use super::verdict::{Failed, Failure};
use super::{Connected, Settings, Socket, SyncError, matched};
use crate::link::{ConnectionLost, Stats, frame_len};
use crate::sqlite::pages::{self, PageDigest};
use crate::wire::delta::{DeltaBegin, DeltaFrame, MAX_DELTA_BYTES};
use crate::wire::{
    CTRL_NEWREPLICAVERSION, ClientControl, MAX_SERVER_TEXT_BYTES, ServerConfig, ServerText,
    ShownMessages, VersionRef, headers, shown_text,
};

/// How long the write transaction waits for another writer of the local
/// database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for the server's close after ours.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The version a pull offers a delta from.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The page cache entry of the version the local database is.
    pub cache: PageCache,
}

impl Offer {
    /// The upgrade headers that offer it.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (headers::DELTA, headers::DELTA_V1.to_string()),
            (
                headers::DELTA_HAVE,
                format!("{}:{}", self.cache.version, self.cache.xxh3_hex()),
            ),
        ]
    }
}

/// The delta this pull may offer (called once the overwrite guard passed):
/// a pull of the latest, into an existing database whose match record
/// names a version and has no pull pending, with a page cache entry of
/// that version. Not with `--force` (the database may hold local changes)
/// nor when deltas are off (`SQLRSYNC_NO_DELTA`, or compatible frames: the
/// client then looks like the existing ones).
pub fn offer(s: &Settings, p: &Plan) -> Option<Offer> {
    if p.version != VersionRef::Latest || s.force || !s.deltas || !p.local_existed {
        return None;
    }
    let record = matched::load(&p.remote_path, &p.local)?;
    if record.pending_hash.is_some() {
        return None;
    }
    let rid = record.replica_id.as_deref()?;
    if p.replica_id.as_deref().is_some_and(|r| r != rid) {
        return None;
    }
    let version: u64 = record.version.as_deref()?.parse().ok()?;
    let cache = page_cache::load(&p.remote_path, &p.local, rid)?;
    (cache.version == version).then_some(Offer { cache })
}

/// Why a delta pull did not complete.
#[derive(Debug)]
pub enum DeltaFailed {
    /// The delta was refused or did not make the version (the local
    /// database is unchanged): pull in full instead. The text says why.
    Fallback(String),
    /// The pull failed as any pull could (an ABORT, a lost connection,
    /// Ctrl-C); the local database is unchanged unless the error says
    /// otherwise.
    Sync(SyncError),
}

impl DeltaFailed {
    fn failed(failure: Failure) -> DeltaFailed {
        DeltaFailed::Sync(SyncError::from(Failed {
            failure,
            pushing: false,
        }))
    }
}

/// A delta pull that was applied and committed.
pub struct Delta {
    /// Every CONFIG merged.
    pub config: ServerConfig,
    /// Byte and page counts, as a linked sync keeps them.
    pub stats: Arc<Stats>,
    /// The server said a newer version exists.
    pub newer_version: bool,
    /// The server's MESSAGE texts as shown.
    pub messages: ShownMessages,
    /// What the local database now is.
    pub applied: Applied,
}

/// The local database after the delta: what its page cache entry is
/// made of.
#[derive(Debug)]
pub struct Applied {
    pub page_size: u32,
    pub digests: Vec<PageDigest>,
    /// Seconds spent reading it back to verify it.
    pub verify_seconds: f64,
}

/// Receives the delta the server answered with on `conn` and applies it.
pub async fn run(
    s: &Settings,
    p: &Plan,
    offer: &Offer,
    conn: Connected,
    interrupt: watch::Receiver<bool>,
) -> Result<Delta, DeltaFailed> {
    let stats = Arc::new(Stats::default());
    let (mut tx, rx) = conn.ws.split();
    let mut want_configs = 1;
    if p.key_request {
        // Answered with a CONFIG of its own, wherever the server reads it.
        let b = ClientControl::KeyRequest.encode();
        Stats::add(&stats.wire_out, frame_len(b.len(), true));
        stats.note_frame(true, b.len(), true);
        tx.send(Message::Binary(b.into()))
            .await
            .map_err(|e| DeltaFailed::failed(Failure::LostMidSync(e.to_string())))?;
        want_configs += 1;
    }
    let mut r = Receiving {
        s,
        p,
        offer,
        stats: stats.clone(),
        rx,
        spool: None,
        begin: None,
        last_pgno: 0,
        above_base: 0,
        page_bytes: 0,
        end: None,
        configs: Vec::new(),
        messages: ShownMessages::default(),
        text_bytes: 0,
        newer_version: false,
    };
    let received = r.receive(want_configs, interrupt).await;
    let result = match received {
        Ok(()) => r.finish().await,
        Err(e) => Err(e),
    };
    close(&mut tx, r.rx).await;
    let applied = result?;
    Ok(Delta {
        config: r
            .configs
            .into_iter()
            .reduce(crate::link::merge_config)
            .unwrap_or_default(),
        stats,
        newer_version: r.newer_version,
        messages: r.messages,
        applied,
    })
}

/// Closes normally and waits (briefly) for the server's close.
async fn close(tx: &mut SplitSink<Socket, Message>, mut rx: SplitStream<Socket>) {
    let _ = tx.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// A delta being received.
struct Receiving<'a> {
    s: &'a Settings,
    p: &'a Plan,
    offer: &'a Offer,
    stats: Arc<Stats>,
    rx: SplitStream<Socket>,
    /// The pages received, from DELTA_BEGIN on.
    spool: Option<Spool>,
    begin: Option<DeltaBegin>,
    /// The last page number received (they come in increasing order).
    last_pgno: u32,
    /// Pages received past the base's page count.
    above_base: u32,
    /// Page bytes received.
    page_bytes: usize,
    /// DELTA_END's versionXxh3.
    end: Option<[u8; 16]>,
    configs: Vec<ServerConfig>,
    messages: ShownMessages,
    /// Bytes of text frames (bounded by [`MAX_SERVER_TEXT_BYTES`]).
    text_bytes: u64,
    newer_version: bool,
}

impl Receiving<'_> {
    /// Reads frames until DELTA_END and `want_configs` CONFIGs are in.
    async fn receive(
        &mut self,
        want_configs: usize,
        mut interrupt: watch::Receiver<bool>,
    ) -> Result<(), DeltaFailed> {
        let idle = self.s.idle_timeout;
        while self.end.is_none() || self.configs.len() < want_configs {
            let next = tokio::select! {
                m = tokio::time::timeout(idle, self.rx.next()) => m,
                _ = super::wait_true(&mut interrupt) => {
                    return Err(DeltaFailed::failed(Failure::Interrupted));
                }
            };
            let lost = |e: ConnectionLost| DeltaFailed::failed(Failure::LostMidSync(e.to_string()));
            match next {
                Err(_) => return Err(lost(ConnectionLost::Stalled(idle))),
                Ok(None) => return Err(lost(ConnectionLost::Ended)),
                Ok(Some(Err(e))) => return Err(lost(ConnectionLost::Failed(e.to_string()))),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.count(b.len(), true);
                    self.binary(&b).await?;
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    self.count(t.len(), false);
                    self.text(t.as_str())?;
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    let (code, why) = c.map_or((1005, String::new()), |c| {
                        (u16::from(c.code), shown_text(&c.reason))
                    });
                    let why = if why.is_empty() {
                        why
                    } else {
                        format!(": {why}")
                    };
                    return Err(DeltaFailed::failed(Failure::ClosedMidSync { code, why }));
                }
                Ok(Some(Ok(_))) => {}
            }
        }
        Ok(())
    }

    fn count(&self, len: usize, binary: bool) {
        Stats::add(&self.stats.wire_in, frame_len(len, false));
        self.stats.note_frame(false, len, binary);
        if binary {
            Stats::add(&self.stats.stream_in, len as u64);
        } else {
            Stats::add(&self.stats.text_in, frame_len(len, false));
        }
    }

    /// One binary frame: a delta frame, or NEWREPLICAVERSION.
    async fn binary(&mut self, b: &[u8]) -> Result<(), DeltaFailed> {
        if b == [CTRL_NEWREPLICAVERSION] {
            self.newer_version = true;
            return Ok(());
        }
        let refuse = |why: String| Err(DeltaFailed::Fallback(why));
        let frame = match DeltaFrame::parse(b) {
            Ok(f) => f,
            Err(e) => return refuse(e.to_string()),
        };
        if self.end.is_some() {
            return refuse("a delta frame after DELTA_END".into());
        }
        match (frame, self.begin) {
            (DeltaFrame::Begin(begin), None) => self.begin(begin),
            (DeltaFrame::Page { pgno, data }, Some(begin)) => self.page(&begin, pgno, data).await,
            (DeltaFrame::End { version_xxh3 }, Some(begin)) => {
                let base_count = self.offer.cache.digests.len() as u32;
                if self.above_base != begin.page_count.saturating_sub(base_count) {
                    return refuse(format!(
                        "the delta lacks pages past the base's {base_count} (of {})",
                        begin.page_count
                    ));
                }
                self.end = Some(version_xxh3);
                Ok(())
            }
            (DeltaFrame::Begin(_), Some(_)) => refuse("a second DELTA_BEGIN".into()),
            (DeltaFrame::Done { .. }, Some(_)) => refuse("DELTA_DONE on a pull".into()),
            (_, None) => refuse("a delta frame before DELTA_BEGIN".into()),
        }
    }

    /// DELTA_BEGIN: must start from the version offered; starts the writer.
    fn begin(&mut self, begin: DeltaBegin) -> Result<(), DeltaFailed> {
        let base = &self.offer.cache;
        if begin.base_version != base.version
            || begin.base_xxh3 != base.version_xxh3
            || begin.page_size != base.page_size
        {
            return Err(DeltaFailed::Fallback(format!(
                "the delta starts from version {} ({}-byte pages), not the version offered",
                begin.base_version, begin.page_size
            )));
        }
        Stats::add(&self.stats.page_count, begin.page_count as u64);
        Stats::add(&self.stats.page_size, begin.page_size as u64);
        let dir = crate::sqlite::parent_dir(&self.p.local);
        let file = tempfile::tempfile_in(&dir).map_err(|e| {
            DeltaFailed::Fallback(format!("no temp file in {}: {e}", dir.display()))
        })?;
        self.begin = Some(begin);
        self.spool = Some(Spool {
            file,
            page_size: begin.page_size,
            pages: Vec::new(),
        });
        Ok(())
    }

    /// One DELTA_PAGE, checked and handed to the writer.
    async fn page(
        &mut self,
        begin: &DeltaBegin,
        pgno: u32,
        data: Vec<u8>,
    ) -> Result<(), DeltaFailed> {
        let why = if pgno <= self.last_pgno {
            Some(format!("page {pgno} after page {}", self.last_pgno))
        } else if pgno > begin.page_count {
            Some(format!(
                "page {pgno} past the result's {}",
                begin.page_count
            ))
        } else if data.len() != begin.page_size as usize {
            Some(format!("page {pgno} is {} bytes", data.len()))
        } else if self.page_bytes + data.len() > MAX_DELTA_BYTES {
            Some(format!("more than {MAX_DELTA_BYTES} bytes of pages"))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(DeltaFailed::Fallback(format!("bad delta: {why}")));
        }
        self.last_pgno = pgno;
        self.page_bytes += data.len();
        if pgno as usize > self.offer.cache.digests.len() {
            self.above_base += 1;
        }
        Stats::add(&self.stats.pages, 1);
        let spool = self.spool.as_mut().expect("made at DELTA_BEGIN");
        spool
            .put(pgno, &data)
            .map_err(|e| DeltaFailed::Fallback(format!("cannot keep the delta's pages: {e}")))
    }

    /// One text frame: CONFIG, MESSAGE or ABORT.
    fn text(&mut self, t: &str) -> Result<(), DeltaFailed> {
        self.text_bytes += t.len() as u64;
        if self.text_bytes > MAX_SERVER_TEXT_BYTES {
            return Err(DeltaFailed::failed(Failure::Protocol(format!(
                "the server sent more than {MAX_SERVER_TEXT_BYTES} bytes of text"
            ))));
        }
        match ServerText::parse(t) {
            Ok(ServerText::Config(c)) => match c.check() {
                Ok(()) => self.configs.push(c),
                Err(why) => {
                    return Err(DeltaFailed::failed(Failure::Protocol(format!(
                        "the server sent a bad CONFIG: {why}"
                    ))));
                }
            },
            Ok(ServerText::Message(m)) => {
                if let Some(shown) = self.messages.take(&m) {
                    self.s.printer.note(&format!("server: {shown}"));
                }
            }
            Ok(ServerText::Abort(why)) => {
                return Err(DeltaFailed::failed(Failure::Aborted(shown_text(&why))));
            }
            Err(why) => return Err(DeltaFailed::failed(Failure::Protocol(why))),
        }
        Ok(())
    }

    /// Everything is in: the writer verifies and commits.
    async fn finish(&mut self) -> Result<Applied, DeltaFailed> {
        let config = self
            .configs
            .iter()
            .cloned()
            .reduce(crate::link::merge_config)
            .unwrap_or_default();
        let (Some(spool), Some(begin)) = (self.spool.take(), self.begin) else {
            return Err(DeltaFailed::Fallback("no delta came".into()));
        };
        let finish = Finish {
            end_xxh3: self.end.expect("DELTA_END received"),
            config_xxh3: config.version_xxh3.clone(),
            pending: config.version_hash.clone().map(|h| {
                let note = PendingNote {
                    server: self.p.server.clone(),
                    remote_path: self.p.remote_path.clone(),
                    local: self.p.local.clone(),
                };
                (note, h)
            }),
        };
        let local = self.p.local.clone();
        let applied = tokio::task::spawn_blocking(move || apply(&local, begin, &spool, &finish))
            .await
            .unwrap_or_else(|e| Err(ApplyError::Refused(format!("the delta writer failed: {e}"))));
        match applied {
            Ok(a) => Ok(a),
            Err(ApplyError::AfterCommit(why)) => Err(DeltaFailed::Sync(SyncError::Verification(
                anyhow::anyhow!("VERIFICATION FAILED: {why}; do not trust this copy"),
            ))),
            Err(e) => Err(DeltaFailed::Fallback(e.to_string())),
        }
    }
}

/// The pages of a delta as they arrived, in an unnamed temp file (gone
/// when closed, even after a crash).
struct Spool {
    file: File,
    page_size: u32,
    /// Their numbers, in file order.
    pages: Vec<u32>,
}

impl Spool {
    fn put(&mut self, pgno: u32, data: &[u8]) -> std::io::Result<()> {
        let at = self.pages.len() as u64 * self.page_size as u64;
        self.file.write_all_at(data, at)?;
        self.pages.push(pgno);
        Ok(())
    }

    /// Page `i` (in file order) into `buf`.
    fn get(&self, i: usize, buf: &mut [u8]) -> std::io::Result<()> {
        self.file
            .read_exact_at(buf, i as u64 * self.page_size as u64)
    }
}

/// What the result must be, and the note to write before committing it.
struct Finish {
    /// DELTA_END's versionXxh3.
    end_xxh3: [u8; 16],
    /// CONFIG's, when it carries one.
    config_xxh3: Option<String>,
    /// The match record to note the version hash in before the commit
    /// (see `matched::note_pending`).
    pending: Option<(PendingNote, String)>,
}

/// Why the writer did not commit.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("the local database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Refused(String),
    #[error("the delta did not make the version: {0}")]
    Mismatch(String),
    #[error("cannot note the version about to be committed: {0}")]
    Note(String),
    /// Committed, and then found wrong.
    #[error("{0}")]
    AfterCommit(String),
}

/// Writes the delta in one write transaction; commits only a result that
/// verifies, rolls back on anything else.
fn apply(
    local: &Path,
    begin: DeltaBegin,
    spool: &Spool,
    finish: &Finish,
) -> Result<Applied, ApplyError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let c = Connection::open_with_flags(local, flags)?;
    c.busy_timeout(BUSY_TIMEOUT)?;
    // The read-back reads every page: through a memory map it takes half
    // the time (see `sqlite::pages`). Writes still go through write().
    let _ = c.pragma_update(None, "mmap_size", 1i64 << 32);
    let size: u32 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    if size != begin.page_size {
        return Err(ApplyError::Refused(format!(
            "the local database has {size}-byte pages, the delta {}",
            begin.page_size
        )));
    }
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    c.execute_batch("BEGIN IMMEDIATE")?;
    match write_and_check(&c, begin, mode.eq_ignore_ascii_case("wal"), spool, finish) {
        Ok(digests) => {
            let verify_seconds = digests.1;
            c.execute_batch("COMMIT")?;
            let count: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            if count != begin.page_count {
                return Err(ApplyError::AfterCommit(format!(
                    "{} has {count} pages after the delta, not {}",
                    local.display(),
                    begin.page_count
                )));
            }
            Ok(Applied {
                page_size: size,
                digests: digests.0,
                verify_seconds,
            })
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Inside the transaction: the pages written, the result truncated and
/// read back, its versionXxh3 checked, the pending hash noted. Returns
/// the result's page digests and the seconds the read-back took.
fn write_and_check(
    c: &Connection,
    begin: DeltaBegin,
    wal: bool,
    spool: &Spool,
    finish: &Finish,
) -> Result<(Vec<PageDigest>, f64), ApplyError> {
    // As sqlite3_rsync's replica: the schema is rewritten page by page.
    c.execute_batch("PRAGMA writable_schema=ON")?;
    let before: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let mut ins = c.prepare("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)")?;
    let mut data = vec![0u8; begin.page_size as usize];
    // Pages past the old end: sqlite_dbpage does not list them before the
    // commit, so the read-back takes their digests from what was written.
    let mut past_end = std::collections::BTreeMap::new();
    for (i, &pgno) in spool.pages.iter().enumerate() {
        spool
            .get(i, &mut data)
            .map_err(|e| ApplyError::Refused(format!("cannot read the delta's pages: {e}")))?;
        if pgno == 1 && wal && data[18] == 1 {
            // Never switch a WAL replica out of WAL (sqlite3_rsync does
            // the same).
            data[18] = 2;
            data[19] = 2;
        }
        ins.execute(params![pgno, data])?;
        if pgno > before {
            past_end.insert(pgno, pages::digest(pgno, &data));
        }
    }
    if begin.page_count < before {
        // Truncates at COMMIT (sqlite_dbpage's own rule).
        ins.execute(params![begin.page_count + 1, rusqlite::types::Null])?;
    }
    drop(ins);
    let reading = Instant::now();
    let digests = read_back(c, begin.page_count, &past_end)?;
    let got = pages::version_xxh3(&digests);
    let want = hex::encode(finish.end_xxh3);
    if got != want {
        return Err(ApplyError::Mismatch(format!(
            "its versionXxh3 is {} where the server said {}",
            &got[..16],
            &want[..16]
        )));
    }
    if let Some(x) = &finish.config_xxh3
        && !x.eq_ignore_ascii_case(&want)
    {
        return Err(ApplyError::Mismatch(
            "DELTA_END and CONFIG name different versions".into(),
        ));
    }
    let verify_seconds = reading.elapsed().as_secs_f64();
    if let Some((n, hash)) = &finish.pending {
        matched::note_pending(&n.server, &n.remote_path, &n.local, hash)
            .map_err(|e| ApplyError::Note(format!("{e:#}")))?;
    }
    Ok((digests, verify_seconds))
}

/// The digests of pages 1..=`count` as the transaction sees them (a
/// truncation only happens at COMMIT, so pages past `count` are skipped;
/// pages written past the old end are not listed yet, and come from
/// `past_end`, the digests of what was written there).
fn read_back(
    c: &Connection,
    count: u32,
    past_end: &std::collections::BTreeMap<u32, PageDigest>,
) -> Result<Vec<PageDigest>, ApplyError> {
    let mut st =
        c.prepare("SELECT pgno, data FROM sqlite_dbpage WHERE pgno <= ?1 ORDER BY pgno")?;
    let mut rows = st.query([count])?;
    let mut digests = Vec::with_capacity(count as usize);
    while let Some(r) = rows.next()? {
        let pgno: u32 = r.get(0)?;
        if pgno as usize != digests.len() + 1 {
            return Err(ApplyError::Refused(format!(
                "sqlite_dbpage skipped from page {} to {pgno}",
                digests.len()
            )));
        }
        let data = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        digests.push(pages::digest(pgno, data));
    }
    while digests.len() < count as usize {
        match past_end.get(&(digests.len() as u32 + 1)) {
            Some(d) => digests.push(*d),
            None => break,
        }
    }
    if digests.len() != count as usize {
        return Err(ApplyError::Mismatch(format!(
            "{} pages where the server has {count}",
            digests.len()
        )));
    }
    Ok(digests)
}

/// Keeps the page cache entry of what the delta left, so the next pull can
/// be a delta too; a result that does not make `xxh3` keeps none.
pub fn keep_cache(p: &Plan, cfg: &ServerConfig, page_size: u32, digests: Vec<PageDigest>) {
    let entry = (|| {
        let rid = cfg.replica_id.as_deref()?;
        let version = cfg.committed_version_id.as_deref()?.parse().ok()?;
        PageCache::checked(
            rid,
            version,
            cfg.version_xxh3.as_deref()?,
            page_size,
            digests,
        )
    })();
    match entry {
        Some(e) if page_cache::save(&p.remote_path, &p.local, &e).is_ok() => {}
        _ => page_cache::forget(&p.remote_path, &p.local),
    }
}
