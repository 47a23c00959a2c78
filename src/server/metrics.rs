//! `/healthz` and `/metrics`: what an operator's monitoring asks of a
//! running server.
//!
//! `/healthz` answers 200 `ok` while the server accepts work (the router
//! exists only once the store is open) and 503 once it is shutting down,
//! so a load balancer stops sending clients before the sessions end.
//!
//! `/metrics` is the Prometheus text exposition format, version 0.0.4,
//! written here by hand: the format is a few lines per family, and the
//! `prometheus-client` crate writes only OpenMetrics (counter families
//! named without `_total`, a `# EOF` line), which a scraper reading
//! `text/plain; version=0.0.4` would take apart differently.
//!
//! What is counted, and why it is bounded:
//!
//! - sessions in progress by kind (push, pull, subscribe, download): a
//!   [`SessionGuard`] from [`Metrics::session_started`] is held by the
//!   session and takes itself off when dropped, however the session ends;
//! - pushes, pulls and downloads, their errors (refusals at admission
//!   included) and the websocket bytes each way, by replica namespace,
//!   never by path: at most [`MAX_NAMESPACES`] namespaces get a label of
//!   their own, the rest are counted under `namespace="other"`, and a
//!   refused request is labelled with its namespace only when that
//!   namespace exists, so made-up paths cannot fill the table;
//! - the duration of a push's commit (the store's part) and of a whole
//!   pull, as histograms;
//! - the store's replicas, versions, pages and bytes on disk, read on a
//!   connection of their own (a scrape never waits for, or holds up, the
//!   server's metadata calls) and kept for [`STORE_TTL`], so scraping every
//!   second costs one metadata read every few seconds.
//!
//! Who may read `/metrics` (namespace names are in it) is `serve
//! --metrics`: [`Access::Local`] (the default) serves it to loopback
//! clients only, [`Access::Public`] to anyone, [`Access::Off`] to no one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::app::{AppState, Refusal, refuse};
use super::store::meta::StoreTotals;
use super::store::{Meta, lock};

/// Namespaces that get a label of their own; the rest are `other`.
pub const MAX_NAMESPACES: usize = 1000;

/// How long the store's figures are reused before they are read again.
pub const STORE_TTL: Duration = Duration::from_secs(5);

/// The label of the namespaces past [`MAX_NAMESPACES`], and of refused
/// requests whose namespace does not exist.
const OTHER: &str = "other";

/// Upper bounds (seconds) of the push commit histogram's buckets.
const COMMIT_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Upper bounds (seconds) of the pull histogram's buckets.
const PULL_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Who may read `/metrics` (`serve --metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Access {
    /// Clients on a loopback address only.
    #[default]
    Local,
    /// Any client.
    Public,
    /// Nobody: `/metrics` is not found.
    Off,
}

/// A kind of session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Push,
    Pull,
    Subscribe,
    Download,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Push, Kind::Pull, Kind::Subscribe, Kind::Download];

    fn name(self) -> &'static str {
        match self {
            Kind::Push => "push",
            Kind::Pull => "pull",
            Kind::Subscribe => "subscribe",
            Kind::Download => "download",
        }
    }
}

/// One namespace's counters, by kind (push, pull, download; subscribers
/// are only a gauge).
#[derive(Debug, Default)]
struct NsCounters {
    done: [AtomicU64; 3],
    errors: [AtomicU64; 3],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// Index of a counted kind in [`NsCounters`].
fn counted(kind: Kind) -> Option<usize> {
    match kind {
        Kind::Push => Some(0),
        Kind::Pull => Some(1),
        Kind::Download => Some(2),
        Kind::Subscribe => None,
    }
}

/// A histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed when
    /// written).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, secs: f64) {
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = (secs.max(0.0) * 1e6) as u64;
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn write(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut below = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            below += n.load(Ordering::Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {below}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(o, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// The store's figures, read at `at`.
struct StoreSnapshot {
    at: Instant,
    totals: StoreTotals,
    disk_bytes: u64,
}

/// Everything `/metrics` reports; one per server, shared by the handlers.
pub struct Metrics {
    /// Who may read it.
    access: Access,
    /// Sessions in progress, by [`Kind`] order.
    sessions: [AtomicI64; 4],
    /// Counters by namespace (at most [`MAX_NAMESPACES`] entries).
    namespaces: std::sync::Mutex<HashMap<String, Arc<NsCounters>>>,
    /// The counters of `other`.
    other: Arc<NsCounters>,
    push_commit: Histogram,
    pull: Histogram,
    /// The data dir, whose files are the store's bytes on disk.
    data_dir: PathBuf,
    /// A metadata connection of our own, opened on the first scrape, and
    /// the last figures read on it.
    store: tokio::sync::Mutex<(Option<Meta>, Option<StoreSnapshot>)>,
}

impl Metrics {
    pub fn new(data_dir: &Path, access: Access) -> Arc<Metrics> {
        Arc::new(Metrics {
            access,
            sessions: Default::default(),
            namespaces: Default::default(),
            other: Default::default(),
            push_commit: Histogram::new(COMMIT_BUCKETS),
            pull: Histogram::new(PULL_BUCKETS),
            data_dir: data_dir.to_path_buf(),
            store: tokio::sync::Mutex::new((None, None)),
        })
    }

    /// The counters of namespace `ns` (`other` once the table is full).
    fn counters(&self, ns: &str) -> Arc<NsCounters> {
        let mut map = lock(&self.namespaces);
        if let Some(c) = map.get(ns) {
            return c.clone();
        }
        if map.len() >= MAX_NAMESPACES || ns == OTHER {
            return self.other.clone();
        }
        map.entry(ns.to_string()).or_default().clone()
    }

    /// A session of `kind` on a replica of namespace `ns` begins; the
    /// guard ends it. Unless [`SessionGuard::succeeded`] is called, the
    /// session counts as an error.
    pub fn session_started(self: &Arc<Self>, kind: Kind, ns: &str) -> SessionGuard {
        self.sessions[kind as usize].fetch_add(1, Ordering::Relaxed);
        SessionGuard {
            metrics: self.clone(),
            kind,
            ns: self.counters(ns),
            started: Instant::now(),
            ok: None,
            bytes: (0, 0),
        }
    }

    /// A request of `kind` for `path` (a remote path, unchecked) was
    /// refused before any session began: an error of its namespace when
    /// that exists (`exists` asks the store), else of `other`.
    fn refused(&self, kind: Kind, path: &str, exists: impl FnOnce(&str) -> bool) {
        let ns = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let known = super::names::validate_namespace(ns).is_ok() && exists(ns);
        let c = self.counters(if known { ns } else { OTHER });
        if let Some(i) = counted(kind) {
            c.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A push's commit (the store's part) took `secs`.
    pub fn push_committed(&self, secs: f64) {
        self.push_commit.observe(secs);
    }
}

/// A push or pull request for `path` (the request's path) was refused at
/// admission: counted as an error of its namespace, when it exists.
pub fn refused(st: &AppState, kind: Kind, path: &str) {
    let path = path
        .trim_start_matches("/sapi/push")
        .trim_start_matches("/sapi/pull");
    let exists = |ns: &str| st.store.meta().namespace_exists(ns).unwrap_or(false);
    st.metrics.refused(kind, path, exists);
}

/// A session in progress (see [`Metrics::session_started`]).
pub struct SessionGuard {
    metrics: Arc<Metrics>,
    kind: Kind,
    ns: Arc<NsCounters>,
    started: Instant,
    /// Seconds from the start to success, once it succeeded.
    ok: Option<f64>,
    /// Websocket bytes (received, sent).
    bytes: (u64, u64),
}

impl SessionGuard {
    /// The session did its job (a pull's duration ends here, before the
    /// closing handshake).
    pub fn succeeded(&mut self) {
        self.ok = Some(self.started.elapsed().as_secs_f64());
    }

    /// The bytes the session received and sent (counted when it ends).
    pub fn bytes(&mut self, received: u64, sent: u64) {
        self.bytes = (received, sent);
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.sessions[self.kind as usize].fetch_sub(1, Ordering::Relaxed);
        self.ns.bytes_in.fetch_add(self.bytes.0, Ordering::Relaxed);
        self.ns.bytes_out.fetch_add(self.bytes.1, Ordering::Relaxed);
        if let Some(i) = counted(self.kind) {
            let c = if self.ok.is_some() {
                &self.ns.done
            } else {
                &self.ns.errors
            };
            c[i].fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(secs), Kind::Pull) = (self.ok, self.kind) {
            m.pull.observe(secs);
        }
    }
}

/// `GET /healthz`: 200 `ok` while the server accepts work, 503 once it is
/// shutting down. No key, no store access.
pub async fn healthz(State(st): State<AppState>) -> Response {
    if *st.shutdown.borrow() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    refuse(StatusCode::OK, "ok")
}

/// May `peer` read `/metrics` under `access`? The refusal otherwise.
pub fn allowed(access: Access, peer: IpAddr) -> Result<(), Refusal> {
    match access {
        Access::Public => Ok(()),
        Access::Local if peer.to_canonical().is_loopback() => Ok(()),
        Access::Local => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "metrics are served to loopback clients only (serve --metrics public)",
        )),
        Access::Off => Err(Refusal::new(StatusCode::NOT_FOUND, "not found")),
    }
}

/// `GET /metrics`: the exposition, to the clients `--metrics` allows.
pub async fn handler(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let m = &st.metrics;
    if let Err(refusal) = allowed(m.access, peer.ip()) {
        return refusal.into_response();
    }
    let mut o = String::with_capacity(4096);
    m.write_live(&mut o);
    match m.store_figures().await {
        Ok(s) => write_store(&mut o, s),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "metrics: could not read the store's figures")
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o,
    )
        .into_response()
}

/// A counter family by namespace: its name, help and how to read it.
type Counter = (&'static str, &'static str, fn(&NsCounters) -> u64);

/// One family's HELP and TYPE lines.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Metrics {
    /// The session gauges, the counters and the histograms.
    fn write_live(&self, o: &mut String) {
        family(
            o,
            "sqlrsync_sessions",
            "gauge",
            "Sessions in progress, by kind.",
        );
        for k in Kind::ALL {
            let n = self.sessions[k as usize].load(Ordering::Relaxed);
            let _ = writeln!(o, "sqlrsync_sessions{{kind=\"{}\"}} {n}", k.name());
        }
        let mut rows: Vec<(String, Arc<NsCounters>)> = lock(&self.namespaces)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.push((OTHER.into(), self.other.clone()));
        let counters: [Counter; 8] = [
            (
                "pushes",
                "Pushes that ended well (committed or unchanged).",
                |c| get(&c.done[0]),
            ),
            ("push_errors", "Pushes refused or aborted.", |c| {
                get(&c.errors[0])
            }),
            ("pulls", "Pulls served whole.", |c| get(&c.done[1])),
            ("pull_errors", "Pulls refused or ended early.", |c| {
                get(&c.errors[1])
            }),
            ("downloads", "Web downloads served whole.", |c| {
                get(&c.done[2])
            }),
            ("download_errors", "Web downloads cut short.", |c| {
                get(&c.errors[2])
            }),
            (
                "received_bytes",
                "Websocket bytes received from clients.",
                |c| get(&c.bytes_in),
            ),
            (
                "sent_bytes",
                "Bytes sent to clients (websocket, downloads).",
                |c| get(&c.bytes_out),
            ),
        ];
        for (name, help, value) in counters {
            let name = format!("sqlrsync_{name}_total");
            family(
                o,
                &name,
                "counter",
                &format!("{help} By replica namespace."),
            );
            for (ns, c) in &rows {
                let _ = writeln!(o, "{name}{{namespace=\"{ns}\"}} {}", value(c));
            }
        }
        self.push_commit.write(
            o,
            "sqlrsync_push_commit_duration_seconds",
            "Time the store took to commit a push.",
        );
        self.pull.write(
            o,
            "sqlrsync_pull_duration_seconds",
            "Time a pull took, from the upgrade to the end of the stream.",
        );
    }

    /// The store's figures, read again when older than [`STORE_TTL`]; one
    /// scrape reads at a time, the others wait for its figures.
    async fn store_figures(self: &Arc<Self>) -> anyhow::Result<(StoreTotals, u64)> {
        let mut guard = self.store.lock().await;
        if let Some(s) = &guard.1
            && s.at.elapsed() < STORE_TTL
        {
            return Ok((s.totals.clone(), s.disk_bytes));
        }
        let meta = guard.0.take();
        let dir = self.data_dir.clone();
        let (meta, read) = tokio::task::spawn_blocking(move || {
            let meta = match meta {
                Some(m) => m,
                None => Meta::open(&dir)?,
            };
            let read = meta.totals().map(|t| (t, disk_bytes(&dir)));
            anyhow::Ok((meta, read))
        })
        .await??;
        guard.0 = Some(meta);
        let (totals, disk_bytes) = read?;
        guard.1 = Some(StoreSnapshot {
            at: Instant::now(),
            totals: totals.clone(),
            disk_bytes,
        });
        Ok((totals, disk_bytes))
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The store gauges.
fn write_store(o: &mut String, (t, disk): (StoreTotals, u64)) {
    let gauges = [
        ("replicas", "Replicas in the store.", t.replicas),
        ("versions", "Versions kept, of all replicas.", t.versions),
        (
            "latest_pages",
            "Pages of the replicas' latest versions.",
            t.latest_pages,
        ),
        (
            "pack_pages",
            "Pages of older versions held in the pack files.",
            t.pack_pages,
        ),
        (
            "disk_bytes",
            "Bytes of the store's files (meta.db, packs, latest versions).",
            disk,
        ),
    ];
    for (name, help, v) in gauges {
        let name = format!("sqlrsync_store_{name}");
        family(o, &name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
}

/// Bytes of the store's own files: `meta.db` (with its WAL), the packs and
/// the replicas' latest files; staging and cache files come and go.
fn disk_bytes(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if !md.is_dir() {
            return if md.is_file() { md.len() } else { 0 };
        }
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
            .unwrap_or(0)
    }
    ["meta.db", "meta.db-wal", "packs", "replicas"]
        .iter()
        .map(|n| walk(&dir.join(n)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_past_the_cap_are_other() {
        let m = Metrics::new(Path::new("/nonexistent"), Access::Local);
        for i in 0..MAX_NAMESPACES + 5 {
            let mut g = m.session_started(Kind::Push, &format!("ns{i}"));
            g.succeeded();
        }
        assert_eq!(lock(&m.namespaces).len(), MAX_NAMESPACES);
        assert_eq!(get(&m.other.done[0]), 5);
        let mut o = String::new();
        m.write_live(&mut o);
        assert!(o.contains("sqlrsync_pushes_total{namespace=\"other\"} 5\n"));
        assert!(o.contains("sqlrsync_pushes_total{namespace=\"ns0\"} 1\n"));
    }

    #[test]
    fn a_dropped_guard_is_an_error_and_leaves_the_gauge() {
        let m = Metrics::new(Path::new("/nonexistent"), Access::Local);
        let g = m.session_started(Kind::Pull, "team");
        assert_eq!(m.sessions[Kind::Pull as usize].load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(m.sessions[Kind::Pull as usize].load(Ordering::Relaxed), 0);
        let c = m.counters("team");
        assert_eq!((get(&c.done[1]), get(&c.errors[1])), (0, 1));
        assert_eq!(m.pull.count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn refusals_of_unknown_namespaces_are_other() {
        let m = Metrics::new(Path::new("/nonexistent"), Access::Local);
        m.refused(Kind::Pull, "/made-up/x.db", |_| false);
        m.refused(Kind::Pull, "team/x.db", |ns| ns == "team");
        assert!(lock(&m.namespaces).get("made-up").is_none());
        assert_eq!(get(&m.other.errors[1]), 1);
        assert_eq!(get(&m.counters("team").errors[1]), 1);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut o = String::new();
        h.write(&mut o, "x", "help");
        assert!(
            o.contains("x_bucket{le=\"0.1\"} 1\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 3\n")
        );
        assert!(o.contains("x_count 3\n"));
    }

    #[test]
    fn loopback_only_by_default() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let far: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(allowed(Access::default(), lo).is_ok());
        assert!(allowed(Access::Local, mapped).is_ok());
        assert_eq!(
            allowed(Access::Local, far).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert!(allowed(Access::Public, far).is_ok());
        assert_eq!(
            allowed(Access::Off, lo).unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
    }
}
