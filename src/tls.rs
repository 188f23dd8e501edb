//! TLS settings: the certificate and key, loaded at start and again on SIGHUP.
//!
//! With `--tls-cert` and `--tls-key` the port speaks TLS only (1.2 and 1.3): `wss://` for
//! WebSockets, `https://` for the demo page, `/healthz` and `/metrics`. The TLS layer itself
//! runs inside each connection's thread (`connection/transport.rs`); this module owns what all
//! connections share: one `rustls` configuration whose certificate can be swapped.
//!
//! **One certificate, whatever the client asks for.** The server has one certificate, so a
//! client that sends no server name (SNI), or another one, still gets it, as other servers with
//! a single certificate do; the client decides whether it trusts it.
//!
//! **Rotation without a restart.** The certificate is held behind a lock that every new
//! handshake reads once. [`Tls::reload`] reads the files again and swaps it: new connections
//! use the new certificate, open ones keep the keys they agreed on. A file that does not load
//! leaves the old certificate in use, and the caller logs why.
//!
//! **Small idle connections.** Session resumption is off (no tickets, no session cache): it
//! would keep state per past handshake for a benefit browsers rarely see on a long-lived
//! WebSocket. What an idle TLS connection keeps is rustls's own state and its 4 KiB receive
//! buffer; see `transport.rs` on the send side.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};

use crate::config::TlsFiles;
use crate::error::TlsError;

/// The TLS configuration every connection starts from, and its swappable certificate.
#[derive(Debug)]
pub(crate) struct Tls {
    files: TlsFiles,
    config: Arc<ServerConfig>,
    certificate: Arc<OneCertificate>,
}

/// The resolver that gives every client the one certificate, whatever name it asked for.
#[derive(Debug)]
struct OneCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = crate::sync::read(&self.0);
        Some(Arc::clone(&current))
    }
}

impl Tls {
    /// Loads the files and builds the configuration; fails with a line that names the file.
    pub(crate) fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_certified_key(&files, &provider)?;
        let certificate = Arc::new(OneCertificate(RwLock::new(key)));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("cannot set up TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Tls {
            files,
            config: Arc::new(config),
            certificate,
        })
    }

    /// Reads the files again and, if they load, serves the new certificate to new
    /// connections. On error the old certificate stays in use.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let provider = Arc::clone(self.config.crypto_provider());
        let key = load_certified_key(&self.files, &provider)?;
        *crate::sync::write(&self.certificate.0) = key;
        Ok(())
    }

    /// The files served.
    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// A new server-side TLS session, for an accepted connection.
    pub(crate) fn accept(&self) -> io::Result<ServerConnection> {
        ServerConnection::new(Arc::clone(&self.config)).map_err(io::Error::other)
    }
}

/// Reads the chain and the key, and checks that the key belongs to the first certificate.
fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert = &files.cert;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| file_error("certificate", cert, &e))?;
    if chain.is_empty() {
        return Err(TlsError(format!(
            "cannot use TLS certificate {}: no CERTIFICATE in it (expected a PEM chain)",
            cert.display()
        )));
    }
    let key_path = &files.key;
    let key =
        PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_error("key", key_path, &e))?;
    // Checking that the key matches parses the first certificate: a file of PEM armour
    // around anything else fails there, and it is the certificate that is broken.
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InvalidCertificate(why) => TlsError(format!(
            "cannot use TLS certificate {}: not a valid X.509 certificate ({why:?}); expected \
             a PEM chain, the server's certificate first",
            cert.display()
        )),
        e => TlsError(format!(
            "cannot use TLS key {} with certificate {}: {e} (is it the key of that certificate?)",
            key_path.display(),
            cert.display()
        )),
    })?;
    Ok(Arc::new(certified))
}

fn file_error(what: &str, path: &Path, error: &pem::Error) -> TlsError {
    let why = match error {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound if what == "key" => "no private key in it (expected an \
            unencrypted PKCS#8, PKCS#1 or SEC1 key in PEM; encrypted keys are not supported)"
            .to_string(),
        pem::Error::NoItemsFound => "no CERTIFICATE in it (expected a PEM chain)".to_string(),
        other => format!("not valid PEM: {other}"),
    };
    TlsError(format!("cannot use TLS {what} {}: {why}", path.display()))
}
