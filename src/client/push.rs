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
use super::keys::{self, Candidates, Key, KeySource};
use super::unchanged;
use super::{RemoteRef, Settings};
use crate::helper::HelperCommand;
use crate::link::{Controls, DriveSpec, drive};
use crate::sqlite::{self, FileState};
use crate::ui::Printer;
use crate::wire::{ClientControl, Visibility, headers};

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
    /// No matching `-sqlrsync` file: ask for keys and write one.
    pub key_request: bool,
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
    let entry = secrets.find(&local).filter(|e| {
        remote.is_none_or(|r| r.path == e.remote_path)
            && s.server
                .flag
                .as_deref()
                .is_none_or(|f| super::same_server(f, &e.server))
    });
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
            "--{} only applies to the first push; {} already exists on {server} (change its visibility on the server)",
            visibility.as_str(),
            entry
                .map(|e| e.remote_path.as_str())
                .unwrap_or("this replica")
        );
    }
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
    let key = match key {
        Err(_) if s.dry => keys::Key {
            value: None,
            source: KeySource::Missing,
        },
        k => k?,
    };
    let replica_id = s.keys.replica_id.clone().or_else(|| {
        entry
            .map(|e| e.replica_id.clone())
            .filter(|s| !s.is_empty())
    });
    let dash = DashFile::load_for(&local).ok().flatten();
    let key_request =
        !dash.is_some_and(|d| !remote_path.is_empty() && d.remote_path == remote_path);
    Ok(Plan {
        local,
        remote_path,
        server,
        server_from,
        key,
        replica_id,
        first_push,
        visibility,
        key_request,
        message: s.push.message.clone(),
    })
}

/// `--dry`: what would happen, keys masked; nothing is written or sent.
fn print_dry(p: &Plan, printer: &Printer) {
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
            "origin": p.local,
            "replica": p.remote_path,
            "server": p.server,
            "keySource": p.key.source.describe(),
            "key": p.key.masked(),
            "firstPush": p.first_push,
            "visibility": if p.first_push { Some(p.visibility.as_str()) } else { None },
            "writesDashFile": p.key_request,
            "dashFile": dash,
        });
        printer.json(&v);
        return;
    }
    let out = |line: &str| printer.stdout(line);
    out("mode:       PUSH (this database becomes a new version on the server)");
    out(&format!("origin:     {}", p.local.display()));
    out(&format!("replica:    {remote}"));
    out(&format!("server:     {} ({})", p.server, p.server_from));
    out(&format!(
        "key:        {} from {}",
        p.key.masked(),
        p.key.source.describe()
    ));
    if p.first_push {
        out(&format!(
            "visibility: {} (first push from here)",
            p.visibility.as_str()
        ));
    } else {
        out("visibility: unchanged (not the first push)");
    }
    if let Some(m) = &p.message {
        out(&format!("message:    {m}"));
    }
    super::print_dry_writes(printer, &dash, p.key_request);
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
        print_dry(&p, &printer);
        return Ok(ExitCode::SUCCESS);
    }
    if p.key.source == KeySource::Prompt {
        let ns = p
            .remote_path
            .split('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("your namespace");
        p.key.value = Some(keys::prompt(ns)?);
    }
    let hdrs = push_headers(s, &p)?;
    let url = super::endpoint_url(&p.server, "push", &p.remote_path);
    printer.verbose(&format!(
        "PUSH {} to {url} with key {} from {}",
        p.local.display(),
        p.key.masked(),
        p.key.source.describe()
    ));
    let started = Instant::now();
    // A database unchanged since its last push from here is worth checking
    // before syncing (see unchanged.rs); the hash runs while we connect.
    let fingerprint = unchanged::fingerprint(&p.local);
    let probe_hash = fingerprint
        .as_deref()
        .filter(|_| !p.first_push && !p.key_request)
        .and_then(|f| unchanged::matching_record(&p.server, &p.local, f))
        .map(|_| {
            let db = p.local.clone();
            tokio::task::spawn_blocking(move || sqlite::version_hash(&db))
        });
    let mut stop = interrupt.clone();
    let mut conn = tokio::select! {
        c = super::connect(&url, &hdrs, s.idle_timeout) => c?,
        _ = super::wait_true(&mut stop) => {
            printer.stderr("sqlrsync: interrupted; nothing was sent");
            return Ok(super::interrupted_exit());
        }
    };

    if let Some(local_hash) = probe_hash
        && let unchanged::Probe::Unchanged { config, wire_bytes } =
            unchanged::probe(&mut conn.ws, local_hash).await?
    {
        unchanged_report(
            &p,
            config,
            wire_bytes,
            fingerprint.as_deref(),
            started,
            &printer,
        );
        return Ok(ExitCode::SUCCESS);
    }

    let (outcome, stats) = link_push(s, &p, conn, interrupt).await?;
    let interrupted = outcome.interrupted;
    if let Err(e) = super::verdict(&outcome, true) {
        if interrupted {
            printer.stderr(&format!("sqlrsync: {e}"));
            return Ok(super::interrupted_exit());
        }
        return Err(e.into());
    }
    let report = finish(s, &p, &outcome, &stats, started)?;
    report.print(&printer);
    Ok(ExitCode::SUCCESS)
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
    fingerprint: Option<&str>,
    started: Instant,
    printer: &Printer,
) {
    let version = config.committed_version_id.clone();
    printer.note(&format!(
        "no changes: version {} on the server already holds this database; nothing sent",
        version.as_deref().unwrap_or("?")
    ));
    if let (Some(f), Some(h)) = (fingerprint, &config.version_hash) {
        unchanged::save_record(
            &p.server,
            &p.local,
            &unchanged::PushRecord {
                fingerprint: f.to_string(),
                version_hash: h.clone(),
            },
        );
    }
    let stats = crate::link::Stats::default();
    let mut report = super::Report::new("PUSH", &stats, started);
    report.local = p.local.display().to_string();
    report.remote = config
        .replica_path
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or(p.remote_path.clone());
    report.server = p.server.clone();
    report.version = version;
    report.wire_received = wire_bytes;
    report.unchanged = true;
    report.print(printer);
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
    if let (Some(f), Some(h)) = (unchanged::fingerprint(&p.local), &cfg.version_hash) {
        unchanged::save_record(
            &p.server,
            &p.local,
            &unchanged::PushRecord {
                fingerprint: f,
                version_hash: h.clone(),
            },
        );
    }

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
        let existing = secrets.find(&p.local).cloned();
        let push_key = match (&cfg.new_push_key, &existing) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(e))
                if !e.push_key.is_empty() && matches!(p.key.source, KeySource::Secrets(_)) =>
            {
                Some(e.push_key.clone())
            }
            // A Replica Push key the user gave that just worked: keep it, so
            // the next push (a cron job) needs nothing on the command line.
            (None, _) if p.key.source == KeySource::Flag("--pushKey") => p.key.value.clone(),
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
