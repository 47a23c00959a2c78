//! Socket faults between the real `sqlrsync` and the real `sqlrsync-server`
//! on loopback, through the test-owned [`FaultProxy`]: connections cut
//! client-to-server or server-to-client at several byte offsets, stalled
//! (silent with the socket open), delayed, and sliced into 1-byte writes,
//! for pushes and pulls.
//!
//! `SQLRSYNC_LONG_TESTS=1` sweeps many more cut offsets.
//!
//! Slicing and delay must not matter. A cut must give one clear error line,
//! a non-zero exit, no new version on the server and an unchanged local
//! replica; a stall must end (both sides have an idle timeout, short here)
//! the same way instead of hanging. Afterwards the same transfer without
//! the proxy succeeds.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::faults::*;
use crate::support::frames::{replica_hash, replica_ready};
use crate::support::proxy::{Fault, FaultProxy};
use crate::support::*;

/// Idle timeout of both ends, in seconds: short, so a stall ends quickly.
const IDLE_SECS: &str = "2";

/// Longest a faulted transfer may take before the test calls it a hang.
const HANG_LIMIT: Duration = Duration::from_secs(40);

/// A server with a short idle timeout, and two database states that differ
/// in about 40% of their pages (~0.5 MB of a 1.2 MB file).
struct Net {
    f: Fixture,
    states: [Snapshot; 2],
    /// The local database that pushes send.
    origin: PathBuf,
    /// Which state the server's latest version holds.
    current: usize,
}

impl Net {
    fn start() -> Net {
        let f = Fixture::with("team", &["--idle-timeout", IDLE_SECS]);
        let a = f.path("state-a.db");
        make_db(
            &a,
            DbSpec {
                rows: 1100,
                row_bytes: 1000,
                ..DbSpec::default()
            },
        );
        let b = f.path("state-b.db");
        std::fs::copy(&a, &b).unwrap();
        rusqlite::Connection::open(&b)
            .unwrap()
            .execute(
                "UPDATE t SET v = randomblob(1000), n = n + 1 WHERE (id / 8) % 5 < 2",
                [],
            )
            .unwrap();
        let states = [Snapshot::of(&a), Snapshot::of(&b)];
        let origin = f.path("origin.db");
        install(&states[0].path, &origin);
        let net = Net {
            f,
            states,
            origin,
            current: 0,
        };
        assert_ok(&net.push_direct());
        net
    }

    fn server_addr(&self) -> String {
        self.f.server().addr.clone()
    }

    /// `sqlrsync ARGS` against `url` with the short idle timeout.
    fn run_via(&self, url: &str, args: &[&str]) -> Output {
        let mut cmd = self.f.admin_cmd_to(url, args);
        cmd.env("SQLRSYNC_IDLE_TIMEOUT", IDLE_SECS);
        let child = spawn_captured(&mut cmd);
        wait_output(child, HANG_LIMIT)
    }

    fn push_via(&self, url: &str) -> Output {
        self.run_via(url, &[self.origin.to_str().unwrap(), "team/n.db", "--json"])
    }

    fn push_direct(&self) -> Output {
        self.push_via(&self.f.ws_url())
    }

    fn pull_via(&self, url: &str, into: &Path) -> Output {
        self.run_via(url, &["team/n.db", into.to_str().unwrap(), "--json"])
    }

    /// Puts the other state in ORIGIN; returns its index.
    fn next_state(&self) -> usize {
        let next = 1 - self.current;
        install(&self.states[next].path, &self.origin);
        next
    }

    /// A push through a proxy with `fault` that must fail cleanly: one
    /// error line, non-zero exit, no new version. Then the same push
    /// without the proxy succeeds. Returns the error line.
    fn failed_push(&mut self, fault: Fault) -> String {
        let next = self.next_state();
        let before = self.f.meta("team/n.db");
        let proxy = FaultProxy::start(&self.server_addr(), fault);
        let t = Instant::now();
        let o = self.push_via(&proxy.ws_url());
        let took = t.elapsed();
        let lines = error_lines(&o);
        assert!(!o.status.success(), "{fault:?}: the push succeeded");
        assert_eq!(lines.len(), 1, "{fault:?}: one error line: {lines:?}");
        assert!(lines[0].starts_with("sqlrsync: "), "{lines:?}");
        drop(proxy);
        // No partial version: the latest and the versions are unchanged
        // (once the server has noticed; it may still be finishing).
        let data = self.f.data.clone();
        wait_until(
            &format!("the server to drop the push ({fault:?})"),
            HANG_LIMIT,
            || {
                let n = scratch_usage(&data).0;
                if n != 0 {
                    for d in ["staging", "cache"] {
                        if let Ok(rd) = std::fs::read_dir(data.join(d)) {
                            for e in rd.flatten() {
                                eprintln!("left: {}", e.path().display());
                            }
                        }
                    }
                }
                n == 0
            },
        );
        let after = self.f.meta("team/n.db");
        assert_eq!(after, before, "{fault:?} after {took:?}: {}", lines[0]);
        // Retrying without the proxy works.
        let retry = self.push_direct();
        assert_ok(&retry);
        let meta = self.f.meta("team/n.db");
        assert_eq!(meta.latest_hash(), Some(self.states[next].hash.as_str()));
        assert_eq!(meta.versions, before.versions + 1);
        self.current = next;
        lines[0].clone()
    }

    /// A pull through a proxy with `fault` into `replica` (holding the
    /// other state) that must fail cleanly and leave the replica as it was;
    /// then a pull without the proxy succeeds.
    fn failed_pull(&mut self, fault: Fault, replica: &Path) -> String {
        let old = content_digest(replica);
        assert_ne!(old, self.states[self.current].digest, "nothing to pull");
        let before = self.f.meta("team/n.db");
        let proxy = FaultProxy::start(&self.server_addr(), fault);
        let o = self.pull_via(&proxy.ws_url(), replica);
        let lines = error_lines(&o);
        assert!(!o.status.success(), "{fault:?}: the pull succeeded");
        assert_eq!(lines.len(), 1, "{fault:?}: one error line: {lines:?}");
        drop(proxy);
        wait_helpers_gone(replica);
        assert_integrity(replica);
        assert_eq!(
            content_digest(replica),
            old,
            "{fault:?}: the replica changed"
        );
        assert_eq!(self.f.meta("team/n.db"), before);
        let retry = self.pull_via(&self.f.ws_url(), replica);
        assert_ok(&retry);
        assert_eq!(content_digest(replica), self.states[self.current].digest);
        lines[0].clone()
    }

    /// Makes the server's latest the other state (a direct push).
    fn flip(&mut self) {
        let next = self.next_state();
        assert_ok(&self.push_direct());
        self.current = next;
    }

    /// A replica file holding the state the server does not have as latest.
    fn stale_replica(&mut self, name: &str) -> PathBuf {
        let r = self.f.path(name);
        let o = self.pull_via(&self.f.ws_url(), &r);
        assert_ok(&o);
        self.flip();
        r
    }

    /// Bytes (upstream, downstream) of one state-to-state push and pull,
    /// measured through a fault-free proxy.
    fn measure(&mut self) -> ((u64, u64), (u64, u64)) {
        let proxy = FaultProxy::start(&self.server_addr(), Fault::None);
        let next = self.next_state();
        assert_ok(&self.push_via(&proxy.ws_url()));
        self.current = next;
        let push = proxy.bytes();
        let proxy = FaultProxy::start(&self.server_addr(), Fault::None);
        let r = self.stale_replica("measure.db");
        assert_ok(&self.pull_via(&proxy.ws_url(), &r));
        // stale_replica's own pull went direct; only the proxied one counts.
        let pull = proxy.bytes();
        (push, pull)
    }
}

#[test]
fn sliced_and_delayed_connections_still_sync_correctly() {
    let mut net = Net::start();
    let replica = net.f.path("replica.db");
    for fault in [Fault::Slice1, Fault::Delay(Duration::from_millis(3))] {
        // Push through the fault: the new state lands whole.
        let next = net.next_state();
        let proxy = FaultProxy::start(&net.server_addr(), fault);
        let o = net.push_via(&proxy.ws_url());
        assert_ok(&o);
        assert!(proxy.connections.load(std::sync::atomic::Ordering::Relaxed) >= 1);
        net.current = next;
        let meta = net.f.meta("team/n.db");
        assert_eq!(meta.latest_hash(), Some(net.states[next].hash.as_str()));
        // Pull through the fault: verified and equal to the state.
        let proxy = FaultProxy::start(&net.server_addr(), fault);
        let o = net.pull_via(&proxy.ws_url(), &replica);
        assert_ok(&o);
        assert_eq!(json(&o)["verified"], true);
        assert_integrity(&replica);
        assert_eq!(content_digest(&replica), net.states[next].digest);
    }
}

#[test]
fn cut_pushes_store_nothing() {
    let mut net = Net::start();
    let ((up, down), _) = net.measure();
    // Upstream carries the HTTP request and the pages; downstream the
    // upgrade answer, the replica's hashes and the final messages.
    let mut cuts = vec![
        Fault::CutUpstreamAfter(60),
        Fault::CutUpstreamAfter(2_000),
        Fault::CutUpstreamAfter(up / 3),
        Fault::CutUpstreamAfter(up * 9 / 10),
        Fault::CutDownstreamAfter(60),
        Fault::CutDownstreamAfter(300),
        Fault::CutDownstreamAfter(down / 2),
    ];
    if long_tests() {
        // A sweep: every tenth of the upstream, every fifth of the
        // downstream short of its final messages.
        cuts.extend((1..10).map(|k| Fault::CutUpstreamAfter(up * k / 10)));
        cuts.extend((1..5).map(|k| Fault::CutDownstreamAfter((down - 400) * k / 5)));
    }
    for fault in cuts {
        let line = net.failed_push(fault);
        eprintln!("{fault:?}: {line}");
    }
}

/// A push whose connection breaks after the server has everything (the
/// cut falls in the server's final messages): the server stores the
/// version, and the client must not claim that nothing was stored.
#[test]
fn a_push_cut_after_the_server_has_everything_is_not_reported_as_lost() {
    let mut net = Net::start();
    let ((_, down), _) = net.measure();
    let next = net.next_state();
    let before = net.f.meta("team/n.db");
    // The last ~300 downstream bytes are MESSAGE, CONFIG and the close,
    // sent after the commit.
    let proxy = FaultProxy::start(&net.server_addr(), Fault::CutDownstreamAfter(down - 120));
    let o = net.push_via(&proxy.ws_url());
    let lines = error_lines(&o);
    assert!(!o.status.success(), "the push cannot have been confirmed");
    assert_eq!(lines.len(), 1, "{lines:?}");
    wait_until("the server to finish", HANG_LIMIT, || {
        scratch_usage(&net.f.data).0 == 0
    });
    let after = net.f.meta("team/n.db");
    assert_eq!(
        after.latest_hash(),
        Some(net.states[next].hash.as_str()),
        "the server should have committed: {}",
        lines[0]
    );
    assert_eq!(after.versions, before.versions + 1);
    assert!(
        !lines[0].contains("no new version was created"),
        "the client says nothing was stored, but it was: {}",
        lines[0]
    );
    assert!(lines[0].contains("may or may not"), "{}", lines[0]);
    // Pushing again tells: nothing changed (the client finds the server's
    // latest is this database before streaming, or the server says so).
    let again = net.push_direct();
    assert_ok(&again);
    let j = json(&again);
    assert!(
        j["unchanged"] == true || j["messages"].to_string().contains("no changes"),
        "{j}"
    );
    assert_eq!(net.f.meta("team/n.db").versions, before.versions + 1);
}

#[test]
fn cut_pulls_leave_the_replica_unchanged() {
    let mut net = Net::start();
    let (_, (up, down)) = net.measure();
    let replica = net.stale_replica("replica.db");
    let mut cuts = vec![
        Fault::CutUpstreamAfter(60),
        Fault::CutUpstreamAfter(up / 2),
        Fault::CutUpstreamAfter(up * 9 / 10),
        Fault::CutDownstreamAfter(60),
        Fault::CutDownstreamAfter(2_000),
        Fault::CutDownstreamAfter(down / 3),
        Fault::CutDownstreamAfter(down * 9 / 10),
    ];
    if long_tests() {
        cuts.extend((1..5).map(|k| Fault::CutUpstreamAfter(up * k / 5)));
        cuts.extend((1..10).map(|k| Fault::CutDownstreamAfter(down * k / 10)));
    }
    for fault in cuts {
        let line = net.failed_pull(fault, &replica);
        eprintln!("{fault:?}: {line}");
        // failed_pull's retry brought the replica up to date: make it
        // stale again for the next cut.
        net.flip();
    }
}

#[test]
fn stalled_connections_end_with_one_error_instead_of_hanging() {
    let mut net = Net::start();
    let ((push_up, _), (pull_up, _)) = net.measure();
    // Pushes: silent from the first bytes of the HTTP request (the client
    // waits for the upgrade), and from the middle of the pages (the server
    // waits for more).
    for at in [40, push_up / 2] {
        let t = Instant::now();
        let line = net.failed_push(Fault::StallUpstreamAfter(at));
        eprintln!("push stalled at {at}: {line} ({:?})", t.elapsed());
        assert!(
            line.contains("no answer within") || line.contains("no data from"),
            "{line}"
        );
    }
    // Pulls: silent in the request, and while the client sends its hashes.
    let replica = net.stale_replica("replica.db");
    for at in [40, pull_up / 2] {
        let t = Instant::now();
        let line = net.failed_pull(Fault::StallUpstreamAfter(at), &replica);
        eprintln!("pull stalled at {at}: {line} ({:?})", t.elapsed());
        assert!(
            line.contains("no answer within") || line.contains("no data from"),
            "{line}"
        );
        net.flip();
    }
}

#[test]
fn connections_gone_silent_towards_the_client_end_with_one_error() {
    let mut net = Net::start();
    let ((_, push_down), (_, pull_down)) = net.measure();
    // The server's answers stop: in the upgrade answer, in the hashes.
    for at in [40, push_down / 2] {
        let line = net.failed_push(Fault::StallDownstreamAfter(at));
        eprintln!("push silent at {at}: {line}");
        assert!(
            line.contains("no answer within") || line.contains("no data from the server"),
            "{line}"
        );
    }
    // The pages stop half-way.
    let replica = net.stale_replica("replica.db");
    for at in [40, pull_down / 2] {
        let line = net.failed_pull(Fault::StallDownstreamAfter(at), &replica);
        eprintln!("pull silent at {at}: {line}");
        assert!(
            line.contains("no answer within") || line.contains("no data from the server"),
            "{line}"
        );
        net.flip();
    }
}

/// Opens a pull session by hand and then never reads: the server's writes
/// back up (socket buffers full) while the peer stays connected and silent,
/// like a client whose machine froze.
fn frozen_pull(addr: &str, path: &str, key: &str) -> std::net::TcpStream {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /sapi/pull/{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: {key}\r\n\
         X-ReplicaVersion: \r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 101 "), "upgrade refused: {status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // One masked binary frame: a REPLICA_HASH that matches nothing and
    // REPLICA_READY, so the origin sends every page.
    let mut payload = replica_hash(&[0u8; 20]);
    payload.extend(replica_ready());
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
    s
}

/// A client that stops reading (and sending) must not hold its session
/// forever: after the idle timeout the server gives up on it, even though
/// its writes to that client are stuck, and the slot is free again.
#[test]
fn a_client_that_stops_reading_is_let_go() {
    let f = Fixture::with(
        "team",
        &["--idle-timeout", IDLE_SECS, "--max-connections", "1"],
    );
    let db = f.path("big.db");
    make_db(
        &db,
        DbSpec {
            rows: 3000,
            row_bytes: 4000,
            ..DbSpec::default()
        },
    );
    assert_ok(&run(
        &mut f.admin_cmd(&[db.to_str().unwrap(), "team/big.db"])
    ));
    let frozen = frozen_pull(&f.server().addr, "team/big.db", &f.admin);
    // The frozen session holds the only slot for now...
    std::thread::sleep(Duration::from_millis(300));
    let copy = f.path("copy.db");
    let busy = run(&mut f.admin_cmd(&["team/big.db", copy.to_str().unwrap()]));
    assert!(
        !busy.status.success(),
        "the frozen client should hold the slot"
    );
    assert!(stderr(&busy).contains("503"), "{}", stderr(&busy));
    // ...but not for longer than the idle timeout and the closing grace.
    let t = Instant::now();
    loop {
        let o = run(&mut f.admin_cmd(&["team/big.db", copy.to_str().unwrap(), "--json"]));
        if o.status.success() {
            // The client checked the copy against the versionHash.
            assert_eq!(json(&o)["verified"], true);
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the frozen client still holds its session: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(frozen);
}
