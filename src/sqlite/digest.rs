//! Page digests of a pull, taken on a thread of their own.

use std::io;

use super::hash::HashKind;
use super::version::ReceivedPages;

/// Takes the digests of a pull's pages on a thread of its own, so the
/// socket reader only hands pages over (a cheap reference to the frame they
/// arrived in) and goes straight back to feeding the helper. Inline, the
/// SHA-256 of every page stood between each frame and the helper's stdin:
/// about 90 ms of a 100 MB initial pull on the reader's critical path.
pub struct PageDigester {
    /// Batches of pages, one per websocket frame; bounded, so a hasher that
    /// falls behind slows the reader instead of growing memory (8 batches of
    /// at most one 64 KiB frame each).
    tx: Option<tokio::sync::mpsc::Sender<Vec<(u32, bytes::Bytes)>>>,
    /// The hashing thread; its result is the digests of every page sent.
    thread: std::thread::JoinHandle<ReceivedPages>,
    /// Pages of the frame being read, not yet sent.
    batch: Vec<(u32, bytes::Bytes)>,
    /// The hash taken.
    kind: HashKind,
}

impl PageDigester {
    /// Starts the hashing thread, taking digests of `kind`.
    pub fn start(kind: HashKind) -> io::Result<PageDigester> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(u32, bytes::Bytes)>>(8);
        let thread = std::thread::Builder::new()
            .name("page-digests".into())
            .spawn(move || {
                let mut received = ReceivedPages::new(kind);
                while let Some(batch) = rx.blocking_recv() {
                    for (pgno, page) in batch {
                        received.add(pgno, &page);
                    }
                }
                received
            })?;
        Ok(PageDigester {
            tx: Some(tx),
            thread,
            batch: Vec::new(),
            kind,
        })
    }

    /// Notes one page; `page` is a part of `frame` when the page arrived
    /// whole in it (no copy), else it is copied.
    pub fn add(&mut self, pgno: u32, frame: &bytes::Bytes, page: &[u8]) {
        let (base, p) = (frame.as_ptr() as usize, page.as_ptr() as usize);
        let within = p >= base && p + page.len() <= base + frame.len();
        let page = if within {
            frame.slice_ref(page)
        } else {
            bytes::Bytes::copy_from_slice(page)
        };
        self.batch.push((pgno, page));
    }

    /// Hands the pages noted since the last call to the hashing thread.
    pub async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Some(tx) = &self.tx
            && tx.send(batch).await.is_err()
        {
            // The thread is gone (it panicked): no digests, so the
            // verification reads the file instead.
            self.tx = None;
        }
    }

    /// Waits for every digest. A failed thread yields digests that make
    /// the verification read the whole file, never a wrong answer.
    pub async fn finish(mut self) -> ReceivedPages {
        self.flush().await;
        // Dropping the sender ends the thread's loop.
        let PageDigester {
            tx, thread, kind, ..
        } = self;
        drop(tx);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| ReceivedPages::overflowed(kind))
    }
}
