//! sqlrsync's control frames (PROTOCOL.md section 3) and the one rule that
//! tells them from stream data.
//!
//! A binary frame is a control frame only when it is a whole frame that
//! starts at a message boundary of the stream with one of sqlrsync's bytes
//! ([`classify`]). Everywhere else those bytes are page data: a page may
//! well begin with 0x51. The client, the server and the fuzz targets all
//! ask [`classify`], so the rule is written once.

use super::limits::MAX_COMMIT_MESSAGE;

// ---------------------------------------------------------------------------
// sqlrsync control frames (PROTOCOL.md section 3).

/// Client asks for the CONFIG text frame.
pub const CTRL_CONFIG: u8 = 0x51;
/// Server tells a puller a newer version exists.
pub const CTRL_NEWREPLICAVERSION: u8 = 0x52;
/// Client asks for keys for this replica.
pub const CTRL_KEYREQUEST: u8 = 0x53;
/// Client sends the commit message of a push.
pub const CTRL_COMMITMESSAGE: u8 = 0x54;
/// Our extension (SERVER.md "Extensions", negotiated by
/// [`super::headers::STREAM_DIGEST`]): after ORIGIN_END, the XXH3-128 of
/// every stream byte the client sent, so the server commits only what
/// arrived unchanged.
pub const CTRL_STREAMDIGEST: u8 = 0x55;

/// True for a first byte that only sqlrsync control frames use (0x55 only
/// between peers that agreed on it, but never a sqlite3_rsync type byte).
pub fn is_control_byte(b: u8) -> bool {
    (CTRL_CONFIG..=CTRL_STREAMDIGEST).contains(&b)
}

/// A control frame sent by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientControl {
    Config,
    KeyRequest,
    CommitMessage(String),
    /// XXH3-128 of the push's stream, big-endian.
    StreamDigest([u8; 16]),
}

/// Why a control frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control frame 0x{0:02x} is not one a client may send")]
    NotClientFrame(u8),
    #[error("control frame 0x{0:02x} has the wrong length")]
    BadLength(u8),
    #[error("commit message is longer than {MAX_COMMIT_MESSAGE} bytes")]
    CommitMessageTooLong,
    #[error("commit message is not UTF-8")]
    CommitMessageNotUtf8,
}

impl ClientControl {
    /// Parses a whole binary frame whose first byte passed [`is_control_byte`].
    pub fn parse(frame: &[u8]) -> Result<ClientControl, ControlError> {
        match frame {
            [CTRL_CONFIG] => Ok(ClientControl::Config),
            [CTRL_KEYREQUEST] => Ok(ClientControl::KeyRequest),
            [CTRL_COMMITMESSAGE, hi, lo, rest @ ..] => {
                let len = u16::from_be_bytes([*hi, *lo]) as usize;
                if len > MAX_COMMIT_MESSAGE {
                    return Err(ControlError::CommitMessageTooLong);
                }
                if rest.len() != len {
                    return Err(ControlError::BadLength(CTRL_COMMITMESSAGE));
                }
                String::from_utf8(rest.to_vec())
                    .map(ClientControl::CommitMessage)
                    .map_err(|_| ControlError::CommitMessageNotUtf8)
            }
            [CTRL_STREAMDIGEST, rest @ ..] => <[u8; 16]>::try_from(rest)
                .map(ClientControl::StreamDigest)
                .map_err(|_| ControlError::BadLength(CTRL_STREAMDIGEST)),
            [b @ (CTRL_CONFIG | CTRL_KEYREQUEST | CTRL_COMMITMESSAGE), ..] => {
                Err(ControlError::BadLength(*b))
            }
            [b, ..] => Err(ControlError::NotClientFrame(*b)),
            [] => Err(ControlError::BadLength(0)),
        }
    }

    /// The frame's bytes. Commit messages longer than the limit are cut at a
    /// character boundary; callers validate first to tell the user.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ClientControl::Config => vec![CTRL_CONFIG],
            ClientControl::KeyRequest => vec![CTRL_KEYREQUEST],
            ClientControl::CommitMessage(m) => {
                let mut end = m.len().min(MAX_COMMIT_MESSAGE);
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                let mut f = Vec::with_capacity(3 + end);
                f.push(CTRL_COMMITMESSAGE);
                f.extend_from_slice(&(end as u16).to_be_bytes());
                f.extend_from_slice(&m.as_bytes()[..end]);
                f
            }
            ClientControl::StreamDigest(d) => {
                let mut f = vec![CTRL_STREAMDIGEST];
                f.extend_from_slice(d);
                f
            }
        }
    }
}

/// What a received binary frame is, by the one boundary rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// An empty frame: carries nothing, skipped.
    Empty,
    /// A control frame whose first byte is this one.
    Control(u8),
    /// Bytes of the sqlite3_rsync stream.
    Stream,
}

/// Classifies a whole binary frame, given whether the receiver's
/// [`StreamParser`](super::stream::StreamParser) of the peer's stream is at
/// a message boundary.
pub fn classify(frame: &[u8], at_boundary: bool) -> FrameKind {
    match frame.first() {
        None => FrameKind::Empty,
        Some(&b) if at_boundary && is_control_byte(b) => FrameKind::Control(b),
        Some(_) => FrameKind::Stream,
    }
}

/// [`classify`] for what a client sends, with the one exception to the
/// boundary rule (PROTOCOL.md section 3): the clients that exist send
/// CONFIG and KEYREQUEST right after their first stream frame, which may
/// end in the middle of a message. A one-byte frame of either there, before
/// any other stream frame, is a control frame.
#[derive(Debug, Default)]
pub struct ClientFrames {
    /// Stream frames seen so far (saturating).
    stream_frames: u32,
}

impl ClientFrames {
    /// Classifies the client's next binary frame.
    pub fn classify(&mut self, frame: &[u8], at_boundary: bool) -> FrameKind {
        let kind = match frame {
            [b @ (CTRL_CONFIG | CTRL_KEYREQUEST)] if self.stream_frames == 1 => {
                FrameKind::Control(*b)
            }
            _ => classify(frame, at_boundary),
        };
        if kind == FrameKind::Stream {
            self.stream_frames = self.stream_frames.saturating_add(1);
        }
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_right_after_the_first_frame_is_control_even_mid_message() {
        let mut c = ClientFrames::default();
        assert_eq!(
            c.classify(&[CTRL_CONFIG], true),
            FrameKind::Control(CTRL_CONFIG)
        );
        // The first stream frame, ending mid-message.
        assert_eq!(c.classify(&[0x41, 2], false), FrameKind::Stream);
        assert_eq!(
            c.classify(&[CTRL_CONFIG], false),
            FrameKind::Control(CTRL_CONFIG)
        );
        assert_eq!(
            c.classify(&[CTRL_KEYREQUEST], false),
            FrameKind::Control(CTRL_KEYREQUEST)
        );
        // Anything else there, and the same bytes later, are stream data.
        assert_eq!(c.classify(&[CTRL_CONFIG, 0], false), FrameKind::Stream);
        assert_eq!(c.classify(&[CTRL_CONFIG], false), FrameKind::Stream);
        assert_eq!(
            c.classify(&[CTRL_CONFIG], true),
            FrameKind::Control(CTRL_CONFIG)
        );
    }

    #[test]
    fn control_frames_round_trip() {
        for c in [
            ClientControl::Config,
            ClientControl::KeyRequest,
            ClientControl::CommitMessage("héllo".into()),
            ClientControl::StreamDigest([7; 16]),
        ] {
            assert_eq!(ClientControl::parse(&c.encode()).unwrap(), c);
        }
        assert!(ClientControl::parse(&[CTRL_CONFIG, 1]).is_err());
        assert!(ClientControl::parse(&[CTRL_COMMITMESSAGE, 0, 5, b'a']).is_err());
        assert!(ClientControl::parse(&[CTRL_NEWREPLICAVERSION]).is_err());
        assert!(ClientControl::parse(&[CTRL_STREAMDIGEST, 1, 2]).is_err());
        assert!(
            (0x41..=0x48)
                .chain(0x61..=0x67)
                .all(|b| !is_control_byte(b))
        );
    }
}
