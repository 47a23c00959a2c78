//! Connections that never send a request are closed after
//! `--handshake-timeout`; a connection's writes can be bounded too.
//!
//! hyper's own `header_read_timeout` (set in [`super::app`]) bounds reading
//! a request head, but hyper-util's server first reads up to 24 bytes to
//! tell HTTP/1 from the HTTP/2 preface, with no clock at all: a client that
//! connects and says nothing (or sends `P` and stops) would hold a socket
//! and a task forever. [`DeadlineAcceptor`] wraps every accepted stream
//! (after TLS, when there is TLS) in a [`DeadlineStream`] whose reads fail
//! with `TimedOut` once the deadline passes, until that version check is
//! over; from then on hyper's timeout and the sessions' own clocks apply.
//!
//! hyper has no write timeout: a response whose client stopped reading
//! waits forever, holding what the response holds (a stalled web download
//! was still open after 700 s). Each connection therefore gets a
//! [`WriteStall`], handed to its handlers as a request extension: a
//! handler whose response may be long (a download) sets a bound for the
//! rest of the connection, and a write that makes no progress for that
//! long fails, which ends the connection. Unset, writes are not bounded
//! here (websocket sessions have their own clocks).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::middleware::AddExtension;
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_layer::Layer;

/// What hyper-util reads to choose between HTTP/1 and HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The write bound of one connection (see the module doc); shared by its
/// stream and, as a request extension, its handlers.
#[derive(Debug, Clone, Default)]
pub struct WriteStall(Arc<AtomicU64>);

impl WriteStall {
    /// From now on a write that makes no progress for `bound` fails; None
    /// lifts the bound.
    pub fn set(&self, bound: Option<Duration>) {
        let ms = bound.map_or(0, |d| d.as_millis().clamp(1, u64::MAX as u128) as u64);
        self.0.store(ms, Ordering::Relaxed);
    }

    fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

/// Wraps the streams of an inner acceptor in [`DeadlineStream`]s, and
/// hands each connection's [`WriteStall`] to its requests.
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
    type Service = AddExtension<A::Service, WriteStall>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let inner = self.inner.accept(stream, service);
        let timeout = self.timeout;
        Box::pin(async move {
            let (stream, service) = inner.await?;
            let stall = WriteStall::default();
            let service = Extension(stall.clone()).layer(service);
            Ok((DeadlineStream::new(stream, timeout, stall), service))
        })
    }
}

/// A stream whose reads time out until the HTTP version check is over,
/// and whose writes time out when they make no progress for its
/// [`WriteStall`].
#[derive(Debug)]
pub struct DeadlineStream<S> {
    /// The connection.
    inner: S,
    /// Armed until 24 bytes arrived or one differed from the HTTP/2
    /// preface (that is when hyper-util stops peeking).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read while armed.
    seen: usize,
    /// The write bound, when a handler set one.
    stall: WriteStall,
    /// Since when a write has been waiting (armed by a pending write,
    /// disarmed by any progress).
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> DeadlineStream<S> {
    pub fn new(inner: S, timeout: Duration, stall: WriteStall) -> Self {
        DeadlineStream {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            seen: 0,
            stall,
            write_deadline: None,
        }
    }

    /// After a write or flush returned `r`: disarms on progress, arms on
    /// Pending, and turns a wait past the bound into a `TimedOut` error.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !r.is_pending() {
            self.write_deadline = None;
            return r;
        }
        let Some(bound) = self.stall.get() else {
            self.write_deadline = None;
            return r;
        };
        let d = self
            .write_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(bound)));
        if d.as_mut().poll(cx).is_ready() {
            self.write_deadline = None;
            tracing::info!(
                secs = bound.as_secs_f64(),
                "closing a connection whose client took nothing for too long"
            );
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data within the write timeout",
            )));
        }
        r
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
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound_write(cx, r)
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
            let mut s =
                DeadlineStream::new(server, Duration::from_millis(100), WriteStall::default());
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

    #[tokio::test]
    async fn a_write_waits_at_most_its_bound_once_one_is_set() {
        let (mut client, server) = tokio::io::duplex(4096);
        let stall = WriteStall::default();
        let mut s = DeadlineStream::new(server, Duration::from_secs(60), stall.clone());
        let chunk = vec![7u8; 4096];
        // No bound: a write to a peer that reads nothing just waits.
        s.write_all(&chunk).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), s.write_all(&chunk)).await;
        assert!(waited.is_err(), "an unbounded write returned: {waited:?}");
        // A bound: the write fails once it has waited that long.
        stall.set(Some(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk))
            .await
            .expect("the bound ends the write")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150));
        // Progress disarms it: a reader keeps a bounded write going.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let mut got = 0;
            while got < 3 * 4096 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                got += client.read(&mut buf).await.unwrap();
            }
        });
        s.write_all(&vec![1u8; 2 * 4096]).await.unwrap();
        reader.await.unwrap();
    }
}
