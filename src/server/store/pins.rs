//! Epoch pins: what lets compaction drop stored pages while older versions
//! are being read.
//!
//! A reader of stored pages (a rebuild, a download of an older version)
//! plans from the back deltas and then reads the pages they name, which
//! may take minutes. A prune hands a dropped version's pages to the kept
//! version below it, and some of them become garbage; compaction then
//! drops their index rows. A reader that planned before the prune may
//! still ask for one of those. So every reader pins the epoch it planned
//! in, and compaction, after a prune, opens a new epoch and drops pages
//! only once no reader of an older epoch is left (or gives up for this
//! round, deleting nothing). Readers of the new epoch planned after the
//! prune and name only kept pages; those compaction merely moves, which a
//! reader follows by looking the page up again ([`super::Store::read_page`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::lock;

/// The epochs and how many readers each has.
#[derive(Default)]
pub struct Pins {
    state: Mutex<State>,
    drained: Condvar,
}

#[derive(Default)]
struct State {
    epoch: u64,
    readers: BTreeMap<u64, usize>,
}

/// A reader's pin on the epoch it planned in; released on drop.
pub struct Pin {
    pins: Arc<Pins>,
    epoch: u64,
}

impl Pins {
    /// Pins the current epoch.
    pub fn pin(self: &Arc<Self>) -> Pin {
        let mut s = lock(&self.state);
        let epoch = s.epoch;
        *s.readers.entry(epoch).or_default() += 1;
        Pin {
            pins: self.clone(),
            epoch,
        }
    }

    /// Opens a new epoch and waits up to `timeout` for every reader of the
    /// older ones to finish; false when some are still reading.
    pub fn advance_and_wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = lock(&self.state);
        s.epoch += 1;
        let epoch = s.epoch;
        loop {
            if s.readers.range(..epoch).next().is_none() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .drained
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut s = lock(&self.pins.state);
        if let Some(n) = s.readers.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                s.readers.remove(&self.epoch);
            }
        }
        self.pins.drained.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_epoch_waits_only_for_older_readers() {
        let pins = Arc::new(Pins::default());
        let old = pins.pin();
        assert!(!pins.advance_and_wait(Duration::from_millis(10)));
        let newer = pins.pin();
        drop(old);
        assert!(
            !pins.advance_and_wait(Duration::from_millis(10)),
            "the reader of the second epoch is older than the third"
        );
        drop(newer);
        assert!(pins.advance_and_wait(Duration::ZERO));
        let late = pins.pin();
        let waiter = {
            let pins = pins.clone();
            std::thread::spawn(move || pins.advance_and_wait(Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(late);
        assert!(waiter.join().unwrap(), "woken when the last reader left");
    }
}
