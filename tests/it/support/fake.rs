//! A fake SQLRsync server for tests of the client: a websocket listener on
//! 127.0.0.1:0 that serves scripted scenarios, one connection each, so a
//! test can make the server abort, lie, stall, close early or send garbage
//! at any stage, and watch the real `sqlrsync` cope. `honest` is the
//! well-behaved case (the real helper behind it, like our server).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sqlrsync::wire::{self as proto, Direction, StreamParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What one scenario does with the one connection it gets.
pub type Scenario = Box<dyn FnOnce(TcpStream) -> Pin<Box<dyn Future<Output = u64> + Send>> + Send>;

/// A fake server that serves one scenario; its thread returns the number
/// of stream bytes it sent.
pub struct Fake {
    /// `ws://127.0.0.1:PORT`
    pub url: String,
    thread: std::thread::JoinHandle<u64>,
}

impl Fake {
    pub fn start(scenario: Scenario) -> Fake {
        Self::start_many(vec![scenario])
    }

    /// Serves the scenarios one connection each, in order.
    pub fn start_many(scenarios: Vec<Scenario>) -> Fake {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut sent = 0;
                for scenario in scenarios {
                    let (tcp, _) = tokio::time::timeout(Duration::from_secs(60), l.accept())
                        .await
                        .expect("the client connects")
                        .unwrap();
                    tcp.set_nodelay(true).unwrap();
                    // Whatever the scenario does, it may not outlive the test.
                    sent += tokio::time::timeout(Duration::from_secs(60), scenario(tcp))
                        .await
                        .unwrap_or(0);
                }
                sent
            })
        });
        Fake { url, thread }
    }

    pub fn sent(self) -> u64 {
        self.thread.join().unwrap()
    }
}

pub fn scenario<F, Fut>(f: F) -> Scenario
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    Box::new(move |tcp| Box::pin(f(tcp)))
}

/// The websocket upgrade, as a server.
pub async fn upgrade(tcp: TcpStream) -> WebSocketStream<TcpStream> {
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

pub async fn send_bin(ws: &mut WebSocketStream<TcpStream>, b: Vec<u8>) -> bool {
    ws.send(Message::Binary(b.into())).await.is_ok()
}

/// Reads what the client sends for a while (its hashes), so it gets going.
pub async fn listen(ws: &mut WebSocketStream<TcpStream>, d: Duration) {
    let _ = tokio::time::timeout(d, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// A fake that runs the real helper on `db` as `side` (`--origin` for a
/// pull, `--replica` for a push) and sends `cfg`: first on a pull (as our
/// server does), after the helper finished on a push, followed by a normal
/// close (a committed push).
pub fn honest(side: &'static str, db: PathBuf, cfg: proto::ServerConfig) -> Scenario {
    honest_with(side, db, cfg, Vec::new(), |_| {})
}

/// [`honest`], with `tamper` applied to each chunk of the helper's output
/// before it is sent: a server (or a disk) that damages what it streams.
pub fn honest_tampered(
    side: &'static str,
    db: PathBuf,
    cfg: proto::ServerConfig,
    tamper: fn(&mut [u8]),
) -> Scenario {
    honest_with(side, db, cfg, Vec::new(), tamper)
}

/// [`honest`], sending the frames of `preamble` first (MESSAGEs; clones
/// of one text frame share its bytes), and with `tamper` applied to the
/// helper's output.
pub fn honest_with(
    side: &'static str,
    db: PathBuf,
    cfg: proto::ServerConfig,
    preamble: Vec<Message>,
    tamper: fn(&mut [u8]),
) -> Scenario {
    scenario(move |tcp| async move {
        let mut ws = upgrade(tcp).await;
        for m in preamble {
            if ws.send(m).await.is_err() {
                return 0;
            }
        }
        let pull = side == "--origin";
        let config = Message::Text(proto::ServerText::Config(cfg).encode().into());
        if pull {
            let _ = ws.send(config.clone()).await;
        }
        let mut cmd = tokio::process::Command::new(sqlrsync::helper::path().unwrap());
        cmd.arg(side);
        if pull {
            cmd.arg(&db).arg("team/x.db");
        } else {
            cmd.arg("team/x.db").arg(&db);
        }
        let mut helper = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = helper.stdin.take();
        let mut stdout = helper.stdout.take().unwrap();
        let (theirs, ours) = if pull {
            (Direction::FromReplica, Direction::FromOrigin)
        } else {
            (Direction::FromOrigin, Direction::FromReplica)
        };
        let mut from_client = StreamParser::new(theirs);
        let mut from_helper = StreamParser::new(ours);
        let mut buf = vec![0u8; 65536];
        let mut sent = 0u64;
        let mut stdout_open = true;
        loop {
            tokio::select! {
                n = stdout.read(&mut buf), if stdout_open => {
                    let n = n.unwrap_or(0);
                    if n == 0 {
                        stdout_open = false;
                        if !pull {
                            // The replica committed: confirm like a server.
                            let _ = ws.send(config.clone()).await;
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::Normal,
                                    reason: "done".into(),
                                }))
                                .await;
                        }
                        continue;
                    }
                    from_helper.feed(&buf[..n], |_| {}).unwrap();
                    tamper(&mut buf[..n]);
                    sent += n as u64;
                    if !send_bin(&mut ws, buf[..n].to_vec()).await { break; }
                    if pull && from_helper.ended() {
                        // The client never sends EOF; give the helper ours.
                        stdin = None;
                    }
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        if let proto::FrameKind::Control(_) = proto::classify(&b, from_client.at_boundary()) {
                            continue;
                        }
                        from_client.feed(&b, |_| {}).unwrap();
                        if let Some(s) = stdin.as_mut() {
                            let _ = s.write_all(&b).await;
                        }
                        if !pull && from_client.ended() {
                            stdin = None;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = ws.close(None).await;
        sent
    })
}

/// A fake that sends `count` `MESSAGE=` frames of `size` bytes each (as
/// fast as the client takes them), then `ABORT=flood over`, reading what
/// the client sends meanwhile; returns the text bytes it got the client
/// to take. The flood of issue 13 was 200 messages of 3.9 MiB.
pub fn message_flood(count: usize, size: usize) -> Scenario {
    scenario(move |tcp| async move {
        let ws = upgrade(tcp).await;
        let (mut tx, mut rx) = ws.split();
        // Read (and drop) what the client sends, so it never blocks on us.
        let reading = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        let text = format!("MESSAGE={}", "m".repeat(size.saturating_sub(8)));
        let mut sent = 0u64;
        for _ in 0..count {
            if tx.send(Message::Text(text.clone().into())).await.is_err() {
                break;
            }
            sent += text.len() as u64;
        }
        let _ = tx.send(Message::Text("ABORT=flood over".into())).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), reading).await;
        sent
    })
}

/// A fake that keeps the upgrade request's headers, then aborts.
// The callback's error type is tungstenite's own.
#[allow(clippy::result_large_err)]
pub fn capture_headers(seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>) -> Scenario {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    scenario(move |tcp| async move {
        let keep = |req: &Request, resp: Response| {
            let mut v = seen.lock().unwrap();
            for (k, val) in req.headers() {
                v.push((
                    k.as_str().to_string(),
                    String::from_utf8_lossy(val.as_bytes()).into_owned(),
                ));
            }
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, keep)
            .await
            .unwrap();
        let _ = ws.send(Message::Text("ABORT=seen".into())).await;
        listen(&mut ws, Duration::from_secs(5)).await;
        0
    })
}
