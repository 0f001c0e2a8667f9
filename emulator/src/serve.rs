//! Running a fake: an actix-web server on an actix system of its own
//! thread, so that any caller (a test on any runtime, a plain `main`) can
//! start one and stop it by stopping its system.

use std::net::SocketAddr;

use actix_web::{App, HttpServer, web};
use futures_util::future::LocalBoxFuture;

/// A running fake: its state, where it listens, and the system that stops
/// when the last handle goes.
pub(crate) struct Running<S> {
    pub shared: std::sync::Arc<S>,
    pub addr: SocketAddr,
    pub system: actix_rt::System,
}

impl<S> Drop for Running<S> {
    fn drop(&mut self) {
        self.system.stop();
    }
}

/// A fake's server: where it listens and the system to stop it with.
pub(crate) struct Served {
    pub addr: SocketAddr,
    pub system: actix_rt::System,
}

/// Starts a server whose routes `configure` adds, plus an optional
/// background task on the system's own thread, and returns once it listens.
/// `keep_alive` is how long an idle connection stays open (actix-web's
/// default when `None`); with `tls` it listens for HTTPS instead of HTTP.
pub(crate) fn serve<F>(
    name: &str,
    addr: SocketAddr,
    workers: usize,
    keep_alive: Option<std::time::Duration>,
    tls: Option<rustls::ServerConfig>,
    configure: F,
    background: Option<Box<dyn FnOnce() -> LocalBoxFuture<'static, ()> + Send>>,
) -> std::io::Result<Served>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let system = actix_rt::System::new();
            let started = system.block_on(async {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::PayloadConfig::new(64 << 20))
                        .app_data(web::JsonConfig::default().limit(16 << 20))
                        .configure(configure.clone())
                })
                .workers(workers.max(1))
                .keep_alive(
                    keep_alive.map_or(actix_web::http::KeepAlive::default(), |idle| {
                        actix_web::http::KeepAlive::Timeout(idle)
                    }),
                )
                .disable_signals()
                .backlog(8192)
                .max_connections(100_000)
                .max_connection_rate(8192)
                // As Telegram's servers: an answer's pieces (HTTP/2 frames)
                // are not held back for the client's acknowledgement.
                .tcp_nodelay(true);
                let server = match tls {
                    Some(tls) => server.bind_rustls_0_23(addr, tls)?,
                    None => server.bind(addr)?,
                };
                let addr = server.addrs()[0];
                actix_rt::spawn(server.run());
                if let Some(task) = background {
                    actix_rt::spawn(task());
                }
                Ok::<_, std::io::Error>(Served {
                    addr,
                    system: actix_rt::System::current(),
                })
            });
            let ok = started.is_ok();
            let _ = tx.send(started);
            if ok {
                let _ = system.run();
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other(format!("the {name} thread died")))?
}
