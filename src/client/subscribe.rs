//! SUBSCRIBE: pull, then pull again whenever the server announces a new
//! version, until Ctrl-C.
//!
//! Notifications come on `/sapi/subscribe/<path>` (shared/PROTOCOL.md
//! section 5): we send SUBSCRIBE, answer PING, and on LATEST_VERSION pull
//! the latest version over a separate pull connection. When the socket
//! drops (or a pull fails for a reason a retry can fix) we wait with capped
//! exponential backoff, reconnect and pull the latest, so no version is
//! missed. Ctrl-C between pulls sends UNSUBSCRIBE and exits; during a pull
//! it stops the pull safely (the replica helper rolls back) and exits.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::keys::KeyEnv;
use super::pull::{self, PullError};
use super::wait_true;
use crate::cli::Cli;
use crate::cli::forms::RemoteRef;
use crate::printer::Printer;
use crate::wire::{SubscribeMessage, VersionRef};

/// First wait after a dropped connection.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Runs a subscription.
pub async fn run(
    cli: &Cli,
    printer: Printer,
    remote: &RemoteRef,
    local: &Path,
    mut interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    if cli.dry {
        pull::dry(cli, &printer, remote, local)?;
        return Ok(ExitCode::SUCCESS);
    }
    let env = KeyEnv::from_process();
    let mut plan = pull::plan(cli, remote, local, &env)?;
    let client_id = super::client_id()?;
    let mut backoff = BACKOFF_START;
    let mut last_version: Option<String> = None;
    // The first pull fetches what was asked for; later ones the latest.
    // Every (re)connection pulls first, so nothing missed while away is lost.
    let mut first = true;

    loop {
        if *interrupt.borrow() {
            return Ok(stopped(&printer));
        }
        {
            match pull::pull_once(cli, printer, &mut plan, &env, interrupt.clone()).await {
                Ok(report) => {
                    last_version = report.version.clone().or(last_version);
                    report.print(&printer);
                    backoff = BACKOFF_START;
                    if first {
                        first = false;
                        plan.version = VersionRef::Latest;
                    }
                }
                Err(PullError::Interrupted(_)) => return Ok(stopped(&printer)),
                Err(PullError::Failed(e)) if first || !retryable(&e) => return Err(e),
                Err(PullError::Failed(e)) => {
                    printer.note(&format!(
                        "sqlrsync: pull failed: {e:#}; retrying in {:.1}s",
                        backoff.as_secs_f64()
                    ));
                    if sleep_or_stop(backoff, &mut interrupt).await {
                        return Ok(stopped(&printer));
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    continue;
                }
            }
        }

        // Wait for news.
        let url = super::endpoint_url(&plan.server, "subscribe", &plan.remote_path);
        let hdrs = super::base_headers(
            plan.key.value.as_deref(),
            &client_id,
            plan.replica_id.as_deref(),
        );
        let ws = tokio::select! {
            r = super::connect(&url, &hdrs, super::idle_timeout(cli)) => r,
            _ = wait_true(&mut interrupt) => return Ok(stopped(&printer)),
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(e) if retryable(&e) => {
                printer.note(&format!(
                    "sqlrsync: {e:#}; reconnecting in {:.1}s",
                    backoff.as_secs_f64()
                ));
                if sleep_or_stop(backoff, &mut interrupt).await {
                    return Ok(stopped(&printer));
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
                continue;
            }
            Err(e) => return Err(e),
        };
        let data = serde_json::json!({ "replicaID": plan.replica_id.clone().unwrap_or_default() });
        let _ = ws
            .send(WsMessage::Text(
                SubscribeMessage::new("SUBSCRIBE", data.clone())
                    .to_text()
                    .into(),
            ))
            .await;
        printer.verbose(&format!("subscribed to {}", plan.remote_path));
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = wait_true(&mut interrupt) => {
                    let _ = ws.send(WsMessage::Text(SubscribeMessage::new("UNSUBSCRIBE", data.clone()).to_text().into())).await;
                    let _ = ws.close(None).await;
                    return Ok(stopped(&printer));
                }
            };
            match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    let t = t.as_str();
                    if t == "PING" {
                        let _ = ws.send(WsMessage::Text("PONG".into())).await;
                        continue;
                    }
                    let Ok(m) = serde_json::from_str::<SubscribeMessage>(t) else {
                        tracing::warn!("ignoring a notification that is not JSON");
                        continue;
                    };
                    match m.kind.as_str() {
                        "LATEST_VERSION" => {
                            let v = version_of(&m.data);
                            if v.is_some() && v == last_version {
                                continue;
                            }
                            printer
                                .verbose(&format!("new version {}", v.as_deref().unwrap_or("?")));
                            backoff = BACKOFF_START;
                            // Pull now, keeping the subscription open and
                            // answered; again while versions keep coming.
                            let mut wanted = v;
                            let mut lost = false;
                            while !lost {
                                let pull = pull::pull_once(
                                    cli,
                                    printer,
                                    &mut plan,
                                    &env,
                                    interrupt.clone(),
                                );
                                let (res, newest, gone) = pull_listening(&mut ws, pull).await;
                                lost = gone;
                                match res {
                                    Ok(report) => {
                                        last_version = report.version.clone().or(wanted);
                                        report.print(&printer);
                                    }
                                    Err(PullError::Interrupted(_)) => {
                                        return Ok(stopped(&printer));
                                    }
                                    Err(PullError::Failed(e)) if !retryable(&e) => return Err(e),
                                    Err(PullError::Failed(e)) => {
                                        printer.note(&format!(
                                            "sqlrsync: pull failed: {e:#}; will retry"
                                        ));
                                        lost = true;
                                        break;
                                    }
                                }
                                match newest {
                                    Some(n) if Some(&n) != last_version.as_ref() => {
                                        wanted = Some(n)
                                    }
                                    _ => break,
                                }
                            }
                            if lost {
                                // Reconnecting pulls first: nothing is missed.
                                break;
                            }
                        }
                        "ERROR" => {
                            let why = m
                                .data
                                .get("message")
                                .and_then(|v| v.as_str())
                                .unwrap_or("unknown error");
                            anyhow::bail!("the server refused the subscription: {why}");
                        }
                        "SUBSCRIBED" | "PONG" => {}
                        other => tracing::debug!("ignoring notification {other}"),
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                    printer.note(&format!(
                        "sqlrsync: lost the subscription to {}; reconnecting in {:.1}s",
                        plan.remote_path,
                        backoff.as_secs_f64()
                    ));
                    if sleep_or_stop(backoff, &mut interrupt).await {
                        return Ok(stopped(&printer));
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Runs `pull` while still reading the subscription: PINGs are answered
/// (a long pull must not look like a dead subscriber) and the newest
/// LATEST_VERSION announced meanwhile is returned, so the caller pulls
/// again rather than miss it. The flag says the subscription socket ended.
async fn pull_listening<F>(
    ws: &mut super::Socket,
    pull: F,
) -> (Result<super::Report, PullError>, Option<String>, bool)
where
    F: std::future::Future<Output = Result<super::Report, PullError>>,
{
    tokio::pin!(pull);
    let mut newest = None;
    let mut lost = false;
    loop {
        tokio::select! {
            r = &mut pull => return (r, newest, lost),
            m = ws.next(), if !lost => match m {
                Some(Ok(WsMessage::Text(t))) => {
                    if t.as_str() == "PING" {
                        let _ = ws.send(WsMessage::Text("PONG".into())).await;
                    } else if let Ok(m) = serde_json::from_str::<SubscribeMessage>(t.as_str())
                        && m.kind == "LATEST_VERSION"
                    {
                        newest = version_of(&m.data).or(newest);
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => lost = true,
                // Websocket pings are answered by the library as it reads.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `data.version` as a string (servers send a string; numbers tolerated).
fn version_of(data: &serde_json::Value) -> Option<String> {
    match data.get("version")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Connection trouble is worth a retry; a refusal (HTTP 4xx, ABORT, a
/// failed verification) is not.
fn retryable(e: &anyhow::Error) -> bool {
    if let Some(sync) = e.downcast_ref::<super::SyncError>() {
        return sync.retryable();
    }
    let s = format!("{e:#}");
    !(s.contains("HTTP 4")
        || s.contains("aborted")
        || s.contains("VERIFICATION FAILED")
        || s.contains("sync failed"))
}

fn stopped(printer: &Printer) -> ExitCode {
    printer.note("sqlrsync: subscription stopped");
    ExitCode::SUCCESS
}

/// Sleeps; true when Ctrl-C came first.
async fn sleep_or_stop(d: Duration, interrupt: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = wait_true(interrupt) => true,
    }
}
