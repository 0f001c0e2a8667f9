//! A TCP proxy that a test can cut and restore, to make a dependency (Redis,
//! PostgreSQL) go away under a running daemon and come back.
//!
//! Plain threads and blocking sockets: the proxy carries a few connections
//! and must keep working whatever runtime the test uses.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Forwards connections from a local port to `upstream` while enabled.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    enabled: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every open connection, to cut them at once.
    open: Mutex<Vec<TcpStream>>,
}

impl TcpProxy {
    /// Listens on a free loopback port.
    pub fn start(upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            enabled: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let accepting = shared.clone();
        thread::Builder::new()
            .name("tcp-proxy".into())
            .spawn(move || accept(listener, accepting))?;
        Ok(TcpProxy { addr, shared })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones, as a server that
    /// went away would.
    pub fn cut(&self) {
        self.shared.enabled.store(false, Ordering::SeqCst);
        let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.shared.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the stop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if !shared.enabled.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2))
        else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        if let Ok(mut open) = shared.open.lock() {
            open.extend(client.try_clone());
            open.extend(server.try_clone());
        }
        let _ = thread::Builder::new()
            .name("tcp-proxy-up".into())
            .spawn(move || pump(client, server_copy));
        let _ = thread::Builder::new()
            .name("tcp-proxy-down".into())
            .spawn(move || pump(server, client_copy));
    }
}

/// Copies one way until either end closes, then closes both.
pub(crate) fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_until_cut_and_again_after_restore() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        thread::spawn(move || {
            for stream in echo.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        let proxy = TcpProxy::start(upstream).unwrap();
        let round_trip = |expect_ok: bool| {
            let mut stream = TcpStream::connect(proxy.addr()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let _ = stream.write_all(b"ping");
            let mut back = [0u8; 4];
            let ok = stream.read_exact(&mut back).is_ok() && &back == b"ping";
            assert_eq!(ok, expect_ok);
            stream
        };
        let open = round_trip(true);
        proxy.cut();
        let mut open = open;
        let mut byte = [0u8; 1];
        assert!(
            matches!(open.read(&mut byte), Ok(0) | Err(_)),
            "cut closes open connections"
        );
        round_trip(false);
        proxy.restore();
        round_trip(true);
    }
}
