//! How large a binary frame may be, and how two peers agree on more.
//!
//! The clients that exist for sqlrsync.com read every frame into a buffer
//! of [`COMPAT_MAX_FRAME`] bytes (one ORIGIN_PAGE of a 4 KiB page) and take
//! a larger one as an error (PROTOCOL.md section 3). Larger frames are
//! faster between our own client and server, so they are an extension:
//! each side names the largest frame it accepts in the
//! [`MAX_FRAME`](super::headers::MAX_FRAME) header of the upgrade (the
//! client in its request, the server in its answer, and only to a client
//! that offered), and each side sends frames larger than
//! [`COMPAT_MAX_FRAME`] only to a peer that named a larger size. A peer
//! that said nothing gets compatible frames, whatever it is.

/// Largest binary frame sent to a peer that did not offer more: 1 + 4 +
/// 4096 bytes, one ORIGIN_PAGE of a 4 KiB page.
pub const COMPAT_MAX_FRAME: usize = 4101;

/// Largest websocket frame, and message, our client takes from a server,
/// and what it offers in [`MAX_FRAME`](super::headers::MAX_FRAME): far
/// above any frame a server sends (ours sends at most 16 KiB, others
/// 4101 bytes), far below what would threaten the client's memory bound.
/// Nobody fragments messages here, so a message is bounded by the same
/// figure: a server that named no larger size than this can never have
/// sent more in one message.
pub const CLIENT_MAX_FRAME: usize = 4 << 20;

/// Largest size a peer may name that we take at its word; a larger
/// figure is read as this (we never send frames anywhere near it).
pub const MAX_OFFERED_FRAME: usize = 64 << 20;

/// The frame size a peer named in its [`MAX_FRAME`](super::headers::MAX_FRAME)
/// header: `None` when it named none, or nothing usable (not a decimal
/// number, or not above [`COMPAT_MAX_FRAME`]): such a peer gets compatible
/// frames.
pub fn offered_max_frame(value: Option<&str>) -> Option<usize> {
    let v = value?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Any figure of more digits than a u64 holds is more than we need.
    let n = v.parse::<u64>().unwrap_or(u64::MAX);
    let n = usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(MAX_OFFERED_FRAME);
    (n > COMPAT_MAX_FRAME).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_usable_figure_is_an_offer() {
        assert_eq!(offered_max_frame(None), None);
        assert_eq!(offered_max_frame(Some("")), None);
        assert_eq!(offered_max_frame(Some("yes")), None);
        assert_eq!(offered_max_frame(Some("-5")), None);
        assert_eq!(offered_max_frame(Some("4101")), None);
        assert_eq!(offered_max_frame(Some("65536")), Some(65536));
        assert_eq!(offered_max_frame(Some(" 65536 ")), Some(65536));
        assert_eq!(
            offered_max_frame(Some("99999999999999999999")),
            Some(MAX_OFFERED_FRAME)
        );
    }
}
