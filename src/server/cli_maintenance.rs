//! The admin commands that keep a store's size in check: `retention`
//! (set, show, clear a policy), `prune` (apply them now, or `--dry-run`
//! to see what that would drop and free) and `replica delete`.
//!
//! `retention` and `replica delete` only write metadata and may run next to
//! a live server. `prune` rewrites packs, which only the process holding
//! the data dir may do: next to a live server it refuses and says that the
//! server applies the policies itself (`serve --prune-every`); its
//! `--dry-run` only reads, and may run anywhere.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::cli::DataDirArg;
use super::maintenance;
use super::names;
use super::retention::Policy;
use super::store::prune::ReplicaPrune;
use super::store::{self, LockError, Meta, Store};
use crate::ui::human_bytes;

#[derive(Debug, Subcommand)]
pub enum RetentionCmd {
    /// Set the retention policy of a namespace (the default of its
    /// replicas) or of one replica (NS/PATH). Any rule given keeps what it
    /// names; the latest version is always kept.
    Set {
        /// NS or NS/PATH.
        scope: String,
        #[command(flatten)]
        rules: KeepRules,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Show the policies set (all, or those of one namespace with what
    /// applies to each of its replicas).
    Show {
        /// A namespace.
        namespace: Option<String>,
        #[command(flatten)]
        data: DataDirArg,
    },
    /// Remove the policy of NS or NS/PATH (a replica then follows its
    /// namespace's; with none, every version is kept).
    Clear {
        /// NS or NS/PATH.
        scope: String,
        #[command(flatten)]
        data: DataDirArg,
    },
}

/// The `--keep-*` rules (restic's names).
#[derive(Debug, Args)]
pub struct KeepRules {
    /// Keep the N newest versions
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_last: Option<u32>,
    /// Keep the newest version of each of the last N hours that have one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_hourly: Option<u32>,
    /// Keep the newest version of each of the last N days (UTC)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_daily: Option<u32>,
    /// Keep the newest version of each of the last N ISO weeks
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_weekly: Option<u32>,
    /// Keep the newest version of each of the last N months
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    keep_monthly: Option<u32>,
    /// Keep every version made within this long of the newest (30d, 12h)
    #[arg(long, value_name = "DURATION", value_parser = super::cli::parse_duration)]
    keep_within: Option<std::time::Duration>,
}

impl KeepRules {
    fn policy(&self) -> Policy {
        Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            within: self.keep_within.filter(|d| !d.is_zero()),
        }
    }
}

/// `prune`'s arguments.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Print what would be dropped and freed; change nothing (may run next
    /// to a live server)
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    data: DataDirArg,
}

/// `replica delete`'s arguments.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// NS/PATH of the replica.
    path: String,
    /// Delete it: without this, only say what would be deleted
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    data: DataDirArg,
}

pub fn retention(cmd: RetentionCmd) -> Result<ExitCode> {
    match cmd {
        RetentionCmd::Set { scope, rules, data } => {
            let policy = rules.policy();
            if policy.keeps_all() {
                bail!(
                    "give at least one --keep-* rule (`retention clear {scope}` keeps every version)"
                );
            }
            let meta = existing_meta(&data)?;
            check_scope(&meta, &scope)?;
            meta.set_retention(&scope, Some(&policy.to_string()))?;
            println!("{scope}: keep {policy}");
            Ok(ExitCode::SUCCESS)
        }
        RetentionCmd::Clear { scope, data } => {
            let meta = existing_meta(&data)?;
            check_scope(&meta, &scope)?;
            meta.set_retention(&scope, None)?;
            println!("{scope}: no policy of its own");
            Ok(ExitCode::SUCCESS)
        }
        RetentionCmd::Show { namespace, data } => show(namespace.as_deref(), &data),
    }
}

fn show(namespace: Option<&str>, data: &DataDirArg) -> Result<ExitCode> {
    let meta = existing_meta(data)?;
    let Some(ns) = namespace else {
        for (scope, policy) in meta.retentions()? {
            println!("{scope}\t{policy}");
        }
        return Ok(ExitCode::SUCCESS);
    };
    if !meta.namespace_exists(ns)? {
        bail!("no namespace {ns}");
    }
    let ns_policy = meta.retention(ns)?;
    println!("{ns}\t{}", ns_policy.as_deref().unwrap_or("keep-all"));
    for r in meta.replicas_of(ns)? {
        let (policy, from) = match meta.retention(&r.path)? {
            Some(own) => (own, "own"),
            None => (ns_policy.clone().unwrap_or("keep-all".into()), "namespace"),
        };
        println!("{}\t{policy}\t({from})", r.path);
    }
    Ok(ExitCode::SUCCESS)
}

/// A scope must be a namespace or a replica that exists.
fn check_scope(meta: &Meta, scope: &str) -> Result<()> {
    if scope.contains('/') {
        names::validate_path(scope).map_err(anyhow::Error::msg)?;
        meta.replica(scope)?
            .with_context(|| format!("no replica {scope}"))?;
    } else if !meta.namespace_exists(scope)? {
        bail!("no namespace {scope}");
    }
    Ok(())
}

fn existing_meta(data: &DataDirArg) -> Result<Meta> {
    if !Meta::exists(&data.data_dir) {
        bail!("{} holds no sqlrsync-server store", data.data_dir.display());
    }
    Store::open_meta(&data.data_dir)
}

pub fn prune(a: PruneArgs) -> Result<ExitCode> {
    if !Meta::exists(&a.data.data_dir) {
        bail!(
            "{} holds no sqlrsync-server store",
            a.data.data_dir.display()
        );
    }
    if a.dry_run {
        let store = Store::open_read_only(&a.data.data_dir)?;
        let plans = store.plan_prunes()?;
        print_plans(&plans, "would drop");
        let g = store.garbage(&plans)?;
        println!(
            "would free {} ({} of {} stored pages no kept version references); nothing was changed",
            human_bytes(g.dead_bytes),
            g.dead_pages,
            g.pages
        );
        return Ok(ExitCode::SUCCESS);
    }
    let store = match Store::open(&a.data.data_dir, store::DEFAULT_COMPRESSION) {
        Err(e)
            if e.downcast_ref::<LockError>()
                .is_some_and(|l| matches!(l, LockError::Held { .. })) =>
        {
            bail!(
                "{e}; a running server applies the retention policies itself every --prune-every \
(default 1h); `prune --dry-run` shows what that will drop"
            )
        }
        other => other?,
    };
    let pass = maintenance::pass(&store, 0.0)?;
    // The pruned deltas' rows leave free pages in meta.db; no server waits.
    store.meta().vacuum()?;
    print_plans(&pass.prunes, "dropped");
    let c = &pass.compact;
    if let Some(why) = &c.postponed {
        println!("packs not compacted: {why}");
    } else {
        println!(
            "compacted {} packs: {} -> {} ({} pages kept) in {:.2} s",
            c.packs,
            human_bytes(c.bytes_before),
            human_bytes(c.bytes_after),
            c.pages_moved,
            c.secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plans(plans: &[ReplicaPrune], verb: &str) {
    if plans.is_empty() {
        println!("no version to prune");
    }
    for p in plans {
        println!(
            "{}: {verb} {} version{} ({}) by policy {}",
            p.replica.path,
            p.drop.len(),
            if p.drop.len() == 1 { "" } else { "s" },
            ranges(&p.drop),
            p.policy
        );
    }
}

/// `1-3, 5, 7-9` for sorted numbers.
fn ranges(ns: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ns.len() {
        let start = ns[i];
        while i + 1 < ns.len() && ns[i + 1] == ns[i] + 1 {
            i += 1;
        }
        out.push(if ns[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", ns[i])
        });
        i += 1;
    }
    out.join(", ")
}

pub fn delete(a: DeleteArgs) -> Result<ExitCode> {
    let meta = existing_meta(&a.data)?;
    let r = meta
        .replica(&a.path)?
        .with_context(|| format!("no replica {}", a.path))?;
    let versions = meta.versions(&r)?;
    let size = versions.first().map_or(0, |v| v.size());
    if !a.yes {
        bail!(
            "not deleted: {} has {} versions (latest {}, {}); run again with --yes to delete it \
with its keys (its stored pages are freed by the next prune)",
            r.path,
            versions.len(),
            r.latest,
            human_bytes(size)
        );
    }
    let d = store::delete_replica(&a.data.data_dir, &meta, &r)?;
    println!(
        "deleted {} ({} versions, {} keys); `sqlrsync-server prune` or the server's next \
maintenance frees its pages",
        r.path, d.versions, d.keys
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_are_short() {
        assert_eq!(super::ranges(&[1, 2, 3, 5, 7, 8]), "1-3, 5, 7-8");
        assert_eq!(super::ranges(&[]), "");
    }
}
