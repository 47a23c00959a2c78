//! `--subscribe`/`--watch` on a push and on a LOCAL sync (issue 14): the
//! client syncs once, then again after each commit to the origin.
//!
//! Real server on loopback, real client, a writer committing ledger
//! transactions (support/ledger.rs: every committed state keeps an
//! invariant, so a torn copy is caught) to a WAL origin while the watch
//! runs. What must hold: every commit reaches the server as part of some
//! version (nothing lost between pushes), every version is a consistent
//! snapshot and versions only move forward; `--waitIdle` coalesces bursts,
//! `--minInterval` bounds how often it syncs, `--maxInterval` check-ins
//! store nothing when nothing changed; a server stopped and restarted is
//! survived; a subscriber elsewhere follows; a conflict with another
//! machine's push stops the watch; Ctrl-C leaves everything whole (exit
//! 130). The LOCAL watch the same way.
//!
//! No latency is asserted here (that is scripts/bench-watch): every wait
//! has a generous deadline.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::support::faults::*;
use crate::support::remote::dash_pull_key;
use crate::support::*;

const REMOTE: &str = "team/w.db";
/// A small ledger (about 350 KB): pushes and pulls are quick in debug.
const ACCTS: i64 = 300;
/// Deadline of every wait for something the watch should do.
const LIMIT: Duration = Duration::from_secs(60);

// ---- The watch process, its output collected as it comes ----------------

type Lines = Arc<Mutex<Vec<String>>>;

/// A running `sqlrsync ... --watch`; SIGKILLed on drop if still running.
struct Watch {
    child: Child,
    out: Lines,
    err: Lines,
    readers: Vec<thread::JoinHandle<()>>,
}

fn collect(r: impl Read + Send + 'static) -> (Lines, thread::JoinHandle<()>) {
    let lines: Lines = Arc::default();
    let l = lines.clone();
    let h = thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            l.lock().unwrap().push(line);
        }
    });
    (lines, h)
}

/// How a watch ended.
struct Ended {
    status: ExitStatus,
    out: Vec<String>,
    err: Vec<String>,
}

impl Ended {
    /// Non-empty stderr lines.
    fn err_lines(&self) -> Vec<&str> {
        self.err
            .iter()
            .map(String::as_str)
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

impl Watch {
    fn start(cmd: &mut Command) -> Watch {
        let mut child = spawn_captured(cmd);
        let (out, a) = collect(child.stdout.take().unwrap());
        let (err, b) = collect(child.stderr.take().unwrap());
        Watch {
            child,
            out,
            err,
            readers: vec![a, b],
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Every stdout line, each of which must be one JSON object.
    fn json(&self) -> Vec<serde_json::Value> {
        let lines = self.out.lock().unwrap().clone();
        lines
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("a --json line is not JSON ({e}): {l:?}\n{}", self.dump())
                })
            })
            .collect()
    }

    fn dump(&self) -> String {
        format!(
            "watch stdout:\n{}\nwatch stderr:\n{}",
            self.out.lock().unwrap().join("\n"),
            self.err.lock().unwrap().join("\n")
        )
    }

    /// Polls `pred` until it holds; fails the test (with the watch's
    /// output) after `limit` or when the watch exits first.
    #[track_caller]
    fn wait_for(&mut self, what: &str, limit: Duration, mut pred: impl FnMut(&Watch) -> bool) {
        let end = Instant::now() + limit;
        loop {
            if pred(self) {
                return;
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!(
                    "the watch exited ({s:?}) while waiting for {what}\n{}",
                    self.dump()
                );
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}\n{}",
                self.dump()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for at least `n` JSON lines; returns them all.
    #[track_caller]
    fn wait_json(&mut self, what: &str, n: usize) -> Vec<serde_json::Value> {
        self.wait_for(what, LIMIT, |w| w.out.lock().unwrap().len() >= n);
        self.json()
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn signal(&self, sig: libc::c_int) {
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }

    /// Waits for the watch to exit (at most `limit`) and collects its
    /// output.
    #[track_caller]
    fn finish(mut self, limit: Duration) -> Ended {
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < end,
                "the watch did not exit within {limit:?}\n{}",
                self.dump()
            );
            thread::sleep(Duration::from_millis(10));
        };
        // The pipes close when the watch (and any helper) is gone.
        let end = Instant::now() + Duration::from_secs(10);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < end {
            thread::sleep(Duration::from_millis(10));
        }
        Ended {
            status,
            out: self.out.lock().unwrap().clone(),
            err: self.err.lock().unwrap().clone(),
        }
    }

    /// Ctrl-C; the watch must exit 130. Returns how it ended.
    #[track_caller]
    fn ctrl_c(self) -> Ended {
        self.signal(libc::SIGINT);
        let e = self.finish(Duration::from_secs(30));
        assert_eq!(
            e.status.code(),
            Some(130),
            "Ctrl-C: {:?}\nstderr:\n{}",
            e.status,
            e.err.join("\n")
        );
        e
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            sigkill(&mut self.child);
            let _ = self.child.wait();
        }
    }
}

/// The hidden argument of the watch's data_version probe, a child that
/// lives as long as the watch (src/client/follow/changes.rs).
const PROBE_ARG: &str = "--internal-data-version-probe";

/// Live (not zombie) children of `pid`, the probe among them.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) && state != Some("Z") {
            found.push(p);
        }
    }
    found
}

/// Whether a process runs with `arg` on its command line.
fn has_arg(pid: u32, arg: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
}

/// The watch's helpers: its children other than the probe, so a sync
/// under way.
fn helpers_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|c| !has_arg(*c, PROBE_ARG))
        .collect()
}

/// The process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

// ---- Writers --------------------------------------------------------------

/// A writer connection: WAL commits without an fsync each (NORMAL), so a
/// burst of commits is quick whatever the disk.
fn writer_conn(path: &Path) -> Connection {
    let c = open_checked(path);
    c.execute_batch("PRAGMA synchronous=NORMAL").unwrap();
    c
}

fn counter_of(c: &Connection) -> i64 {
    c.query_row("SELECT v FROM meta WHERE k='last'", [], |r| r.get(0))
        .unwrap()
}

/// Commits `n` ledger transactions at once; returns the last counter.
fn commit_n(path: &Path, n: i64) -> i64 {
    commit_spaced(path, n, Duration::ZERO)
}

/// Commits `n` ledger transactions `gap` apart; returns the last counter.
fn commit_spaced(path: &Path, n: i64, gap: Duration) -> i64 {
    let mut c = writer_conn(path);
    let last = counter_of(&c);
    for k in 1..=n {
        if k > 1 {
            thread::sleep(gap);
        }
        ledger_commit(&mut c, last + k).unwrap();
    }
    last + n
}

/// A thread committing bursts of `size` ledger transactions with `rest`
/// between bursts, until stopped.
struct Bursts {
    stop: Arc<AtomicBool>,
    bursts: Arc<AtomicU64>,
    handle: thread::JoinHandle<i64>,
}

impl Bursts {
    fn start(path: &Path, size: i64, rest: Duration) -> Bursts {
        let stop = Arc::new(AtomicBool::new(false));
        let bursts = Arc::new(AtomicU64::new(0));
        let (s, b, p) = (stop.clone(), bursts.clone(), path.to_path_buf());
        let handle = thread::spawn(move || {
            let mut c = writer_conn(&p);
            let mut n = counter_of(&c);
            while !s.load(Ordering::Relaxed) {
                for _ in 0..size {
                    n += 1;
                    ledger_commit(&mut c, n).unwrap_or_else(|e| panic!("commit {n}: {e}"));
                }
                b.fetch_add(1, Ordering::Relaxed);
                thread::sleep(rest);
            }
            n
        });
        Bursts {
            stop,
            bursts,
            handle,
        }
    }

    fn bursts(&self) -> u64 {
        self.bursts.load(Ordering::Relaxed)
    }

    /// Stops it; returns the last counter it committed.
    fn stop(self) -> i64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

// ---- The server side ------------------------------------------------------

/// A server with `team/w.db` first-pushed from a WAL ledger `origin.db`
/// (counter 0), whose push key is stored: later pushes need no key.
fn pushed_ledger() -> (Fixture, PathBuf) {
    let f = Fixture::start();
    let origin = f.path("origin.db");
    make_ledger(&origin, true, ACCTS);
    f.first_push("origin.db", REMOTE);
    (f, origin)
}

/// `sqlrsync origin.db team/w.db FLAGS` against the fixture's server.
fn push_watch(f: &Fixture, flags: &[&str]) -> Watch {
    let mut args = vec!["origin.db", REMOTE];
    args.extend(flags);
    Watch::start(&mut f.cmd(&args))
}

/// Waits until the server's latest version is `origin` as it is now.
#[track_caller]
fn wait_server_has(f: &Fixture, origin: &Path, w: &mut Watch) {
    let want = version_hash(origin);
    w.wait_for("the server's latest to be the origin", LIMIT, |_| {
        f.meta(REMOTE).latest_hash() == Some(want.as_str())
    });
}

/// Waits until the watch's --json lines report the server's latest
/// version (the server commits before the client hears and prints it).
#[track_caller]
fn wait_reported(f: &Fixture, w: &mut Watch) {
    let latest = f.meta(REMOTE).latest;
    w.wait_for(&format!("a --json line for version {latest}"), LIMIT, |w| {
        new_versions(&w.json()).last() == Some(&latest)
    });
}

/// Pulls every stored version: each is whole (integrity, the ledger
/// invariant; the client checks its versionHash) and holds more commits
/// than the one before. Returns their counters, version 1 first.
#[track_caller]
fn pulled_counters(f: &Fixture) -> Vec<i64> {
    let meta = f.meta(REMOTE);
    assert_eq!(meta.versions, meta.latest, "versions missing: {meta:?}");
    let check = f.path("check.db");
    let mut counters: Vec<i64> = Vec::new();
    for v in 1..=meta.latest {
        let at = format!("{REMOTE}@{v}");
        assert_ok(&run(&mut f.admin_cmd(&[&at, check.to_str().unwrap()])));
        assert_integrity(&check);
        let c = ledger_counter(&check);
        if let Some(&prev) = counters.last() {
            assert!(c > prev, "version {v} has counter {c} after {prev}");
        }
        counters.push(c);
    }
    counters
}

/// The `at` of a --json line: an RFC 3339 time.
#[track_caller]
fn at_of(j: &serde_json::Value) -> chrono::DateTime<chrono::FixedOffset> {
    let at = j["at"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"at\" in {j}"));
    chrono::DateTime::parse_from_rfc3339(at).unwrap_or_else(|e| panic!("at {at:?}: {e}"))
}

/// The versions the syncs of these --json lines stored: each line's
/// `version` that is newer than every one before it (version 1 is the
/// fixture's first push). An unchanged push, or one the server found
/// unchanged, names the latest version again and stores nothing.
fn new_versions(lines: &[serde_json::Value]) -> Vec<u64> {
    let mut max = 1;
    let mut out = Vec::new();
    for j in lines {
        let v: u64 = j["version"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no version in {j}"));
        if v > max {
            out.push(v);
            max = v;
        }
    }
    out
}

/// Waits (briefly, polling fast) for a helper of the watch, so a sync
/// under way. Returns every child then (probe included, all of which must
/// be gone once the watch is), and whether a helper was among them (the
/// syncs may be too quick to catch).
fn catch_a_sync(w: &Watch) -> (Vec<u32>, bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let syncing = !helpers_of(w.pid()).is_empty();
        if syncing || Instant::now() > end {
            return (children_of(w.pid()), syncing);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until every one of `pids` has exited.
fn wait_gone(pids: &[u32]) {
    for &p in pids {
        wait_until(
            &format!("the watch's child {p} to exit"),
            Duration::from_secs(30),
            || !alive(p),
        );
    }
}

// ---- The tests --------------------------------------------------------------

#[test]
fn every_commit_reaches_the_server_in_whole_versions() {
    let (f, origin) = pushed_ledger();
    let mut w = push_watch(&f, &["--watch", "--waitIdle", "100ms", "--json"]);
    let first = w.wait_json("the first sync", 1);
    assert_eq!(first[0]["version"], "1", "{}", first[0]);

    // Bursts of 5 commits with pauses longer than --waitIdle: the watch
    // pushes while the writer goes on.
    let writer = Bursts::start(&origin, 5, Duration::from_millis(300));
    w.wait_for("10 bursts", LIMIT, |_| writer.bursts() >= 10);
    let last = writer.stop();
    wait_server_has(&f, &origin, &mut w);
    wait_reported(&f, &mut w);

    let counters = pulled_counters(&f);
    assert!(
        counters.len() >= 4,
        "the watch pushed {} times while the writer ran",
        counters.len() - 1
    );
    assert_eq!(counters[0], 0);
    assert_eq!(*counters.last().unwrap(), last, "commits lost");
    let check = f.path("check.db");
    assert_eq!(content_digest(&check), content_digest(&origin));

    // One JSON line per sync; those that stored a version name them all,
    // in order, and their times move forward.
    let lines = w.json();
    let latest = f.meta(REMOTE).latest;
    assert_eq!(new_versions(&lines), (2..=latest).collect::<Vec<_>>());
    for pair in lines.windows(2) {
        assert!(at_of(&pair[0]) <= at_of(&pair[1]), "{pair:?}");
    }
    for j in lines.iter().filter(|j| j["version"] != "1") {
        assert!(j["pagesSent"].as_u64().unwrap() > 0, "{j}");
        assert!(j["bytesOnWire"].as_u64().unwrap() > 0, "{j}");
        assert!(j["pageSize"].as_u64().unwrap() > 0, "{j}");
    }
    w.ctrl_c();
}

#[test]
fn a_burst_of_commits_becomes_few_versions() {
    let (f, origin) = pushed_ledger();
    let mut w = push_watch(&f, &["--watch", "--waitIdle", "1s", "--json"]);
    w.wait_json("the first sync", 1);
    let before = f.meta(REMOTE).versions;

    // 20 commits 10 ms apart (about 200 ms): time for several pushes if
    // each change were pushed at once.
    let t = Instant::now();
    let last = commit_spaced(&origin, 20, Duration::from_millis(10));
    let burst = t.elapsed();
    wait_server_has(&f, &origin, &mut w);
    wait_reported(&f, &mut w);

    let counters = pulled_counters(&f);
    let new = &counters[before as usize..];
    assert!(
        !new.is_empty() && new.len() < 5,
        "20 commits in {burst:?} became {} versions: {new:?}",
        new.len()
    );
    assert_eq!(*new.last().unwrap(), last);
    // Nothing is pushed before the database has been idle for a second:
    // a burst quicker than that is whole (or nearly) in the first version.
    if burst < Duration::from_millis(800) {
        assert!(
            new[0] >= 10,
            "the first version after a {burst:?} burst holds only commit {}",
            new[0]
        );
    }
    assert_eq!(new_versions(&w.json()).len(), new.len());
    w.ctrl_c();
}

#[test]
fn min_interval_bounds_how_often_it_pushes() {
    let (f, origin) = pushed_ledger();
    let t0 = Instant::now();
    let mut w = push_watch(
        &f,
        &[
            "--watch",
            "--waitIdle",
            "0",
            "--minInterval",
            "2s",
            "--json",
        ],
    );
    w.wait_json("the first sync", 1);

    // A commit every 100 ms for about 5 s.
    let writer = Bursts::start(&origin, 1, Duration::from_millis(100));
    w.wait_for("50 commits", LIMIT, |_| writer.bursts() >= 50);
    writer.stop();
    wait_server_has(&f, &origin, &mut w);
    let elapsed = t0.elapsed().as_secs_f64();
    wait_reported(&f, &mut w);

    let meta = f.meta(REMOTE);
    let new = meta.versions - 1;
    let bound = (elapsed / 2.0).floor() as u64 + 2;
    assert!(
        new <= bound,
        "{new} versions in {elapsed:.1}s with --minInterval 2s (at most {bound})"
    );
    assert!(
        new >= 2,
        "with --waitIdle 0 it should push while the writer runs, made {new} versions"
    );
    let lines = w.json();
    assert_eq!(
        new_versions(&lines),
        (2..=meta.latest).collect::<Vec<_>>(),
        "JSON lines and server disagree"
    );
    assert!(lines.len() as u64 <= bound + 1, "{} syncs", lines.len());
    pulled_counters(&f);
    w.ctrl_c();
}

#[test]
fn max_interval_check_ins_store_nothing_when_idle() {
    let (f, _origin) = pushed_ledger();
    let mut w = push_watch(&f, &["--watch", "--maxInterval", "1s", "--json"]);
    // The first sync and three check-ins (about 3 s).
    let lines = w.wait_json("three check-ins", 4);
    for j in &lines {
        assert_eq!(j["version"], "1", "{j}");
        at_of(j);
    }
    // The first sync may find its fingerprint stale (the first push's
    // connection closing changed the WAL files) and run a push the server
    // finds unchanged; the check-ins after it send nothing.
    for j in &lines[1..] {
        assert_eq!(j["unchanged"], true, "a check-in sent something: {j}");
        assert_eq!(j["pagesSent"], 0, "{j}");
    }
    let meta = f.meta(REMOTE);
    assert_eq!((meta.latest, meta.versions), (1, 1));
    w.ctrl_c();
}

#[test]
fn a_server_stopped_and_restarted_mid_watch_is_survived() {
    let (mut f, origin) = pushed_ledger();
    let mut w = push_watch(&f, &["--watch", "--waitIdle", "100ms"]);
    w.wait_for("the first sync's line", LIMIT, |w| !w.stderr().is_empty());
    let seen = w.stderr().len();

    let addr = f.stop_server();
    // A commit while the server is down: the push fails, is retried.
    let last = commit_n(&origin, 3);
    w.wait_for("a retry line", LIMIT, |w| {
        w.stderr()[seen..]
            .iter()
            .any(|l| l.to_lowercase().contains("retry"))
    });
    assert!(w.still_running(), "the watch gave up\n{}", w.dump());
    f.restart_server_at(&addr);
    wait_server_has(&f, &origin, &mut w);

    let counters = pulled_counters(&f);
    assert_eq!(counters, vec![0, last]);
    w.wait_for("the summary line of version 2", LIMIT, |w| {
        w.stderr()
            .iter()
            .any(|l| l.contains("team/w.db: version 2,"))
    });
    w.ctrl_c();
}

#[test]
fn a_subscriber_elsewhere_follows_the_watch() {
    let (f, origin) = pushed_ledger();
    let key = dash_pull_key(&origin);
    let other = TestEnv::new();
    let replica_path = other.path("other.db");
    let replica = replica_path.as_path();
    let mut sub = Watch::start(
        other
            .sqlrsync()
            .args([REMOTE, "other.db", "--subscribe", "--pullKey", &key])
            .arg("--server")
            .arg(f.ws_url()),
    );
    let holds = |want: i64| {
        move |_: &Watch| {
            replica.exists()
                && match ledger_check(&open_checked(replica)) {
                    Ok(n) => n == want,
                    Err(e) if e.contains("torn") => panic!("subscriber's replica: {e}"),
                    Err(_) => false,
                }
        }
    };
    sub.wait_for("the subscriber's first pull", LIMIT, holds(0));

    let mut w = push_watch(&f, &["--subscribe", "--waitIdle", "100ms"]);
    w.wait_for("the watch's first sync", LIMIT, |w| !w.stderr().is_empty());
    let one = commit_n(&origin, 1);
    sub.wait_for("the subscriber to hold commit 1", LIMIT, holds(one));
    let four = commit_n(&origin, 3);
    sub.wait_for("the subscriber to hold commit 4", LIMIT, holds(four));
    assert_eq!(content_digest(replica), content_digest(&origin));
    w.ctrl_c();
    sub.signal(libc::SIGINT);
    sub.finish(Duration::from_secs(30));
}

#[test]
fn ctrl_c_during_a_push_leaves_everything_whole() {
    let (f, origin) = pushed_ledger();
    let mut w = push_watch(&f, &["--watch", "--waitIdle", "0", "-q"]);
    let writer = Bursts::start(&origin, 1, Duration::from_millis(5));
    w.wait_for("two pushes while the writer runs", LIMIT, |_| {
        f.meta(REMOTE).versions >= 3
    });
    // Ctrl-C while a helper runs, i.e. during a sync (or, if the syncs
    // are too quick to catch, between two).
    let (children, syncing) = catch_a_sync(&w);
    eprintln!("Ctrl-C with children {children:?}, during a sync: {syncing}");
    assert!(
        !children.is_empty(),
        "no probe child: the test's view is off"
    );
    let e = w.ctrl_c();
    let total = writer.stop();
    wait_gone(&children);
    // -q: nothing on stdout, at most the line saying what was stopped.
    assert!(e.out.is_empty(), "-q printed {:?}", e.out);
    assert!(e.err_lines().len() <= 1, "-q printed {:?}", e.err);

    pulled_counters(&f);
    f.verify_store();
    assert_integrity(&origin);
    assert_eq!(ledger_counter(&origin), total, "the origin lost commits");
}

#[test]
fn a_push_by_another_machine_stops_the_watch() {
    let (f, origin) = pushed_ledger();
    let mut w = push_watch(&f, &["--subscribe", "--waitIdle", "100ms", "--json"]);
    w.wait_json("the first sync", 1);

    // Machine B pulls, commits and pushes: version 2.
    let b = TestEnv::new();
    let url = f.ws_url();
    let in_b = |args: &[&str]| {
        let mut c = b.sqlrsync();
        c.args(args)
            .arg("--server")
            .arg(&url)
            .env("SQLRSYNC_ADMIN_KEY", &f.admin);
        run(&mut c)
    };
    assert_ok(&in_b(&[REMOTE, "b.db"]));
    commit_n(&b.path("b.db"), 2);
    let o = in_b(&["b.db", REMOTE, "--json"]);
    assert_ok(&o);
    assert_eq!(json(&o)["version"], "2");
    let theirs = f.meta(REMOTE);

    // The next change here would bury B's version: the watch stops.
    commit_n(&origin, 1);
    let e = w.finish(LIMIT);
    assert_eq!(
        e.status.code(),
        Some(1),
        "{:?}\nstderr:\n{}",
        e.status,
        e.err.join("\n")
    );
    let lines = e.err_lines();
    assert_eq!(lines.len(), 1, "one error line: {lines:?}");
    assert!(lines[0].contains("is at version 2"), "{lines:?}");
    assert_eq!(e.out.len(), 1, "only the first sync's line: {:?}", e.out);
    assert_eq!(f.meta(REMOTE), theirs, "the watch overwrote B's version");
}

#[test]
fn local_watch_keeps_the_replica_whole_and_in_step() {
    let env = TestEnv::new();
    let origin = env.path("origin.db");
    let replica = env.path("replica.db");
    make_ledger(&origin, true, ACCTS);
    let mut w = Watch::start(env.sqlrsync().args([
        "origin.db",
        "./replica.db",
        "--watch",
        "--waitIdle",
        "100ms",
        "--json",
    ]));
    let first = w.wait_json("the first LOCAL sync", 1);
    assert_eq!(first[0]["mode"], "LOCAL", "{}", first[0]);
    assert!(first[0]["origin"].is_string() && first[0]["replica"].is_string());
    assert!(first[0]["seconds"].is_number(), "{}", first[0]);
    at_of(&first[0]);
    assert_eq!(ledger_counter(&replica), 0);

    // While the writer runs, every look at the replica is whole and never
    // older than the look before.
    let whole = |c: &Connection| -> i64 {
        let r: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(r, "ok", "integrity_check of the replica");
        ledger_check(c).unwrap_or_else(|e| panic!("replica: {e}"))
    };
    let writer = Bursts::start(&origin, 5, Duration::from_millis(250));
    let (mut seen, mut looks) = (0, 0);
    while writer.bursts() < 10 {
        let now = whole(&open_checked(&replica));
        assert!(now >= seen, "the replica went back from {seen} to {now}");
        seen = now;
        looks += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let last = writer.stop();
    assert!(looks >= 3 && seen > 0, "{looks} looks, last saw {seen}");
    w.wait_for("the replica to catch up", LIMIT, |_| {
        ledger_check(&open_checked(&replica)) == Ok(last)
    });
    assert_eq!(content_digest(&replica), content_digest(&origin));
    let lines = w.json();
    assert!(lines.len() >= 3, "{} syncs", lines.len());
    assert!(lines.iter().all(|j| j["mode"] == "LOCAL"), "{lines:?}");

    // Ctrl-C while a writer commits (during a sync if one is caught).
    let writer = Bursts::start(&origin, 3, Duration::from_millis(150));
    w.wait_json("a sync while the second writer runs", lines.len() + 1);
    let (children, syncing) = catch_a_sync(&w);
    eprintln!("Ctrl-C with children {children:?}, during a sync: {syncing}");
    w.ctrl_c();
    let total = writer.stop();
    wait_gone(&children);
    whole(&open_checked(&replica));
    assert_integrity(&origin);
    assert_eq!(ledger_counter(&origin), total);
}
