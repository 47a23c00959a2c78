//! Wrong keys, per client address: slowed down, and logged in summary.
//!
//! A key is 24 random characters, so guessing one is hopeless; what a
//! client sending wrong keys as fast as it can does achieve is load (every
//! refusal is a hash and an index lookup, ~9,000 a second on one core) and
//! a log with a line per attempt. So each address that sent a wrong key
//! gets an entry here: after [`FREE_FAILURES`] wrong keys, its next key
//! check waits, for a delay that doubles with each further one up to
//! `--max-key-delay` (1 s by default). The wait comes before the check
//! (before admission takes a session slot, so waiting clients hold no
//! slot), and the turns of one address are spaced by that delay, so many
//! connections at once from it gain nothing; when its queue is longer
//! than [`MAX_QUEUE`], it is answered 429 at once. A key that checks out
//! (a session opened, or refused only for lack of access) clears the
//! entry. Entries are forgotten [`FORGET_AFTER`] after their last wrong
//! key, and the table holds at most [`MAX_CLIENTS`] addresses (IPv6 ones
//! by /64, what one host usually has), dropping the oldest half when full.
//!
//! Logging: an address's first wrong key is logged at once; the ones that
//! follow within [`LOG_EVERY`] are counted, and a line per address says
//! how many at most every [`LOG_EVERY`] (a background task flushes the
//! counts of addresses that went quiet).
//!
//! The address is the TCP peer's: behind a reverse proxy every client is
//! the proxy, so one client's wrong keys then slow the others' key checks
//! too (never their right keys' outcome).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};

use super::app::Refusal;
use super::store::lock;

/// Wrong keys an address may send before it is slowed down (typos).
pub const FREE_FAILURES: u32 = 3;
/// The first delay; each further wrong key doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(50);
/// Longest an address's queue of waiting key checks may be.
pub const MAX_QUEUE: Duration = Duration::from_secs(5);
/// An address with no wrong key for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses tracked at most.
const MAX_CLIENTS: usize = 8192;
/// At most one log line per address per this long.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Lines one flush writes at most; the rest are summed in one line.
const MAX_FLUSH_LINES: usize = 50;

/// Where a key check came from: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Client(IpAddr);

impl Client {
    fn of(ip: IpAddr) -> Client {
        Client(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        })
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// What one address has done lately.
#[derive(Debug)]
struct Entry {
    /// Wrong keys since its last right one.
    failures: u32,
    /// When its next key check may run.
    next_turn: Instant,
    /// Its last wrong key.
    last_failure: Instant,
    /// Wrong keys not logged yet.
    unlogged: u64,
    /// Requests answered 429 not logged yet.
    throttled: u64,
    /// When a line about it was last written.
    logged_at: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            failures: 0,
            next_turn: now,
            last_failure: now,
            unlogged: 0,
            throttled: 0,
            logged_at: None,
        }
    }

    /// Writes the line for what is not logged yet, if anything.
    fn log(&mut self, who: Client, now: Instant) {
        if self.unlogged == 0 && self.throttled == 0 {
            return;
        }
        let secs = self
            .logged_at
            .map_or(0, |t| now.duration_since(t).as_secs());
        if self.logged_at.is_none() && self.unlogged == 1 && self.throttled == 0 {
            tracing::warn!(address = %who, "refused an unknown or revoked key");
        } else {
            tracing::warn!(address = %who, wrong_keys = self.unlogged, throttled = self.throttled,
                seconds = secs, failures = self.failures,
                "refused unknown or revoked keys from one address (slowed down)");
        }
        self.unlogged = 0;
        self.throttled = 0;
        self.logged_at = Some(now);
    }
}

/// How a key check went, for the address's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyCheck {
    /// The key is unknown or revoked.
    Wrong,
    /// The key is real (whether or not it opens this replica).
    Right,
    /// The request was refused before its key was looked at.
    Skipped,
}

impl KeyCheck {
    /// Read from admission's answer: the order of its checks (slot, key,
    /// then path and access; see [`super::admission`]) makes a 401 to a
    /// request with a key a wrong key, and a 403 or 404 a real key that
    /// lacks access.
    fn of<T>(res: &Result<T, Refusal>) -> KeyCheck {
        match res {
            Ok(_) => KeyCheck::Right,
            Err(r) if r.status() == StatusCode::UNAUTHORIZED => KeyCheck::Wrong,
            Err(r) if matches!(r.status(), StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) => {
                KeyCheck::Right
            }
            Err(_) => KeyCheck::Skipped,
        }
    }
}

/// The table of addresses that sent wrong keys.
pub struct KeyThrottle {
    /// The longest delay (0: key checks never wait).
    max_delay: Duration,
    table: Mutex<HashMap<Client, Entry>>,
    /// The flushing task runs (started with the first wrong key).
    flushing: AtomicBool,
}

impl KeyThrottle {
    pub fn new(max_delay: Duration) -> Arc<KeyThrottle> {
        Arc::new(KeyThrottle {
            max_delay,
            table: Mutex::new(HashMap::new()),
            flushing: AtomicBool::new(false),
        })
    }

    /// Runs `admit` (a handler's admission) for a request from `peer`:
    /// first waits for the address's turn when it sent wrong keys, then
    /// records how the key check went. Requests without a key pass as
    /// they are (nothing to guess).
    pub async fn admit<T>(
        self: &Arc<Self>,
        peer: IpAddr,
        h: &HeaderMap,
        admit: impl FnOnce() -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        if super::admission::authorization(h).is_none() {
            return admit();
        }
        let who = Client::of(peer);
        self.wait_turn(who).await?;
        let res = admit();
        match KeyCheck::of(&res) {
            KeyCheck::Wrong => self.failed(who),
            KeyCheck::Right => self.succeeded(who),
            KeyCheck::Skipped => {}
        }
        res
    }

    /// The wait before the check after `failures` wrong keys.
    fn delay(&self, failures: u32) -> Duration {
        if failures < FREE_FAILURES || self.max_delay.is_zero() {
            return Duration::ZERO;
        }
        let doublings = (failures - FREE_FAILURES).min(16);
        (FIRST_DELAY * 2u32.pow(doublings)).min(self.max_delay)
    }

    /// Sleeps until `who` may have its key checked; 429 when its queue is
    /// too long already.
    async fn wait_turn(&self, who: Client) -> Result<(), Refusal> {
        let turn = {
            let mut t = lock(&self.table);
            let Some(e) = t.get_mut(&who) else {
                return Ok(());
            };
            let delay = self.delay(e.failures);
            if delay.is_zero() {
                return Ok(());
            }
            let now = Instant::now();
            let turn = e.next_turn.max(now);
            if turn - now > MAX_QUEUE {
                e.throttled += 1;
                return Err(Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many wrong keys from this address; try again later",
                ));
            }
            // Space the turns of concurrent requests from one address.
            e.next_turn = turn + delay;
            turn
        };
        tokio::time::sleep_until(turn.into()).await;
        Ok(())
    }

    fn failed(self: &Arc<Self>, who: Client) {
        self.start_flushing();
        let now = Instant::now();
        let mut t = lock(&self.table);
        if !t.contains_key(&who) && t.len() >= MAX_CLIENTS {
            make_room(&mut t, now);
        }
        let e = t.entry(who).or_insert_with(|| Entry::new(now));
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        e.next_turn = e.next_turn.max(now + self.delay(e.failures));
        e.unlogged += 1;
        if e.logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            e.log(who, now);
        }
    }

    fn succeeded(&self, who: Client) {
        let mut t = lock(&self.table);
        if let Some(mut e) = t.remove(&who) {
            e.log(who, Instant::now());
        }
    }

    /// Starts the task that writes the counts of addresses that went quiet
    /// (it ends when the server's state is dropped).
    fn start_flushing(self: &Arc<Self>) {
        if self.flushing.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<KeyThrottle> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LOG_EVERY);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(me) = weak.upgrade() else { return };
                me.flush(Instant::now());
            }
        });
    }

    /// Logs what is due and forgets the addresses that went quiet long ago.
    fn flush(&self, now: Instant) {
        let mut t = lock(&self.table);
        let (mut lines, mut more, mut more_keys) = (0, 0u64, 0u64);
        for (who, e) in t.iter_mut() {
            let due = e
                .logged_at
                .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
            if !due || e.unlogged + e.throttled == 0 {
                continue;
            }
            if lines < MAX_FLUSH_LINES {
                e.log(*who, now);
                lines += 1;
            } else {
                more += 1;
                more_keys += e.unlogged + e.throttled;
                (e.unlogged, e.throttled, e.logged_at) = (0, 0, Some(now));
            }
        }
        if more > 0 {
            tracing::warn!(
                addresses = more,
                refused = more_keys,
                "refused unknown or revoked keys from more addresses"
            );
        }
        t.retain(|_, e| {
            now.duration_since(e.last_failure) < FORGET_AFTER || e.unlogged + e.throttled > 0
        });
    }
}

/// The table is full: forget the addresses that went quiet, and if that is
/// not enough the older half (by last wrong key), counting in one line
/// what they had not logged yet.
fn make_room(t: &mut HashMap<Client, Entry>, now: Instant) {
    t.retain(|_, e| now.duration_since(e.last_failure) < FORGET_AFTER);
    if t.len() < MAX_CLIENTS {
        return;
    }
    let mut ages: Vec<Instant> = t.values().map(|e| e.last_failure).collect();
    ages.sort_unstable();
    let cut = ages[ages.len() / 2];
    let mut dropped = (0usize, 0u64);
    t.retain(|_, e| {
        let keep = e.last_failure > cut;
        if !keep {
            dropped.0 += 1;
            dropped.1 += e.unlogged + e.throttled;
        }
        keep
    });
    tracing::warn!(
        addresses = dropped.0,
        unlogged = dropped.1,
        "too many addresses sending wrong keys; forgot the older half"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_after_the_free_failures_up_to_the_limit() {
        let t = KeyThrottle::new(Duration::from_secs(1));
        let d: Vec<u128> = (0..10).map(|f| t.delay(f).as_millis()).collect();
        assert_eq!(d, [0, 0, 0, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(t.delay(u32::MAX), Duration::from_secs(1));
        let off = KeyThrottle::new(Duration::ZERO);
        assert_eq!(off.delay(100), Duration::ZERO);
    }

    #[test]
    fn ipv6_clients_are_their_64_and_mapped_ipv4_is_ipv4() {
        let a = Client::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Client::of("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = Client::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let m = Client::of("::ffff:10.0.0.7".parse().unwrap());
        assert_eq!(m, Client::of("10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn a_full_table_keeps_the_newer_half() {
        let mut t = HashMap::new();
        let start = Instant::now();
        for i in 0..MAX_CLIENTS as u32 {
            let mut e = Entry::new(start);
            e.last_failure = start + Duration::from_millis(i as u64);
            t.insert(Client(IpAddr::V4(i.into())), e);
        }
        make_room(&mut t, start + Duration::from_secs(1));
        assert!(t.len() < MAX_CLIENTS && t.len() >= MAX_CLIENTS / 2 - 1);
        assert!(!t.contains_key(&Client(IpAddr::V4(0u32.into()))));
        assert!(t.contains_key(&Client(IpAddr::V4((MAX_CLIENTS as u32 - 1).into()))));
    }
}
