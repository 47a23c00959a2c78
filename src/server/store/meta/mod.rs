//! The metadata: namespaces, hashed keys, replicas, versions and the page
//! index, behind one trait ([`MetaBackend`]) and one facade ([`Meta`]).
//!
//! Everything the server records about its data, other than the bytes of
//! the files and pages, goes through here, and nothing else in the server
//! speaks SQL: the handlers, the key checks and the commands ask [`Meta`]
//! typed questions (`replica`, `versions`, `add_key`, `namespaces`...). The
//! trait is what a backend must do; [`sqlite`] (`DATA_DIR/meta.db`) is the
//! one backend today, and another (a shared database for several servers)
//! is a file beside it, as Litestream keeps each replica backend behind
//! `ReplicaClient`. The trait holds the operations the store uses today and
//! nothing more; each call that must be atomic (a version's commit, a
//! namespace with its first key, the latest version's snapshot for
//! `verify`) is one method, so a backend keeps it one transaction.
//!
//! Key policy (hashing, the constant-time check, what a kind may do) is
//! not here but in [`crate::server::keys`]: this layer stores a key's hash
//! and its kind's name, and finds a key by hash.

pub mod sqlite;
mod sqlite_maintenance;

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::lock;
use super::pages::{BlobLocation, BlobPosition, PageHash};

/// A replica row.
#[derive(Debug, Clone)]
pub struct ReplicaRow {
    /// Internal row id (keys and versions refer to it).
    pub id: i64,
    /// Public replica id sent as `replicaID`.
    pub uid: String,
    /// Namespace, the first part of the path.
    pub namespace: String,
    /// Full remote path `namespace/…/name.db`.
    pub path: String,
    /// `private`, `unlisted` or `public`.
    pub visibility: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Newest version number; 0 before the first commit.
    pub latest: u64,
}

/// One version row.
#[derive(Debug, Clone)]
pub struct VersionRow {
    /// Version number, from 1.
    pub number: u64,
    /// Commit time (RFC 3339).
    pub created: String,
    /// Page size of this version.
    pub page_size: u32,
    /// Pages in this version.
    pub page_count: u32,
    /// Pages the push that made it changed.
    pub changed_pages: u32,
    /// Commit message (may be empty).
    pub message: String,
    /// `versionHash` (see sqlite::VersionHasher).
    pub version_hash: String,
    /// `versionXxh3`; None for versions committed before the store kept it.
    pub version_xxh3: Option<String>,
    /// Set once the version was pruned: its row stays, so that its number
    /// is never given to another version and a pull of it can say why it
    /// is gone ([`super::prune`]).
    pub pruned: Option<Pruned>,
}

/// When and why a version was pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// When (RFC 3339).
    pub at: String,
    /// Why, as shown to whoever asks for it: the retention policy that
    /// dropped it.
    pub reason: String,
}

impl VersionRow {
    pub fn size(&self) -> u64 {
        self.page_size as u64 * self.page_count as u64
    }
}

/// A version's row with its back delta ((page number, page hash) records).
pub type VersionDelta = (VersionRow, Vec<(u32, PageHash)>);

/// A namespace, as `namespace list` shows it.
#[derive(Debug, Clone)]
pub struct NamespaceRow {
    /// Its name.
    pub name: String,
    /// Creation time (RFC 3339).
    pub created: String,
    /// How many replicas it holds.
    pub replicas: u64,
}

/// What the store holds, counted for `/metrics` ([`crate::server::metrics`]).
#[derive(Debug, Clone, Default)]
pub struct StoreTotals {
    /// Replicas (with or without a version yet).
    pub replicas: u64,
    /// Versions of all replicas (not counting pruned ones).
    pub versions: u64,
    /// Pages of the replicas' latest versions (their files).
    pub latest_pages: u64,
    /// Pages held in the page store (older versions' pages, each once).
    pub pack_pages: u64,
}

/// A key to record: only its hash is ever stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// SHA-256 of the key (see [`crate::server::keys::hash_key`]).
    pub hash: [u8; 32],
    /// Its kind's name (`admin`, `account-pull`...).
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its replica row id (replica keys).
    pub replica: Option<i64>,
    /// The key whose session asked for this one (keys the server mints on
    /// KEYREQUEST): revoking that key revokes this one too, so a key never
    /// outlives the authority it was issued under.
    pub minted_by: Option<i64>,
    /// The kind of session that minted it (`push` or `pull`); None for keys
    /// made by `namespace create` and `keys create`.
    pub minted_on: Option<&'static str>,
    /// Whom a key minted on a pull was for: a digest of the client's id and
    /// local path (see [`crate::server::keys::destination`]), so that a new
    /// key for the same copy replaces the old one while each copy keeps its
    /// own.
    pub minted_for: Option<String>,
    /// A note from whoever made it (`keys create --label`).
    pub label: Option<String>,
}

/// A recorded key, as stored (the kind is parsed by the key policy).
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// Row id, what `keys revoke` takes.
    pub id: i64,
    /// Its kind's name as stored.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its replica row id (replica keys).
    pub replica: Option<i64>,
    /// Creation time (RFC 3339).
    pub created: String,
    /// Revocation time, if revoked.
    pub revoked: Option<String>,
    /// See [`NewKey::minted_by`].
    pub minted_by: Option<i64>,
    /// See [`NewKey::minted_on`].
    pub minted_on: Option<String>,
    /// See [`NewKey::label`].
    pub label: Option<String>,
    /// When it last opened a session (RFC 3339), kept to the minute.
    pub last_used: Option<String>,
}

/// Everything one version's commit records, in one transaction: the commit
/// point of a push (see [`super`]).
#[derive(Debug)]
pub struct NewVersion<'a> {
    /// The replica's row id.
    pub replica: i64,
    /// The new version (its number is the replica's latest + 1).
    pub row: &'a VersionRow,
    /// Pages appended to the page store for the back delta.
    pub blobs: &'a [(PageHash, BlobLocation)],
    /// The back delta of the previous version (row.number - 1).
    pub back_delta: &'a [(u32, PageHash)],
    /// SHA-256 of every page of the new version.
    pub sums: &'a [PageHash],
    /// XXH3-128 of every page of the new version.
    pub xxh3: &'a [[u8; 16]],
    /// Keys issued by the push, stored if and only if the version is.
    pub keys: &'a [NewKey],
    /// The commit's in-flight record, ended by the same transaction.
    pub in_flight: Option<i64>,
}

/// A commit that recorded its start and has not reached its commit point
/// (or given its bytes back): after a crash, what it wrote is provably
/// garbage (see `store::recovery`).
#[derive(Debug, Clone)]
pub struct InFlight {
    pub id: i64,
    pub replica: i64,
    /// The version number it was writing.
    pub number: u64,
    /// Where its page appends began.
    pub start: BlobPosition,
}

/// The latest version of a replica as one consistent read (for `verify`,
/// which may run next to a live server's commits).
#[derive(Debug)]
pub struct LatestSnapshot {
    /// The latest version number.
    pub latest: u64,
    /// Its row (None if missing: damage).
    pub row: Option<VersionRow>,
    /// Its per-page SHA-256 checksums.
    pub sums: Vec<PageHash>,
}

/// The latest version as a commit builds on it.
#[derive(Debug, Default)]
pub struct LatestState {
    /// Its row.
    pub row: Option<VersionRow>,
    /// Its pages' SHA-256 checksums.
    pub sums: Vec<PageHash>,
    /// Its pages' XXH3 digests (empty in a store from before they were kept).
    pub xxh3: Vec<[u8; 16]>,
}

/// One replica's prune, recorded in one transaction: the versions dropped
/// and the back deltas that take over their pages ([`super::prune`]).
#[derive(Debug)]
pub struct PruneWrite<'a> {
    /// The replica's row id.
    pub replica: i64,
    /// Versions to mark pruned (their back deltas are dropped); each must
    /// be unpruned and older than the latest, or nothing is recorded.
    pub pruned: &'a [u64],
    /// New back deltas of kept versions, which now lead to the next kept
    /// version.
    pub merged: &'a [(u64, Vec<(u32, PageHash)>)],
    /// See [`Pruned`].
    pub at: &'a str,
    /// See [`Pruned`].
    pub reason: &'a str,
}

/// A pack rewritten by compaction, recorded in one transaction: its live
/// pages' new places, its other index rows dropped, the pack retired (its
/// file is then garbage recovery may delete) and the compaction's
/// in-flight record ended ([`super::compact`]).
#[derive(Debug)]
pub struct PackRewrite<'a> {
    /// The pack rewritten.
    pub pack: u32,
    /// Each live page with its new place.
    pub moved: &'a [(PageHash, BlobLocation)],
    /// The compaction's in-flight record (its appends).
    pub in_flight: i64,
}

/// What deleting a replica removed.
#[derive(Debug, Default, Clone)]
pub struct DeletedReplica {
    /// Version rows.
    pub versions: u64,
    /// Keys naming the replica.
    pub keys: u64,
}

/// A replica's expected push interval (dead-man notifications,
/// [`crate::server::notify`]), with what the check needs to judge it.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The replica's row id.
    pub replica: i64,
    /// Its path.
    pub path: String,
    /// A push is expected at least this often.
    pub every: std::time::Duration,
    /// When the expectation was set (RFC 3339): the clock of a replica
    /// never pushed since.
    pub since: String,
    /// The last push: the later of the latest version's commit and the
    /// last push session a server saw succeed (one that stored nothing
    /// counts: the pusher is alive). None before the first.
    pub last_push: Option<String>,
    /// True once an "overdue" notice went out for the current silence.
    pub overdue_sent: bool,
    /// The last push that notice named: a push since is one that differs.
    pub overdue_last_push: Option<String>,
}

/// What a metadata backend does. Reads take `&self`, writes `&mut self`;
/// the [`Meta`] facade serialises calls. Errors are the backend's own
/// (I/O, a damaged row), carried as `anyhow` with context.
pub trait MetaBackend: Send {
    /// Every replica, ordered by path.
    fn all_replicas(&self) -> Result<Vec<ReplicaRow>>;
    /// The replica at `path`.
    fn replica_by_path(&self, path: &str) -> Result<Option<ReplicaRow>>;
    /// The replica with row id `id`.
    fn replica_by_id(&self, id: i64) -> Result<Option<ReplicaRow>>;
    /// The replicas of a namespace, ordered by path.
    fn replicas_of(&self, namespace: &str) -> Result<Vec<ReplicaRow>>;
    /// Creates the replica unless it exists (a concurrent first push may
    /// win); returns the row either way.
    fn create_replica(
        &mut self,
        namespace: &str,
        path: &str,
        visibility: &str,
    ) -> Result<ReplicaRow>;
    /// Removes replica `id` if it has no version and no key; true when it
    /// did.
    fn remove_replica_if_empty(&mut self, id: i64) -> Result<bool>;
    /// Sets replica `id`'s visibility (`private`, `unlisted`, `public`).
    fn set_visibility(&mut self, id: i64, visibility: &str) -> Result<()>;

    /// Version `number` of replica `replica`.
    fn version(&self, replica: i64, number: u64) -> Result<Option<VersionRow>>;
    /// The versions of a replica, newest first.
    fn versions(&self, replica: i64) -> Result<Vec<VersionRow>>;
    /// The back delta of version `number` (the pages in which it differs
    /// from `number + 1`); empty for the latest.
    fn back_delta(&self, replica: i64, number: u64) -> Result<Vec<(u32, PageHash)>>;
    /// SHA-256 of every page of the latest version.
    fn latest_sums(&self, replica: i64) -> Result<Vec<PageHash>>;
    /// XXH3-128 of every page of the latest version (empty when the store
    /// has none yet).
    fn latest_xxh3(&self, replica: i64) -> Result<Vec<[u8; 16]>>;
    /// The latest version number, its row and checksums, read at once.
    fn latest_snapshot(&mut self, replica: i64) -> Result<LatestSnapshot>;
    /// Records a new version; fails, recording nothing, unless the
    /// replica's latest is still `row.number - 1`.
    fn commit_version(&mut self, v: &NewVersion<'_>) -> Result<()>;

    /// Where the page stored under `hash` is.
    fn blob(&self, hash: &PageHash) -> Result<Option<BlobLocation>>;
    /// Every stored page and where it is (for `verify`).
    fn all_blobs(&self) -> Result<Vec<(PageHash, BlobLocation)>>;
    /// End of the last indexed page of a pack (0 when none).
    fn pack_end(&self, pack: u32) -> Result<u64>;
    /// (pack, referenced end) of every pack that holds an indexed page.
    fn pack_ends(&self) -> Result<Vec<(u32, u64)>>;
    /// Records that a commit of version `number` of `replica` starts
    /// appending at `start` (durable before any append); its id.
    fn begin_commit(&mut self, replica: i64, number: u64, start: BlobPosition) -> Result<i64>;
    /// Ends an in-flight record whose commit gave everything back.
    fn end_commit(&mut self, id: i64) -> Result<()>;
    /// The in-flight records.
    fn commits_in_flight(&self) -> Result<Vec<InFlight>>;

    /// True when namespace `name` exists.
    fn namespace_exists(&self, name: &str) -> Result<bool>;
    /// Creates namespace `name` with its first key; false (and nothing
    /// recorded) when it exists already.
    fn create_namespace(&mut self, name: &str, admin: &NewKey) -> Result<bool>;
    /// Every namespace with its replica count, ordered by name.
    fn namespaces(&self) -> Result<Vec<NamespaceRow>>;
    /// What the store holds, counted.
    fn totals(&self) -> Result<StoreTotals>;

    /// Records keys, all or none.
    fn add_keys(&mut self, keys: &[NewKey]) -> Result<()>;
    /// Records `key` and, in the same transaction, revokes the active keys
    /// of its kind that the same key minted for the same replica in the
    /// same kind of session for the same destination and that were never
    /// used (so re-minting replaces instead of piling up).
    fn replace_minted_key(&mut self, key: &NewKey) -> Result<()>;
    /// Revokes the active keys minted before key `id` by the same key for
    /// the same replica, kind, kind of session and destination; how many.
    fn supersede_minted(&mut self, id: i64) -> Result<usize>;
    /// Records that key `id` was used at `at` (RFC 3339).
    fn touch_key(&mut self, id: i64, at: &str) -> Result<()>;
    /// The key whose hash is `hash`, with the hash as stored (the caller
    /// compares it again in constant time).
    fn key_by_hash(&self, hash: &[u8; 32]) -> Result<Option<(StoredKey, Vec<u8>)>>;
    /// The keys of a namespace, by id, each with its replica's path.
    fn keys_of(&self, namespace: &str) -> Result<Vec<(StoredKey, Option<String>)>>;
    /// Revokes active key `id` of `namespace` and every active key minted
    /// from it, transitively, in one transaction; how many it revoked (0:
    /// no active key `id` there).
    fn revoke_key(&mut self, namespace: &str, id: i64) -> Result<usize>;
    /// Schedules the revocation of active key `id` at `at` (RFC 3339, as
    /// [`now`] writes it; never later than one already scheduled): an
    /// expiring key. False when there is no such active key.
    fn expire_key(&mut self, namespace: &str, id: i64, at: &str) -> Result<bool>;

    /// The last version of `replica` committed at or before `at` (RFC 3339
    /// as [`now`] writes it): the one with the latest commit time not after
    /// it (the highest number among equal times).
    fn version_at(&self, replica: i64, at: &str) -> Result<Option<VersionRow>>;
    /// At most `limit` versions of `replica` numbered below `before` (all
    /// when None), newest first: one page of a long history.
    fn versions_page(
        &self,
        replica: i64,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<VersionRow>>;
    /// How many versions `replica` has.
    fn version_count(&self, replica: i64) -> Result<u64>;
    /// Moves replica `id` from path `from` to `to` in one transaction (its
    /// row id, uid, files, versions and keys stay).
    fn rename_replica(&mut self, id: i64, from: &str, to: &str) -> Result<Renamed>;
    /// The retention policy set for `scope` (a namespace or a replica's
    /// path), as stored.
    fn retention(&self, scope: &str) -> Result<Option<String>>;
    /// Sets (Some) or clears (None) the retention policy of `scope`.
    fn set_retention(&mut self, scope: &str, policy: Option<&str>) -> Result<()>;
    /// Every retention policy set, by scope.
    fn retentions(&self) -> Result<Vec<(String, String)>>;
    /// Records one replica's prune (see [`PruneWrite`]), all or nothing.
    fn prune_versions(&mut self, p: &PruneWrite<'_>) -> Result<()>;
    /// Calls `f` with every back delta of every version (pruned versions
    /// have none): what references stored pages.
    fn for_each_delta(
        &self,
        f: &mut dyn FnMut(i64, u64, Vec<(u32, PageHash)>) -> Result<()>,
    ) -> Result<()>;
    /// The index rows of the pages stored in `pack`, in pack order.
    fn blobs_in_pack(&self, pack: u32) -> Result<Vec<(PageHash, BlobLocation)>>;
    /// Records a rewritten pack (see [`PackRewrite`]), all or nothing.
    fn rewrite_pack(&mut self, w: &PackRewrite<'_>) -> Result<()>;
    /// Packs retired by compaction whose files may not be deleted yet.
    fn retired_packs(&self) -> Result<Vec<u32>>;
    /// Forgets retired pack `pack` once its file is gone.
    fn forget_retired_pack(&mut self, pack: u32) -> Result<()>;
    /// A number that grows with every prune, compaction and replica
    /// deletion: a reader in another process (`verify`) that finds a page
    /// missing checks it to tell such a change from damage.
    fn maintenance_generation(&self) -> Result<u64>;
    /// Deletes replica `id` with its versions, keys and retention policy,
    /// in one transaction; its stored pages become garbage for the next
    /// compaction.
    fn delete_replica(&mut self, id: i64) -> Result<DeletedReplica>;
    /// Uids of deleted replicas whose folders may still exist.
    fn deleted_replicas(&self) -> Result<Vec<String>>;
    /// Forgets a deleted replica once its folder is gone.
    fn forget_deleted_replica(&mut self, uid: &str) -> Result<()>;
    /// Gives the space of deleted rows back to the file system (after a
    /// prune, with no server running: it holds the metadata meanwhile).
    fn vacuum(&mut self) -> Result<()>;
    /// Writes a consistent copy of the whole metadata to the new file
    /// `dest` (`sqlrsync-server backup`), as of one read snapshot, next to
    /// a live server. `hold` is called first, inside that same snapshot,
    /// with this backend to read from: what it reads is exactly what the
    /// copy holds, so the caller can open the files the copy names before
    /// any commit can retire them.
    fn copy_to(
        &mut self,
        dest: &Path,
        hold: &mut dyn FnMut(&dyn MetaBackend) -> Result<()>,
    ) -> Result<()>;
    /// Sets (Some) or removes (None) replica `replica`'s expected push
    /// interval; setting keeps what was already notified.
    fn set_expectation(&mut self, replica: i64, every: Option<std::time::Duration>) -> Result<()>;
    /// Every expected push interval, ordered by replica path.
    fn expectations(&self) -> Result<Vec<Expectation>>;
    /// Records that a push session of `replica` succeeded at `at` (a no-op
    /// for a replica without an expected interval).
    fn note_push(&mut self, replica: i64, at: &str) -> Result<()>;
    /// Records that the "overdue" notice of `replica`, naming the last push
    /// `last_push`, went out (`overdue`), or that its "resumed" one did
    /// (not `overdue`), at `at`.
    fn set_notified(
        &mut self,
        replica: i64,
        overdue: bool,
        last_push: Option<&str>,
        at: &str,
    ) -> Result<()>;
    /// Where each of the pages stored under `hashes` is, in their order
    /// (what a rebuild looks up for thousands of pages at once).
    fn blobs(&self, hashes: &[PageHash]) -> Result<Vec<Option<BlobLocation>>>;
    /// Version `number` of replica `replica` with its back delta, in one
    /// read (the row's last column lies past the delta's bytes, so reading
    /// them apart read the delta twice).
    fn version_and_delta(&self, replica: i64, number: u64) -> Result<Option<VersionDelta>>;
}

/// What [`MetaBackend::rename_replica`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renamed {
    /// The replica is at the new path now.
    Done,
    /// A replica is at the new path already; nothing changed.
    Exists,
    /// The replica is no longer at the old path; nothing changed.
    Gone,
}

/// The facade over the metadata backend: typed calls, one at a time.
///
/// Opened alone by the key and namespace commands (which may run next to a
/// live server), and as part of the [`super::Store`] by the server.
pub struct Meta {
    /// The backend; short calls, and a commit's one transaction.
    backend: Mutex<Box<dyn MetaBackend>>,
}

impl Meta {
    /// Opens (creating) the SQLite metadata of the store at `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Meta> {
        let backend = sqlite::SqliteMeta::open(&data_dir.join("meta.db"))?;
        Ok(Meta::with_backend(Box::new(backend)))
    }

    /// True when `data_dir` holds a store's metadata.
    pub fn exists(data_dir: &Path) -> bool {
        sqlite::SqliteMeta::exists(&data_dir.join("meta.db"))
    }

    /// Wraps any backend.
    pub fn with_backend(backend: Box<dyn MetaBackend>) -> Meta {
        Meta {
            backend: Mutex::new(backend),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&dyn MetaBackend) -> Result<T>) -> Result<T> {
        f(&**lock(&self.backend))
    }

    fn write<T>(&self, f: impl FnOnce(&mut dyn MetaBackend) -> Result<T>) -> Result<T> {
        f(&mut **lock(&self.backend))
    }

    /// Every replica, ordered by path.
    pub fn all_replicas(&self) -> Result<Vec<ReplicaRow>> {
        self.read(|b| b.all_replicas())
    }

    /// The replica at remote path `path`.
    pub fn replica(&self, path: &str) -> Result<Option<ReplicaRow>> {
        self.read(|b| b.replica_by_path(path))
    }

    /// The replica with row id `id`.
    pub fn replica_by_id(&self, id: i64) -> Result<Option<ReplicaRow>> {
        self.read(|b| b.replica_by_id(id))
    }

    /// The replicas of a namespace, ordered by path.
    pub fn replicas_of(&self, namespace: &str) -> Result<Vec<ReplicaRow>> {
        self.read(|b| b.replicas_of(namespace))
    }

    /// Creates replica `path` in `namespace`, which must exist, unless a
    /// concurrent first push created it; returns the row either way.
    pub fn create_replica(
        &self,
        namespace: &str,
        path: &str,
        visibility: &str,
    ) -> Result<ReplicaRow> {
        self.write(|b| {
            anyhow::ensure!(b.namespace_exists(namespace)?, "no namespace");
            b.create_replica(namespace, path, visibility)
        })
    }

    /// See [`MetaBackend::remove_replica_if_empty`].
    pub fn remove_replica_if_empty(&self, id: i64) -> Result<bool> {
        self.write(|b| b.remove_replica_if_empty(id))
    }

    /// See [`MetaBackend::set_visibility`].
    pub fn set_visibility(&self, id: i64, visibility: &str) -> Result<()> {
        self.write(|b| b.set_visibility(id, visibility))
    }

    /// Version `number` of `r`.
    pub fn version(&self, r: &ReplicaRow, number: u64) -> Result<Option<VersionRow>> {
        self.read(|b| b.version(r.id, number))
    }

    /// The versions of `r`, newest first.
    pub fn versions(&self, r: &ReplicaRow) -> Result<Vec<VersionRow>> {
        self.read(|b| b.versions(r.id))
    }

    /// Version `number` of `r` with its back delta, read together (what a
    /// rebuild applies for one step back).
    pub fn version_with_delta(
        &self,
        r: &ReplicaRow,
        number: u64,
    ) -> Result<(VersionRow, Vec<(u32, PageHash)>)> {
        self.read(|b| {
            b.version_and_delta(r.id, number)?
                .context("version row missing")
        })
    }

    /// Version `number` of `r` with the latest page checksums and digests
    /// (what a commit builds on).
    pub fn latest_state(&self, r: &ReplicaRow, number: u64) -> Result<LatestState> {
        self.read(|b| {
            Ok(LatestState {
                row: b.version(r.id, number)?,
                sums: b.latest_sums(r.id)?,
                xxh3: b.latest_xxh3(r.id)?,
            })
        })
    }

    /// See [`MetaBackend::latest_snapshot`].
    pub fn latest_snapshot(&self, r: &ReplicaRow) -> Result<LatestSnapshot> {
        self.write(|b| b.latest_snapshot(r.id))
    }

    /// See [`MetaBackend::commit_version`].
    pub fn commit_version(&self, v: &NewVersion<'_>) -> Result<()> {
        self.write(|b| b.commit_version(v))
    }

    /// Where the page stored under `hash` is.
    pub fn blob(&self, hash: &PageHash) -> Result<Option<BlobLocation>> {
        self.read(|b| b.blob(hash))
    }

    /// Every stored page and where it is.
    pub fn all_blobs(&self) -> Result<Vec<(PageHash, BlobLocation)>> {
        self.read(|b| b.all_blobs())
    }

    /// End of the last indexed page of a pack.
    pub fn pack_end(&self, pack: u32) -> Result<u64> {
        self.read(|b| b.pack_end(pack))
    }

    /// See [`MetaBackend::pack_ends`].
    pub fn pack_ends(&self) -> Result<Vec<(u32, u64)>> {
        self.read(|b| b.pack_ends())
    }

    /// See [`MetaBackend::begin_commit`].
    pub fn begin_commit(&self, replica: i64, number: u64, start: BlobPosition) -> Result<i64> {
        self.write(|b| b.begin_commit(replica, number, start))
    }

    /// See [`MetaBackend::end_commit`].
    pub fn end_commit(&self, id: i64) -> Result<()> {
        self.write(|b| b.end_commit(id))
    }

    /// See [`MetaBackend::commits_in_flight`].
    pub fn commits_in_flight(&self) -> Result<Vec<InFlight>> {
        self.read(|b| b.commits_in_flight())
    }

    /// See [`MetaBackend::totals`].
    pub fn totals(&self) -> Result<StoreTotals> {
        self.read(|b| b.totals())
    }

    /// True when namespace `name` exists.
    pub fn namespace_exists(&self, name: &str) -> Result<bool> {
        self.read(|b| b.namespace_exists(name))
    }

    /// See [`MetaBackend::create_namespace`].
    pub fn create_namespace(&self, name: &str, admin: &NewKey) -> Result<bool> {
        self.write(|b| b.create_namespace(name, admin))
    }

    /// Every namespace with its replica count.
    pub fn namespaces(&self) -> Result<Vec<NamespaceRow>> {
        self.read(|b| b.namespaces())
    }

    /// Records one key.
    pub fn add_key(&self, key: &NewKey) -> Result<()> {
        self.add_keys(std::slice::from_ref(key))
    }

    /// Records keys, all or none.
    pub fn add_keys(&self, keys: &[NewKey]) -> Result<()> {
        self.write(|b| b.add_keys(keys))
    }

    /// See [`MetaBackend::replace_minted_key`].
    pub fn replace_minted_key(&self, key: &NewKey) -> Result<()> {
        self.write(|b| b.replace_minted_key(key))
    }

    /// See [`MetaBackend::supersede_minted`].
    pub fn supersede_minted(&self, id: i64) -> Result<usize> {
        self.write(|b| b.supersede_minted(id))
    }

    /// See [`MetaBackend::touch_key`].
    pub fn touch_key(&self, id: i64, at: &str) -> Result<()> {
        self.write(|b| b.touch_key(id, at))
    }

    /// See [`MetaBackend::key_by_hash`].
    pub fn find_key(&self, hash: &[u8; 32]) -> Result<Option<(StoredKey, Vec<u8>)>> {
        self.read(|b| b.key_by_hash(hash))
    }

    /// The keys of a namespace, each with its replica's path.
    pub fn keys_of(&self, namespace: &str) -> Result<Vec<(StoredKey, Option<String>)>> {
        self.read(|b| b.keys_of(namespace))
    }

    /// See [`MetaBackend::revoke_key`].
    pub fn revoke_key(&self, namespace: &str, id: i64) -> Result<usize> {
        self.write(|b| b.revoke_key(namespace, id))
    }

    /// See [`MetaBackend::expire_key`].
    pub fn expire_key(&self, namespace: &str, id: i64, at: &str) -> Result<bool> {
        self.write(|b| b.expire_key(namespace, id, at))
    }

    /// See [`MetaBackend::version_at`].
    pub fn version_at(&self, r: &ReplicaRow, at: &str) -> Result<Option<VersionRow>> {
        self.read(|b| b.version_at(r.id, at))
    }

    /// See [`MetaBackend::versions_page`].
    pub fn versions_page(
        &self,
        r: &ReplicaRow,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<VersionRow>> {
        self.read(|b| b.versions_page(r.id, before, limit))
    }

    /// See [`MetaBackend::version_count`].
    pub fn version_count(&self, r: &ReplicaRow) -> Result<u64> {
        self.read(|b| b.version_count(r.id))
    }

    /// See [`MetaBackend::rename_replica`].
    pub fn rename_replica(&self, r: &ReplicaRow, to: &str) -> Result<Renamed> {
        self.write(|b| b.rename_replica(r.id, &r.path, to))
    }

    /// See [`MetaBackend::retention`].
    pub fn retention(&self, scope: &str) -> Result<Option<String>> {
        self.read(|b| b.retention(scope))
    }

    /// See [`MetaBackend::set_retention`].
    pub fn set_retention(&self, scope: &str, policy: Option<&str>) -> Result<()> {
        self.write(|b| b.set_retention(scope, policy))
    }

    /// See [`MetaBackend::retentions`].
    pub fn retentions(&self) -> Result<Vec<(String, String)>> {
        self.read(|b| b.retentions())
    }

    /// See [`MetaBackend::prune_versions`].
    pub fn prune_versions(&self, p: &PruneWrite<'_>) -> Result<()> {
        self.write(|b| b.prune_versions(p))
    }

    /// See [`MetaBackend::for_each_delta`]. Holds the metadata for the
    /// whole walk: for maintenance, not for sessions.
    pub fn for_each_delta(
        &self,
        f: &mut dyn FnMut(i64, u64, Vec<(u32, PageHash)>) -> Result<()>,
    ) -> Result<()> {
        self.read(|b| b.for_each_delta(f))
    }

    /// See [`MetaBackend::blobs_in_pack`].
    pub fn blobs_in_pack(&self, pack: u32) -> Result<Vec<(PageHash, BlobLocation)>> {
        self.read(|b| b.blobs_in_pack(pack))
    }

    /// See [`MetaBackend::rewrite_pack`].
    pub fn rewrite_pack(&self, w: &PackRewrite<'_>) -> Result<()> {
        self.write(|b| b.rewrite_pack(w))
    }

    /// See [`MetaBackend::retired_packs`].
    pub fn retired_packs(&self) -> Result<Vec<u32>> {
        self.read(|b| b.retired_packs())
    }

    /// See [`MetaBackend::forget_retired_pack`].
    pub fn forget_retired_pack(&self, pack: u32) -> Result<()> {
        self.write(|b| b.forget_retired_pack(pack))
    }

    /// See [`MetaBackend::maintenance_generation`].
    pub fn maintenance_generation(&self) -> Result<u64> {
        self.read(|b| b.maintenance_generation())
    }

    /// See [`MetaBackend::delete_replica`].
    pub fn delete_replica(&self, id: i64) -> Result<DeletedReplica> {
        self.write(|b| b.delete_replica(id))
    }

    /// See [`MetaBackend::deleted_replicas`].
    pub fn deleted_replicas(&self) -> Result<Vec<String>> {
        self.read(|b| b.deleted_replicas())
    }

    /// See [`MetaBackend::forget_deleted_replica`].
    pub fn forget_deleted_replica(&self, uid: &str) -> Result<()> {
        self.write(|b| b.forget_deleted_replica(uid))
    }

    /// See [`MetaBackend::vacuum`].
    pub fn vacuum(&self) -> Result<()> {
        self.write(|b| b.vacuum())
    }

    /// See [`MetaBackend::copy_to`].
    pub fn copy_to(
        &self,
        dest: &Path,
        hold: &mut dyn FnMut(&dyn MetaBackend) -> Result<()>,
    ) -> Result<()> {
        self.write(|b| b.copy_to(dest, hold))
    }

    /// See [`MetaBackend::set_expectation`].
    pub fn set_expectation(&self, replica: i64, every: Option<std::time::Duration>) -> Result<()> {
        self.write(|b| b.set_expectation(replica, every))
    }

    /// See [`MetaBackend::expectations`].
    pub fn expectations(&self) -> Result<Vec<Expectation>> {
        self.read(|b| b.expectations())
    }

    /// See [`MetaBackend::note_push`].
    pub fn note_push(&self, replica: i64, at: &str) -> Result<()> {
        self.write(|b| b.note_push(replica, at))
    }

    /// See [`MetaBackend::set_notified`].
    pub fn set_notified(
        &self,
        replica: i64,
        overdue: bool,
        last_push: Option<&str>,
        at: &str,
    ) -> Result<()> {
        self.write(|b| b.set_notified(replica, overdue, last_push, at))
    }

    /// See [`MetaBackend::blobs`].
    pub fn blobs(&self, hashes: &[PageHash]) -> Result<Vec<Option<BlobLocation>>> {
        self.read(|b| b.blobs(hashes))
    }
}

/// The time now as the metadata records it (RFC 3339, milliseconds, UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hash: u8, kind: &'static str, namespace: &str, replica: Option<i64>) -> NewKey {
        NewKey {
            hash: [hash; 32],
            kind,
            namespace: namespace.into(),
            replica,
            minted_by: None,
            minted_on: None,
            minted_for: None,
            label: None,
        }
    }

    #[test]
    fn namespaces_replicas_and_keys_round_trip_through_the_facade() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        assert!(Meta::exists(dir.path()));
        assert!(meta.create_replica("acme", "acme/a.db", "private").is_err());
        assert!(
            meta.create_namespace("acme", &key(1, "admin", "acme", None))
                .unwrap()
        );
        assert!(
            !meta
                .create_namespace("acme", &key(2, "admin", "acme", None))
                .unwrap()
        );
        assert!(
            meta.find_key(&[2; 32]).unwrap().is_none(),
            "nothing of a refused namespace"
        );
        let r = meta.create_replica("acme", "acme/a.db", "private").unwrap();
        let again = meta.create_replica("acme", "acme/a.db", "public").unwrap();
        assert_eq!((again.id, again.visibility.as_str()), (r.id, "private"));
        meta.add_key(&key(3, "replica-pull", "acme", Some(r.id)))
            .unwrap();
        let (k, stored) = meta.find_key(&[3; 32]).unwrap().unwrap();
        assert_eq!(
            (k.kind.as_str(), k.replica, stored),
            ("replica-pull", Some(r.id), vec![3; 32])
        );
        let listed = meta.keys_of("acme").unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[1].1.as_deref(), Some("acme/a.db"));
        assert_eq!(meta.revoke_key("acme", k.id).unwrap(), 1);
        assert_eq!(meta.revoke_key("acme", k.id).unwrap(), 0, "revoked once");
        assert!(
            !meta.remove_replica_if_empty(r.id).unwrap(),
            "a key still names it"
        );
        let ns = meta.namespaces().unwrap();
        assert_eq!((ns[0].name.as_str(), ns[0].replicas), ("acme", 1));
    }

    /// Version `number` of one 4096-byte page, committed now.
    fn one_page_version(number: u64) -> VersionRow {
        VersionRow {
            number,
            created: now(),
            page_size: 4096,
            page_count: 1,
            changed_pages: 1,
            message: String::new(),
            version_hash: format!("h{number}"),
            version_xxh3: None,
            pruned: None,
        }
    }

    #[test]
    fn a_version_commits_only_on_top_of_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.create_namespace("ns", &key(1, "admin", "ns", None))
            .unwrap();
        let r = meta.create_replica("ns", "ns/a.db", "private").unwrap();
        let row = one_page_version;
        let commit = |row: &VersionRow, keys: &[NewKey]| {
            meta.commit_version(&NewVersion {
                replica: r.id,
                row,
                blobs: &[],
                back_delta: &[(1, [7; 32])],
                sums: &[[9; 32]],
                xxh3: &[[8; 16]],
                keys,
                in_flight: None,
            })
        };
        commit(&row(1), &[]).unwrap();
        let pushed_key = key(5, "replica-push", "ns", Some(r.id));
        assert!(commit(&row(3), std::slice::from_ref(&pushed_key)).is_err());
        assert!(
            meta.find_key(&[5; 32]).unwrap().is_none(),
            "keys go with their version"
        );
        commit(&row(2), std::slice::from_ref(&pushed_key)).unwrap();
        assert!(meta.find_key(&[5; 32]).unwrap().is_some());
        assert_eq!(meta.replica("ns/a.db").unwrap().unwrap().latest, 2);
        let (v1, delta) = meta.version_with_delta(&r, 1).unwrap();
        assert_eq!(
            (v1.version_hash.as_str(), delta),
            ("h1", vec![(1, [7; 32])])
        );
        let snap = meta.latest_snapshot(&r).unwrap();
        assert_eq!((snap.latest, snap.sums), (2, vec![[9; 32]]));
        assert_eq!(meta.latest_state(&r, 2).unwrap().xxh3, vec![[8; 16]]);
    }

    #[test]
    fn points_in_time_pages_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.create_namespace("ns", &key(1, "admin", "ns", None))
            .unwrap();
        let r = meta.create_replica("ns", "ns/a.db", "private").unwrap();
        meta.create_replica("ns", "ns/b.db", "private").unwrap();
        // Versions 2 and 3 share a commit time (a clock's tick).
        let times = [
            "2026-11-30T10:00:00.000Z",
            "2026-11-30T11:00:00.000Z",
            "2026-11-30T11:00:00.000Z",
            "2026-11-30T12:00:00.000Z",
        ];
        for (i, t) in times.iter().enumerate() {
            let row = VersionRow {
                number: i as u64 + 1,
                created: t.to_string(),
                page_size: 4096,
                page_count: 1,
                changed_pages: 1,
                message: String::new(),
                version_hash: format!("h{i}"),
                version_xxh3: None,
                pruned: None,
            };
            meta.commit_version(&NewVersion {
                replica: r.id,
                row: &row,
                blobs: &[],
                back_delta: &[],
                sums: &[[9; 32]],
                xxh3: &[],
                keys: &[],
                in_flight: None,
            })
            .unwrap();
        }
        let at = |t: &str| meta.version_at(&r, t).unwrap().map(|v| v.number);
        assert_eq!(at("2026-11-30T09:59:59.999Z"), None);
        assert_eq!(at("2026-11-30T10:00:00.000Z"), Some(1));
        assert_eq!(at("2026-11-30T10:59:59.999Z"), Some(1));
        assert_eq!(at("2026-11-30T11:00:00.000Z"), Some(3), "the last of a tie");
        assert_eq!(at("2026-12-01T00:00:00.000Z"), Some(4));
        let page = |before, limit| {
            meta.versions_page(&r, before, limit)
                .unwrap()
                .iter()
                .map(|v| v.number)
                .collect::<Vec<_>>()
        };
        assert_eq!(page(None, 2), [4, 3]);
        assert_eq!(page(Some(3), 5), [2, 1]);
        assert_eq!(page(Some(1), 5), Vec::<u64>::new());
        assert_eq!(meta.version_count(&r).unwrap(), 4);

        assert_eq!(meta.rename_replica(&r, "ns/b.db").unwrap(), Renamed::Exists);
        assert_eq!(meta.rename_replica(&r, "ns/c.db").unwrap(), Renamed::Done);
        assert_eq!(
            meta.rename_replica(&r, "ns/d.db").unwrap(),
            Renamed::Gone,
            "r is stale"
        );
        let moved = meta.replica("ns/c.db").unwrap().unwrap();
        assert_eq!((moved.id, &moved.uid, moved.latest), (r.id, &r.uid, 4));
        assert!(meta.replica("ns/a.db").unwrap().is_none());
    }

    #[test]
    fn a_prune_is_all_or_nothing_and_never_takes_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.create_namespace("ns", &key(1, "admin", "ns", None))
            .unwrap();
        let r = meta.create_replica("ns", "ns/a.db", "private").unwrap();
        for number in 1..=3 {
            let row = one_page_version(number);
            meta.commit_version(&NewVersion {
                replica: r.id,
                row: &row,
                blobs: &[],
                back_delta: &[(1, [number as u8; 32])],
                sums: &[[9; 32]],
                xxh3: &[[8; 16]],
                keys: &[],
                in_flight: None,
            })
            .unwrap();
        }
        let prune = |pruned: &[u64], merged: &[(u64, Vec<(u32, PageHash)>)]| {
            meta.prune_versions(&PruneWrite {
                replica: r.id,
                pruned,
                merged,
                at: "2026-12-01T00:00:00.000Z",
                reason: "last=1",
            })
        };
        let g0 = meta.maintenance_generation().unwrap();
        assert!(prune(&[2, 3], &[]).is_err(), "the latest");
        assert!(
            meta.version(&r, 2).unwrap().unwrap().pruned.is_none(),
            "all or nothing"
        );
        prune(&[2], &[(1, vec![(1, [7; 32])])]).unwrap();
        let v2 = meta.version(&r, 2).unwrap().unwrap();
        assert_eq!(v2.pruned.unwrap().reason, "last=1");
        assert!(meta.version_with_delta(&r, 2).unwrap().1.is_empty());
        assert_eq!(
            meta.version_with_delta(&r, 1).unwrap().1,
            vec![(1, [7; 32])]
        );
        assert!(prune(&[2], &[]).is_err(), "pruned twice");
        assert!(meta.maintenance_generation().unwrap() > g0);
        let mut walked = Vec::new();
        meta.for_each_delta(&mut |_, n, d| {
            walked.push((n, d.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            walked,
            vec![(1, 1)],
            "pruned and latest versions have no delta"
        );
    }
}
