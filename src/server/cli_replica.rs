//! `sqlrsync-server replica show` and `replica rename`: one replica looked
//! at whole, and moved to another path of its namespace.
//!
//! Both only touch the metadata, so they run next to a live server (SQLite
//! serialises them with it). A rename is one transaction on the replica's
//! row: its id and uid stay, so its files (`replicas/<uid>/`), versions and
//! keys stay with it. The server looks replicas up by path at every
//! request and keeps its live state by row id, so the next request finds
//! the new path, and the old one is as absent as a path never pushed.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use super::cli::DataDirArg;
use super::keys;
use super::names;
use super::store::meta::Renamed;
use super::store::{Meta, ReplicaRow, Store};

/// The replica at `path`, or one line saying there is none.
fn replica(meta: &Meta, path: &str) -> Result<ReplicaRow> {
    meta.replica(path)?
        .with_context(|| format!("no replica {path}"))
}

/// `replica show NS/PATH`: what the store records of one replica, as
/// `name: value` lines, then one line per key naming it.
pub fn show(path: &str, data: &DataDirArg) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    let r = replica(&meta, path)?;
    let latest = match r.latest {
        0 => None,
        n => meta.version(&r, n)?,
    };
    let count = meta.version_count(&r)?;
    let line = |name: &str, value: &str| println!("{:<13}{value}", format!("{name}:"));
    line("path", &r.path);
    line("uid", &r.uid);
    line("visibility", &r.visibility);
    line("created", &r.created);
    line("latest", &r.latest.to_string());
    line("versions", &count.to_string());
    match &latest {
        Some(v) => {
            line(
                "latest size",
                &format!("{} bytes ({})", v.size(), crate::ui::human_bytes(v.size())),
            );
            line("last push", &v.created);
            let message = crate::wire::one_line(&v.message);
            line("message", if message.is_empty() { "-" } else { &message });
        }
        None => line("last push", "never"),
    }
    let named: Vec<_> = keys::list(&meta, &r.namespace)?
        .into_iter()
        .filter(|(k, _)| k.replica == Some(r.id))
        .collect();
    line("keys", &named.len().to_string());
    for (k, _) in named {
        let status = match &k.revoked {
            None => "active".to_string(),
            Some(t) if keys::revoked_by_now(&k.revoked) => format!("revoked {t}"),
            Some(t) => format!("expires {t}"),
        };
        println!(
            "  key {}\t{}\tcreated {}\tlast used {}\t{}\t{}",
            k.id,
            k.kind.as_str(),
            k.created,
            k.last_used.as_deref().unwrap_or("never"),
            k.label.as_deref().unwrap_or("-"),
            status
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `replica rename NS/PATH NS/NEWPATH`: the new path is held to the rule a
/// pushed path is, stays in the namespace, and must be free; anything else
/// is one line and nothing changed.
pub fn rename(path: &str, new_path: &str, data: &DataDirArg) -> Result<ExitCode> {
    let meta = Store::open_meta(&data.data_dir)?;
    let r = replica(&meta, path)?;
    if let Err(e) = names::validate_new_path(new_path) {
        bail!("invalid path {new_path:?}: {e}; nothing was changed");
    }
    let namespace = new_path.split('/').next().unwrap_or_default();
    if namespace != r.namespace {
        bail!(
            "{new_path} is in namespace {namespace}, {path} in {}: a replica is renamed within its \
             namespace only; nothing was changed",
            r.namespace
        );
    }
    match meta.rename_replica(&r, new_path)? {
        Renamed::Done => {
            println!(
                "renamed {path} to {new_path} (replica {}: its versions and keys go with it)",
                r.uid
            );
            Ok(ExitCode::SUCCESS)
        }
        Renamed::Exists => bail!("a replica {new_path} exists already; nothing was changed"),
        Renamed::Gone => bail!("{path} was renamed or removed meanwhile; nothing was changed"),
    }
}
