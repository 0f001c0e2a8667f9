//! An HTTP proxy for tests, as operators run in front of the Internet: it
//! opens `CONNECT` tunnels and forwards absolute-form requests
//! (`GET http://host/path`), and counts both, so that a test can see that
//! the daemon went through it.
//!
//! Plain threads and blocking sockets, as [`crate::proxy`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crate::proxy::pump;

/// A proxy on a free loopback port.
pub struct HttpProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    tunnels: AtomicUsize,
    forwarded: AtomicUsize,
    /// Credentials required, as `Basic <base64>`.
    required: Option<String>,
    refused: AtomicUsize,
}

impl HttpProxy {
    pub fn start() -> std::io::Result<HttpProxy> {
        HttpProxy::start_with(None)
    }

    /// A proxy that answers 407 to requests without these Basic
    /// credentials.
    pub fn with_credentials(user: &str, password: &str) -> std::io::Result<HttpProxy> {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HttpProxy::start_with(Some(format!("Basic {token}")))
    }

    fn start_with(required: Option<String>) -> std::io::Result<HttpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts {
            required,
            ..Counts::default()
        });
        let accepting = counts.clone();
        thread::Builder::new()
            .name("http-proxy".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let counts = accepting.clone();
                    let _ = thread::Builder::new()
                        .name("http-proxy-conn".into())
                        .spawn(move || serve(client, &counts));
                }
            })?;
        Ok(HttpProxy { addr, counts })
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY` and the like.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// CONNECT tunnels opened.
    pub fn tunnels(&self) -> usize {
        self.counts.tunnels.load(Ordering::SeqCst)
    }

    /// Connections that began with an absolute-form request.
    pub fn forwarded(&self) -> usize {
        self.counts.forwarded.load(Ordering::SeqCst)
    }

    /// Requests answered 407.
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

/// Reads the request head, up to the blank line.
fn read_head(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || client.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

fn serve(mut client: TcpStream, counts: &Counts) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return;
    };
    if let Some(required) = &counts.required {
        let given = text.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("proxy-authorization")
                .then(|| value.trim().to_string())
        });
        if given.as_deref() != Some(required.as_str()) {
            counts.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
    }
    let (upstream, first) = if method.eq_ignore_ascii_case("CONNECT") {
        let Ok(server) = TcpStream::connect(target) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        counts.tunnels.fetch_add(1, Ordering::SeqCst);
        let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
        (server, Vec::new())
    } else {
        // `http://host:port/path`: the request goes on as it is, since
        // servers take the absolute form too.
        let authority = target
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let Ok(server) = TcpStream::connect(&authority) else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        counts.forwarded.fetch_add(1, Ordering::SeqCst);
        (server, head)
    };
    let _ = client.set_read_timeout(None);
    let mut upstream = upstream;
    if upstream.write_all(&first).is_err() {
        return;
    }
    let (Ok(client_copy), Ok(upstream_copy)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let down = thread::spawn(move || pump(upstream, client_copy));
    pump(client, upstream_copy);
    let _ = down.join();
}
