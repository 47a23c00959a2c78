//! Connections that never send a request are closed after
//! `--handshake-timeout`.
//!
//! hyper's own `header_read_timeout` (set in [`super::app`]) bounds reading
//! a request head, but hyper-util's server first reads up to 24 bytes to
//! tell HTTP/1 from the HTTP/2 preface, with no clock at all: a client that
//! connects and says nothing (or sends `P` and stops) would hold a socket
//! and a task forever. [`DeadlineAcceptor`] wraps every accepted stream
//! (after TLS, when there is TLS) in a [`DeadlineStream`] whose reads fail
//! with `TimedOut` once the deadline passes, until that version check is
//! over; from then on hyper's timeout and the sessions' own clocks apply.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What hyper-util reads to choose between HTTP/1 and HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Wraps the streams of an inner acceptor in [`DeadlineStream`]s.
#[derive(Debug, Clone)]
pub struct DeadlineAcceptor<A> {
    /// The acceptor whose streams are wrapped (NODELAY, TLS).
    inner: A,
    /// Time from accept to the end of the version check.
    timeout: Duration,
}

impl<A> DeadlineAcceptor<A> {
    pub fn new(inner: A, timeout: Duration) -> Self {
        DeadlineAcceptor { inner, timeout }
    }
}

impl<A, I, S> Accept<I, S> for DeadlineAcceptor<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = DeadlineStream<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let inner = self.inner.accept(stream, service);
        let timeout = self.timeout;
        Box::pin(async move {
            let (stream, service) = inner.await?;
            Ok((DeadlineStream::new(stream, timeout), service))
        })
    }
}

/// A stream whose reads time out until the HTTP version check is over.
#[derive(Debug)]
pub struct DeadlineStream<S> {
    /// The connection.
    inner: S,
    /// Armed until 24 bytes arrived or one differed from the HTTP/2
    /// preface (that is when hyper-util stops peeking).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read while armed.
    seen: usize,
}

impl<S> DeadlineStream<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        DeadlineStream {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            seen: 0,
        }
    }

    /// Disarms once the bytes read so far settle the version question.
    fn observe(&mut self, new: &[u8]) {
        for &b in new {
            if self.seen >= H2_PREFACE.len() || b != H2_PREFACE[self.seen] {
                self.deadline = None;
                return;
            }
            self.seen += 1;
        }
        if self.seen >= H2_PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.deadline.is_some() {
                    let new = buf.filled()[before..].to_vec();
                    self.observe(&new);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(d) = self.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    self.deadline = None;
                    tracing::debug!("closing a connection that sent no request in time");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request within the handshake timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn silent_and_stalled_peers_time_out_talkers_do_not() {
        for (sent, times_out) in [
            (&b""[..], true),
            (&b"PRI * HT"[..], true),
            (&b"GET / HTTP/1.1\r\n"[..], false),
            (H2_PREFACE, false),
        ] {
            let (client, server) = tokio::io::duplex(1024);
            let mut s = DeadlineStream::new(server, Duration::from_millis(100));
            let mut client = client;
            client.write_all(sent).await.unwrap();
            let mut buf = vec![0u8; 64];
            let mut got = 0;
            while got < sent.len() {
                got += s.read(&mut buf[got..]).await.unwrap();
            }
            let r = tokio::time::timeout(Duration::from_millis(400), s.read(&mut buf)).await;
            match r {
                Ok(Err(e)) => assert!(times_out, "{sent:?}: {e}"),
                Err(_) => assert!(!times_out, "{sent:?} never timed out"),
                Ok(Ok(n)) => panic!("{sent:?}: read {n}"),
            }
            drop(client);
        }
    }
}
