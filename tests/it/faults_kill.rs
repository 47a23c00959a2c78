//! Process kills against the real client and the real server on loopback:
//! SIGKILL of `sqlrsync` at seeded-random moments of a large push and of a
//! pull into a replica that a reader keeps querying, SIGKILL of
//! `sqlrsync-server` during pushes and pulls with restarts on the same data
//! dir, and a writer committing to ORIGIN all through a series of pushes.
//!
//! What must hold after every fault: the server's latest version is the
//! previous one or the new one, whole (never a torn mix, never a partial
//! version); every committed version stays intact across restarts; no
//! staging or cache files pile up; the local replica is its old or new self;
//! and the next push or pull simply works.
//!
//! Trial counts are the CI ones; `SQLRSYNC_LONG_TESTS=1` runs more.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::faults::*;
use crate::support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Seed of the kill moments: failures reproduce.
const SEED: u64 = 0x5eed_c0de;

/// Two database states that differ in about 40% of their pages (~1.7 MB of
/// a 4.3 MB file), so a push or pull between them takes a while.
fn two_states(env: &TestEnv) -> [Snapshot; 2] {
    let a = env.path("state-a.db");
    make_db(
        &a,
        DbSpec {
            rows: 4000,
            row_bytes: 1000,
            ..DbSpec::default()
        },
    );
    let b = env.path("state-b.db");
    std::fs::copy(&a, &b).unwrap();
    rusqlite::Connection::open(&b)
        .unwrap()
        .execute(
            "UPDATE t SET v = randomblob(1000), n = n + 1 WHERE (id / 8) % 5 < 2",
            [],
        )
        .unwrap();
    [Snapshot::of(&a), Snapshot::of(&b)]
}

fn push_args(origin: &Path) -> Vec<String> {
    vec![
        origin.display().to_string(),
        "team/big.db".into(),
        "--json".into(),
    ]
}

/// Pushes `origin` to team/big.db and waits; returns the output.
fn push(f: &Fixture, origin: &Path) -> std::process::Output {
    let args = push_args(origin);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&mut f.admin_cmd(&args))
}

#[test]
fn client_killed_at_random_moments_of_a_large_push() {
    let f = Fixture::start();
    let states = two_states(&f.env);
    let origin = f.path("origin.db");
    let check = f.path("check.db");

    install(&states[0].path, &origin);
    assert_ok(&push(&f, &origin));
    // Calibration pushes (0 -> 1 -> 0 -> 1) tell how long a push takes.
    let mut push_time = Duration::MAX;
    for s in [1, 0, 1] {
        install(&states[s].path, &origin);
        let t = Instant::now();
        assert_ok(&push(&f, &origin));
        push_time = push_time.min(t.elapsed());
    }
    let mut meta = f.meta("team/big.db");
    assert_eq!(meta.latest_hash(), Some(states[1].hash.as_str()));

    let mut rng = StdRng::seed_from_u64(SEED);
    let n = trials(20, 100);
    let mut current = 1;
    let (mut killed_before, mut killed_after, mut landed) = (0, 0, 0);
    for trial in 0..n {
        let next = 1 - current;
        install(&states[next].path, &origin);
        // Spread over the push and past its end; the first trial kills
        // before the handshake, the second only once the push has ended.
        let at = match trial {
            0 => Duration::ZERO,
            _ => push_time.mul_f64(rng.random_range(0.0..1.15)),
        };
        let args = push_args(&origin);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_captured(&mut f.admin_cmd(&args));
        if trial == 1 {
            wait_until("the push to end", Duration::from_secs(60), || {
                child.try_wait().unwrap().is_some()
            });
        } else {
            thread::sleep(at);
        }
        sigkill(&mut child);
        let o = wait_output(child, Duration::from_secs(60));
        wait_helpers_gone(&origin);
        let finished = o.status.success();

        // Every look at the server finds the previous state or the new one
        // as the latest, never both committed, never anything else. (A
        // kill after ORIGIN_END may still land while we look: the server
        // needs nothing more from the client, so the version can appear
        // between two looks.)
        let before = meta.versions;
        let now = f.meta("team/big.db");
        let is_state = |h: &str| h == states[current].hash || h == states[next].hash;
        assert!(
            is_state(now.latest_hash().unwrap()),
            "trial {trial} (kill at {at:?}): latest is neither state"
        );
        assert!(now.versions <= before + 1, "trial {trial}: extra versions");
        if finished {
            assert_eq!(now.latest_hash(), Some(states[next].hash.as_str()));
            assert_eq!(now.versions, before + 1, "trial {trial}");
        }
        // Pull the latest: whole (the client checks the file against the
        // server's versionHash), and one of the two states.
        let pulled = run(&mut f.admin_cmd(&["team/big.db", check.to_str().unwrap(), "--json"]));
        assert_ok(&pulled);
        let report = json(&pulled);
        assert_eq!(report["verified"], true, "trial {trial}");
        let v: u64 = report["version"].as_str().unwrap().parse().unwrap();
        assert!(
            v >= now.latest && v <= before + 1,
            "trial {trial}: pulled v{v}"
        );
        let after = f.meta("team/big.db");
        assert!(is_state(&after.hashes[v as usize - 1]));
        assert_integrity(&check);
        // The next push works and leaves the new state as the latest: the
        // killed push stored it already ("no changes") or this one does.
        let redo = push(&f, &origin);
        assert_ok(&redo);
        let said = json(&redo)["messages"].to_string();
        meta = f.meta("team/big.db");
        assert_eq!(meta.latest_hash(), Some(states[next].hash.as_str()));
        assert_eq!(meta.versions, before + 1, "trial {trial}: one new version");
        if finished {
            killed_after += 1;
        } else if said.contains("no changes") {
            landed += 1;
        } else {
            killed_before += 1;
        }
        current = next;
    }
    // Kills landed in each phase: before the commit, after it but before
    // the client heard, and after the client finished.
    eprintln!(
        "{n} kills, push {push_time:?}: {killed_before} nothing stored, {landed} stored unseen, {killed_after} after the end"
    );
    assert!(
        killed_before > 0 && killed_after > 0,
        "kill moments too narrow"
    );
    // Every version is one of the two states, alternating; the latest and
    // the one before it (rebuilt from back deltas) pull as those states.
    for (i, h) in meta.hashes.iter().enumerate() {
        assert_eq!(h, &states[i % 2].hash, "version {}", i + 1);
    }
    assert_ok(&run(
        &mut f.admin_cmd(&["team/big.db", check.to_str().unwrap()])
    ));
    assert_eq!(content_digest(&check), states[current].digest);
    let older = format!("team/big.db@{}", meta.latest - 1);
    assert_ok(&run(&mut f.admin_cmd(&[&older, check.to_str().unwrap()])));
    assert_eq!(content_digest(&check), states[1 - current].digest);
}

/// Rewrites about 40% of the rows of `path` (two of five row classes,
/// rotating with `k`), so every state differs from the one before.
fn next_state(path: &Path, k: usize) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute(
            "UPDATE t SET v = randomblob(1000), n = n + 1 WHERE (id / 8) % 5 IN (?1, ?2)",
            [(k % 5) as i64, ((k + 2) % 5) as i64],
        )
        .unwrap();
}

/// Scratch areas and the replica folder after a restart: nothing left from
/// the killed sessions, no unreferenced pack bytes, one version file.
#[track_caller]
fn assert_clean_after_restart(f: &Fixture, trial: usize) {
    let (files, bytes) = scratch_usage(&f.data);
    assert_eq!(
        (files, bytes),
        (0, 0),
        "trial {trial}: staging/cache after restart: {:?}",
        files_with_sizes(&f.data.join("staging"))
    );
    assert_eq!(
        unreferenced_pack_bytes(&f.data),
        0,
        "trial {trial}: pack tail"
    );
    let replica_files = files_with_sizes(&f.data.join("replicas"));
    assert_eq!(replica_files.len(), 1, "trial {trial}: {replica_files:?}");
}

#[test]
fn server_killed_during_pushes_and_pulls_then_restarted() {
    let mut f = Fixture::start();
    let origin = f.path("origin.db");
    let pulled = f.path("pulled.db");
    make_db(
        &origin,
        DbSpec {
            rows: 2500,
            row_bytes: 1000,
            ..DbSpec::default()
        },
    );
    // What each version must hold: index = version number - 1.
    let mut versions: Vec<Snapshot> = Vec::new();
    let mut push_time = Duration::MAX;
    for k in 0..2 {
        if k > 0 {
            next_state(&origin, k);
        }
        let t = Instant::now();
        assert_ok(&push(&f, &origin));
        push_time = push_time.min(t.elapsed());
        versions.push(Snapshot::of(&origin));
    }
    let t = Instant::now();
    assert_ok(&run(
        &mut f.admin_cmd(&["team/big.db", pulled.to_str().unwrap()])
    ));
    let pull_time = t.elapsed();
    let mut pulled_state = versions.len();

    let mut rng = StdRng::seed_from_u64(SEED ^ 2);
    let n = trials(10, 40);
    let mut failed = 0;
    for trial in 0..n {
        let pushing = trial % 2 == 0;
        let before = f.meta("team/big.db");
        // Pulls mostly take the latest; every other one an older version,
        // which the server first rebuilds in its cache.
        let target = if !pushing && trial % 4 == 3 {
            rng.random_range(1..versions.len())
        } else {
            versions.len()
        };
        let mut child = if pushing {
            next_state(&origin, versions.len());
            let args = push_args(&origin);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_captured(&mut f.admin_cmd(&args))
        } else {
            let at = format!("team/big.db@{target}");
            spawn_captured(&mut f.admin_cmd(&[&at, pulled.to_str().unwrap(), "--json"]))
        };
        // Kill moments: seeded-random over the transfer, or (two of the
        // pushes) the moment the commit starts writing pages to the packs,
        // and the moment the new version file appears (between the rename
        // and the metadata transaction, or just after it).
        let replica_dir = f.data.join("replicas");
        let packs_dir = f.data.join("packs");
        let new_file = format!("v{}.db", before.latest + 1);
        let packs_before = files_with_sizes(&packs_dir)
            .iter()
            .map(|(_, l)| l)
            .sum::<u64>();
        let event: Option<Box<dyn Fn() -> bool>> = match trial {
            4 => Some(Box::new(|| {
                files_with_sizes(&packs_dir)
                    .iter()
                    .map(|(_, l)| l)
                    .sum::<u64>()
                    > packs_before
            })),
            8 => Some(Box::new(|| {
                files_with_sizes(&replica_dir)
                    .iter()
                    .any(|(p, _)| p.ends_with(&new_file))
            })),
            _ => None,
        };
        let span = if pushing { push_time } else { pull_time };
        // The first kill comes at once (the client is still connecting).
        let draw = if trial == 0 {
            0.0
        } else {
            rng.random_range(0.0..1.0)
        };
        match event {
            Some(happened) => {
                let end = Instant::now() + Duration::from_secs(30);
                while !happened() && child.try_wait().unwrap().is_none() && Instant::now() < end {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            None => thread::sleep(span.mul_f64(draw)),
        }
        f.kill_server();
        let o = wait_output(child, Duration::from_secs(60));
        if !o.status.success() {
            failed += 1;
            let lines = error_lines(&o);
            eprintln!("trial {trial} pushing={pushing}: {lines:?}");
            assert_eq!(lines.len(), 1, "trial {trial}: one error line: {lines:?}");
        }
        if pushing {
            wait_helpers_gone(&origin);
        } else {
            wait_helpers_gone(&pulled);
        }

        f.restart_server();
        assert_clean_after_restart(&f, trial);
        let after = f.meta("team/big.db");
        if pushing {
            let new = Snapshot::of(&origin);
            let landed = after.latest_hash() == Some(new.hash.as_str());
            eprintln!("trial {trial}: push stored before the kill: {landed}");
            assert!(
                landed || after == before,
                "trial {trial}: latest is neither the previous version nor the new one"
            );
            if o.status.success() {
                assert!(landed, "trial {trial}: success reported, nothing stored");
            } else if landed {
                // The server committed but died before saying so: the
                // client must not claim that nothing was stored.
                assert!(
                    !stderr(&o).contains("no new version was created"),
                    "trial {trial}: the client says nothing was stored, but it was: {}",
                    stderr(&o)
                );
            }
            // The interrupted push can be redone.
            let redo = push(&f, &origin);
            assert_ok(&redo);
            let meta = f.meta("team/big.db");
            assert_eq!(meta.latest_hash(), Some(new.hash.as_str()));
            assert_eq!(meta.versions, before.versions + 1, "trial {trial}");
            versions.push(new);
        } else {
            assert_eq!(after, before, "trial {trial}: a pull changed the versions");
            // The local replica is its old self or the latest, whole.
            assert_integrity(&pulled);
            let d = content_digest(&pulled);
            assert!(
                d == versions[pulled_state - 1].digest || d == versions[target - 1].digest,
                "trial {trial}: the replica is neither its old version nor the new one"
            );
            let at = format!("team/big.db@{target}");
            assert_ok(&run(&mut f.admin_cmd(&[&at, pulled.to_str().unwrap()])));
            assert_eq!(content_digest(&pulled), versions[target - 1].digest);
            pulled_state = target;
        }
    }
    eprintln!("{n} server kills: {failed} interrupted a transfer");
    assert!(failed > 0, "no kill interrupted anything");
    // Every committed version is intact: pulled @N it is what was pushed.
    let check = f.path("check.db");
    for (i, s) in versions.iter().enumerate() {
        let at = format!("team/big.db@{}", i + 1);
        assert_ok(&run(&mut f.admin_cmd(&[&at, check.to_str().unwrap()])));
        assert_eq!(content_digest(&check), s.digest, "version {}", i + 1);
    }
    f.kill_server();
    f.verify_store();
}

/// A thread querying a replica the whole time: every read transaction must
/// see the ledger invariant hold with one of the `allowed` counters, and no
/// error may happen (SQLITE_BUSY is absorbed by the busy timeout).
struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    handle: thread::JoinHandle<Result<(), String>>,
}

impl Reader {
    fn start(path: &Path, allowed: [i64; 2]) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let (s, r, p) = (stop.clone(), reads.clone(), path.to_path_buf());
        let handle = thread::spawn(move || {
            let c = open_checked(&p);
            while !s.load(Ordering::Relaxed) {
                let seen = ledger_check(&c).map_err(|e| format!("reader: {e}"))?;
                if !allowed.contains(&seen) {
                    return Err(format!("reader saw counter {seen}, not {allowed:?}"));
                }
                r.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(3));
            }
            Ok(())
        });
        Reader {
            stop,
            reads,
            handle,
        }
    }

    /// Stops it; returns how many reads it made, or its first error.
    fn stop(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()?;
        Ok(self.reads.load(Ordering::Relaxed))
    }
}

#[test]
fn client_killed_during_pulls_while_a_reader_queries_the_replica() {
    let f = Fixture::start();
    let origin = f.path("ledger.db");
    make_ledger(&origin, false, ACCOUNTS);
    // Version 1 and version 2 differ in half the accounts (about 1.5 MB of
    // a 3.3 MB file).
    let a = ledger_bulk(&origin, 0, 2);
    assert_ok(&run(
        &mut f.admin_cmd(&[origin.to_str().unwrap(), "team/ledger.db"])
    ));
    let digest_a = content_digest(&origin);
    let b = ledger_bulk(&origin, 1, 2);
    assert_ok(&run(
        &mut f.admin_cmd(&[origin.to_str().unwrap(), "team/ledger.db"])
    ));
    let digest_b = content_digest(&origin);
    let digests = [digest_a, digest_b];
    let counters = [a, b];

    // Two replicas at version 1: one in rollback-journal mode, one in WAL.
    let replicas = [f.path("replica-rollback.db"), f.path("replica-wal.db")];
    for r in &replicas {
        assert_ok(&run(
            &mut f.admin_cmd(&["team/ledger.db@1", r.to_str().unwrap()])
        ));
    }
    open_checked(&replicas[1])
        .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    let readers: Vec<Reader> = replicas
        .iter()
        .map(|r| Reader::start(r, counters))
        .collect();
    // How long a pull from one version to the other takes, with the
    // readers running: the faster of two.
    let mut pull_time = Duration::MAX;
    for (i, v) in [(0, 2), (0, 1)] {
        let t = Instant::now();
        let at = format!("team/ledger.db@{v}");
        assert_ok(&run(&mut f.admin_cmd(&[&at, replicas[i].to_str().unwrap()])));
        pull_time = pull_time.min(t.elapsed());
    }
    let mut state = [0usize, 0usize]; // which version each replica holds (0: v1)
    let mut rng = StdRng::seed_from_u64(SEED ^ 3);
    let n = trials(20, 100);
    let mut changed = 0;
    for trial in 0..n {
        let i = trial % 2;
        let replica = &replicas[i];
        let want = 1 - state[i];
        let at = format!("team/ledger.db@{}", want + 1);
        let mut child = spawn_captured(&mut f.admin_cmd(&[&at, replica.to_str().unwrap()]));
        // Seeded-random over the pull and past its end; the first trial
        // kills at once, the second only once the pull has ended.
        let draw = rng.random_range(0.0..1.2);
        match trial {
            0 => {}
            1 => wait_until("the pull to end", Duration::from_secs(60), || {
                child.try_wait().unwrap().is_some()
            }),
            _ => thread::sleep(pull_time.mul_f64(draw)),
        }
        sigkill(&mut child);
        let o = wait_output(child, Duration::from_secs(60));
        wait_helpers_gone(replica);
        // The replica is its old version or the new one, whole.
        assert_integrity(replica);
        let d = content_digest(replica);
        let now = digests
            .iter()
            .position(|x| *x == d)
            .unwrap_or_else(|| panic!("trial {trial}: {} is neither version", replica.display()));
        assert!(now == state[i] || now == want, "trial {trial}");
        if o.status.success() {
            assert_eq!(
                now, want,
                "trial {trial}: success reported, replica unchanged"
            );
        }
        assert_eq!(ledger_counter(replica), counters[now]);
        if now != state[i] {
            changed += 1;
        }
        state[i] = now;
    }
    for r in readers {
        let reads = r.stop().unwrap();
        assert!(reads > 20, "the reader hardly ran ({reads} reads)");
    }
    eprintln!("{n} pulls killed: {changed} replaced the replica");
    assert!(changed > 0 && changed < n, "kill moments too narrow");
    // The next pull works on both.
    for r in &replicas {
        assert_ok(&run(
            &mut f.admin_cmd(&["team/ledger.db", r.to_str().unwrap()])
        ));
        assert_eq!(content_digest(r), digests[1]);
    }
}

/// Pushes ORIGIN `rounds` times while a writer commits to it; every version
/// the server stored must be a consistent snapshot.
fn writer_through_pushes(wal: bool) {
    let f = Fixture::start();
    let origin = f.path("live.db");
    make_ledger(&origin, wal, ACCOUNTS);
    let remote = if wal {
        "team/live-wal.db"
    } else {
        "team/live.db"
    };
    let writer = Writer::start(&origin, Duration::from_micros(500));
    let rounds = trials(5, 25);
    for round in 0..rounds {
        let before = writer.commits();
        let o = run(&mut f.admin_cmd(&[origin.to_str().unwrap(), remote, "--json"]));
        assert_ok(&o);
        assert_eq!(json(&o)["version"], (round + 1).to_string().as_str());
        assert!(
            writer.commits() > before || round == 0,
            "the writer did not commit during push {round}"
        );
    }
    let total = writer.stop() as i64;
    assert!(total > 0);
    // Every stored version keeps the invariant, and they move forward.
    let meta = f.meta(remote);
    assert_eq!(meta.versions, rounds as u64);
    let check = f.path("check.db");
    let mut last = -1;
    for v in 1..=rounds {
        let at = format!("{remote}@{v}");
        assert_ok(&run(&mut f.admin_cmd(&[&at, check.to_str().unwrap()])));
        assert_integrity(&check);
        let seen = ledger_counter(&check);
        assert!(seen > last, "version {v} has counter {seen} after {last}");
        last = seen;
    }
    // Quiet now: one more push stores exactly the final state.
    assert_ok(&run(&mut f.admin_cmd(&[origin.to_str().unwrap(), remote])));
    assert_ok(&run(&mut f.admin_cmd(&[remote, check.to_str().unwrap()])));
    assert_eq!(content_digest(&check), content_digest(&origin));
    assert_eq!(ledger_counter(&check), total);
}

#[test]
fn writer_commits_to_a_wal_origin_through_pushes() {
    writer_through_pushes(true);
}

#[test]
fn writer_commits_to_a_rollback_journal_origin_through_pushes() {
    writer_through_pushes(false);
}

/// `sqlrsync-server verify` run next to a live server while pushes commit:
/// it must only read (not clean up staging files, cut pack tails or remove
/// version files of the live server), and must not report damage that is
/// only a commit in progress.
#[test]
fn verify_next_to_a_live_server_disturbs_nothing() {
    let f = Fixture::start();
    let states = two_states(&f.env);
    let origin = f.path("origin.db");
    install(&states[0].path, &origin);
    assert_ok(&push(&f, &origin));
    let rounds = trials(3, 20);
    for round in 0..rounds {
        let next = (round + 1) % 2;
        install(&states[next].path, &origin);
        let args = push_args(&origin);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = spawn_captured(&mut f.admin_cmd(&args));
        let mut verifies = 0;
        while child.try_wait().unwrap().is_none() {
            let v = run(f
                .env
                .command(SERVER)
                .args(["verify", "--data-dir"])
                .arg(&f.data));
            assert_ok(&v);
            verifies += 1;
        }
        let o = wait_output(child, Duration::from_secs(60));
        assert_ok(&o);
        assert!(verifies > 0);
        let meta = f.meta("team/big.db");
        assert_eq!(meta.latest_hash(), Some(states[next].hash.as_str()));
        assert_eq!(meta.versions, round as u64 + 2);
    }
    let check = f.path("check.db");
    assert_ok(&run(
        &mut f.admin_cmd(&["team/big.db", check.to_str().unwrap()])
    ));
    assert_eq!(content_digest(&check), states[rounds % 2].digest);
    f.verify_store();
}
