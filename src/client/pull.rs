//! PULL: a version of a replica on the server becomes the local database.
//!
//! The helper runs as REPLICA (`--replica REMOTE_NAME LOCAL_DB`) and commits
//! only when ORIGIN_TXN arrives, so a pull that fails or is cut at any point
//! leaves the local database as it was; a file the pull created is removed
//! again. CONFIG and KEYREQUEST go right after our first stream bytes
//! (KEYREQUEST only without a matching `-sqlrsync` file). When the server's
//! CONFIG carries `versionHash`, the pulled file is hashed and compared; a
//! mismatch is a loud failure.
//!
//! A pull over a database that is a known version of the replica offers a
//! delta first ([`super::pull_delta`]); a server that answers sends only the
//! changed pages, and no helper runs. A delta that does not make the
//! version changes nothing and is followed by a full pull in the same run.
//! A verified full pull keeps the page digests of its result
//! ([`super::page_cache`]), so the next pull can be a delta.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use tokio::sync::watch;

use super::apply::{PendingNote, PullOptions, PullSink};
use super::commit_gate::GateConfig;
use super::files::{DashFile, Secrets};
use super::guard::{self, PullFacts};
use super::keys::{self, Candidates, Key, KeySource};
use super::matched::{self, Matched, Role};
use super::page_cache;
use super::pull_delta::{self, DeltaFailed, Offer};
use super::{ConnectError, RemoteRef, Settings, SyncError};
use crate::helper::HelperCommand;
use crate::link::{Controls, DriveSpec, drive};
use crate::sqlite::HashKind;
use crate::sqlite::{self, FileState};
use crate::ui::Printer;
use crate::wire::{ClientControl, VersionRef, headers};

/// Everything a pull will do, decided before connecting.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Remote path (without `@VERSION`).
    pub remote_path: String,
    /// Version asked for.
    pub version: VersionRef,
    /// Absolute path of the local database.
    pub local: PathBuf,
    /// Whether the local file exists (a failed pull removes a new one).
    pub local_existed: bool,
    /// Server URL.
    pub server: String,
    /// Where the server URL came from.
    pub server_from: &'static str,
    /// The key and its source.
    pub key: Key,
    /// Replica id when known.
    pub replica_id: Option<String>,
    /// No matching `-sqlrsync` file: ask for keys, write one if issued.
    pub key_request: bool,
    /// Its `-sqlrsync` file names this replica.
    pub dash_matches: bool,
    /// The pull key of that file.
    pub dash_key: Option<String>,
    /// The replica this database pushes to, when it is an origin (its
    /// local-secrets.toml entry): `(remote path, server)`.
    pub origin_of: Option<(String, String)>,
}

/// The file a pull writes, checked (its directory exists and is writable;
/// it is missing or a writable SQLite database) with links followed.
fn writable_target(local: &Path) -> anyhow::Result<(PathBuf, FileState)> {
    let given = std::path::absolute(local).context("cannot resolve the database path")?;
    // A symbolic link is followed: the pull writes the file it names, and
    // the -sqlrsync file goes next to that file (where SQLite keeps the
    // -journal and -wal), whichever link was used.
    let local = match sqlite::resolve_links(&given) {
        Ok(p) => p,
        Err(e) => bail!("cannot use {}: {}", given.display(), sqlite::io_reason(&e)),
    };
    let note = sqlite::link_note(&given, &local);
    let dir = sqlite::parent_dir(&local);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        _ => bail!("the directory {} does not exist{note}", dir.display()),
    }
    let state = sqlite::inspect(&local).map_err(|e| match e {
        sqlite::DbFileError::NotADatabase(p) => anyhow::anyhow!(
            "{} exists and is not an SQLite database; refusing to overwrite it",
            p.display()
        ),
        e => anyhow::anyhow!("{e}"),
    })?;
    if matches!(state, FileState::Database(_)) {
        sqlite::facts(&local).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if !sqlite::writable(&dir) {
        bail!("the directory {} is not writable", dir.display());
    }
    if state != FileState::Missing && !sqlite::writable(&local) {
        bail!("{} is not writable", local.display());
    }
    Ok((local, state))
}

/// How a read of a replica reaches the server, decided as a pull decides
/// it: the `-sqlrsync` file next to the local database when it names this
/// replica (and this server, when `--server` is given), the server URL,
/// and the key (flags and environment first, then that file's).
pub struct ReadAccess {
    /// The `-sqlrsync` file, when it names this replica.
    pub matching: Option<DashFile>,
    /// Server URL.
    pub server: String,
    /// Where the server URL came from.
    pub server_from: &'static str,
    /// The key and its source.
    pub key: Key,
    /// Replica id when known.
    pub replica_id: Option<String>,
}

/// The [`ReadAccess`] for `remote` from the database at `local`
/// (absolute, links resolved); refuses bad input with one line.
pub fn read_access(s: &Settings, remote: &RemoteRef, local: &Path) -> anyhow::Result<ReadAccess> {
    let env = &s.keys.env;
    let dash = DashFile::load_for(local)?;
    let matching = dash.filter(|d| {
        d.remote_path == remote.path
            && match (&s.server.flag, &d.server) {
                (Some(flag), Some(stored)) => super::same_server(flag, stored),
                _ => true,
            }
    });
    let (server, server_from) = s
        .server
        .resolve(matching.as_ref().and_then(|d| d.server.as_deref()))?;
    let stored = matching
        .as_ref()
        .and_then(|d| d.pull_key.clone())
        .map(|k| (k, KeySource::DashFile(DashFile::path_for(local))));
    // A hand-edited file may hold anything after --pullKey=; it is read
    // literally, and what is not a key is refused rather than sent.
    if let Some((k, _)) = &stored
        && s.keys.pull_key.is_none()
        && env.auth_token.is_none()
        && !crate::wire::is_key_shaped(k)
    {
        bail!(
            "{}: the --pullKey value {k:?} is not a key (20-25 letters and digits)",
            DashFile::path_for(local).display()
        );
    }
    let key = keys::resolve(
        env,
        Candidates {
            flag: s.keys.pull_key.clone().map(|k| (k, "--pullKey")),
            stored,
            admin_flag: s.keys.admin_key.clone(),
        },
        false,
        "this pull",
    )?;
    let replica_id = s
        .keys
        .replica_id
        .clone()
        .or_else(|| matching.as_ref().and_then(|d| d.replica_id.clone()));
    Ok(ReadAccess {
        matching,
        server,
        server_from,
        key,
        replica_id,
    })
}

/// Builds the plan from the settings; refuses bad input with one line.
pub fn plan(s: &Settings, remote: &RemoteRef, local: &Path) -> anyhow::Result<Plan> {
    let (local, state) = writable_target(local)?;
    let ReadAccess {
        matching,
        server,
        server_from,
        key,
        replica_id,
    } = read_access(s, remote, &local)?;
    let dash_key = matching.as_ref().and_then(|d| d.pull_key.clone());
    let origin_of = match s.files.config_dir() {
        Ok(dir) => Secrets::load(dir)?
            .last_pushed(&local, |_| true)
            .map(|e| (e.remote_path.clone(), e.server.clone())),
        Err(_) => None,
    };
    let admin = key.source.replaces_stored();
    Ok(Plan {
        remote_path: remote.path.clone(),
        version: remote.version.unwrap_or_default(),
        local_existed: state != FileState::Missing,
        dash_key,
        local,
        server,
        server_from,
        key,
        replica_id,
        // A pull key is asked for when there is none for this replica, and
        // when an admin key is given for this run (the stored one may have
        // been revoked).
        key_request: matching.is_none() || admin,
        dash_matches: matching.is_some(),
        origin_of,
    })
}

fn print_dry(
    p: &Plan,
    printer: &Printer,
    subscribe: bool,
    refusal: Option<String>,
    form: &super::Form,
) {
    let dash = DashFile::path_for(&p.local);
    if printer.json {
        let v = serde_json::json!({
            "mode": if subscribe { "SUBSCRIBE" } else { "PULL" },
            "dry": true,
            "form": form.name, "why": form.why,
            "origin": format!("{}@{}", p.remote_path, p.version),
            "replica": p.local,
            "server": p.server,
            "keySource": p.key.source.describe(),
            "key": p.key.masked(),
            "writesDashFile": p.key_request,
            "dashFile": dash,
            "refused": refusal,
        });
        printer.json(&v);
        return;
    }
    let out = |line: &str| printer.stdout(line);
    if subscribe {
        out("mode:       SUBSCRIBE (pull, then pull every new version until Ctrl-C)");
    } else {
        out("mode:       PULL (a version on the server becomes the local database)");
    }
    out(&form.line(12));
    out(&format!("origin:     {}@{}", p.remote_path, p.version));
    out(&format!(
        "replica:    {} ({})",
        p.local.display(),
        if p.local_existed {
            "exists: only differing pages are written"
        } else {
            "will be created"
        }
    ));
    out(&format!("server:     {} ({})", p.server, p.server_from));
    out(&format!(
        "key:        {} from {}",
        p.key.masked(),
        p.key.source.describe()
    ));
    out("visibility: decided by the replica's owner");
    if let Some(why) = &refusal {
        out(&format!("refused:    {why}"));
    }
    super::print_dry_writes(printer, &dash, p.key_request);
}

/// Runs one pull (no subscribe).
pub async fn run(
    s: &Settings,
    remote: &RemoteRef,
    local: &Path,
    interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    let mut p = plan(s, remote, local)?;
    if s.dry {
        print_dry(
            &p,
            &s.printer,
            false,
            overwrite_refusal(s.force, &p),
            &s.form,
        );
        return Ok(ExitCode::SUCCESS);
    }
    match pull_once(s, &mut p, interrupt).await {
        Ok(r) => {
            r.print(&s.printer);
            Ok(ExitCode::SUCCESS)
        }
        Err(SyncError::Interrupted(e)) => {
            s.printer.stderr(&format!("sqlrsync: {e}"));
            Ok(super::interrupted_exit())
        }
        Err(e) => Err(e.into_anyhow()),
    }
}

/// Connects, links, verifies and keeps the issued keys. Used by PULL and
/// SUBSCRIBE (with `version` Latest after the first pull).
pub async fn pull_once(
    s: &Settings,
    p: &mut Plan,
    interrupt: watch::Receiver<bool>,
) -> Result<super::Report, SyncError> {
    let started = Instant::now();
    refuse_overwrite(s, p).await?;
    // A file this pull creates is ours until the pull succeeded: any
    // failure, at any step, removes it (and its -journal, -wal, -shm).
    let created = !p.local_existed;
    let result = pull_into(s, p, started, interrupt).await;
    match &result {
        Ok(_) => p.local_existed = true,
        Err(_) if created => remove_new(&p.local),
        Err(_) => {}
    }
    result
}

/// The body of [`pull_once`] once the pull may run: a delta when one is
/// offered and answered, else (or after a delta that did not make the
/// version) the helper's sync.
async fn pull_into(
    s: &Settings,
    p: &mut Plan,
    started: Instant,
    interrupt: watch::Receiver<bool>,
) -> Result<super::Report, SyncError> {
    let offer = pull_delta::offer(s, p);
    let conn = connect_pull(s, p, offer.as_ref(), interrupt.clone()).await?;
    let conn = match offer {
        Some(offer) if conn.delta => {
            match pull_delta::run(s, p, &offer, conn, interrupt.clone()).await {
                Ok(d) => return finish_delta(s, p, d, started),
                Err(DeltaFailed::Sync(e)) => return Err(e),
                Err(DeltaFailed::Fallback(why)) => {
                    s.printer.verbose(&format!(
                        "sqlrsync: the delta pull was not used ({why}); the local database is \
                         unchanged by it; pulling in full"
                    ));
                    page_cache::forget(&p.remote_path, &p.local);
                    connect_pull(s, p, None, interrupt.clone()).await?
                }
            }
        }
        _ => conn,
    };
    full_pull(s, p, conn, started, interrupt).await
}

/// A pull through the helper on `conn`.
async fn full_pull(
    s: &Settings,
    p: &mut Plan,
    conn: super::Connected,
    started: Instant,
    interrupt: watch::Receiver<bool>,
) -> Result<super::Report, SyncError> {
    let printer = s.printer;
    let (outcome, sink) = link_pull(s, p, conn, interrupt)
        .await
        .map_err(|e| SyncError::Other(e.into()))?;
    super::verdict(&outcome, false)?;
    let cfg = outcome.config().unwrap_or_default();
    let (verified, verify_seconds) = verify(p, &cfg, &sink, &printer)?;
    keep_answer(p, &cfg, &printer)?;
    if verified == Some(true) {
        keep_page_cache(p, &cfg).await;
    } else {
        page_cache::forget(&p.remote_path, &p.local);
    }
    for l in &outcome.helper_stderr {
        printer.verbose(&format!("sqlite3_rsync: {l}"));
    }
    note_newer(s, p, outcome.newer_version);
    let mut report = report_of(p, &cfg, &outcome.stats, started);
    report.verified = verified;
    report.verify_seconds = verify_seconds;
    report.messages = outcome.messages.clone();
    report.messages_not_shown = outcome.messages_not_shown;
    Ok(report)
}

/// A delta pull that committed: kept like a full pull's result, with the
/// page digests it read back as the next page cache entry.
fn finish_delta(
    s: &Settings,
    p: &mut Plan,
    d: pull_delta::Delta,
    started: Instant,
) -> Result<super::Report, SyncError> {
    let cfg = d.config;
    keep_answer(p, &cfg, &s.printer)?;
    pull_delta::keep_cache(p, &cfg, d.applied.page_size, d.applied.digests);
    s.printer.verbose(&format!(
        "verified {} against the server's versionXxh3 in {:.2}s (delta pull)",
        p.local.display(),
        d.applied.verify_seconds
    ));
    note_newer(s, p, d.newer_version);
    let mut report = report_of(p, &cfg, &d.stats, started);
    report.delta = true;
    report.verified = Some(true);
    report.verify_seconds = d.applied.verify_seconds;
    report.messages = d.messages.kept;
    report.messages_not_shown = d.messages.not_shown;
    Ok(report)
}

/// Keeps what the server's CONFIG gave: the replica id, the pull key (or
/// the `--pullKey` that just worked), and the match record.
fn keep_answer(
    p: &mut Plan,
    cfg: &crate::wire::ServerConfig,
    printer: &Printer,
) -> Result<(), SyncError> {
    if cfg.replica_id.is_some() {
        p.replica_id = cfg.replica_id.clone();
    }
    if let Some(pull) = &cfg.new_pull_key {
        keep_pull_key(p, pull, printer)?;
    } else if let Some(given) = given_pull_key(p) {
        // Servers mint pull keys for admin keys only: a Replica Pull key
        // the user gave that just worked is the one to keep, as a push
        // keeps a --pushKey.
        keep_pull_key(p, &given, printer)?;
    }
    record_match(p, cfg, printer);
    Ok(())
}

/// Only news when the latest was asked for: it moved on during the pull.
fn note_newer(s: &Settings, p: &Plan, newer_version: bool) {
    if newer_version && p.version == VersionRef::Latest && !s.subscribe {
        s.printer
            .note("sqlrsync: a newer version was committed during this pull; pull again to get it");
    }
}

/// The report of a pull that succeeded, before its verification fields.
fn report_of(
    p: &Plan,
    cfg: &crate::wire::ServerConfig,
    stats: &crate::link::Stats,
    started: Instant,
) -> super::Report {
    let mut report = super::Report::new("PULL", stats, started);
    report.local = p.local.display().to_string();
    report.remote = format!("{}@{}", p.remote_path, p.version);
    report.server = p.server.clone();
    report.version = cfg.committed_version_id.clone();
    report
}

/// After a verified full pull from our server (it sends versionXxh3 and
/// the replica id): the page digests of the result, read once, as the
/// page cache entry, kept only when they make the versionXxh3.
async fn keep_page_cache(p: &Plan, cfg: &crate::wire::ServerConfig) {
    if cfg.version_xxh3.is_none() || cfg.replica_id.is_none() {
        page_cache::forget(&p.remote_path, &p.local);
        return;
    }
    let local = p.local.clone();
    let read = tokio::task::spawn_blocking(move || sqlite::pages::snapshot(&local, &[], 0, 0));
    match read.await {
        Ok(Ok(snap)) => pull_delta::keep_cache(p, cfg, snap.page_size, snap.digests),
        _ => page_cache::forget(&p.remote_path, &p.local),
    }
}

/// Refuses (unless `--force`) a pull that would lose what the local
/// database holds (see [`guard`]). Hashing, when needed, runs off the
/// async threads.
async fn refuse_overwrite(s: &Settings, p: &Plan) -> Result<(), SyncError> {
    let (force, p) = (s.force, p.clone());
    let refusal = tokio::task::spawn_blocking(move || overwrite_refusal(force, &p))
        .await
        .map_err(|e| SyncError::Other(anyhow::anyhow!("the overwrite check failed: {e}")))?;
    match refusal {
        Some(why) => Err(SyncError::Conflict(anyhow::anyhow!("{why}"))),
        None => Ok(()),
    }
}

/// Why this pull must not run without `--force`, if it must not (blocking:
/// it may hash the local database).
fn overwrite_refusal(force: bool, p: &Plan) -> Option<String> {
    if force || !matches!(sqlite::inspect(&p.local), Ok(FileState::Database(_))) {
        return None;
    }
    let facts = PullFacts {
        local: p.local.clone(),
        asked: format!("{}@{}", p.remote_path, p.version),
        server: p.server.clone(),
        origin_of: p.origin_of.clone(),
        record: matched::load(&p.remote_path, &p.local),
        dash_matches: p.dash_matches,
    };
    guard::pull_refusal(
        &facts,
        || super::unchanged::fingerprint(&p.local),
        || sqlite::version_hash(&p.local).ok(),
    )
}

/// Remembers the version the local database now is, so the next pull can
/// prove it would lose nothing, and the next push that nobody pushed in
/// between (see [`guard`]). Without the server's versionHash the file is
/// hashed here. A failure only weakens the next check, so it is a note.
fn record_match(p: &Plan, cfg: &crate::wire::ServerConfig, printer: &Printer) {
    let mut m = Matched::now(&p.server, &p.remote_path, &p.local, Role::Pull);
    m.replica_id = cfg.replica_id.clone();
    m.version = cfg.committed_version_id.clone();
    m.version_hash = cfg
        .version_hash
        .clone()
        .or_else(|| sqlite::version_hash(&p.local).ok());
    if let Err(e) = matched::save(&m) {
        printer.note(&format!(
            "sqlrsync: warning: cannot record the version pulled ({e:#}); the next pull over \
             this file will ask for --force"
        ));
    }
}

/// The pull's upgrade headers: the common ones, the version asked for (a
/// point in time in our header), the local path with a KEYREQUEST, and our
/// offers.
fn pull_headers(
    s: &Settings,
    p: &Plan,
    client_id: &str,
    delta: Option<&Offer>,
) -> Vec<(&'static str, String)> {
    let mut h = super::base_headers(p.key.value.as_deref(), client_id, p.replica_id.as_deref());
    h.push((headers::REPLICA_VERSION, p.version.header_value()));
    if let Some(at) = p.version.at_header() {
        h.push((headers::VERSION_AT, at));
    }
    if p.key_request {
        // So that a pull key the server mints for this copy replaces
        // only the one it minted for this copy before (SERVER.md, Pull).
        h.push((
            headers::LOCAL_ABSOLUTE_PATH,
            p.local.to_string_lossy().into_owned(),
        ));
    }
    super::offer_frames(s, &mut h);
    if let Some(offer) = delta {
        h.extend(offer.headers());
    }
    h
}

/// Opens the pull's websocket. An anonymous pull refused with 401/403 on a
/// terminal asks for a key once and tries again; without a terminal a 401
/// is [`SyncError::NoKey`], with the hint of how to pass one.
async fn connect_pull(
    s: &Settings,
    p: &mut Plan,
    delta: Option<&Offer>,
    interrupt: watch::Receiver<bool>,
) -> Result<super::Connected, SyncError> {
    let printer = s.printer;
    let client_id = super::client_id(s)?;
    let url = super::endpoint_url(&p.server, "pull", &p.remote_path);
    let headers_for = |p: &Plan| pull_headers(s, p, &client_id, delta);
    printer.verbose(&format!(
        "PULL {url} @{} into {} with key {} from {}",
        p.version,
        p.local.display(),
        p.key.masked(),
        p.key.source.describe()
    ));
    let mut stop = interrupt;
    let first_headers = headers_for(p);
    let connected = tokio::select! {
        r = super::connect(&url, &first_headers, s.idle_timeout) => r,
        _ = super::wait_true(&mut stop) => {
            return Err(SyncError::Interrupted(anyhow::anyhow!("interrupted; the local database is unchanged")));
        }
    };
    let anonymous = p.key.source == KeySource::Anonymous;
    let conn = match connected {
        Ok(c) => c,
        Err(
            e @ ConnectError::Http {
                status: 401 | 403, ..
            },
        ) if anonymous && s.keys.env.tty => {
            // A private replica: ask for a key once, then try again.
            printer.note(&format!("{e:#}"));
            p.key = Key {
                value: Some(keys::prompt(
                    p.remote_path.split('/').next().unwrap_or("?"),
                )?),
                source: KeySource::Prompt,
            };
            super::connect(&url, &headers_for(p), s.idle_timeout).await?
        }
        Err(refused @ ConnectError::Http { status: 401, .. }) if anonymous => {
            return Err(SyncError::NoKey { refused });
        }
        Err(
            e @ ConnectError::Http {
                status: 401 | 403, ..
            },
        ) if p.key.source.is_stored() => {
            return Err(SyncError::Other(anyhow::anyhow!(
                "{e}: that was the Replica Pull key in {} (revoked or replaced?); pull once with \
                 --pullKey KEY or --adminKey KEY, and the key that works (or the one the server \
                 then issues) replaces the stored one",
                DashFile::path_for(&p.local).display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    require_version_at(p, conn).await
}

/// A point-in-time pull goes on only when the server answered the offer
/// (our server; any other serves the latest, which is not what was asked
/// for): otherwise the socket is closed before the helper runs or the
/// local database is touched, and the pull fails with one line.
async fn require_version_at(
    p: &Plan,
    mut conn: super::Connected,
) -> Result<super::Connected, SyncError> {
    if !matches!(p.version, VersionRef::At(_)) || conn.version_at.is_some() {
        return Ok(conn);
    }
    let _ = futures_util::SinkExt::close(&mut conn.ws).await;
    Err(SyncError::Unsupported(anyhow::anyhow!(
        "{} does not offer point-in-time versions (@{}); that is an extension of \
         sqlrsync-server: pull a version by number (@N) instead; {} is unchanged",
        p.server,
        p.version,
        p.local.display()
    )))
}

/// Checks the pulled copy against the server's versionHash, unless the
/// commit gate already did: (verified, seconds spent hashing).
fn verify(
    p: &Plan,
    cfg: &crate::wire::ServerConfig,
    sink: &PullSink,
    printer: &Printer,
) -> Result<(Option<bool>, f64), SyncError> {
    let mut verify_seconds = 0.0;
    let verified = match &cfg.version_hash {
        // Checked before the commit was let through (see commit_gate).
        Some(_) if sink.pre_verified => Some(true),
        Some(want) => {
            let hashing = Instant::now();
            // With the digests taken as pages arrived, of the hash they are
            // of (versionXxh3 when the server sent one); else SHA-256 of
            // the file read back.
            let (got, want) = match (&sink.received, &cfg.version_xxh3) {
                (Some(received), Some(xxh3)) if received.kind() == HashKind::Xxh3 => {
                    (sqlite::version_hash_with(&p.local, received), xxh3)
                }
                (Some(received), _) if received.kind() == HashKind::Sha256 => {
                    (sqlite::version_hash_with(&p.local, received), want)
                }
                _ => (sqlite::version_hash(&p.local), want),
            };
            let got =
                got.with_context(|| format!("cannot hash {} to verify it", p.local.display()))?;
            if !got.eq_ignore_ascii_case(want) {
                return Err(SyncError::Verification(anyhow::anyhow!(
                    "VERIFICATION FAILED: {} does not match the server's version (hash {} expected, {} found); do not trust this copy",
                    p.local.display(),
                    short(want),
                    short(&got)
                )));
            }
            verify_seconds = hashing.elapsed().as_secs_f64();
            printer.verbose(&format!(
                "verified {} against the server's versionHash in {:.2}s",
                p.local.display(),
                hashing.elapsed().as_secs_f64()
            ));
            Some(true)
        }
        None => None,
    };
    Ok((verified, verify_seconds))
}

/// The `--pullKey` this pull used, when the `-sqlrsync` file holds no key
/// or another one (revoked, since the one given worked).
fn given_pull_key(p: &Plan) -> Option<String> {
    (p.key.source == KeySource::Flag("--pullKey") && p.key.value != p.dash_key)
        .then(|| p.key.value.clone())
        .flatten()
}

/// Keeps the pull key the server issued in the `-sqlrsync` file; later
/// pulls of a subscription use it.
fn keep_pull_key(p: &mut Plan, pull: &str, printer: &Printer) -> Result<(), SyncError> {
    if !crate::wire::is_key_shaped(pull) {
        return Err(SyncError::Other(anyhow::anyhow!(
            "the server issued a pull key that is not a key; it was not stored"
        )));
    }
    let dash = DashFile {
        remote_path: p.remote_path.clone(),
        replica_id: p.replica_id.clone(),
        pull_key: Some(pull.to_string()),
        server: Some(p.server.clone()),
    };
    let at = dash.save_for(&p.local)?;
    printer.verbose(&format!("wrote {}", at.display()));
    // Later pulls of a subscription use the file's key, like a new run.
    if !p.key.source.is_admin() || p.key.value.is_none() {
        p.key = Key {
            value: Some(pull.to_string()),
            source: KeySource::DashFile(DashFile::path_for(&p.local)),
        };
    }
    p.key_request = false;
    p.dash_matches = true;
    p.dash_key = Some(pull.to_string());
    Ok(())
}

/// Runs the REPLICA helper over the connection with the pull's sink.
async fn link_pull(
    s: &Settings,
    p: &Plan,
    conn: super::Connected,
    interrupt: watch::Receiver<bool>,
) -> Result<(Linked, PullSink), crate::link::DriveError> {
    let helper = HelperCommand::replica(&p.remote_path, &p.local)
        .args(super::protocol_args(s))
        .own_process_group();
    let mut after = vec![ClientControl::Config.encode()];
    if p.key_request {
        after.push(ClientControl::KeyRequest.encode());
    }
    let spec = DriveSpec {
        helper,
        controls: Controls {
            after_first: after,
            ..Default::default()
        },
        framing: super::framing_for(&conn),
        want_config: true,
        idle_timeout: s.idle_timeout,
        live_stderr: s.printer.verbose >= 2,
    };
    let opts = PullOptions {
        // An existing replica is checked before the commit (commit_gate);
        // a new file after it, helped by these digests.
        digest_received: !p.local_existed,
        write_behind: Some(p.local.clone()),
        pending: Some(PendingNote {
            server: p.server.clone(),
            remote_path: p.remote_path.clone(),
            local: p.local.clone(),
        }),
        gate: Some(GateConfig {
            replica: p.local.clone(),
            existed: p.local_existed,
            wal: matches!(
                sqlite::inspect(&p.local),
                Ok(FileState::Database(sqlite::Header { wal: true, .. }))
            ),
        }),
    };
    let printer = s.printer;
    let (ctx, progress) = super::observer(printer);
    let stats = ctx.stats.clone();
    let res = drive(
        conn.ws,
        spec,
        ctx,
        |feed| PullSink::new(feed, opts),
        interrupt,
    )
    .await;
    progress.finish();
    super::say_where_helper_ran(&printer);
    let (outcome, sink) = res?;
    Ok((Linked { outcome, stats }, sink))
}

/// A link's outcome with the byte counts of its connection.
pub struct Linked {
    pub outcome: crate::link::Outcome,
    pub stats: std::sync::Arc<crate::link::Stats>,
}

impl std::ops::Deref for Linked {
    type Target = crate::link::Outcome;
    fn deref(&self) -> &Self::Target {
        &self.outcome
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

/// A pull into a new file that failed leaves no file behind.
fn remove_new(local: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut s = local.as_os_str().to_os_string();
        s.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
}

/// For `--dry` in subscribe mode.
pub fn dry(s: &Settings, remote: &RemoteRef, local: &Path) -> anyhow::Result<()> {
    let p = plan(s, remote, local)?;
    print_dry(
        &p,
        &s.printer,
        true,
        overwrite_refusal(s.force, &p),
        &s.form,
    );
    Ok(())
}
