//! awc's TCP step to the Bot API without a proxy: actix-tls's resolver and
//! connector, as awc's own, with `TCP_NODELAY` set on the socket.
//!
//! Without it, a request written in more than one piece waits on Nagle's
//! algorithm for the server's delayed acknowledgement, up to 40 ms on
//! Linux: HTTP/2 writes a request's HEADERS and DATA frames apart, and
//! fell to an eighth of HTTP/1.1's replies per second that way
//! (BENCHMARKS.md, "HTTP/2 or HTTP/1.1"). Through a proxy the tunnel sets
//! it ([`super::proxy`]).

use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;

/// See the module docs.
#[derive(Clone, Default)]
pub struct DirectConnector(ConnectorService);

impl Service<ConnectInfo<Uri>> for DirectConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, request: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.0.call(request);
        Box::pin(async move {
            let connection = connecting.await?;
            // Best effort: a socket that refuses it still works, slower.
            let _ = connection.io_ref().set_nodelay(true);
            Ok(connection)
        })
    }
}
