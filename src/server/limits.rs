//! Budgets: how many sessions of each kind run at once, and how much of
//! each budget one client address may hold.
//!
//! Three budgets, so that no kind of session can starve another: pushes
//! and pulls (`--max-connections`), subscribers (`--max-subscribers`,
//! larger: a subscriber idles for hours and costs a few kilobytes) and web
//! downloads (`--max-downloads`). With one budget for all, 260 anonymous
//! subscribers (whose pongs keep them alive) took all 256 slots and every
//! push and pull got 503 for as long as they liked; now subscribers never
//! take a push or pull slot, so those are a reserve no subscriber can
//! touch. Within each budget one client address holds at most
//! `--address-share` percent, so a single host cannot fill one either.
//! IPv6 clients are counted by their /64 network: one host usually has a
//! whole /64 to choose source addresses from.
//!
//! A [`Permit`] is held for a session's whole life and gives its slot back
//! when dropped; shutdown waits for every slot ([`Limits::drain`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::app::Refusal;
use super::store::lock;

/// What a session counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// A push or a pull.
    Sync,
    /// A subscriber.
    Subscriber,
    /// A web download.
    Download,
}

impl Budget {
    const ALL: [Budget; 3] = [Budget::Sync, Budget::Subscriber, Budget::Download];

    fn index(self) -> usize {
        self as usize
    }

    /// The 503 body when the budget is full.
    fn full(self) -> &'static str {
        match self {
            Budget::Sync => "too many connections; try again shortly",
            Budget::Subscriber => "too many subscribers; try again shortly",
            Budget::Download => "too many downloads; try again shortly",
        }
    }
}

/// A client address as the budgets count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 address (IPv4-mapped IPv6 ones included).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(a) => ClientKey::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => ClientKey::V6Net((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// One budget.
struct Pool {
    /// Its slots.
    slots: Arc<Semaphore>,
    /// How many there are.
    total: usize,
    /// How many one client may hold.
    per_client: usize,
}

/// The three budgets and who holds what.
pub struct Limits {
    pools: [Pool; 3],
    /// Slots held per budget and client (entries at zero are removed).
    held: Mutex<HashMap<(Budget, ClientKey), usize>>,
}

/// The budgets' sizes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub syncs: usize,
    pub subscribers: usize,
    pub downloads: usize,
    /// Percent of each budget one client may hold (1-100).
    pub share: u8,
}

impl Limits {
    pub fn new(s: Sizes) -> Limits {
        let pool = |total: usize| {
            let total = total.max(1);
            let share = s.share.clamp(1, 100) as usize;
            Pool {
                slots: Arc::new(Semaphore::new(total)),
                total,
                per_client: (total * share).div_ceil(100).max(1),
            }
        };
        Limits {
            pools: [pool(s.syncs), pool(s.subscribers), pool(s.downloads)],
            held: Mutex::new(HashMap::new()),
        }
    }

    /// How many slots of `budget` one client may hold.
    pub fn per_client(&self, budget: Budget) -> usize {
        self.pools[budget.index()].per_client
    }

    /// A slot of `budget` for a client at `ip`, or the 503 to answer: the
    /// budget is full, or this client holds its share of it already.
    pub fn acquire(self: &Arc<Self>, budget: Budget, ip: IpAddr) -> Result<Permit, Refusal> {
        let pool = &self.pools[budget.index()];
        let client = ClientKey::of(ip);
        let mut held = lock(&self.held);
        let mine = held.get(&(budget, client)).copied().unwrap_or(0);
        if mine >= pool.per_client {
            tracing::warn!(client = %ip, ?budget, held = mine, "refused: the address holds its share");
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections from your address; try again shortly",
            ));
        }
        let slot = pool
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, budget.full()))?;
        held.insert((budget, client), mine + 1);
        Ok(Permit {
            _slot: slot,
            limits: self.clone(),
            budget,
            client,
        })
    }

    /// Waits (at most `within`) until every slot of every budget is back:
    /// all sessions ended. False when some did not in time.
    pub async fn drain(&self, within: Duration) -> bool {
        tokio::time::timeout(within, async {
            for b in Budget::ALL {
                let p = &self.pools[b.index()];
                let _ = p.slots.acquire_many(p.total as u32).await;
            }
        })
        .await
        .is_ok()
    }
}

/// A held slot; given back when dropped.
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    limits: Arc<Limits>,
    budget: Budget,
    client: ClientKey,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = lock(&self.limits.held);
        let key = (self.budget, self.client);
        if let Some(n) = held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(share: u8) -> Arc<Limits> {
        Arc::new(Limits::new(Sizes {
            syncs: 8,
            subscribers: 40,
            downloads: 1,
            share,
        }))
    }

    #[test]
    fn a_client_holds_its_share_and_gets_it_back() {
        let l = limits(25);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.acquire(Budget::Sync, a).unwrap();
        let _p2 = l.acquire(Budget::Sync, a).unwrap();
        assert!(l.acquire(Budget::Sync, a).is_err(), "a third of 8 at 25%");
        // Other budgets and other clients are not affected.
        assert!(l.acquire(Budget::Subscriber, a).is_ok());
        let _q = l.acquire(Budget::Sync, b).unwrap();
        drop(p1);
        assert!(l.acquire(Budget::Sync, a).is_ok());
        assert!(lock(&l.held).values().all(|n| *n > 0));
    }

    #[test]
    fn a_full_budget_refuses_everyone_and_the_share_is_at_least_one() {
        let l = limits(1);
        let _d = l
            .acquire(Budget::Download, "10.0.0.1".parse().unwrap())
            .unwrap();
        assert!(
            l.acquire(Budget::Download, "10.0.0.2".parse().unwrap())
                .is_err()
        );
        assert_eq!(l.per_client(Budget::Sync), 1);
        assert_eq!(limits(100).per_client(Budget::Subscriber), 40);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_network() {
        let l = limits(25);
        let _held: Vec<Permit> = ["2001:db8::1", "2001:db8::2:3"]
            .into_iter()
            .map(|host| l.acquire(Budget::Sync, host.parse().unwrap()).unwrap())
            .collect();
        assert!(
            l.acquire(Budget::Sync, "2001:db8::ffff".parse().unwrap())
                .is_err()
        );
        assert!(
            l.acquire(Budget::Sync, "2001:db8:0:1::1".parse().unwrap())
                .is_ok()
        );
        assert_eq!(
            ClientKey::of("::ffff:10.0.0.1".parse().unwrap()),
            ClientKey::of("10.0.0.1".parse().unwrap())
        );
    }
}
