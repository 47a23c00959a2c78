//! What one sync did, folded from the messages of one direction of the
//! stream: the origin's side (pages sent, final size, errors) and the
//! replica's (its errors decide a sync, because the helper's `--replica`
//! form always exits 0).

use super::stream::Message;

/// What one sync did, learned from the ORIGIN's stream alone: enough for the
/// server to record a version and for the client to report progress.
#[derive(Debug, Default, Clone)]
pub struct OriginSummary {
    pub protocol: u8,
    pub page_size: u32,
    /// Pages in ORIGIN when the sync started (ORIGIN_BEGIN).
    pub page_count: u32,
    /// Pages sent, in the order sent.
    pub pages_sent: u64,
    /// Final page count from ORIGIN_TXN, once the origin committed.
    pub txn_page_count: Option<u32>,
    /// Errors the origin reported (ORIGIN_ERROR).
    pub errors: Vec<String>,
    /// Informational messages (ORIGIN_MSG).
    pub messages: Vec<String>,
    /// ORIGIN_END seen.
    pub ended: bool,
}

impl OriginSummary {
    /// Folds one message from the origin into the summary.
    pub fn observe(&mut self, msg: &Message<'_>) {
        match *msg {
            Message::OriginBegin {
                protocol,
                page_size,
                page_count,
            } => {
                self.protocol = protocol;
                self.page_size = page_size;
                self.page_count = page_count;
            }
            Message::OriginPage { .. } => self.pages_sent += 1,
            Message::OriginTxn { page_count } => self.txn_page_count = Some(page_count),
            Message::OriginError(t) => self.errors.push(String::from_utf8_lossy(t).into_owned()),
            Message::OriginMsg(t) => self.messages.push(String::from_utf8_lossy(t).into_owned()),
            Message::OriginEnd => self.ended = true,
            _ => {}
        }
    }

    /// True when the origin sent a complete, error-free sync.
    pub fn complete(&self) -> bool {
        self.ended && self.errors.is_empty() && self.txn_page_count.is_some()
    }
}

/// What the REPLICA side said: its errors decide whether a sync succeeded,
/// because the helper's `--replica` form always exits 0.
#[derive(Debug, Default, Clone)]
pub struct ReplicaSummary {
    pub errors: Vec<String>,
    pub messages: Vec<String>,
    pub hashes_sent: u64,
    pub ended: bool,
}

impl ReplicaSummary {
    pub fn observe(&mut self, msg: &Message<'_>) {
        match *msg {
            Message::ReplicaError(t) => self.errors.push(String::from_utf8_lossy(t).into_owned()),
            Message::ReplicaMsg(t) => self.messages.push(String::from_utf8_lossy(t).into_owned()),
            Message::ReplicaHash(_) => self.hashes_sent += 1,
            Message::ReplicaEnd => self.ended = true,
            _ => {}
        }
    }
}
