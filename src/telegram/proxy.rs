//! The Bot API through an HTTP proxy, for operators who must go through one.
//!
//! The variables are the ones curl and reqwest read: `HTTPS_PROXY` (or
//! `https_proxy`) for an `https://` Bot API, `HTTP_PROXY` (`http_proxy`) for
//! an `http://` one, `ALL_PROXY` (`all_proxy`) for either, and `NO_PROXY`
//! (`no_proxy`) listing hosts, domain suffixes or `*` to reach directly.
//! The AI backend's client (reqwest) reads the same variables, so one
//! setting covers both.
//!
//! Every connection is a `CONNECT` tunnel opened on the proxy: TLS runs end
//! to end inside it, so the proxy never sees the token in the request path.
//! Only `http://` proxies are spoken (with `user:password@` as Basic
//! credentials); a `socks5://` proxy is refused at start with one line.

use std::fmt;
use std::io;

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection};
use awc::http::Uri;
use base64::Engine as _;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest answer to a CONNECT that is read before giving up on it.
const MAX_PROXY_ANSWER: usize = 8 * 1024;

/// The proxy's variables, as read from the environment.
#[derive(Debug, Default, Clone)]
pub struct ProxyEnv {
    pub http: Option<String>,
    pub https: Option<String>,
    pub all: Option<String>,
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    /// Reads the variables, the upper-case name first, as curl does.
    pub fn from_env() -> ProxyEnv {
        let read = |upper: &str| {
            std::env::var(upper)
                .or_else(|_| std::env::var(upper.to_ascii_lowercase()))
                .ok()
                .filter(|v| !v.trim().is_empty())
        };
        ProxyEnv {
            http: read("HTTP_PROXY"),
            https: read("HTTPS_PROXY"),
            all: read("ALL_PROXY"),
            no_proxy: read("NO_PROXY"),
        }
    }

    /// The proxy to reach `api_url` through, if any.
    pub fn for_url(&self, api_url: &str) -> Result<Option<Proxy>, ProxyError> {
        let Ok(uri) = api_url.parse::<Uri>() else {
            return Ok(None);
        };
        let host = uri.host().unwrap_or_default();
        if self.bypasses(host) {
            return Ok(None);
        }
        let chosen = match uri.scheme_str() {
            Some("https") => self.https.as_ref().or(self.all.as_ref()),
            _ => self.http.as_ref().or(self.all.as_ref()),
        };
        chosen.map(|url| Proxy::parse(url)).transpose()
    }

    /// Whether `NO_PROXY` names `host`: `*`, the host itself, or a domain
    /// it is under (`.example.org` and `example.org` alike).
    fn bypasses(&self, host: &str) -> bool {
        let Some(list) = &self.no_proxy else {
            return false;
        };
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        list.split(',').map(str::trim).any(|entry| {
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            let entry = entry.split(':').next().unwrap_or_default();
            entry == "*"
                || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
        })
    }
}

/// Why a proxy variable cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the proxy {0:?} is not an http:// URL with a host and a port")]
    Malformed(String),
    #[error(
        "the proxy scheme {0:?} is not supported for the Bot API: use an http:// proxy that allows CONNECT"
    )]
    Scheme(String),
}

/// An HTTP proxy that opens CONNECT tunnels.
#[derive(Clone)]
pub struct Proxy {
    /// `host:port` of the proxy.
    authority: String,
    /// The `Proxy-Authorization` value, when the URL has credentials.
    credentials: Option<String>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Credentials stay out of logs.
        f.debug_struct("Proxy")
            .field("authority", &self.authority)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<hidden>"),
            )
            .finish()
    }
}

impl Proxy {
    pub fn parse(url: &str) -> Result<Proxy, ProxyError> {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(ProxyError::Scheme(scheme.to_string()));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                let token = base64::engine::general_purpose::STANDARD.encode(userinfo);
                (Some(format!("Basic {token}")), host_port)
            }
            None => (None, authority),
        };
        let has_port = host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        let authority = if has_port {
            host_port.to_string()
        } else if !host_port.is_empty() && !host_port.ends_with(':') {
            // curl's default proxy port.
            format!("{host_port}:1080")
        } else {
            return Err(ProxyError::Malformed(redact_userinfo(url)));
        };
        Ok(Proxy {
            authority,
            credentials,
        })
    }

    /// Where the proxy is, for the start-up line.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Opens a tunnel to `target` (`host:port`).
    async fn tunnel(&self, target: &str) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect(&self.authority).await?;
        let _ = stream.set_nodelay(true);
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(credentials) = &self.credentials {
            request.push_str(&format!("Proxy-Authorization: {credentials}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        // Byte by byte up to the blank line, so that nothing the tunnel
        // carries afterwards is read here.
        let mut answer = Vec::with_capacity(256);
        while !answer.ends_with(b"\r\n\r\n") {
            if answer.len() >= MAX_PROXY_ANSWER {
                return Err(io::Error::other(
                    "the proxy's answer to CONNECT is too long",
                ));
            }
            let byte = stream.read_u8().await?;
            answer.push(byte);
        }
        let status = tunnel_status(&answer)?;
        if status != 200 {
            return Err(io::Error::other(format!(
                "the proxy {} refused CONNECT {target} with HTTP {status}",
                self.authority
            )));
        }
        Ok(stream)
    }
}

/// The status code of a proxy's answer to CONNECT.
fn tunnel_status(answer: &[u8]) -> io::Result<u16> {
    let line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(io::Error::other(format!(
            "the proxy answered CONNECT with {:?}",
            line.trim()
        ))),
    }
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}<hidden>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// awc's TCP step through the proxy: awc runs TLS over what this returns.
#[derive(Clone, Debug)]
pub struct TunnelConnector(pub Proxy);

impl Service<ConnectInfo<Uri>> for TunnelConnector {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, request: ConnectInfo<Uri>) -> Self::Future {
        let proxy = self.0.clone();
        let target = format!("{}:{}", request.hostname(), request.port());
        let uri = request.request().clone();
        Box::pin(async move {
            let stream = proxy.tunnel(&target).await.map_err(ConnectError::Io)?;
            Ok(Connection::new(uri, stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(https: Option<&str>, all: Option<&str>, no_proxy: Option<&str>) -> ProxyEnv {
        ProxyEnv {
            http: None,
            https: https.map(String::from),
            all: all.map(String::from),
            no_proxy: no_proxy.map(String::from),
        }
    }

    #[test]
    fn the_scheme_of_the_api_picks_the_variable() {
        let e = env(Some("http://proxy:3128"), Some("http://all:8080"), None);
        let https = e.for_url("https://api.telegram.org").unwrap().unwrap();
        assert_eq!(https.authority(), "proxy:3128");
        let http = e.for_url("http://127.0.0.1:8081").unwrap().unwrap();
        assert_eq!(http.authority(), "all:8080");
        assert!(
            env(None, None, None)
                .for_url("https://api.telegram.org")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn no_proxy_names_hosts_and_domains() {
        let e = env(
            Some("http://proxy:3128"),
            None,
            Some("localhost, .telegram.org"),
        );
        assert!(e.for_url("https://api.telegram.org").unwrap().is_none());
        assert!(e.for_url("https://example.org").unwrap().is_some());
        let star = env(Some("http://proxy:3128"), None, Some("*"));
        assert!(star.for_url("https://api.telegram.org").unwrap().is_none());
    }

    #[test]
    fn credentials_become_basic_and_stay_out_of_debug() {
        let proxy = Proxy::parse("http://user:s3cret@proxy:3128").unwrap();
        assert_eq!(proxy.authority(), "proxy:3128");
        assert_eq!(proxy.credentials.as_deref(), Some("Basic dXNlcjpzM2NyZXQ="));
        assert!(!format!("{proxy:?}").contains("s3cret"));
        assert_eq!(Proxy::parse("proxy").unwrap().authority(), "proxy:1080");
    }

    #[test]
    fn other_schemes_and_malformed_urls_are_refused() {
        assert!(matches!(
            Proxy::parse("socks5://proxy:1080"),
            Err(ProxyError::Scheme(_))
        ));
        let err = Proxy::parse("http://user:pw@:").unwrap_err().to_string();
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn the_answer_to_connect_is_read_for_its_status() {
        assert_eq!(
            tunnel_status(b"HTTP/1.1 200 Connection established\r\n\r\n").unwrap(),
            200
        );
        assert_eq!(
            tunnel_status(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n").unwrap(),
            407
        );
        assert!(tunnel_status(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
