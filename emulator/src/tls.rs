//! HTTPS for a fake: a certificate made when the fake starts, for
//! `127.0.0.1` and `localhost`, so that a client can be tested over TLS
//! and offered HTTP/2 the way Telegram's own servers offer it (ALPN `h2`,
//! then `http/1.1`; the client chooses).
//!
//! The certificate is its own issuer: a client trusts it by taking its PEM
//! ([`Identity::certificate_pem`]) as a root, as the daemon does with
//! `TELEGRAM_CA_FILE`. Nothing is written to disk here.

use std::io;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A fake's certificate and the server configuration that presents it.
pub(crate) struct Identity {
    pub certificate_pem: String,
    pub server: rustls::ServerConfig,
}

/// A fresh self-signed certificate for the loopback names, and a rustls
/// server configuration with it. actix-web puts `h2` and `http/1.1` into
/// the ALPN list itself.
pub(crate) fn identity() -> io::Result<Identity> {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    let certificate = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(vec![certificate], key)
    .map_err(io::Error::other)?;
    Ok(Identity {
        certificate_pem: certified.cert.pem(),
        server,
    })
}
