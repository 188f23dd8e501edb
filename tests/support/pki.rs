//! A certificate authority and a server certificate made at test time (rcgen, with ring like
//! the server), as PEM files in a folder of their own. Clients trust that authority, or pin the
//! certificate's public key, and nothing on the machine changes.
//!
//! Include it from a test file with `#[path = "support/pki.rs"] mod pki;`.

#![allow(dead_code)] // not every test file uses every part

use std::path::PathBuf;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData,
};
use sha2::{Digest, Sha256};

/// A certificate authority, and a certificate for localhost and 127.0.0.1 it signed, as PEM
/// files in a folder of their own (removed on drop).
pub struct Pki {
    pub dir: PathBuf,
    /// The authority's certificate, PEM: what a client should trust.
    pub ca: String,
    /// Base64 of the SHA-256 of the server certificate's SubjectPublicKeyInfo, as Chromium's
    /// `--ignore-certificate-errors-spki-list` and HTTP public key pinning write it.
    pub spki_sha256: String,
}

impl Pki {
    /// A new folder with `cert.pem` and `key.pem`, from a new authority.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wsecho-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pki = Pki {
            dir,
            ca: String::new(),
            spki_sha256: String::new(),
        };
        pki.issue("cert.pem", "key.pem");
        pki
    }

    /// A new authority and a certificate from it, written to these file names.
    pub fn issue(&mut self, cert: &str, key: &str) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wsecho test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let issued = params.signed_by(&server_key, &ca).unwrap();
        std::fs::write(self.dir.join(cert), issued.pem()).unwrap();
        std::fs::write(self.dir.join(key), server_key.serialize_pem()).unwrap();
        self.ca = ca.pem();
        // The same DER rcgen wrote into the certificate's subjectPublicKeyInfo field.
        let spki = server_key.subject_public_key_info();
        self.spki_sha256 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&spki));
    }

    /// The path of a file in the folder.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `--tls-cert DIR/cert.pem --tls-key DIR/key.pem`.
    pub fn tls_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path("cert.pem"),
            "--tls-key".into(),
            self.path("key.pem"),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client TLS configuration that trusts only `ca_pem`.
pub fn trusting(ca_pem: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}
