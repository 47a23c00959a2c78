//! The operator commands that run next to a live server to keep its data
//! safe and watched: `backup`, `restore` and `replica expect`, with what
//! they print. Kept out of [`super::cli`], which parses and dispatches.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::store::restore::RestoreError;
use super::store::{Meta, Store, backup, restore};

/// `backup --data-dir DIR DEST`: one line saying what was copied.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<ExitCode> {
    super::cli::raise_open_file_limit();
    let r = backup::backup(data_dir, dest)?;
    println!(
        "backed up {} replicas, {} versions, {} bytes to {} in {:.2} s (snapshot {}{})",
        r.replicas,
        r.versions,
        r.bytes,
        r.dest.display(),
        r.elapsed.as_secs_f64(),
        r.snapshot,
        match r.attempts {
            1 => String::new(),
            n => format!("; {n} snapshots, the store moved under the first"),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `restore BACKUP --data-dir NEWDIR`: the check's result, and every
/// problem on its own `DAMAGE:` line when it fails.
pub fn restore(backup: &Path, target: &Path) -> Result<ExitCode> {
    match restore::restore(backup, target) {
        Ok(r) => {
            println!(
                "restored {} bytes into {}; checked {} stored pages, {} replicas, {} versions: no damage; `sqlrsync-server serve --data-dir {}` will start",
                r.bytes,
                target.display(),
                r.checked.pages,
                r.checked.replicas,
                r.checked.versions,
                target.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if let Some(RestoreError::Failed { problems, .. }) = e.downcast_ref() {
                for p in problems {
                    println!("DAMAGE: {p}");
                }
            }
            Err(e)
        }
    }
}

/// `replica expect NS/PATH --every D | --off`.
pub fn expect(path: &str, every: Option<Duration>, data_dir: &Path) -> Result<ExitCode> {
    if every.is_some_and(|d| d.is_zero()) {
        anyhow::bail!("--every needs an interval above zero (use --off to remove it)");
    }
    let meta = Store::open_meta(data_dir)?;
    let r = meta
        .replica(path)?
        .with_context(|| format!("no replica {path}"))?;
    meta.set_expectation(r.id, every)?;
    match every {
        Some(d) => println!(
            "{path} is expected to be pushed every {}; a running server notices within its check period",
            shown(d)
        ),
        None => println!("{path} has no expected push interval"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The `EXPECTED` column of `replica list` for each replica: its interval
/// (`1h`, `1h overdue`) or `-`.
pub fn expected_column(meta: &Meta) -> Result<impl Fn(i64) -> String> {
    let all = meta.expectations()?;
    Ok(move |id: i64| {
        all.iter()
            .find(|e| e.replica == id)
            .map_or("-".to_string(), |e| {
                let mut s = shown(e.every);
                if e.overdue_sent {
                    s.push_str(" overdue");
                }
                s
            })
    })
}

/// A duration as the flags take it (`1h`, `90s`, `200ms`).
pub fn shown(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}
