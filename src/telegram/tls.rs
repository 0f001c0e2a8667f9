//! TLS for the daemon's HTTPS clients: rustls with the ring provider and
//! the public (webpki) roots, and for the Bot API also the certificates of
//! `TELEGRAM_CA_FILE` and the HTTP versions of `TELEGRAM_HTTP_VERSION`,
//! offered by ALPN.
//!
//! Which version the Bot API connections speak is the server's choice
//! among those offered: with `"2"` the client offers `h2` then `http/1.1`,
//! with `"1.1"` only `http/1.1`. A plain `http://` Bot API (a local server,
//! a fake) has no ALPN and speaks HTTP/1.1 either way. BENCHMARKS.md
//! ("HTTP/2 or HTTP/1.1") has what each costs per reply, which is how the
//! default was chosen.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use thiserror::Error;

/// The HTTP versions a client offers the Bot API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersions {
    /// HTTP/1.1 alone.
    Http1,
    /// HTTP/2, or HTTP/1.1 where the server does not take it.
    Http2,
}

impl HttpVersions {
    /// `TELEGRAM_HTTP_VERSION`'s values; `None` for anything else.
    pub fn parse(setting: &str) -> Option<HttpVersions> {
        match setting {
            "1.1" => Some(HttpVersions::Http1),
            "2" => Some(HttpVersions::Http2),
            _ => None,
        }
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            HttpVersions::Http1 => vec![b"http/1.1".to_vec()],
            HttpVersions::Http2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// The CA file cannot be used.
#[derive(Debug, Error)]
pub enum CaFileError {
    #[error("TELEGRAM_CA_FILE {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TELEGRAM_CA_FILE {}: no PEM certificate in it", path.display())]
    Empty { path: PathBuf },
    #[error("TELEGRAM_CA_FILE {}: a certificate is not usable as a root", path.display())]
    Unusable {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The client configuration for every HTTPS client but the Bot API's:
/// public roots, no ALPN (HTTP/1.1).
pub fn client_config() -> rustls::ClientConfig {
    with_roots(public_roots())
}

/// The Bot API's: the public roots and those of `ca_file` (if given), the
/// versions offered by ALPN.
pub fn bot_api_config(
    ca_file: Option<&Path>,
    versions: HttpVersions,
) -> Result<rustls::ClientConfig, CaFileError> {
    let mut roots = public_roots();
    if let Some(path) = ca_file {
        let read = |source| CaFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(read)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        if certificates.is_empty() {
            return Err(CaFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        for certificate in certificates {
            roots
                .add(certificate)
                .map_err(|source| CaFileError::Unusable {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    let mut config = with_roots(roots);
    config.alpn_protocols = versions.alpn();
    Ok(config)
}

fn public_roots() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn with_roots(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    let provider = || Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // The ring provider supports the default protocol versions: the
        // error cannot happen, and a panic stays out of the start.
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3 is supported by ring")
        });
    builder.with_root_certificates(roots).with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("actorbot-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn the_versions_offered_follow_the_setting() {
        let http1 = bot_api_config(None, HttpVersions::parse("1.1").unwrap()).unwrap();
        assert_eq!(http1.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let http2 = bot_api_config(None, HttpVersions::parse("2").unwrap()).unwrap();
        assert_eq!(
            http2.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(HttpVersions::parse("3"), None);
        assert!(client_config().alpn_protocols.is_empty());
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_with_its_name() {
        let path = temp_file("empty.pem", "not a certificate\n");
        let err = bot_api_config(Some(&path), HttpVersions::Http1).unwrap_err();
        assert!(matches!(err, CaFileError::Empty { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        std::fs::remove_file(&path).unwrap();

        let missing = std::env::temp_dir().join("actorbot-tls-no-such-file.pem");
        let err = bot_api_config(Some(&missing), HttpVersions::Http1).unwrap_err();
        assert!(matches!(err, CaFileError::Read { .. }), "{err}");
    }
}
