//! `sqlrsync --versions NS/NAME.db [DB]`: a replica's versions, from our
//! server's listing (`GET /sapi/versions/<path>`, SERVER.md "Versions
//! listing"), as a table or, with `--json`, one JSON object.
//!
//! The key is found as a pull finds it ([`super::pull::read_access`]): the
//! flags and environment, then the `-sqlrsync` file next to DB (default
//! ./NAME.db) when it names this replica. The listing comes a page at a
//! time, newest first; the table is printed as pages come. A server
//! without the listing (any but ours; our server marks every answer of it
//! with [`LISTING_MARK`]) is one line and a non-zero exit.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::http_get::{self, Answer};
use super::{RemoteRef, Settings};
use crate::ui::human_bytes;
use crate::wire::versions::{MAX_VERSIONS_LIMIT, VersionEntry, VersionsPage};
use crate::wire::{headers, one_line};

/// The header our server puts on every answer of the listing, refusals
/// included, so that its 404 for a replica is told from the 404 of a
/// server that has no such endpoint.
pub const LISTING_MARK: &str = crate::wire::versions::LISTING_MARK;

/// Most bytes of one page of the listing (1000 versions with long messages).
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

/// Lists the versions of `remote`, reading keys as a pull into `local` would.
pub async fn run(s: &Settings, remote: &RemoteRef, local: &Path) -> anyhow::Result<ExitCode> {
    if remote.version.is_some() {
        bail!(
            "--versions lists every version of {}; drop the @VERSION",
            remote.path
        );
    }
    let local = std::path::absolute(local).context("cannot resolve the database path")?;
    let access = super::pull::read_access(s, remote, &local)?;
    let base = super::endpoint_url(&access.server, "versions", &remote.path);
    let base = http_url(&base);
    let mut hdrs = vec![(
        headers::CLIENT_VERSION,
        env!("CARGO_PKG_VERSION").to_string(),
    )];
    if let Some(k) = &access.key.value {
        hdrs.push((headers::AUTHORIZATION, k.clone()));
    }
    s.printer.verbose(&format!(
        "VERSIONS {base} with key {} from {}",
        access.key.masked(),
        access.key.source.describe()
    ));
    let mut before: Option<u64> = None;
    let mut all: Vec<VersionEntry> = Vec::new();
    let mut first: Option<VersionsPage> = None;
    loop {
        let url = match before {
            Some(b) => format!("{base}?limit={MAX_VERSIONS_LIMIT}&before={b}"),
            None => format!("{base}?limit={MAX_VERSIONS_LIMIT}"),
        };
        let answer = http_get::get(&url, &hdrs, s.idle_timeout, MAX_PAGE_BYTES).await?;
        let page = page_of(&answer, &access.server, &remote.path)?;
        if !s.printer.json {
            if first.is_none() {
                s.printer.stdout(&format!(
                    "{:>8}  {:<24}  {:>10}  {:>15}  {:<16}  MESSAGE",
                    "VERSION", "COMMITTED (UTC)", "SIZE", "PAGES CHANGED", "VERSIONHASH"
                ));
            }
            for v in &page.versions {
                s.printer.stdout(&row(v));
            }
        }
        let next = page.next_before;
        if s.printer.json {
            all.extend(page.versions.iter().cloned());
        }
        if first.is_none() {
            first = Some(page);
        }
        match next {
            // Each page must go further back, or the listing would not end.
            Some(n) if before.is_none_or(|b| n < b) => before = Some(n),
            Some(_) => bail!("the server's listing of {} does not end", remote.path),
            None => break,
        }
    }
    let first = first.context("no answer")?;
    if s.printer.json {
        s.printer.json(&serde_json::json!({
            "replicaPath": first.replica_path,
            "replicaID": first.replica_id,
            "latest": first.latest,
            "server": access.server,
            "versions": all,
        }));
    } else if first.versions.is_empty() {
        s.printer
            .note(&format!("{} has no versions yet", first.replica_path));
    }
    Ok(ExitCode::SUCCESS)
}

/// One page from an answer, or the one line that says why not.
fn page_of(a: &Answer, server: &str, path: &str) -> anyhow::Result<VersionsPage> {
    let body = one_line(&String::from_utf8_lossy(&a.body));
    let body: String = body.chars().take(300).collect();
    if a.header(LISTING_MARK).is_none() {
        bail!(
            "{server} does not offer the versions listing (HTTP {}); --versions needs \
             sqlrsync-server",
            a.status
        );
    }
    match a.status {
        200 => serde_json::from_slice(&a.body)
            .with_context(|| format!("{server} sent a versions listing that is not valid JSON")),
        404 => bail!("no replica {path} on {server} (or no access to it: pass --pullKey)"),
        status => bail!("server refused: HTTP {status}: {body}"),
    }
}

/// One line of the table.
fn row(v: &VersionEntry) -> String {
    let mut message = one_line(&v.message);
    if let Some(at) = &v.pruned {
        message = format!("[pruned {at}] {message}");
    }
    let hash: String = v.version_hash.chars().take(16).collect();
    format!(
        "{:>8}  {:<24}  {:>10}  {:>15}  {:<16}  {}",
        v.version,
        v.created.replace('T', " ").trim_end_matches('Z'),
        human_bytes(v.size),
        format!("{} of {}", v.pages_changed, v.page_count),
        hash,
        if message.is_empty() { "-" } else { &message }
    )
}

/// The HTTP URL of a websocket URL (`ws://` to `http://`, `wss://` to
/// `https://`).
fn http_url(ws: &str) -> String {
    if let Some(rest) = ws.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = ws.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        ws.to_string()
    }
}
