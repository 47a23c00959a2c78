//! The pull's apply path: [`PullSink`], the [`Inbound`] that takes the
//! server's ORIGIN stream on its way into the local REPLICA helper.
//!
//! For each chunk of the stream it follows the messages (through the
//! link's [`Feed`]), lets the [`CommitGate`] hold ORIGIN_TXN back until
//! the stream is complete and verified, hands the pages' digests to the
//! [`PageDigester`] thread (a new file is then verified without reading it
//! back), writes what may go now to the helper, and nudges the kernel to
//! write the file back as it grows ([`WriteBehind`]). What it learnt (the
//! digests, whether the gate verified the version) is read by the pull
//! once the link is done.

use bytes::Bytes;

use super::commit_gate::{CommitGate, GateConfig};
use super::write_behind::WriteBehind;
use crate::link::{Feed, Inbound, InboundError};
use crate::sqlite::{HashKind, PageDigester, ReceivedPages};
use crate::wire::{Message, ServerConfig};

/// What the pull asks of its sink, decided before the sync starts.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Keep the digest of every page received (a new file, verified after
    /// the commit): see [`crate::sqlite::version_hash_with`].
    pub digest_received: bool,
    /// Hold the commit until the stream is complete and verified.
    pub gate: Option<GateConfig>,
    /// The database the helper writes, written back as pages arrive.
    pub write_behind: Option<std::path::PathBuf>,
    /// Where to note the version about to be committed, before the gate
    /// lets the commit through (see `matched::note_pending`).
    pub pending: Option<PendingNote>,
}

/// The match record a pull's commit is noted in: (server, replica, local).
#[derive(Debug, Clone)]
pub struct PendingNote {
    pub server: String,
    pub remote_path: String,
    pub local: std::path::PathBuf,
}

/// The server's stream on its way into the local replica.
pub struct PullSink {
    feed: Feed,
    gate: Option<CommitGate>,
    digest_received: bool,
    /// Takes the received pages' digests off the reader task.
    digester: Option<PageDigester>,
    write_behind: Option<WriteBehind>,
    /// The versionHash the server announced so far (for the gate).
    expected_hash: Option<String>,
    /// Digests of the pages received, once the link is done.
    pub received: Option<ReceivedPages>,
    /// The gate checked the version against its versionHash before
    /// letting the commit through.
    pub pre_verified: bool,
    /// See [`PullOptions::pending`].
    pending: Option<PendingNote>,
}

impl PullSink {
    pub fn new(feed: Feed, opts: PullOptions) -> PullSink {
        PullSink {
            feed,
            gate: opts.gate.map(CommitGate::new),
            digest_received: opts.digest_received,
            digester: None,
            write_behind: opts.write_behind.map(WriteBehind::start),
            expected_hash: None,
            received: None,
            pre_verified: false,
            pending: opts.pending,
        }
    }

    /// ORIGIN_END is in: lets the commit through only for a version that
    /// matches its versionHash (the check reads the database, so it runs
    /// off the async threads).
    async fn release(&mut self) -> Result<(), InboundError> {
        let Some(g) = self.gate.as_mut() else {
            return Ok(());
        };
        let check = g.finish(self.expected_hash.clone());
        let note = self.pending.clone().zip(self.expected_hash.clone());
        let checked = move || {
            let passed = check.run()?;
            if let Some((n, hash)) = note {
                super::matched::note_pending(&n.server, &n.remote_path, &n.local, &hash)
                    .map_err(|e| format!("cannot note the version about to be committed: {e:#}"))?;
            }
            Ok(passed)
        };
        match tokio::task::spawn_blocking(checked).await {
            Ok(Ok((held, verified))) => {
                self.pre_verified = verified;
                self.feed.write(&held).await;
                Ok(())
            }
            Ok(Err(why)) => Err(InboundError::Refused(why)),
            Err(e) => Err(InboundError::Refused(format!(
                "verification task failed: {e}"
            ))),
        }
    }
}

impl Inbound for PullSink {
    fn at_boundary(&self) -> bool {
        self.feed.at_boundary()
    }

    fn config(&mut self, c: &ServerConfig) {
        if c.version_hash.is_none() {
            return;
        }
        self.expected_hash = c.version_hash.clone();
        // Digest pages only once there is a hash to check them against;
        // pages before that are read back.
        if self.digest_received && self.digester.is_none() {
            // The cheaper hash when the server gave it.
            let kind = if c.version_xxh3.is_some() {
                HashKind::Xxh3
            } else {
                HashKind::Sha256
            };
            match PageDigester::start(kind) {
                Ok(d) => self.digester = Some(d),
                Err(e) => tracing::debug!(
                    "no digest thread ({e}): the pull is verified by reading it back"
                ),
            }
        }
    }

    async fn stream(&mut self, data: Bytes) -> Result<(), InboundError> {
        let start = self.feed.offset();
        let hash_known = self.expected_hash.is_some();
        let (gate, digester) = (&mut self.gate, &mut self.digester);
        self.feed
            .parse(&data, |m, end| {
                if let (Message::OriginPage { pgno, data: page }, Some(d)) = (m, digester.as_mut())
                {
                    d.add(*pgno, &data, page);
                }
                if let Some(g) = gate.as_mut() {
                    g.observe(m, end, hash_known);
                }
            })
            // Stop feeding the helper: it would only be confused, and
            // without ORIGIN_TXN it rolls back.
            .map_err(|e| InboundError::Protocol(e.to_string()))?;
        let (now, complete) = match self.gate.as_mut().map(|g| g.split(&data, start)) {
            None => (&data[..], false),
            Some(Ok(split)) => (split.now, split.complete),
            Some(Err(e)) => return Err(InboundError::Protocol(e)),
        };
        if let Some(d) = self.digester.as_mut() {
            d.flush().await;
        }
        self.feed.write(now).await;
        if let Some(w) = self.write_behind.as_mut() {
            w.wrote(now.len());
        }
        if complete {
            self.release().await?;
        }
        Ok(())
    }

    async fn close(&mut self) {
        self.feed.shutdown().await;
        if let Some(d) = self.digester.take() {
            self.received = Some(d.finish().await);
        }
    }

    fn feed(&self) -> &Feed {
        &self.feed
    }
}
