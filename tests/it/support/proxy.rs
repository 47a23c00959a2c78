//! A small TCP proxy on loopback that the fault tests own: it sits between a
//! real client and the real server and cuts, stalls, delays or slices the
//! bytes, so a test can watch both ends survive a bad network.
//!
//! Upstream is client to server, downstream server to client. Counting starts
//! after the HTTP upgrade like everything else: the proxy does not parse,
//! it only counts bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// What the proxy does to the bytes.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Forward unchanged.
    None,
    /// Forward every byte as its own write (TCP may still merge them, but the
    /// receiver sees arbitrary fragmentation).
    Slice1,
    /// Sleep this long before forwarding each read.
    Delay(Duration),
    /// Close both sides once this many upstream bytes went through.
    CutUpstreamAfter(u64),
    /// Close both sides once this many downstream bytes went through.
    CutDownstreamAfter(u64),
    /// Stop forwarding (keep the sockets open, silent) after this many
    /// upstream bytes.
    StallUpstreamAfter(u64),
    /// Same, server to client: the client hears nothing more.
    StallDownstreamAfter(u64),
    /// Flip one bit of the upstream byte at this offset (counted from the
    /// connection's first byte): a corrupting network or middlebox.
    FlipUpstreamBitAt(u64),
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicU64>,
    /// Bytes forwarded client to server and server to client, over all
    /// connections (so a test can aim a fault at a share of a transfer).
    pub forwarded: Arc<[AtomicU64; 2]>,
}

impl FaultProxy {
    /// Proxies to `target` (`127.0.0.1:PORT`) with `fault` on every connection.
    pub fn start(target: &str, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let (stop2, conns2, target) = (stop.clone(), connections.clone(), target.to_string());
        let fwd2 = forwarded.clone();
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        conns2.fetch_add(1, Ordering::Relaxed);
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(&target) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        start_pair(client, server, fault, fwd2.clone());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            addr,
            stop,
            connections,
            forwarded,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Bytes forwarded so far: (upstream, downstream).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.forwarded[0].load(Ordering::Relaxed),
            self.forwarded[1].load(Ordering::Relaxed),
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn start_pair(client: TcpStream, server: TcpStream, fault: Fault, fwd: Arc<[AtomicU64; 2]>) {
    let cut = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let cut2 = cut.clone();
    let fwd2 = fwd.clone();
    thread::spawn(move || pump(client, server, fault, true, cut, fwd));
    thread::spawn(move || pump(s2, c2, fault, false, cut2, fwd2));
}

/// Copies `from` to `to`, applying the fault for this direction.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    fault: Fault,
    upstream: bool,
    cut: Arc<AtomicBool>,
    fwd: Arc<[AtomicU64; 2]>,
) {
    let counter = &fwd[if upstream { 0 } else { 1 }];
    let mut buf = [0u8; 16384];
    let mut total: u64 = 0;
    let mut stalled = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.load(Ordering::Relaxed) {
            break;
        }
        if stalled {
            continue; // swallow silently
        }
        if let (Fault::FlipUpstreamBitAt(at), true) = (fault, upstream)
            && (total..total + n as u64).contains(&at)
        {
            buf[(at - total) as usize] ^= 0x10;
        }
        let mut chunk = &buf[..n];
        let limit = match (fault, upstream) {
            (Fault::CutUpstreamAfter(l), true) | (Fault::CutDownstreamAfter(l), false) => {
                Some((l, true))
            }
            (Fault::StallUpstreamAfter(l), true) | (Fault::StallDownstreamAfter(l), false) => {
                Some((l, false))
            }
            _ => None,
        };
        if let Some((limit, is_cut)) = limit
            && total + chunk.len() as u64 >= limit
        {
            chunk = &chunk[..(limit - total) as usize];
            if to.write_all(chunk).is_ok() {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            if is_cut {
                cut.store(true, Ordering::Relaxed);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            stalled = true;
            total = limit;
            continue;
        }
        total += chunk.len() as u64;
        let ok = match fault {
            Fault::Slice1 => chunk
                .iter()
                .all(|b| to.write_all(std::slice::from_ref(b)).is_ok()),
            Fault::Delay(d) => {
                thread::sleep(d);
                to.write_all(chunk).is_ok()
            }
            _ => to.write_all(chunk).is_ok(),
        };
        if !ok {
            break;
        }
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    if !stalled {
        let _ = to.shutdown(Shutdown::Write);
    }
}
