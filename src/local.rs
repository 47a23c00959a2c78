//! LOCAL mode: `sqlrsync ORIGIN REPLICA` with both databases on this machine.
//!
//! Bad input is refused here, before the helper opens anything, with one
//! line. Then the process becomes the helper (`exec`), so the sync is exactly
//! sqlite3_rsync's, with its exit status, and Ctrl-C or SIGTERM reach it
//! directly. Between two local files bytes cost nothing, so the default is
//! protocol 1: every page hashed once on each side in one pass, which scripts/
//! bench-local shows beating protocol 2's rounds of group hashes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};

use crate::client::{Settings, SyncError};
use crate::sqlite::{self, FileState};
use crate::ui::{Printer, human_bytes};

/// Protocol used for LOCAL syncs unless `--protocol` says otherwise
/// (applied when the settings are resolved).
pub const LOCAL_DEFAULT_PROTOCOL: u8 = 1;

/// What LOCAL mode found out before syncing.
#[derive(Debug)]
pub struct Plan {
    /// ORIGIN made absolute: the helper runs a second copy of itself, and
    /// `--dry` promises absolute paths.
    pub origin: PathBuf,
    /// REPLICA made absolute, for the same reasons.
    pub replica: PathBuf,
    /// What SQLite says about ORIGIN (None when it could not look, e.g.
    /// locked): page size and count for `--dry`.
    pub origin_facts: Option<sqlite::Facts>,
    /// ORIGIN's header: the page size to compare with REPLICA's, and the
    /// `--dry` figures when SQLite could not look.
    pub origin_header: sqlite::Header,
    /// Whether REPLICA exists, so `--dry` can say it will be created.
    pub replica_state: FileState,
    /// The sqlite3_rsync protocol to run (from the settings).
    pub protocol: u8,
}

/// Checks both sides; every refusal is one line and nothing is touched.
pub fn plan(origin: &Path, replica: &Path, protocol: u8) -> anyhow::Result<Plan> {
    let origin_given = std::path::absolute(origin).context("cannot resolve ORIGIN")?;
    let replica_given = std::path::absolute(replica).context("cannot resolve REPLICA")?;
    // Symbolic links are followed: the sync reads and writes the files they
    // name (a loop is reported by `inspect` below, with the path given).
    let origin = sqlite::resolve_links(&origin_given).unwrap_or_else(|_| origin_given.clone());
    let replica = sqlite::resolve_links(&replica_given).unwrap_or_else(|_| replica_given.clone());
    let origin_note = sqlite::link_note(&origin_given, &origin);
    let replica_note = sqlite::link_note(&replica_given, &replica);

    let origin_header = match sqlite::inspect(&origin).map_err(|e| anyhow!(e.describe("ORIGIN")))? {
        FileState::Missing => bail!("ORIGIN {} does not exist{origin_note}", origin.display()),
        FileState::Empty => bail!(
            "ORIGIN {} is empty (0 bytes), not an SQLite database",
            origin.display()
        ),
        FileState::Database(h) => h,
    };
    let origin_facts = sqlite::facts(&origin).map_err(|e| anyhow!(e.describe("ORIGIN")))?;

    let dir = sqlite::parent_dir(&replica);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(
            "REPLICA's directory {} is not a directory{replica_note}",
            dir.display()
        ),
        Err(_) => bail!(
            "REPLICA's directory {} does not exist{replica_note}",
            dir.display()
        ),
    }
    let replica_state = sqlite::inspect(&replica).map_err(|e| match e {
        sqlite::DbFileError::NotADatabase(p) => anyhow!(
            "REPLICA {} exists and is not an SQLite database; refusing to overwrite it",
            p.display()
        ),
        e => anyhow!(e.describe("REPLICA")),
    })?;
    if replica_state != FileState::Missing && sqlite::same_file(&origin, &replica) {
        bail!(
            "ORIGIN and REPLICA are the same file ({})",
            origin.display()
        );
    }
    if let FileState::Database(h) = &replica_state {
        sqlite::facts(&replica).map_err(|e| anyhow!(e.describe("REPLICA")))?;
        if h.page_size != origin_header.page_size {
            bail!(
                "page size mismatch: ORIGIN has {}-byte pages, REPLICA {} has {}-byte pages; \
                 remove REPLICA to make a fresh copy",
                origin_header.page_size,
                replica.display(),
                h.page_size
            );
        }
    }
    check_creatable(&dir)?;
    if replica_state != FileState::Missing && !sqlite::writable(&replica) {
        bail!(
            "REPLICA {} is read-only: cannot write to it ({})",
            replica.display(),
            sqlite::io_reason(&std::io::Error::last_os_error())
        );
    }
    Ok(Plan {
        origin,
        replica,
        origin_facts,
        origin_header,
        replica_state,
        protocol,
    })
}

/// The replica side needs to write the file and, for its journal or WAL,
/// the directory.
fn check_creatable(dir: &Path) -> anyhow::Result<()> {
    if let Err(e) = sqlite::can_create_in(dir) {
        // procfs and the like answer "no such file" to a create in a
        // directory that plainly exists; say what it means.
        let reason = match e.raw_os_error() {
            Some(libc::ENOENT) => "its file system takes no new files".to_string(),
            _ => sqlite::io_reason(&e),
        };
        bail!(
            "REPLICA's directory {} is a read-only location: cannot create files there ({reason})",
            dir.display()
        );
    }
    Ok(())
}

/// Runs LOCAL mode: plan, then `--dry` report or become the helper.
pub fn run(s: &Settings, origin: &Path, replica: &Path) -> anyhow::Result<ExitCode> {
    let plan = plan(origin, replica, s.protocol)?;
    let printer = &s.printer;
    if s.dry {
        print_dry(&plan, printer, &s.form);
        return Ok(ExitCode::SUCCESS);
    }
    if s.subscribe {
        return follow(s, plan);
    }
    // Nothing to do is the commonest case of a repeated sync; finding it
    // by comparing bytes is several times cheaper than hashing every page
    // on both sides (scripts/bench-local). --wal-only keeps the helper's
    // own check of the journal modes.
    if !s.wal_only
        && matches!(plan.replica_state, FileState::Database(_))
        && sqlite::same_pages(&plan.origin, &plan.replica)
    {
        // On stdout, as the helper's own -v lines would be.
        if printer.verbose > 0 {
            printer.stdout("REPLICA already holds every page of ORIGIN: nothing to send");
        }
        return Ok(ExitCode::SUCCESS);
    }
    Ok(crate::dropin::exec_helper(&helper_args(s, &plan), printer))
}

/// The helper's arguments for a LOCAL sync of `plan`.
fn helper_args(s: &Settings, plan: &Plan) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        plan.origin.clone().into(),
        plan.replica.clone().into(),
        "--protocol".into(),
        plan.protocol.to_string().into(),
    ];
    if s.printer.verbose > 0 {
        args.push(format!("-{}", "v".repeat(s.printer.verbose as usize)).into());
    }
    if s.wal_only {
        args.push("--wal-only".into());
    }
    args
}

/// `--watch`: syncs now and after every change of ORIGIN (see
/// [`crate::client::follow`]), the helper spawned (not exec'd) for each sync.
fn follow(s: &Settings, plan: Plan) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let interrupt = crate::client::interrupt_watch();
        let (plan, args) = (&plan, helper_args(s, &plan));
        let once = || {
            let (args, stop) = (args.clone(), interrupt.clone());
            async move { sync_once(s, plan, &args, stop).await }
        };
        crate::client::follow::follow(&plan.origin, s.watch, &s.printer, interrupt.clone(), once)
            .await
    })
}

/// One LOCAL sync by a spawned helper, with its one-line report (or JSON
/// object). Ctrl-C stops the helper, whose replica side then commits
/// nothing: the replica stays whole.
async fn sync_once(
    s: &Settings,
    plan: &Plan,
    args: &[OsString],
    mut interrupt: tokio::sync::watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let started = std::time::Instant::now();
    let same = {
        let (o, r) = (plan.origin.clone(), plan.replica.clone());
        let exists = matches!(sqlite::inspect(&r), Ok(FileState::Database(_)));
        !s.wal_only
            && exists
            && tokio::task::spawn_blocking(move || sqlite::same_pages(&o, &r))
                .await
                .unwrap_or(false)
    };
    if !same {
        let mut child = spawn_helper(args)?;
        let status = tokio::select! {
            st = child.wait() => st.context("the helper was lost")?,
            _ = crate::link::wait_true(&mut interrupt) => {
                stop_child(&mut child).await;
                return Err(SyncError::Interrupted(anyhow!("interrupted; the replica is unchanged")));
            }
        };
        if !status.success() {
            return Err(SyncError::Other(anyhow!(
                "the LOCAL sync of {} failed ({status}); the replica is unchanged",
                plan.origin.display()
            )));
        }
    }
    report(s, plan, same, started.elapsed().as_secs_f64());
    Ok(())
}

/// The helper of one LOCAL sync, from the first place the OS lets it run
/// (as `HelperCommand::spawn` does for the remote modes).
fn spawn_helper(args: &[OsString]) -> anyhow::Result<tokio::process::Child> {
    loop {
        let h = crate::helper::prepared()?;
        h.keep_across_exec();
        match tokio::process::Command::new(&h.path)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Err(e) if crate::helper::refused(&h, &e) => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot run {}", h.path.display())),
            Ok(child) => return Ok(child),
        }
    }
}

/// SIGTERM to the helper, then wait for it (SIGKILL after 5 s).
async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// The line (or JSON object) of one LOCAL sync of a watch.
fn report(s: &Settings, plan: &Plan, unchanged: bool, seconds: f64) {
    let printer = &s.printer;
    if printer.json {
        printer.json(&serde_json::json!({
            "mode": "LOCAL",
            "origin": plan.origin,
            "replica": plan.replica,
            "unchanged": unchanged,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }));
        return;
    }
    let what = if unchanged {
        "unchanged, nothing sent"
    } else {
        "synced"
    };
    printer.note(&format!(
        "LOCAL {} -> {}: {what}, {seconds:.1}s",
        plan.origin.display(),
        plan.replica.display()
    ));
}

fn print_dry(plan: &Plan, printer: &Printer, form: &crate::client::Form) {
    let (pages, page_size, journal) = match &plan.origin_facts {
        Some(f) => (f.page_count, f.page_size, f.journal_mode.clone()),
        None => (
            plan.origin_header.page_count.unwrap_or(0),
            plan.origin_header.page_size,
            if plan.origin_header.wal {
                "wal".into()
            } else {
                "unknown".into()
            },
        ),
    };
    let creates = matches!(plan.replica_state, FileState::Missing | FileState::Empty);
    if printer.json {
        let v = serde_json::json!({
            "mode": "LOCAL",
            "dry": true,
            "form": form.name,
            "why": form.why,
            "origin": plan.origin,
            "replica": plan.replica,
            "pageSize": page_size,
            "pageCount": pages,
            "journalMode": journal,
            "replicaCreated": creates,
            "protocol": plan.protocol,
        });
        printer.json(&v);
        return;
    }
    printer.stdout("mode:      LOCAL (both databases on this machine, no network)");
    printer.stdout(&form.line(11));
    printer.stdout(&format!("origin:    {}", plan.origin.display()));
    printer.stdout(&format!(
        "           {pages} pages of {page_size} bytes ({}), journal mode {journal}",
        human_bytes(pages as u64 * page_size as u64)
    ));
    printer.stdout(&format!("replica:   {}", plan.replica.display()));
    printer.stdout(&format!(
        "           {}",
        if creates {
            "does not exist yet: it will be created".to_string()
        } else {
            "exists: only pages that differ will be written".to_string()
        }
    ));
    printer.stdout(&format!("protocol:  {}", plan.protocol));
    if creates {
        printer.stdout(&format!(
            "would:     copy all {pages} pages of ORIGIN, as one consistent snapshot, into REPLICA"
        ));
    } else {
        printer.stdout(
            "would:     make REPLICA a consistent snapshot of ORIGIN, copying only the pages that differ",
        );
    }
    printer.stdout("dry run:   nothing was written");
}
