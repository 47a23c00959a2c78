//! The ledger: a database whose every committed state keeps an invariant
//! (the balances always sum to accounts x START_BALANCE; the `seq` table,
//! its maximum and the `last` counter move together), so a copy that mixed
//! two states (a torn snapshot) is caught. Used by the live-database tests
//! of LOCAL syncs and of pushes and pulls.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

/// Every account's starting balance.
pub const START_BALANCE: i64 = 100;

/// A ledger of `accounts` accounts of about 1 KB each (the count is kept in
/// the database, so the checks need not be told).
pub fn make_ledger(path: &Path, wal: bool, accounts: i64) {
    let c = Connection::open(path).unwrap();
    if wal {
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
    }
    c.execute_batch(&format!(
        "CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INT NOT NULL, pad BLOB);
         CREATE TABLE seq(n INTEGER PRIMARY KEY, pad BLOB);
         CREATE TABLE meta(k TEXT PRIMARY KEY, v INT);
         INSERT INTO meta VALUES ('last', 0), ('accounts', {accounts});
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<{accounts})
         INSERT INTO acct SELECT i, {START_BALANCE}, randomblob(1000) FROM c;"
    ))
    .unwrap();
}

fn accounts(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT v FROM meta WHERE k='accounts'", [], |r| r.get(0))
}

/// One writer transaction: move money between two accounts (the total stays
/// the same) and append sequence number `n` with its counter.
pub fn ledger_commit(c: &mut Connection, n: i64) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let count = accounts(&tx)?;
    let a = (n * 7919) % count + 1;
    let b = (n * 104729) % count + 1;
    let amount = n % 13 + 1;
    tx.execute(
        "UPDATE acct SET bal = bal - ?2, pad = randomblob(1000) WHERE id = ?1",
        [a, amount],
    )?;
    tx.execute(
        "UPDATE acct SET bal = bal + ?2, pad = randomblob(1000) WHERE id = ?1",
        [b, amount],
    )?;
    tx.execute("INSERT INTO seq VALUES (?1, randomblob(300))", [n])?;
    tx.execute("UPDATE meta SET v = ?1 WHERE k = 'last'", [n])?;
    tx.commit()
}

/// Checks the invariant inside one read transaction; returns the counter.
pub fn ledger_check(c: &Connection) -> Result<i64, String> {
    c.execute_batch("BEGIN").map_err(|e| e.to_string())?;
    let r = (|| -> rusqlite::Result<(i64, i64, i64, i64, i64)> {
        let total: i64 = c.query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))?;
        let (count, max): (i64, i64) =
            c.query_row("SELECT count(*), coalesce(max(n), 0) FROM seq", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let last: i64 = c.query_row("SELECT v FROM meta WHERE k='last'", [], |r| r.get(0))?;
        Ok((total, count, max, last, accounts(c)?))
    })();
    let _ = c.execute_batch("COMMIT");
    let (total, count, max, last, accounts) = r.map_err(|e| e.to_string())?;
    if total != accounts * START_BALANCE || count != last || max != last {
        return Err(format!(
            "torn snapshot: total {total}, seq count {count}, max {max}, counter {last}"
        ));
    }
    Ok(last)
}

/// Opens `path` for checking, waiting (not failing) on a writer's lock.
pub fn open_checked(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

/// A thread committing ledger transactions to a database until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    handle: thread::JoinHandle<Result<(), String>>,
}

impl Writer {
    /// Starts committing to `path`, sleeping `pause` between commits (which
    /// lets a rollback-journal origin's reader in).
    pub fn start(path: &Path, pause: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let (s, n, p) = (stop.clone(), commits.clone(), path.to_path_buf());
        let handle = thread::spawn(move || {
            let mut c = open_checked(&p);
            let mut seq: i64 = c
                .query_row("SELECT v FROM meta WHERE k='last'", [], |r| r.get(0))
                .map_err(|e| e.to_string())?;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                ledger_commit(&mut c, seq).map_err(|e| format!("writer commit {seq}: {e}"))?;
                n.fetch_add(1, Ordering::Relaxed);
                thread::sleep(pause);
            }
            Ok(())
        });
        Writer {
            stop,
            commits,
            handle,
        }
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Stops the writer; returns how many transactions it committed.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap().unwrap();
        self.commits.load(Ordering::Relaxed)
    }
}
