//! The two websocket libraries behind one small interface, so the link is
//! written once: the client holds a tokio-tungstenite `WebSocketStream`,
//! the server an axum `WebSocket`. Each is split into a sending half
//! ([`SocketTx`]) and a receiving half ([`SocketRx`]) that speak [`Frame`].
//!
//! Binary payloads stay `Bytes` both ways (no copy of the stream); text
//! frames are short and are copied into a `String`.

use std::future::Future;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

/// One websocket frame, whichever library carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Binary(Bytes),
    Text(String),
    Ping(Bytes),
    Pong(Bytes),
    /// Close code and reason; (1005, "") when the peer sent none.
    Close(u16, String),
}

impl Frame {
    /// Payload bytes of a data frame (what [`super::frame_len`] counts).
    pub fn data_len(&self) -> Option<usize> {
        match self {
            Frame::Binary(b) => Some(b.len()),
            Frame::Text(t) => Some(t.len()),
            _ => None,
        }
    }
}

/// Why a socket could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SocketError {
    /// The peer sent a frame larger than we accept.
    #[error("{0}")]
    TooBig(String),
    /// Anything else: the connection is gone.
    #[error("{0}")]
    Failed(String),
}

/// The sending half of a websocket.
pub trait SocketTx: Send + 'static {
    /// Sends one frame, or with `flush` false only queues it in the
    /// library's write buffer (written once it fills, or at the next
    /// flushing send): a burst of small frames then costs a few writes
    /// instead of one system call each.
    fn send_frame(
        &mut self,
        frame: Frame,
        flush: bool,
    ) -> impl Future<Output = Result<(), SocketError>> + Send;
    /// Sends one frame and flushes.
    fn send(&mut self, frame: Frame) -> impl Future<Output = Result<(), SocketError>> + Send {
        self.send_frame(frame, true)
    }
    /// Flushes and closes the sending side.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// The receiving half of a websocket.
pub trait SocketRx: Send + 'static {
    /// The next frame; None once the connection ended.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Frame, SocketError>>> + Send;
}

/// A websocket that splits into the two halves.
pub trait Socket {
    type Tx: SocketTx;
    type Rx: SocketRx;
    fn split_halves(self) -> (Self::Tx, Self::Rx);
}

/// Sends `msg` (flushing) or only queues it (see [`SocketTx::send_frame`]):
/// the one body of both libraries' adapters.
async fn send_or_feed<K, M>(sink: &mut K, msg: M, flush: bool) -> Result<(), SocketError>
where
    K: futures_util::Sink<M> + Unpin,
    K::Error: std::fmt::Display,
{
    let sent = if flush {
        SinkExt::send(sink, msg).await
    } else {
        SinkExt::feed(sink, msg).await
    };
    sent.map_err(|e| SocketError::Failed(e.to_string()))
}

// --- tokio-tungstenite (the client, and the tests' driver) -------------

type TMsg = tungstenite::Message;

impl<S> Socket for WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Tx = SplitSink<WebSocketStream<S>, TMsg>;
    type Rx = SplitStream<WebSocketStream<S>>;
    fn split_halves(self) -> (Self::Tx, Self::Rx) {
        self.split()
    }
}

impl<S> SocketTx for SplitSink<WebSocketStream<S>, TMsg>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn send_frame(
        &mut self,
        frame: Frame,
        flush: bool,
    ) -> impl Future<Output = Result<(), SocketError>> + Send {
        use tungstenite::protocol::CloseFrame;
        let msg = match frame {
            Frame::Binary(b) => TMsg::Binary(b),
            Frame::Text(t) => TMsg::Text(t.into()),
            Frame::Ping(b) => TMsg::Ping(b),
            Frame::Pong(b) => TMsg::Pong(b),
            Frame::Close(code, reason) => TMsg::Close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            })),
        };
        send_or_feed(self, msg, flush)
    }

    async fn close(&mut self) {
        let _ = SinkExt::close(self).await;
    }
}

impl<S> SocketRx for SplitStream<WebSocketStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn recv(&mut self) -> Option<Result<Frame, SocketError>> {
        {
            loop {
                let frame = match self.next().await? {
                    Ok(TMsg::Binary(b)) => Frame::Binary(b),
                    Ok(TMsg::Text(t)) => Frame::Text(t.as_str().to_owned()),
                    Ok(TMsg::Ping(b)) => Frame::Ping(b),
                    Ok(TMsg::Pong(b)) => Frame::Pong(b),
                    Ok(TMsg::Close(c)) => match c {
                        Some(f) => Frame::Close(u16::from(f.code), f.reason.to_string()),
                        None => Frame::Close(1005, String::new()),
                    },
                    // Raw frames are never returned by a read.
                    Ok(TMsg::Frame(_)) => continue,
                    Err(e @ tungstenite::Error::Capacity(_)) => {
                        return Some(Err(SocketError::TooBig(e.to_string())));
                    }
                    Err(e) => return Some(Err(SocketError::Failed(e.to_string()))),
                };
                return Some(Ok(frame));
            }
        }
    }
}

// --- axum (the server) --------------------------------------------------

use axum::extract::ws::{Message as AMsg, WebSocket};

impl Socket for WebSocket {
    type Tx = SplitSink<WebSocket, AMsg>;
    type Rx = SplitStream<WebSocket>;
    fn split_halves(self) -> (Self::Tx, Self::Rx) {
        self.split()
    }
}

impl SocketTx for SplitSink<WebSocket, AMsg> {
    fn send_frame(
        &mut self,
        frame: Frame,
        flush: bool,
    ) -> impl Future<Output = Result<(), SocketError>> + Send {
        use axum::extract::ws::CloseFrame;
        let msg = match frame {
            Frame::Binary(b) => AMsg::Binary(b),
            Frame::Text(t) => AMsg::Text(t.into()),
            Frame::Ping(b) => AMsg::Ping(b),
            Frame::Pong(b) => AMsg::Pong(b),
            Frame::Close(code, reason) => AMsg::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        };
        send_or_feed(self, msg, flush)
    }

    async fn close(&mut self) {
        let _ = SinkExt::close(self).await;
    }
}

impl SocketRx for SplitStream<WebSocket> {
    async fn recv(&mut self) -> Option<Result<Frame, SocketError>> {
        {
            let frame = match self.next().await? {
                Ok(AMsg::Binary(b)) => Frame::Binary(b),
                Ok(AMsg::Text(t)) => Frame::Text(t.as_str().to_owned()),
                Ok(AMsg::Ping(b)) => Frame::Ping(b),
                Ok(AMsg::Pong(b)) => Frame::Pong(b),
                Ok(AMsg::Close(c)) => match c {
                    Some(f) => Frame::Close(f.code, f.reason.to_string()),
                    None => Frame::Close(1005, String::new()),
                },
                Err(e) => {
                    let inner = e.into_inner();
                    return Some(Err(match inner.downcast_ref::<tungstenite::Error>() {
                        Some(tungstenite::Error::Capacity(_)) => {
                            SocketError::TooBig(inner.to_string())
                        }
                        _ => SocketError::Failed(inner.to_string()),
                    }));
                }
            };
            Some(Ok(frame))
        }
    }
}
