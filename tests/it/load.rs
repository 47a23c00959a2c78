//! Load against one real `sqlrsync-server` on loopback: 50 clients pull
//! while 5 pushers each push their own replica and 1 pusher pushes one hot
//! replica back to back. Pushers and some pullers are real `sqlrsync` CLI
//! processes; the other pullers use the test-side websocket driver
//! (tests/it/support/driver.rs), which runs the real helper too.
//!
//! Checked afterwards: no session failed; every push that reported a version
//! is pullable (`@N`) and equal to what was pushed; each replica's versions
//! are 1..N with no gap; every copy a puller got equals the committed version
//! it was told it got; the server's peak RSS stayed bounded; and
//! `sqlrsync-server verify` finds the store whole.
//!
//! The CI variant runs about 10 s of load; `SQLRSYNC_LONG_TESTS=1` runs 60 s
//! (`SQLRSYNC_LOAD_SECONDS` overrides both). `scripts/bench-load` runs the
//! long variant in release mode and reports the figures this test prints on
//! its `LOAD FIGURES` line.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// Replicas with one pusher each (pushing with a short pause).
const QUIET_REPLICAS: usize = 5;
/// Pullers that run the real CLI.
const CLI_PULLERS: usize = 10;
/// Pullers that use the websocket driver.
const DRIVER_PULLERS: usize = 40;
/// Every pusher pushes at least this often, however slow the machine: the
/// load lasts until the time is up *and* every pusher got this far and
/// every puller finished a pull (counts, not timings, decide what the test
/// sees).
const MIN_PUSHES: u64 = 3;
/// Longest the load may run past its time while waiting for those counts.
const MAX_OVERTIME: Duration = Duration::from_secs(300);
/// Bound on the server's peak resident memory.
const MAX_SERVER_RSS_KB: u64 = 300 * 1024;

/// Everything the workers saw, checked at the end.
#[derive(Default)]
struct Ledger {
    /// (remote path, version) -> content digest of what was pushed.
    pushed: Mutex<HashMap<(String, u64), String>>,
    /// Versions each pusher was told, in order.
    push_versions: Mutex<BTreeMap<String, Vec<u64>>>,
    /// (remote path, version, digest of the pulled copy, who).
    pulled: Mutex<Vec<(String, u64, String, String)>>,
    /// One line per failed session.
    errors: Mutex<Vec<String>>,
    /// Wire bytes the pushers sent.
    push_bytes: AtomicU64,
    /// Wire bytes the pullers received.
    pull_bytes: AtomicU64,
    /// Database bytes the pullers ended up with (pages x page size).
    pulled_db_bytes: AtomicU64,
    /// Pushers that have pushed [`MIN_PUSHES`] times.
    pushers_ready: AtomicU64,
    /// Pullers that have finished a pull.
    pullers_ready: AtomicU64,
}

impl Ledger {
    fn error(&self, e: String) {
        eprintln!("LOAD ERROR: {e}");
        self.errors.lock().unwrap().push(e);
    }
}

fn load_seconds() -> u64 {
    if let Ok(s) = std::env::var("SQLRSYNC_LOAD_SECONDS") {
        return s.parse().expect("SQLRSYNC_LOAD_SECONDS is a number");
    }
    if std::env::var("SQLRSYNC_LONG_TESTS").is_ok_and(|v| v == "1") {
        60
    } else {
        10
    }
}

/// A key of the given kind from `sqlrsync-server keys create`.
fn create_key(env: &TestEnv, server: &TestServer, kind: &str) -> String {
    let o = run(env
        .command(SERVER)
        .args(["keys", "create", "team", "--kind", kind, "--data-dir"])
        .arg(&server.data_dir));
    assert_ok(&o);
    stdout(&o).lines().last().unwrap().trim().to_string()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    let s = stdout(out);
    let line = s.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

/// `sqlrsync ... --server URL --json` in `env`.
fn cli(env: &TestEnv, server: &TestServer, args: &[&str]) -> Command {
    let mut c = env.sqlrsync();
    c.args(args)
        .args(["--json", "--server"])
        .arg(server.ws_url());
    c
}

/// Changes a few rows and adds one that names the round, so every push
/// differs from the one before.
fn mutate(db: &Path, round: u64, fraction: f64) {
    change_rows(db, fraction);
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute(
        "INSERT INTO t(v, n) VALUES (randomblob(300), ?1)",
        [round as i64],
    )
    .unwrap();
}

/// One pusher: creates `remote` with the admin key, then pushes `db` again
/// and again (stored push key) until `stop`.
#[allow(clippy::too_many_arguments)]
fn pusher(
    env: &TestEnv,
    server: &TestServer,
    admin: &str,
    db: &Path,
    remote: &str,
    pause: Duration,
    ledger: &Ledger,
    stop: &AtomicBool,
) {
    let name = db.file_name().unwrap().to_str().unwrap().to_string();
    let mut round = 0u64;
    loop {
        if round > 0 {
            mutate(db, round, 0.02);
        }
        let digest = content_digest(db);
        let out = if round == 0 {
            run(cli(env, server, &[&name, remote]).env("SQLRSYNC_ADMIN_KEY", admin))
        } else {
            // Later pushes find remote path and key in local-secrets.toml,
            // like a cron job would.
            run(&mut cli(env, server, &[&name]))
        };
        if !out.status.success() {
            ledger.error(format!("push {remote} round {round}: {}", stderr(&out)));
            return;
        }
        let j = json_of(&out);
        let Some(v) = j["version"].as_str().and_then(|v| v.parse::<u64>().ok()) else {
            ledger.error(format!("push {remote} round {round}: no version in {j}"));
            return;
        };
        ledger
            .push_bytes
            .fetch_add(j["bytesSent"].as_u64().unwrap_or(0), Ordering::Relaxed);
        ledger
            .pushed
            .lock()
            .unwrap()
            .insert((remote.to_string(), v), digest);
        ledger
            .push_versions
            .lock()
            .unwrap()
            .entry(remote.to_string())
            .or_default()
            .push(v);
        round += 1;
        if round == MIN_PUSHES {
            ledger.pushers_ready.fetch_add(1, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(pause);
    }
}

/// One CLI puller: pulls `remote` into its own file until `stop`, starting
/// over from an empty file now and then (a full copy instead of a delta).
fn cli_puller(
    env: &TestEnv,
    server: &TestServer,
    key: &str,
    remote: &str,
    local: &Path,
    ledger: &Ledger,
    stop: &AtomicBool,
) {
    let name = local.file_name().unwrap().to_str().unwrap().to_string();
    let mut round = 0u64;
    let mut pulled_once = false;
    while !stop.load(Ordering::Relaxed) {
        if round % 4 == 3 {
            let _ = std::fs::remove_file(local);
        }
        let out = run(&mut cli(env, server, &[remote, &name, "--pullKey", key]));
        round += 1;
        if !out.status.success() {
            let err = stderr(&out);
            // The replica may not have its first version yet.
            if err.contains("no versions yet") || err.contains("HTTP 404") {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            ledger.error(format!("CLI pull {remote} into {name}: {err}"));
            return;
        }
        let j = json_of(&out);
        let v = j["version"].as_str().and_then(|v| v.parse::<u64>().ok());
        if j["verified"] != serde_json::Value::Bool(true) || v.is_none() {
            ledger.error(format!(
                "CLI pull {remote}: not verified or no version: {j}"
            ));
            return;
        }
        ledger
            .pull_bytes
            .fetch_add(j["bytesReceived"].as_u64().unwrap_or(0), Ordering::Relaxed);
        ledger.pulled_db_bytes.fetch_add(
            j["pageCount"].as_u64().unwrap_or(0) * j["pageSize"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        assert_integrity(local);
        if !pulled_once {
            pulled_once = true;
            ledger.pullers_ready.fetch_add(1, Ordering::Relaxed);
        }
        ledger.pulled.lock().unwrap().push((
            remote.to_string(),
            v.unwrap(),
            content_digest(local),
            format!("cli {name}"),
        ));
    }
}

/// One driver puller (async): same loop through the websocket driver.
async fn driver_puller(
    ws: String,
    key: String,
    remote: String,
    local: PathBuf,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
) {
    use crate::support::driver::*;
    let mut round = 0u64;
    let mut pulled_once = false;
    while !stop.load(Ordering::Relaxed) {
        if round % 4 == 3 {
            let _ = std::fs::remove_file(&local);
        }
        round += 1;
        let opts = Opts {
            key: Some(key.clone()),
            ..Default::default()
        };
        let o = pull(&ws, &remote, &local, &opts).await;
        if o.abort
            .as_deref()
            .is_some_and(|a| a.contains("no versions"))
            || o.http_status == Some(404)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if !o.ok() {
            ledger.error(format!(
                "driver pull {remote} into {}: {o:?}",
                local.display()
            ));
            return;
        }
        ledger.pull_bytes.fetch_add(o.bytes_in, Ordering::Relaxed);
        let cfg = o.config();
        let local2 = local.clone();
        let (digest, hash, size) = tokio::task::spawn_blocking(move || {
            assert_integrity(&local2);
            let size = std::fs::metadata(&local2).unwrap().len();
            (content_digest(&local2), version_hash(&local2), size)
        })
        .await
        .unwrap();
        ledger.pulled_db_bytes.fetch_add(size, Ordering::Relaxed);
        if cfg.version_hash.as_deref() != Some(hash.as_str()) {
            ledger.error(format!(
                "driver pull {remote}: file hash {hash} but the server said {:?}",
                cfg.version_hash
            ));
            return;
        }
        if !pulled_once {
            pulled_once = true;
            ledger.pullers_ready.fetch_add(1, Ordering::Relaxed);
        }
        ledger.pulled.lock().unwrap().push((
            remote.clone(),
            o.version(),
            digest,
            format!("driver {}", local.display()),
        ));
    }
}

/// `VmHWM` (peak) and `VmRSS` of a process, in KiB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[test]
fn fifty_pullers_six_pushers_nothing_lost() {
    let seconds = load_seconds();
    let mut f = Fixture::start();
    let (env, server) = (&f.env, f.server());
    let data = f.data.clone();
    let admin = f.admin.clone();
    let pull_key = create_key(env, server, "account-pull");
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));

    // Replicas: five quiet ones and the hot one.
    let mut replicas: Vec<(String, PathBuf, Duration)> = (0..QUIET_REPLICAS)
        .map(|i| {
            (
                format!("team/quiet{i}.db"),
                env.path(&format!("quiet{i}.db")),
                Duration::from_millis(300),
            )
        })
        .collect();
    replicas.push((
        "team/hot.db".to_string(),
        env.path("hot.db"),
        Duration::ZERO,
    ));
    for (i, (_, db, _)) in replicas.iter().enumerate() {
        make_db(
            db,
            DbSpec {
                rows: 600 + 200 * i as u32,
                row_bytes: 400,
                wal: i % 2 == 1,
                ..DbSpec::default()
            },
        );
    }

    let started = Instant::now();
    std::thread::scope(|s| {
        // All first pushes start at once: six processes creating replicas
        // and writing local-secrets.toml at the same time.
        for (remote, db, pause) in &replicas {
            let (env, server, admin, ledger, stop) = (&env, &server, &admin, &ledger, &stop);
            s.spawn(move || pusher(env, server, admin, db, remote, *pause, ledger, stop));
        }
        for i in 0..CLI_PULLERS {
            let remote = if i % 2 == 0 {
                "team/hot.db".to_string()
            } else {
                format!("team/quiet{}.db", i % QUIET_REPLICAS)
            };
            let local = env.path(&format!("cli-pull-{i}.db"));
            let (env, server, key, ledger, stop) = (&env, &server, &pull_key, &ledger, &stop);
            s.spawn(move || cli_puller(env, server, key, &remote, &local, ledger, stop));
        }
        let rt = crate::support::driver::rt();
        let tasks: Vec<_> = (0..DRIVER_PULLERS)
            .map(|i| {
                let remote = if i % 2 == 0 {
                    "team/hot.db".to_string()
                } else {
                    format!("team/quiet{}.db", i % QUIET_REPLICAS)
                };
                rt.spawn(driver_puller(
                    server.ws_url(),
                    admin.clone(),
                    remote,
                    env.path(&format!("drv-pull-{i}.db")),
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(seconds));
        let overtime = Instant::now();
        while (ledger.pushers_ready.load(Ordering::Relaxed) < replicas.len() as u64
            || ledger.pullers_ready.load(Ordering::Relaxed) < (CLI_PULLERS + DRIVER_PULLERS) as u64)
            && ledger.errors.lock().unwrap().is_empty()
            && overtime.elapsed() < MAX_OVERTIME
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            for t in tasks {
                t.await.unwrap();
            }
        });
    });
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "LOAD versions per replica: {:?}",
        ledger
            .push_versions
            .lock()
            .unwrap()
            .iter()
            .map(|(r, v)| (r.clone(), v.len()))
            .collect::<Vec<_>>()
    );
    let (peak_kb, rss_kb) = memory_kb(server.child.id());

    let errors = ledger.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} sessions failed:\n{}",
        errors.len(),
        errors.join("\n")
    );

    // Versions per replica: 1..N in the order pushed, no gap.
    let versions = ledger.push_versions.lock().unwrap().clone();
    let pushed = ledger.pushed.lock().unwrap().clone();
    assert_eq!(versions.len(), replicas.len(), "every pusher pushed");
    let mut total_versions = 0u64;
    for (remote, got) in &versions {
        let want: Vec<u64> = (1..=got.len() as u64).collect();
        assert_eq!(got, &want, "versions of {remote}");
        total_versions += got.len() as u64;
    }
    for (remote, got) in &versions {
        assert!(
            got.len() as u64 >= MIN_PUSHES,
            "{remote} got only {} versions in {MAX_OVERTIME:?} past the load time",
            got.len()
        );
    }

    // Every pulled copy is the version it was said to be.
    let pulled = ledger.pulled.lock().unwrap().clone();
    let pullers_done = ledger.pullers_ready.load(Ordering::Relaxed);
    assert_eq!(
        pullers_done,
        (CLI_PULLERS + DRIVER_PULLERS) as u64,
        "pullers that never finished a pull"
    );
    for (remote, v, digest, who) in &pulled {
        let want = pushed
            .get(&(remote.clone(), *v))
            .unwrap_or_else(|| panic!("{who} pulled {remote} v{v}, which no push reported"));
        assert_eq!(
            digest, want,
            "{who}: {remote} v{v} differs from what was pushed"
        );
    }

    // Every version that was pushed can be pulled back, equal.
    let rt = crate::support::driver::rt();
    let checks: Vec<(String, u64, String)> = pushed
        .iter()
        .map(|((r, v), d)| (r.clone(), *v, d.clone()))
        .collect();
    let bad = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(8));
        let mut tasks = Vec::new();
        for (i, (remote, v, want)) in checks.into_iter().enumerate() {
            let out = env.path(&format!("check-{i}.db"));
            let (ws, key, sem) = (server.ws_url(), admin.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let opts = crate::support::driver::Opts {
                    key: Some(key),
                    version: Some(v.to_string()),
                    ..Default::default()
                };
                let o = crate::support::driver::pull(&ws, &remote, &out, &opts).await;
                if !o.ok() || o.version() != v {
                    return Some(format!("{remote}@{v}: {o:?}"));
                }
                let got = tokio::task::spawn_blocking(move || {
                    let d = content_digest(&out);
                    let _ = std::fs::remove_file(&out);
                    d
                })
                .await
                .unwrap();
                (got != want).then(|| format!("{remote}@{v} differs from what was pushed"))
            }));
        }
        let mut bad = Vec::new();
        for t in tasks {
            if let Some(e) = t.await.unwrap() {
                bad.push(e);
            }
        }
        bad
    });
    assert!(
        bad.is_empty(),
        "versions not pullable as pushed:\n{}",
        bad.join("\n")
    );

    assert!(
        peak_kb < MAX_SERVER_RSS_KB,
        "server peak RSS {peak_kb} KiB exceeds {MAX_SERVER_RSS_KB} KiB"
    );
    f.kill_server();
    let o = run(f
        .env
        .command(SERVER)
        .args(["verify", "--data-dir"])
        .arg(&data));
    assert_ok(&o);
    assert!(stdout(&o).contains("no damage"), "{}", stdout(&o));

    let mb = |b: u64| b as f64 / 1_000_000.0;
    let push_b = ledger.push_bytes.load(Ordering::Relaxed);
    let pull_b = ledger.pull_bytes.load(Ordering::Relaxed);
    let pulled_db = ledger.pulled_db_bytes.load(Ordering::Relaxed);
    println!(
        "LOAD FIGURES: seconds={elapsed:.1} pushers={} pullers={} versions={total_versions} \
         versions_per_s={:.2} pulls={} pulls_per_s={:.2} pushed_wire_MB_per_s={:.2} \
         pulled_wire_MB_per_s={:.2} pulled_db_MB_per_s={:.2} errors={} server_peak_rss_MB={:.1} \
         server_rss_end_MB={:.1}",
        replicas.len(),
        CLI_PULLERS + DRIVER_PULLERS,
        total_versions as f64 / elapsed,
        pulled.len(),
        pulled.len() as f64 / elapsed,
        mb(push_b) / elapsed,
        mb(pull_b) / elapsed,
        mb(pulled_db) / elapsed,
        errors.len(),
        peak_kb as f64 / 1024.0,
        rss_kb as f64 / 1024.0,
    );
}

/// Many `sqlrsync` processes on one machine pushing different databases at
/// once (cron jobs that fire together) all keep their entry in the shared
/// local-secrets.toml, so every one of them can push again without a key.
#[test]
fn concurrent_first_pushes_keep_every_secrets_entry() {
    const N: usize = 12;
    let f = Fixture::start();
    let (env, server) = (&f.env, f.server());
    let admin = f.admin.clone();
    for i in 0..N {
        make_db(
            &env.path(&format!("db{i}.db")),
            DbSpec {
                rows: 200,
                ..DbSpec::default()
            },
        );
    }
    let first: Vec<std::process::Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (env, server, admin) = (&env, &server, &admin);
                s.spawn(move || {
                    let name = format!("db{i}.db");
                    let remote = format!("team/db{i}.db");
                    run(cli(env, server, &[&name, &remote]).env("SQLRSYNC_ADMIN_KEY", admin))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for o in &first {
        assert_ok(o);
    }
    let secrets = sqlrsync::config::Secrets::load(&env.home().join(".config/sqlrsync")).unwrap();
    assert_eq!(
        secrets.databases.len(),
        N,
        "entries lost from local-secrets.toml: {:?}",
        secrets
            .databases
            .iter()
            .map(|e| e.remote_path.clone())
            .collect::<Vec<_>>()
    );
    // And each pushes again on its own, concurrently too.
    std::thread::scope(|s| {
        for i in 0..N {
            let (env, server) = (&env, &server);
            s.spawn(move || {
                let name = format!("db{i}.db");
                mutate(&env.path(&name), 1, 0.1);
                let o = run(&mut cli(env, server, &[&name]));
                assert_ok(&o);
                assert_eq!(json_of(&o)["version"], "2");
            });
        }
    });
    let secrets = sqlrsync::config::Secrets::load(&env.home().join(".config/sqlrsync")).unwrap();
    assert_eq!(secrets.databases.len(), N);
}
