//! TLS for `wss://` URLs: the client configuration every connection shares.
//!
//! Every connection gets a `rustls::ClientConnection` of its own, made from one shared
//! configuration; the event loop drives it without blocking (`conn.rs`, `worker.rs`), the
//! slow listener of `fanout` through rustls's blocking `StreamOwned`.
//!
//! - **Trust only what the run names.** The server's certificate is checked against the
//!   certificate authority given with `--ca` (PEM) and nothing else: no system store, and no
//!   switch that turns verification off, so a benchmark over TLS pays for and proves the same
//!   checks a real client makes.
//! - **The name checked** is the URL's host (an IP address is checked against the
//!   certificate's IP addresses and sends no SNI, as browsers do), or `--server-name`.
//! - **Every handshake is a full one.** Resumption is off: each connection stands for a
//!   distinct client, and none keeps a ticket it will never use.
//! - **Small idle connections.** An idle `ClientConnection` keeps rustls's state and its 4 KiB
//!   receive buffer; its send queue is freed once written.

use anyhow::{Context, Result, bail};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::path::Path;
use std::sync::Arc;

/// What every TLS connection to one target starts from.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// A configuration that trusts only the certificates in the PEM file `ca` and expects
    /// the server's certificate to be valid for `server_name` (a DNS name or an IP address).
    pub fn new(ca: &Path, server_name: &str) -> Result<TlsClient> {
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read --ca {}", ca.display()))?;
        let roots = roots_from_pem(&pem).with_context(|| format!("--ca {}", ca.display()))?;
        let server_name = ServerName::try_from(server_name.to_string())
            .with_context(|| format!("{server_name:?} is not a DNS name or an IP address"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("the ring provider supports no TLS version")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// A new client session, its ClientHello already queued for sending.
    pub fn session(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

/// Every certificate of a PEM file, as trust anchors; at least one.
fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.context("not a valid PEM file")?;
        roots
            .add(cert)
            .context("a certificate in it cannot be used as a trust anchor")?;
    }
    if roots.is_empty() {
        bail!("no CERTIFICATE in it (it must be the PEM of the certificate authority)");
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_file_without_certificates() {
        let err = roots_from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err:#}");
        assert!(roots_from_pem(b"").is_err());
    }

    #[test]
    fn takes_every_certificate_of_the_file() {
        let mut pem = String::new();
        for name in ["first CA", "second CA"] {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let key = rcgen::KeyPair::generate().unwrap();
            pem += &params.self_signed(&key).unwrap().pem();
        }
        assert_eq!(roots_from_pem(pem.as_bytes()).unwrap().len(), 2);
    }

    #[test]
    fn names_the_missing_file() {
        let err = TlsClient::new(Path::new("/nonexistent/ca.pem"), "localhost").unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/ca.pem"),
            "{err:#}"
        );
    }
}
