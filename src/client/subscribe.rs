//! SUBSCRIBE: pull, then pull again whenever the server announces a new
//! version, until Ctrl-C.
//!
//! Notifications come on `/sapi/subscribe/<path>` (shared/PROTOCOL.md
//! section 5): we send SUBSCRIBE, answer PING, and on LATEST_VERSION pull
//! the latest version over a separate pull connection. When the socket
//! drops (or a pull fails for a reason a retry can fix) we wait with capped
//! exponential backoff, reconnect and pull the latest, so no version is
//! missed ([`SyncError::retryable`] says which failures a retry can fix:
//! not a refusal, an ABORT or a failed verification). Ctrl-C between pulls
//! sends UNSUBSCRIBE and exits; during a pull it stops the pull safely (the
//! replica helper rolls back) and exits.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::pull;
use super::{RemoteRef, Settings, SyncError, wait_true};
use crate::ui::Printer;
use crate::wire::{SubscribeMessage, VersionRef};

/// First wait after a dropped connection.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// What a subscription carries from one connection to the next.
struct Follow {
    /// Wait before the next reconnection.
    backoff: Duration,
    /// The newest version pulled.
    last_version: Option<String>,
}

impl Follow {
    /// Sleeps for the backoff, then doubles it (capped); true when Ctrl-C
    /// came first.
    async fn back_off(&mut self, interrupt: &mut watch::Receiver<bool>) -> bool {
        if sleep_or_stop(self.backoff, interrupt).await {
            return true;
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
        false
    }
}

/// Why listening on one subscription socket ended.
enum Ended {
    /// Ctrl-C: stop.
    Stopped,
    /// The socket or a pull was lost: reconnect (which pulls first).
    Reconnect,
}

/// Runs a subscription.
pub async fn run(
    s: &Settings,
    remote: &RemoteRef,
    local: &Path,
    mut interrupt: watch::Receiver<bool>,
) -> anyhow::Result<ExitCode> {
    let printer = s.printer;
    if s.dry {
        pull::dry(s, remote, local)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut plan = pull::plan(s, remote, local)?;
    let client_id = super::client_id(s)?;
    let mut follow = Follow {
        backoff: BACKOFF_START,
        last_version: None,
    };
    // The first pull fetches what was asked for; later ones the latest.
    // Every (re)connection pulls first, so nothing missed while away is lost.
    let mut first = true;

    loop {
        if *interrupt.borrow() {
            return Ok(stopped(&printer));
        }
        match pull::pull_once(s, &mut plan, interrupt.clone()).await {
            Ok(report) => {
                follow.last_version = report.version.clone().or(follow.last_version.take());
                report.print(&printer);
                follow.backoff = BACKOFF_START;
                if first {
                    first = false;
                    plan.version = VersionRef::Latest;
                }
            }
            Err(SyncError::Interrupted(_)) => return Ok(stopped(&printer)),
            Err(e) if first || !e.retryable() => return Err(e.into_anyhow()),
            Err(e) => {
                printer.note(&format!(
                    "sqlrsync: pull failed: {:#}; retrying in {:.1}s",
                    e.into_anyhow(),
                    follow.backoff.as_secs_f64()
                ));
                if follow.back_off(&mut interrupt).await {
                    return Ok(stopped(&printer));
                }
                continue;
            }
        }

        // Wait for news.
        let mut ws = match open(s, &plan, &client_id, &mut follow, &mut interrupt).await? {
            Opened::Socket(ws) => *ws,
            Opened::Retry => continue,
            Opened::Stopped => return Ok(stopped(&printer)),
        };
        match listen(s, &mut plan, &mut ws, &mut follow, &mut interrupt).await? {
            Ended::Stopped => return Ok(stopped(&printer)),
            Ended::Reconnect => continue,
        }
    }
}

/// What opening the subscribe socket came to.
enum Opened {
    /// Boxed: a socket is large next to the other variants.
    Socket(Box<super::Socket>),
    /// A failure time may fix; the back-off has been waited.
    Retry,
    /// Ctrl-C.
    Stopped,
}

/// Opens `/sapi/subscribe/...` for the plan's replica. A retryable
/// connection failure is noted and backed off from; any other is the error.
async fn open(
    s: &Settings,
    plan: &pull::Plan,
    client_id: &str,
    follow: &mut Follow,
    interrupt: &mut watch::Receiver<bool>,
) -> anyhow::Result<Opened> {
    let url = super::endpoint_url(&plan.server, "subscribe", &plan.remote_path);
    let hdrs = super::base_headers(
        plan.key.value.as_deref(),
        client_id,
        plan.replica_id.as_deref(),
    );
    let ws = tokio::select! {
        r = super::connect(&url, &hdrs, s.idle_timeout) => r,
        _ = wait_true(interrupt) => return Ok(Opened::Stopped),
    };
    match ws {
        Ok(c) => Ok(Opened::Socket(Box::new(c.ws))),
        Err(e) if e.retryable() => {
            s.printer.note(&format!(
                "sqlrsync: {e:#}; reconnecting in {:.1}s",
                follow.backoff.as_secs_f64()
            ));
            if follow.back_off(interrupt).await {
                return Ok(Opened::Stopped);
            }
            Ok(Opened::Retry)
        }
        Err(e) => Err(e.into()),
    }
}

/// Subscribes on `ws` and pulls each version announced, until the socket
/// or a pull is lost, or Ctrl-C (which unsubscribes).
async fn listen(
    s: &Settings,
    plan: &mut pull::Plan,
    ws: &mut super::Socket,
    follow: &mut Follow,
    interrupt: &mut watch::Receiver<bool>,
) -> anyhow::Result<Ended> {
    let printer = s.printer;
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
            _ = wait_true(interrupt) => {
                let _ = ws.send(WsMessage::Text(SubscribeMessage::new("UNSUBSCRIBE", data.clone()).to_text().into())).await;
                let _ = ws.close(None).await;
                return Ok(Ended::Stopped);
            }
        };
        let t = match msg {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                printer.note(&format!(
                    "sqlrsync: lost the subscription to {}; reconnecting in {:.1}s",
                    plan.remote_path,
                    follow.backoff.as_secs_f64()
                ));
                if follow.back_off(interrupt).await {
                    return Ok(Ended::Stopped);
                }
                return Ok(Ended::Reconnect);
            }
            Some(Ok(_)) => continue,
        };
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
                if v.is_some() && !is_news(v.as_deref(), follow.last_version.as_deref()) {
                    continue;
                }
                printer.verbose(&format!("new version {}", v.as_deref().unwrap_or("?")));
                follow.backoff = BACKOFF_START;
                match pull_announced(s, plan, ws, v, follow, interrupt).await? {
                    Some(ended) => return Ok(ended),
                    None => continue,
                }
            }
            "ERROR" => {
                let why = m
                    .data
                    .get("message")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown error");
                anyhow::bail!(
                    "the server refused the subscription: {}",
                    crate::wire::shown_text(why)
                );
            }
            "SUBSCRIBED" | "PONG" => {}
            other => tracing::debug!("ignoring notification {other}"),
        }
    }
}

/// Pulls the version just announced, keeping the subscription open and
/// answered, and again while versions keep coming. None: caught up, keep
/// listening; `Some` says why listening ends.
async fn pull_announced(
    s: &Settings,
    plan: &mut pull::Plan,
    ws: &mut super::Socket,
    mut wanted: Option<String>,
    follow: &mut Follow,
    interrupt: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Ended>> {
    loop {
        let pull = pull::pull_once(s, plan, interrupt.clone());
        let (res, newest, lost) = pull_listening(ws, pull).await;
        match res {
            Ok(report) => {
                follow.last_version = report.version.clone().or(wanted);
                report.print(&s.printer);
            }
            Err(SyncError::Interrupted(_)) => return Ok(Some(Ended::Stopped)),
            Err(e) if !e.retryable() => return Err(e.into_anyhow()),
            Err(e) => {
                s.printer.note(&format!(
                    "sqlrsync: pull failed: {:#}; will retry",
                    e.into_anyhow()
                ));
                // Reconnecting pulls first: nothing is missed.
                return Ok(Some(Ended::Reconnect));
            }
        }
        if lost {
            return Ok(Some(Ended::Reconnect));
        }
        match newest {
            Some(n) if is_news(Some(&n), follow.last_version.as_deref()) => wanted = Some(n),
            _ => return Ok(None),
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
) -> (Result<super::Report, SyncError>, Option<String>, bool)
where
    F: std::future::Future<Output = Result<super::Report, SyncError>>,
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

/// Whether an announced version is one the replica does not have yet:
/// newer than the last one pulled when both are numbers (a pull of the
/// latest often gets past versions announced while it ran, and pulling
/// again for those would only sync to no effect), else any other one.
fn is_news(announced: Option<&str>, last: Option<&str>) -> bool {
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
    match (number(announced), number(last)) {
        (Some(a), Some(l)) => a > l,
        _ => announced != last || announced.is_none(),
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

#[cfg(test)]
mod tests {
    use super::is_news;

    #[test]
    fn only_newer_versions_are_news() {
        assert!(is_news(Some("8"), Some("7")));
        assert!(!is_news(Some("7"), Some("7")));
        // Announced while a pull of the latest got past it.
        assert!(!is_news(Some("6"), Some("7")));
        assert!(is_news(Some("7"), None));
        assert!(is_news(Some("b"), Some("a")));
        assert!(!is_news(Some("a"), Some("a")));
    }
}
