//! PUSH: a local database becomes a new version of a replica on the server.
//!
//! The plan (server, remote path, key, visibility, files to write) is
//! settled before any connection, so `--dry` can show it and bad input is
//! one line. The helper runs as ORIGIN (`--origin LOCAL_DB REMOTE_NAME`);
//! COMMITMESSAGE goes before its first bytes, CONFIG and KEYREQUEST right
//! after. The push counts only when the server closes normally after its
//! replica committed. Then the keys the server issued are kept: the Replica
//! Push key in local-secrets.toml (so `sqlrsync /path/db` alone pushes
//! again), the Replica Pull key in the `-sqlrsync` file. Account Admin keys
//! are never written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::sync::watch;

use super::files::{self, DashFile, SecretEntry, Secrets};
use super::guard::{self, PushCheck};
use super::keys::{self, Candidates, Key, KeySource};
use super::matched::{self, Matched, Role};
use super::page_cache;
use super::unchanged;
use super::{RemoteRef, Settings, SyncError};
use crate::helper::HelperCommand;
use crate::link::{Controls, DriveSpec, drive};
use crate::sqlite::{self, FileState};
use crate::ui::Printer;
use crate::wire::{ClientControl, Visibility, headers};

mod delta;

/// Everything a push will do, decided before connecting.
#[derive(Debug)]
pub struct Plan {
    /// Absolute path of the local database (the key of its secrets entry).
    pub local: PathBuf,
    /// Remote path; empty lets the server assign one.
    pub remote_path: String,
    /// Server URL.
    pub server: String,
    /// Where the server URL came from.
    pub server_from: &'static str,
    /// The key and its source.
    pub key: Key,
    /// Replica id when known (`X-ReplicaID`).
    pub replica_id: Option<String>,
    /// No stored entry: this is the first push of this file here.
    pub first_push: bool,
    /// Visibility asked for (first push only).
    pub visibility: Visibility,
    /// Ask the server for keys (KEYREQUEST): no stored entry for this
    /// replica, no `-sqlrsync` file, or an admin key given for this run.
    pub key_request: bool,
    /// The `-sqlrsync` file next to the database when it pulls another
    /// replica: it is left as it is.
    pub dash_elsewhere: Option<DashFile>,
    /// No replica was named and the stored one pushed to last was taken:
    /// how many other replicas this database pushes to.
    pub chosen: Option<usize>,
    /// Commit message.
    pub message: Option<String>,
}

/// The database to push, checked (it exists, is SQLite, can be read) and
/// made canonical: the key of its secrets entry.
fn pushable(local: &Path) -> anyhow::Result<PathBuf> {
    let given = std::path::absolute(local).context("cannot resolve the database path")?;
    // A symbolic link is followed (a loop is reported by `inspect`).
    let abs = sqlite::resolve_links(&given).unwrap_or_else(|_| given.clone());
    let note = sqlite::link_note(&given, &abs);
    match sqlite::inspect(&abs).map_err(|e| anyhow::anyhow!("{e}"))? {
        FileState::Missing => bail!("{} does not exist{note}; nothing to push", abs.display()),
        FileState::Empty => bail!(
            "{} is empty (0 bytes), not an SQLite database",
            abs.display()
        ),
        FileState::Database(_) => {}
    }
    std::fs::File::open(&abs).with_context(|| format!("cannot read {}", abs.display()))?;
    sqlite::facts(&abs).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Symlinks and ./ spellings must find the same secrets entry.
    Ok(std::fs::canonicalize(&abs).unwrap_or(abs))
}

/// Builds the plan from the settings; refuses bad input with one line.
pub fn plan(s: &Settings, local: &Path, remote: Option<&RemoteRef>) -> anyhow::Result<Plan> {
    let local = pushable(local)?;
    let dir = s.files.config_dir()?;
    let secrets = Secrets::load(dir)?;
    let server_ok = |e: &SecretEntry| {
        s.server
            .flag
            .as_deref()
            .is_none_or(|f| super::same_server(f, &e.server))
    };
    // One entry per (database, server, replica): a named replica finds its
    // own; no name means the replica this database pushed to last.
    let entry = match remote {
        Some(r) => secrets.last_pushed(&local, |e| e.remote_path == r.path && server_ok(e)),
        None => secrets.last_pushed(&local, server_ok),
    };
    let (server, server_from) = s
        .server
        .resolve(entry.map(|e| e.server.as_str()).filter(|s| !s.is_empty()))?;
    let remote_path = match (remote, entry) {
        (Some(r), _) => r.path.clone(),
        (None, Some(e)) => e.remote_path.clone(),
        (None, None) => String::new(),
    };
    let first_push = entry.is_none();
    let visibility = s.push.visibility;
    if visibility != Visibility::Private && !first_push {
        bail!(
            "--{} only applies to the first push; {remote_path} already exists on {server} (change its visibility on the server)",
            visibility.as_str(),
        );
    }
    let key = push_key(s, dir, entry)?;
    let replica_id = s.keys.replica_id.clone().or_else(|| {
        entry
            .map(|e| e.replica_id.clone())
            .filter(|s| !s.is_empty())
    });
    let dash = DashFile::load_for(&local).ok().flatten();
    let dash_matches = dash.as_ref().is_some_and(|d| {
        !remote_path.is_empty()
            && d.remote_path == remote_path
            && d.server
                .as_deref()
                .is_none_or(|d| super::same_server(d, &server))
    });
    // Keys are asked for when one is missing here (no push key stored for
    // this replica, no -sqlrsync file at all), and when an admin key is
    // given for this run (a stored key it replaces may be revoked). Each
    // request mints keys, so a database whose -sqlrsync file pulls another
    // replica does not ask on every push.
    let key_request = first_push || dash.is_none() || key.source.replaces_stored();
    let others = secrets.entries_for(&local).count() - usize::from(entry.is_some());
    Ok(Plan {
        chosen: (remote.is_none() && entry.is_some()).then_some(others),
        local,
        remote_path,
        server,
        server_from,
        key,
        replica_id,
        first_push,
        visibility,
        key_request,
        dash_elsewhere: dash.filter(|_| !dash_matches),
        message: s.push.message.clone(),
    })
}

/// The key of a push: given now, else stored with this replica, else the
/// prompt (see [`keys::resolve`]).
fn push_key(s: &Settings, dir: &Path, entry: Option<&SecretEntry>) -> anyhow::Result<Key> {
    let stored = entry
        .filter(|e| !e.push_key.is_empty())
        .map(|e| (e.push_key.clone(), KeySource::Secrets(Secrets::path(dir))));
    let key = keys::resolve(
        &s.keys.env,
        Candidates {
            flag: s.keys.push_key.clone().map(|k| (k, "--pushKey")),
            stored,
            admin_flag: s.keys.admin_key.clone(),
        },
        true,
        "the first push of this database",
    );
    // --dry reports a missing key instead of failing on it: saying what
    // would happen is its whole job.
    match key {
        Err(_) if s.dry => Ok(keys::Key {
            value: None,
            source: KeySource::Missing,
        }),
        k => k,
    }
}

/// `--dry`: what would happen, keys masked; nothing is written or sent.
fn print_dry(p: &Plan, printer: &Printer, form: &super::Form) {
    let remote = if p.remote_path.is_empty() {
        "(assigned by the server from the key's namespace, this host and the file name)".to_string()
    } else {
        p.remote_path.clone()
    };
    let dash = DashFile::path_for(&p.local);
    if printer.json {
        let v = serde_json::json!({
            "mode": "PUSH",
            "dry": true,
            "form": form.name, "why": form.why,
            "origin": p.local,
            "replica": p.remote_path,
            "server": p.server,
            "keySource": p.key.source.describe(),
            "key": p.key.masked(),
            "firstPush": p.first_push,
            "visibility": if p.first_push { Some(p.visibility.as_str()) } else { None },
            "visibilityNote": dry_visibility(p),
            "writesDashFile": p.key_request && p.dash_elsewhere.is_none(),
            "dashFile": dash,
        });
        printer.json(&v);
        return;
    }
    let out = |line: &str| printer.stdout(line);
    out("mode:       PUSH (this database becomes a new version on the server)");
    out(&form.line(12));
    out(&format!("origin:     {}", p.local.display()));
    out(&format!("replica:    {remote}"));
    out(&format!("server:     {} ({})", p.server, p.server_from));
    out(&format!(
        "key:        {} from {}",
        p.key.masked(),
        p.key.source.describe()
    ));
    if let Some(others) = p.chosen {
        out(&format!(
            "why:        no replica named: the one this database pushed to last ({others} other{} stored)",
            if others == 1 { "" } else { "s" }
        ));
    }
    out(&format!("visibility: {}", dry_visibility(p)));
    if let Some(m) = &p.message {
        out(&format!("message:    {m}"));
    }
    match &p.dash_elsewhere {
        Some(d) => {
            printer.stdout(&format!(
                "writes:     nothing new next to the database ({} pulls {} and is left as it is)",
                dash.display(),
                d.remote_path
            ));
            printer.stdout("dry run:    nothing was sent and nothing was written");
        }
        None => super::print_dry_writes(printer, &dash, p.key_request),
    }
}

/// The visibility line of `--dry`: only a push that creates the replica
/// sets it; an existing replica keeps its own, whatever this push asks.
fn dry_visibility(p: &Plan) -> String {
    if p.first_push {
        format!(
            "{} if this push creates the replica; a replica that already exists on the server keeps its own",
            p.visibility.as_str()
        )
    } else {
        "unchanged: the replica exists (this database pushed to it) and keeps the visibility it has on the server".into()
    }
}

/// Runs a push.
pub async fn run(
    s: &Settings,
    local: &Path,
    remote: Option<&RemoteRef>,
    interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    let printer = s.printer;
    let mut p = plan(s, local, remote)?;
    if s.dry {
        print_dry(&p, &printer, &s.form);
        return Ok(ExitCode::SUCCESS);
    }
    ask_for_key(&mut p)?;
    if s.subscribe {
        return follow(s, p, remote, interrupt).await;
    }
    match push_once(s, &p, interrupt).await {
        Ok(report) => {
            report.print(&printer);
            Ok(ExitCode::SUCCESS)
        }
        Err(SyncError::Interrupted(e)) => {
            printer.stderr(&format!("sqlrsync: {e:#}"));
            Ok(super::interrupted_exit())
        }
        Err(e) => Err(e.into_anyhow()),
    }
}

/// The prompt, when the plan says to ask.
fn ask_for_key(p: &mut Plan) -> anyhow::Result<()> {
    if p.key.source == KeySource::Prompt {
        let ns = p
            .remote_path
            .split('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("your namespace");
        p.key.value = Some(keys::prompt(ns)?);
    }
    Ok(())
}

/// `--subscribe`/`--watch`: pushes now and after every change (see
/// [`crate::client::follow`]). Each push is planned afresh, so the keys the first
/// one stored are used from then on, and an admin key given for the first
/// push is not used to mint new keys on every later one.
async fn follow(
    s: &Settings,
    first: Plan,
    remote: Option<&RemoteRef>,
    interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    let local = first.local.clone();
    let printer = s.printer;
    let mut planned = Some(first);
    // After the first push the stored key is the one to use (the plan of
    // the first push holds its key already).
    let mut later = s.clone();
    later.keys.admin_key = None;
    later.keys.env.admin_key = None;
    later.keys.env.tty = false;
    let once = || {
        let p = planned.take();
        let named = remote.cloned();
        let (settings, stop) = (later.clone(), interrupt.clone());
        let local = local.clone();
        async move {
            let p = match p {
                Some(p) => p,
                None => plan(&settings, &local, named.as_ref())?,
            };
            let report = push_once(&settings, &p, stop).await?;
            report.print(&settings.printer);
            Ok(())
        }
    };
    crate::client::follow::follow(&local, s.watch, &printer, interrupt.clone(), once).await
}

/// One push of a planned database: connect, check the server's latest,
/// stream, keep the keys and the record.
pub async fn push_once(
    s: &Settings,
    p: &Plan,
    interrupt: watch::Receiver<bool>,
) -> Result<super::Report, SyncError> {
    let printer = s.printer;
    let hdrs = push_headers(s, p)?;
    let url = super::endpoint_url(&p.server, "push", &p.remote_path);
    printer.verbose(&format!(
        "PUSH {} to {url} with key {} from {}",
        p.local.display(),
        p.key.masked(),
        p.key.source.describe()
    ));
    if let Some(others) = p.chosen
        && others > 0
    {
        printer.note(&format!(
            "sqlrsync: pushing to {} on {} (where this database pushed last; it also pushes to {others} other replica{})",
            p.remote_path,
            p.server,
            if others == 1 { "" } else { "s" }
        ));
    }
    let started = Instant::now();
    let record = matched::load(&p.remote_path, &p.local);
    let fingerprint = unchanged::fingerprint(&p.local);
    let mut conn = connect_push(s, p, &url, &hdrs, &interrupt).await?;
    // A delta needs no question first: it names the version this database
    // last matched, which a server whose latest moved refuses (and the
    // full push below then finds the conflict).
    let mut local_xxh3 = None;
    if conn.delta && !p.key_request {
        match delta::prepare(p, record.as_ref()).await {
            // A page must fit one frame the server takes.
            delta::Prepared::Delta(plan) if plan.frame_len() > frame_limit(&conn) => {}
            delta::Prepared::Delta(plan) => {
                match delta::send(s, p, conn, plan, interrupt.clone(), started).await {
                    Ok(report) => return Ok(report),
                    Err(delta::Failed::Sync(e)) => return Err(e),
                    Err(delta::Failed::Refused(why)) => {
                        printer.verbose(&format!(
                            "the server refused the delta push ({why}); pushing in full"
                        ));
                        page_cache::forget(&p.remote_path, &p.local);
                    }
                }
                return full_push_again(s, p, &url, &hdrs, interrupt, started).await;
            }
            delta::Prepared::Unchanged(x) => local_xxh3 = Some(x),
            delta::Prepared::Full => {}
        }
    }
    // Without a page cache's answer, the SHA-256 of a database that very
    // probably did not change decides the unchanged check (a page cache
    // that found it unchanged already gave its versionXxh3).
    let local_hash = match local_xxh3 {
        Some(_) => None,
        None => hash_if_useful(p, record.as_ref(), fingerprint.as_deref()),
    };
    let facts = Local {
        record,
        hash: local_hash,
        xxh3: local_xxh3,
    };
    if let Before::Unchanged(latest, wire_bytes) = before_stream(s, p, &mut conn, facts).await? {
        return Ok(unchanged_report(p, latest, wire_bytes, started, &printer));
    }
    stream_push(s, p, conn, interrupt, started).await
}

/// The helper's stream, and what a push keeps after it; on a server that
/// takes deltas, the page cache that lets the next push be one.
async fn stream_push(
    s: &Settings,
    p: &Plan,
    conn: super::Connected,
    interrupt: watch::Receiver<bool>,
    started: Instant,
) -> Result<super::Report, SyncError> {
    let takes_delta = conn.delta;
    let (outcome, stats) = link_push(s, p, conn, interrupt)
        .await
        .map_err(|e| SyncError::Other(e.into()))?;
    super::verdict(&outcome, true)?;
    let report = finish(s, p, &outcome, &stats, started)?;
    if takes_delta && let Some(cfg) = outcome.config() {
        delta::remember(p, &report.remote, &cfg).await;
    }
    Ok(report)
}

/// The largest binary frame the server takes: what it answered our offer
/// with, else the largest the clients that exist send (PROTOCOL.md
/// section 3).
fn frame_limit(conn: &super::Connected) -> usize {
    conn.max_frame.unwrap_or(crate::wire::COMPAT_MAX_FRAME)
}

/// Opens the push's websocket, unless Ctrl-C comes first.
async fn connect_push(
    s: &Settings,
    p: &Plan,
    url: &str,
    hdrs: &[(&'static str, String)],
    interrupt: &watch::Receiver<bool>,
) -> Result<super::Connected, SyncError> {
    let mut stop = interrupt.clone();
    tokio::select! {
        c = super::connect(url, hdrs, s.idle_timeout) => c.map_err(|e| stored_key_refused(p, e)),
        _ = super::wait_true(&mut stop) => {
            Err(SyncError::Interrupted(anyhow::anyhow!("interrupted; nothing was sent")))
        }
    }
}

/// The full push after a refused delta: a new connection, the pre-stream
/// check again, then the helper's stream.
async fn full_push_again(
    s: &Settings,
    p: &Plan,
    url: &str,
    hdrs: &[(&'static str, String)],
    interrupt: watch::Receiver<bool>,
    started: Instant,
) -> Result<super::Report, SyncError> {
    let mut conn = connect_push(s, p, url, hdrs, &interrupt).await?;
    let facts = Local {
        record: matched::load(&p.remote_path, &p.local),
        hash: None,
        xxh3: None,
    };
    if let Before::Unchanged(latest, wire_bytes) = before_stream(s, p, &mut conn, facts).await? {
        return Ok(unchanged_report(p, latest, wire_bytes, started, &s.printer));
    }
    stream_push(s, p, conn, interrupt, started).await
}

/// What the pre-stream check decided.
enum Before {
    /// Nothing to send: the server's answer, and the wire bytes it took.
    Unchanged(crate::wire::ServerConfig, u64),
    /// Push.
    Push,
}

/// What is known of the local database before the check.
struct Local {
    /// Its match record.
    record: Option<Matched>,
    /// Its versionHash, being computed (when it very probably did not
    /// change since it last matched).
    hash: Option<tokio::task::JoinHandle<anyhow::Result<String>>>,
    /// Its versionXxh3, when the page cache found it unchanged.
    xxh3: Option<String>,
}

/// Asks our server for its latest before the stream (SERVER.md
/// "Extensions") and decides with [`guard::push_check`]: a push that would
/// put another machine's version behind this one is refused, one that
/// would change nothing ends here (returned with the server's answer, the
/// socket closed). Other servers do not say: the push runs as it always did.
async fn before_stream(
    s: &Settings,
    p: &Plan,
    conn: &mut super::Connected,
    local: Local,
) -> Result<Before, SyncError> {
    if !conn.stream_digest || p.remote_path.is_empty() {
        return Ok(Before::Push);
    }
    let Some((latest, wire_bytes)) = unchanged::ask_latest(&mut conn.ws).await? else {
        return Ok(Before::Push);
    };
    // The page cache found the database as it last matched, and that is
    // the server's latest: nothing to send, nothing to hash.
    if local.xxh3.is_some() && latest.version_xxh3 == local.xxh3 && !p.key_request {
        unchanged::close(&mut conn.ws, "unchanged").await;
        return Ok(Before::Unchanged(latest, wire_bytes));
    }
    // A record of another server's replica of the same name says nothing.
    let record = local
        .record
        .filter(|r| r.same_replica(latest.replica_id.as_deref()));
    let mut local_hash = match local.hash {
        Some(h) => h.await.ok().and_then(|h| h.ok()),
        None => None,
    };
    let check = |local_hash: Option<&str>| {
        guard::push_check(&guard::PushFacts {
            remote_path: &p.remote_path,
            latest: &latest,
            record: record.as_ref(),
            legacy_entry: !p.first_push,
            local_hash,
            force: s.force,
        })
    };
    let mut verdict = check(local_hash.as_deref());
    // Before calling it a conflict: the server's latest may be this very
    // database (a copy pushed from elsewhere, or a push whose end this
    // client never saw, killed after the server committed). Only then is
    // the whole file worth hashing.
    if matches!(verdict, PushCheck::Conflict(_))
        && local_hash.is_none()
        && latest.version_hash.is_some()
    {
        let db = p.local.clone();
        local_hash = tokio::task::spawn_blocking(move || sqlite::version_hash(&db))
            .await
            .ok()
            .and_then(|h| h.ok());
        verdict = check(local_hash.as_deref());
    }
    match verdict {
        PushCheck::Conflict(why) => {
            unchanged::close(&mut conn.ws, "conflict").await;
            Err(SyncError::Conflict(anyhow::anyhow!("{why}")))
        }
        PushCheck::Unchanged if !p.key_request => {
            unchanged::close(&mut conn.ws, "unchanged").await;
            Ok(Before::Unchanged(latest, wire_bytes))
        }
        PushCheck::Unchanged | PushCheck::Push => Ok(Before::Push),
    }
}

/// The upgrade's headers for a push (PROTOCOL.md section 2): key, client
/// id, replica, this machine and path, and the visibility of a first push.
fn push_headers(s: &Settings, p: &Plan) -> anyhow::Result<Vec<(&'static str, String)>> {
    let client_id = super::client_id(s)?;
    let mut hdrs = super::base_headers(p.key.value.as_deref(), &client_id, p.replica_id.as_deref());
    hdrs.push((headers::LOCAL_HOSTNAME, files::hostname()));
    hdrs.push((
        headers::LOCAL_ABSOLUTE_PATH,
        p.local.to_string_lossy().into_owned(),
    ));
    if p.first_push
        && let Some(v) = p.visibility.header_value()
    {
        hdrs.push((headers::VISIBILITY, v.to_string()));
    }
    super::offer_frames(s, &mut hdrs);
    super::offer_delta(s, &mut hdrs);
    // A verified push (SERVER.md "Extensions"): the server commits only a
    // stream that arrived as we sent it.
    hdrs.push((
        headers::STREAM_DIGEST,
        headers::STREAM_DIGEST_XXH3.to_string(),
    ));
    Ok(hdrs)
}

/// The server's latest version already holds this database: nothing was
/// sent; the record is refreshed and the summary says so.
fn unchanged_report(
    p: &Plan,
    config: crate::wire::ServerConfig,
    wire_bytes: u64,
    started: Instant,
    printer: &Printer,
) -> super::Report {
    let version = config.committed_version_id.clone();
    printer.note(&format!(
        "no changes: version {} on the server already holds this database; nothing sent",
        version.as_deref().unwrap_or("?")
    ));
    record_match(p, &p.remote_path, &config, printer);
    let stats = crate::link::Stats::default();
    let mut report = super::Report::new("PUSH", &stats, started);
    report.local = p.local.display().to_string();
    report.remote = p.remote_path.clone();
    report.server = p.server.clone();
    report.version = version;
    report.wire_received = wire_bytes;
    report.unchanged = true;
    report
}

/// Hashes the local database (on a thread, while the server answers) when
/// it very probably did not change since its last match (same
/// fingerprint): the answer then decides the push. Else a push of a
/// changed database waits for no hash (but see [`before_stream`]).
fn hash_if_useful(
    p: &Plan,
    record: Option<&Matched>,
    fingerprint: Option<&str>,
) -> Option<tokio::task::JoinHandle<anyhow::Result<String>>> {
    let worth = !p.remote_path.is_empty()
        && record.is_some_and(|r| fingerprint.is_some() && r.fingerprint.as_deref() == fingerprint);
    worth.then(|| {
        let db = p.local.clone();
        tokio::task::spawn_blocking(move || sqlite::version_hash(&db))
    })
}

/// A refused stored key says so, and how to replace it (and is no
/// failure a retry fixes).
fn stored_key_refused(p: &Plan, e: super::ConnectError) -> SyncError {
    let refused = matches!(
        e,
        super::ConnectError::Http {
            status: 401 | 403,
            ..
        }
    );
    match &p.key.source {
        KeySource::Secrets(file) if refused => SyncError::Aborted(anyhow::anyhow!(
            "{e}: that was the Replica Push key stored for {} in {} (revoked or replaced?); push \
             once with --adminKey KEY (the push key the server then issues replaces the stored \
             one) or --pushKey KEY (kept in its place when it works)",
            p.remote_path,
            file.display()
        )),
        _ => SyncError::Connect(e),
    }
}

/// Remembers that the local database now is `cfg`'s version of the
/// replica (see [`matched`]). A failure only weakens the next check.
fn record_match(p: &Plan, remote_path: &str, cfg: &crate::wire::ServerConfig, printer: &Printer) {
    let mut m = Matched::now(&p.server, remote_path, &p.local, Role::Push);
    m.replica_id = cfg.replica_id.clone();
    m.version = cfg.committed_version_id.clone();
    m.version_hash = cfg.version_hash.clone();
    if let Err(e) = matched::save(&m) {
        printer.note(&format!(
            "sqlrsync: warning: cannot record the version pushed ({e:#}); the next push will ask for --force"
        ));
    }
}

/// After a push the server confirmed: keeps the keys it issued and the
/// record that lets the next push skip an unchanged database, and builds
/// the report.
fn finish(
    s: &Settings,
    p: &Plan,
    outcome: &crate::link::Outcome,
    stats: &crate::link::Stats,
    started: Instant,
) -> anyhow::Result<super::Report> {
    let printer = &s.printer;
    let cfg = outcome.config().unwrap_or_default();
    let remote_path = cfg
        .replica_path
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or(p.remote_path.clone());
    let replica_id = cfg.replica_id.clone().or(p.replica_id.clone());
    keep_keys(s, p, &cfg, &remote_path, replica_id.as_deref())?;
    // The fingerprint after the push, not before: reading a WAL database
    // may checkpoint it on close. Taking it late is safe because the record
    // only decides whether to hash next time, never whether to skip.
    record_match(p, &remote_path, &cfg, printer);

    let mut report = super::Report::new("PUSH", stats, started);
    report.local = p.local.display().to_string();
    report.remote = remote_path;
    report.server = p.server.clone();
    report.version = cfg.committed_version_id.clone();
    report.messages = outcome.messages.clone();
    report.messages_not_shown = outcome.messages_not_shown;
    for l in &outcome.helper_stderr {
        printer.verbose(&format!("sqlite3_rsync: {l}"));
    }
    Ok(report)
}

/// Runs the ORIGIN helper over the connection: the commit message before
/// the stream, CONFIG (and KEYREQUEST) right after its first frame.
async fn link_push(
    s: &Settings,
    p: &Plan,
    conn: super::Connected,
    interrupt: watch::Receiver<bool>,
) -> Result<(crate::link::Outcome, std::sync::Arc<crate::link::Stats>), crate::link::DriveError> {
    let name = if p.remote_path.is_empty() {
        p.local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "replica.db".into())
    } else {
        p.remote_path.clone()
    };
    let helper = HelperCommand::origin(&p.local, name)
        .args(super::protocol_args(s))
        .own_process_group();
    let mut before = Vec::new();
    if let Some(m) = &p.message {
        before.push(ClientControl::CommitMessage(m.clone()).encode());
    }
    let mut after = vec![ClientControl::Config.encode()];
    if p.key_request {
        after.push(ClientControl::KeyRequest.encode());
    }
    let spec = DriveSpec {
        helper,
        controls: Controls {
            before,
            after_first: after,
            at_end: None,
            digest_at_end: conn.stream_digest,
        },
        framing: super::framing_for(&conn),
        want_config: false,
        idle_timeout: s.idle_timeout,
        live_stderr: s.printer.verbose >= 2,
    };
    let printer = s.printer;
    let (ctx, progress) = super::observer(printer);
    let stats = ctx.stats.clone();
    let linked = drive(conn.ws, spec, ctx, |feed| feed, interrupt).await;
    progress.finish();
    super::say_where_helper_ran(&printer);
    let (outcome, _) = linked?;
    Ok((outcome, stats))
}

/// Stores what the server issued: the push key (or the refreshed entry) in
/// local-secrets.toml and the pull key in the `-sqlrsync` file. The key
/// used for this push is stored only when it was a stored key already.
fn keep_keys(
    s: &Settings,
    p: &Plan,
    cfg: &crate::wire::ServerConfig,
    remote_path: &str,
    replica_id: Option<&str>,
) -> anyhow::Result<()> {
    let printer = &s.printer;
    let dir = s.files.config_dir()?;
    let path = p.local.to_string_lossy().into_owned();
    // Read, change and write under the file's lock: other sqlrsync
    // processes (cron jobs firing together) update their own entries in the
    // same file, and an unlocked read-modify-write loses theirs.
    let stored = Secrets::update(dir, |secrets| {
        let existing = secrets.find(&p.local, &p.server, remote_path).cloned();
        let push_key = match (&cfg.new_push_key, &existing) {
            (Some(k), _) => Some(k.clone()),
            // A Replica Push key the user gave that just worked: keep it, so
            // the next push (a cron job) needs nothing on the command line.
            (None, _) if p.key.source == KeySource::Flag("--pushKey") => p.key.value.clone(),
            // The entry stays, with this push as its last.
            (None, Some(e)) if !e.push_key.is_empty() => Some(e.push_key.clone()),
            _ => None,
        };
        let Some(k) = push_key else {
            return Ok(false);
        };
        if !crate::wire::is_key_shaped(&k) {
            bail!("the server issued a push key that is not a key; it was not stored");
        }
        if p.key.source.is_admin() && Some(&k) == p.key.value.as_ref() {
            bail!("the server returned the Account Admin key as a push key; refusing to store it");
        }
        secrets.upsert(SecretEntry {
            path,
            server: p.server.clone(),
            replica_id: replica_id.unwrap_or_default().to_string(),
            remote_path: remote_path.to_string(),
            push_key: k,
            last_push: files::toml_now(),
            other: Default::default(),
        });
        Ok(true)
    })?;
    if stored {
        printer.verbose(&format!(
            "stored the push key in {}",
            Secrets::path(dir).display()
        ));
    }
    if let Some(pull) = &cfg.new_pull_key {
        if !crate::wire::is_key_shaped(pull) {
            bail!("the server issued a pull key that is not a key; it was not stored");
        }
        // One `-sqlrsync` file per database: the one that pulls another
        // replica stays (a one-off push elsewhere never rebinds it).
        if let Some(d) = p
            .dash_elsewhere
            .as_ref()
            .filter(|d| d.remote_path != remote_path)
        {
            printer.verbose(&format!(
                "left {} as it is: it pulls {}",
                DashFile::path_for(&p.local).display(),
                d.remote_path
            ));
            return Ok(());
        }
        let dash = DashFile {
            remote_path: remote_path.to_string(),
            replica_id: replica_id.map(str::to_string),
            pull_key: Some(pull.clone()),
            server: Some(p.server.clone()),
        };
        let at = dash.save_for(&p.local)?;
        printer.verbose(&format!("wrote {}", at.display()));
    }
    Ok(())
}
