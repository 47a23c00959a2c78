//! Dead-man notifications: a replica that is expected to be pushed at
//! least every so often (`sqlrsync-server replica expect NS/PATH --every
//! 1h`, kept in the metadata) and goes that long without a push makes the
//! server run a command and/or post to a webhook, once ("overdue"), and
//! again once a push arrives ("resumed").
//!
//! Why a timer and the metadata: the expectation is set by a command next
//! to the running server, and "once" must survive a restart, so each
//! check ([`NotifyConfig::check_every`]) reads the expectations, with
//! their last push (the latest commit, or the last push session that
//! succeeded without storing anything: [`pushed`]), and what was already
//! notified. A notice is recorded as sent in the metadata after it was
//! delivered (or given up on), so a crash in between sends it again
//! rather than never.
//!
//! Bounds: pushes never wait for any of it (the push only records its
//! time, off its own path); a replica has at most one notice in flight
//! (a check skips it meanwhile), at most [`MAX_IN_FLIGHT`] are in flight
//! in all (the others wait for the next check: nothing is queued); the
//! command ([`command`]) and the webhook ([`webhook`]) each have a timeout
//! ([`NotifyConfig::timeout`]), and a failed delivery is tried
//! [`NotifyConfig::attempts`] times in all, then logged as given up.

pub mod command;
pub mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{Semaphore, watch};

use super::store::meta::{Expectation, now};
use super::store::{Store, lock};

/// Most notices being delivered at once.
pub const MAX_IN_FLIGHT: usize = 16;

/// How the server notifies (`serve --notify-command`, `--notify-webhook`).
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The program and its arguments (split once from the flag, as a
    /// shell would; run without a shell, the notice in its environment).
    pub command: Option<CommandLine>,
    /// The URL a notice is POSTed to as JSON.
    pub webhook: Option<http::Uri>,
    /// How often the expectations are checked.
    pub check_every: Duration,
    /// How long one run of the command, or one POST, may take.
    pub timeout: Duration,
    /// Deliveries tried per notice (then given up, and logged).
    pub attempts: u32,
}

impl NotifyConfig {
    /// The defaults, with nothing to notify.
    pub fn new() -> NotifyConfig {
        NotifyConfig {
            command: None,
            webhook: None,
            check_every: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            attempts: 3,
        }
    }

    /// True when a command or a webhook is configured.
    pub fn enabled(&self) -> bool {
        self.command.is_some() || self.webhook.is_some()
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig::new()
    }
}

/// What a notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The interval passed with no push.
    Overdue,
    /// A push arrived after an overdue notice.
    Resumed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Overdue => "overdue",
            State::Resumed => "resumed",
        }
    }
}

/// One notice about one replica.
#[derive(Debug, Clone)]
pub struct Notice {
    pub replica_id: i64,
    /// NS/PATH.
    pub replica: String,
    pub state: State,
    /// The last push (RFC 3339), if any.
    pub last_push: Option<String>,
    /// The expected interval.
    pub expected: Duration,
    /// When the check found it (RFC 3339).
    pub at: String,
}

impl Notice {
    /// The JSON the webhook receives (and the command, in
    /// `SQLRSYNC_NOTIFY_JSON`).
    pub fn json(&self) -> String {
        serde_json::json!({
            "replica": self.replica,
            "state": self.state.as_str(),
            "lastPush": self.last_push,
            "expectedEverySeconds": self.expected.as_secs_f64(),
            "expectedEvery": super::cli_ops::shown(self.expected),
            "at": self.at,
        })
        .to_string()
    }
}

/// Records that a push session of `replica` succeeded (committed or
/// not), off the caller's path: it only matters to a replica with an
/// expected interval, and a push never waits for it.
pub fn pushed(store: &Arc<Store>, replica: i64) {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.meta().note_push(replica, &now()) {
            tracing::warn!(error = %format!("{e:#}"), "could not record a push's time");
        }
    });
}

/// The notices due now: an expectation whose interval passed since its
/// last push (or since it was set) and whose "overdue" was not sent, or
/// one whose "overdue" was sent and that was pushed since (its last push
/// is not the one that notice named: so a push between two checks is
/// "resumed" even when the replica is silent again by the next, which
/// then finds it overdue again).
pub fn due(expectations: &[Expectation], at: chrono::DateTime<chrono::Utc>) -> Vec<Notice> {
    let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    expectations
        .iter()
        .filter_map(|e| {
            let last = e.last_push.as_deref().unwrap_or(&e.since);
            let last = chrono::DateTime::parse_from_rfc3339(last).ok()?;
            let silent = (at - last.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default();
            let pushed_since = e.last_push != e.overdue_last_push;
            let state = match (e.overdue_sent, silent > e.every) {
                (false, true) => State::Overdue,
                (true, _) if pushed_since => State::Resumed,
                _ => return None,
            };
            Some(Notice {
                replica_id: e.replica,
                replica: e.path.clone(),
                state,
                last_push: e.last_push.clone(),
                expected: e.every,
                at: stamp.clone(),
            })
        })
        .collect()
}

/// Checks the expectations every `check_every` until `shutdown`, sending
/// what is due.
pub async fn run(store: Arc<Store>, cfg: NotifyConfig, mut shutdown: watch::Receiver<bool>) {
    let cfg = Arc::new(cfg);
    let hook = cfg
        .webhook
        .clone()
        .map(|u| Arc::new(webhook::Webhook::new(u)));
    let in_flight: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(cfg.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let s = store.clone();
        let notices = match tokio::task::spawn_blocking(move || s.meta().expectations()).await {
            Ok(Ok(all)) => due(&all, chrono::Utc::now()),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "could not read the expected push intervals");
                continue;
            }
            Err(_) => continue,
        };
        for notice in notices {
            if !lock(&in_flight).insert(notice.replica_id) {
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                lock(&in_flight).remove(&notice.replica_id);
                break;
            };
            let (store, cfg, hook, in_flight) =
                (store.clone(), cfg.clone(), hook.clone(), in_flight.clone());
            tokio::spawn(async move {
                let id = notice.replica_id;
                deliver(&store, &cfg, hook.as_deref(), notice).await;
                lock(&in_flight).remove(&id);
                drop(slot);
            });
        }
    }
}

/// Sends `notice` by every configured way, retrying each that failed
/// (with a growing pause), then records it as sent.
async fn deliver(
    store: &Arc<Store>,
    cfg: &NotifyConfig,
    hook: Option<&webhook::Webhook>,
    n: Notice,
) {
    let body = n.json();
    let mut run_command = cfg.command.as_ref().map(|c| c.0.as_slice());
    let mut post = hook;
    let mut pause = Duration::from_millis(500);
    for attempt in 1..=cfg.attempts.max(1) {
        if let Some(argv) = run_command {
            match command::run(argv, &n, &body, cfg.timeout).await {
                Ok(()) => run_command = None,
                Err(e) => tracing::warn!(replica = %n.replica, state = n.state.as_str(), attempt,
                    error = %e, "the notification command failed"),
            }
        }
        if let Some(h) = post {
            match h.post(&body, cfg.timeout).await {
                Ok(()) => post = None,
                Err(e) => tracing::warn!(replica = %n.replica, state = n.state.as_str(), attempt,
                    error = %e, "the notification webhook failed"),
            }
        }
        if run_command.is_none() && post.is_none() {
            break;
        }
        if attempt < cfg.attempts {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        }
    }
    if run_command.is_some() || post.is_some() {
        tracing::error!(replica = %n.replica, state = n.state.as_str(), attempts = cfg.attempts,
            "gave up on a notification; it is recorded as sent, so it is not repeated");
    } else {
        tracing::info!(replica = %n.replica, state = n.state.as_str(), last_push = ?n.last_push, "notified");
    }
    let (store, id, overdue) = (store.clone(), n.replica_id, n.state == State::Overdue);
    let last = n.last_push.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        store
            .meta()
            .set_notified(id, overdue, last.as_deref(), &now())
    })
    .await;
    if let Ok(Err(e)) = recorded {
        tracing::warn!(replica = %n.replica, error = %format!("{e:#}"), "could not record a notification as sent");
    }
}

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

/// Parses `--notify-command`: split as a shell would split it (quotes,
/// backslashes), never run through one.
pub fn parse_command(s: &str) -> Result<CommandLine, String> {
    match shlex::split(s) {
        Some(v) if !v.is_empty() => Ok(CommandLine(v)),
        _ => Err(format!(
            "{s:?} is not a command line (unbalanced quotes, or empty)"
        )),
    }
}

/// Parses `--notify-webhook`: an http:// or https:// URL.
pub fn parse_webhook(s: &str) -> Result<http::Uri, String> {
    let u: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    match (u.scheme_str(), u.host()) {
        (Some("http" | "https"), Some(_)) => Ok(u),
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An expectation; `sent`: an overdue notice went out, naming that
    /// last push.
    fn exp(every: u64, last: Option<&str>, sent: Option<Option<&str>>) -> Expectation {
        Expectation {
            replica: 1,
            path: "ns/a.db".into(),
            every: Duration::from_secs(every),
            since: "2030-01-01T00:00:00.000Z".into(),
            last_push: last.map(String::from),
            overdue_sent: sent.is_some(),
            overdue_last_push: sent.flatten().map(String::from),
        }
    }

    #[test]
    fn overdue_once_then_resumed_after_a_push() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let t = at("2030-01-01T01:00:01.000Z");
        // Never pushed: the clock runs from when it was set.
        let d = due(&[exp(3600, None, None)], t);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].state, State::Overdue);
        assert!(
            d[0].json().contains("\"state\":\"overdue\""),
            "{}",
            d[0].json()
        );
        assert!(
            due(&[exp(3600, None, Some(None))], t).is_empty(),
            "sent once"
        );
        assert!(due(&[exp(7200, None, None)], t).is_empty(), "not yet");
        let pushed = Some("2030-01-01T01:00:00.500Z");
        let d = due(&[exp(3600, pushed, Some(None))], t);
        assert_eq!(d[0].state, State::Resumed);
        assert!(due(&[exp(3600, pushed, None)], t).is_empty());
        // A push, then silence again before the check: resumed, not lost.
        let old = Some("2030-01-01T00:00:00.100Z");
        let d = due(&[exp(1, old, Some(None))], t);
        assert_eq!(d[0].state, State::Resumed);
        assert!(
            due(&[exp(1, old, Some(old))], t).is_empty(),
            "no push since"
        );
        // A longer interval alone is no push.
        assert!(due(&[exp(7200, old, Some(old))], t).is_empty());
    }

    #[test]
    fn commands_are_split_once_and_webhooks_are_http_urls() {
        assert_eq!(
            parse_command("/bin/notify --to 'ops team'").unwrap().0,
            ["/bin/notify", "--to", "ops team"]
        );
        assert!(parse_command("'open").is_err() && parse_command("  ").is_err());
        assert!(parse_webhook("https://hooks.example/x").is_ok());
        assert!(parse_webhook("ftp://x/").is_err() && parse_webhook("/x").is_err());
        // The HTTPS client builds (one rustls crypto provider, its roots).
        webhook::Webhook::new(parse_webhook("https://hooks.example/x").unwrap());
    }

    #[test]
    fn an_interval_is_kept_per_replica_and_not_inherited_by_a_reused_id() {
        use crate::server::store::Meta;
        use crate::server::store::meta::NewKey;
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        let admin = NewKey {
            hash: [1; 32],
            kind: "admin",
            namespace: "ns".into(),
            replica: None,
            minted_by: None,
            minted_on: None,
            minted_for: None,
            label: None,
        };
        meta.create_namespace("ns", &admin).unwrap();
        let a = meta.create_replica("ns", "ns/a.db", "private").unwrap();
        meta.set_expectation(a.id, Some(Duration::from_secs(60)))
            .unwrap();
        meta.set_notified(a.id, true, None, &now()).unwrap();
        // Set again: the interval changes, what was notified stays.
        meta.set_expectation(a.id, Some(Duration::from_secs(90)))
            .unwrap();
        let all = meta.expectations().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].every.as_secs(), all[0].overdue_sent), (90, true));
        meta.note_push(a.id, "2030-01-01T00:00:00.000Z").unwrap();
        assert_eq!(
            meta.expectations().unwrap()[0].last_push.as_deref(),
            Some("2030-01-01T00:00:00.000Z")
        );
        assert!(meta.remove_replica_if_empty(a.id).unwrap());
        let b = meta.create_replica("ns", "ns/b.db", "private").unwrap();
        assert_eq!(b.id, a.id, "SQLite reuses the largest row id");
        assert!(meta.expectations().unwrap().is_empty(), "inherited");
        meta.set_expectation(b.id, Some(Duration::from_secs(5)))
            .unwrap();
        let all = meta.expectations().unwrap();
        assert_eq!(
            (all[0].path.as_str(), all[0].overdue_sent),
            ("ns/b.db", false)
        );
        meta.set_expectation(b.id, None).unwrap();
        assert!(meta.expectations().unwrap().is_empty());
    }

    #[test]
    fn the_config_file_sets_the_notify_flags() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "data-dir = '/srv/d'\nnotify-command = \"/bin/page 'db team'\"\nnotify-webhook = 'http://127.0.0.1:9/h'\nnotify-check-every = '200ms'\n",
        )
        .unwrap();
        let argv = [
            "sqlrsync-server",
            "serve",
            "--config",
            file.to_str().unwrap(),
        ];
        let argv = crate::server::config::expand(argv.iter().map(Into::into).collect()).unwrap();
        let crate::server::cli::Command::Serve(a) =
            crate::server::cli::ServerCli::try_parse_from(argv)
                .unwrap()
                .command
        else {
            panic!("not serve");
        };
        assert_eq!(a.notify_command.unwrap().0, ["/bin/page", "db team"]);
        assert_eq!(
            a.notify_webhook.unwrap().to_string(),
            "http://127.0.0.1:9/h"
        );
        assert_eq!(a.notify_check_every, Duration::from_millis(200));
    }
}
