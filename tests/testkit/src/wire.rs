//! A server that plays an HTTP answer byte for byte, as scripted.
//!
//! The fakes built on actix-web always answer tidily: a `Content-Length` or
//! chunked encoding, `\n\n` between events. Real backends are less tidy: a
//! development server that ends its body by closing the connection, CR line
//! ends, an event split inside a UTF-8 character, pings, a pause in the
//! middle. [`Scripted`] writes exactly the bytes and pauses it is given to
//! every request it gets, after reading the request (head and
//! `Content-Length` body), and then closes the connection, so each of those
//! quirks can be played as it is on the wire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One step of an answer.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write these bytes (and flush them: each is its own TCP segment as
    /// far as the server can make it).
    Write(Vec<u8>),
    /// Wait this long before the next step.
    Pause(Duration),
}

impl Step {
    pub fn text(text: &str) -> Step {
        Step::Write(text.as_bytes().to_vec())
    }
}

/// A running scripted server; it stops when dropped.
pub struct Scripted {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Scripted {
    /// Answers every request with `steps`, then closes the connection.
    pub fn start(steps: Vec<Step>) -> std::io::Result<Scripted> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (requests.clone(), stop.clone());
        let steps = Arc::new(steps);
        std::thread::Builder::new()
            .name("scripted-http".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (steps, count) = (steps.clone(), count.clone());
                    std::thread::spawn(move || {
                        if let Ok(line) = read_request(&stream) {
                            count.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                            play(stream, &steps);
                        }
                    });
                }
            })?;
        Ok(Scripted {
            addr,
            requests,
            stop,
        })
    }

    /// `http://127.0.0.1:port`, for a base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request line (`POST /v1/chat/completions HTTP/1.1`) of every
    /// request read so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many requests were completions.
    pub fn completions(&self) -> usize {
        self.requests()
            .iter()
            .filter(|line| line.starts_with("POST ") && line.contains("/chat/completions"))
            .count()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads a request; answers its request line.
fn read_request(stream: &TcpStream) -> std::io::Result<String> {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(request_line.trim_end().to_string())
}

fn play(mut stream: TcpStream, steps: &[Step]) {
    let _ = stream.set_nodelay(true);
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if stream
                    .write_all(bytes)
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    return;
                }
            }
            Step::Pause(pause) => std::thread::sleep(*pause),
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The head of a `200 OK` answer with `content_type` and nothing that says
/// where the body ends: it ends when the connection closes.
pub fn close_delimited_head(content_type: &str) -> Step {
    Step::text(&format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
    ))
}

/// One chunk of a streamed chat completion, as a `data:` event ended by
/// `end` (`"\n\n"`, `"\r\n\r\n"`, `"\r\r"`).
pub fn completion_chunk(content: &str, finish: Option<&str>, end: &str) -> String {
    let event = serde_json::json!({
        "id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    });
    format!("data: {event}{end}")
}
