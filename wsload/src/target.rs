//! The server under test: a parsed `ws://` or `wss://` URL, resolved to one
//! address, with the TLS settings a `wss://` one needs.
//!
//! A load generator is a small denial-of-service tool, so by default it only
//! talks to this machine: every address the host name resolves to must be a
//! loopback address (127.0.0.0/8 or ::1) unless `--allow-remote` is given.

use crate::cli::Server;
use crate::tls::TlsClient;
use anyhow::{Context, Result, bail};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Where to connect and what to put in the upgrade request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given, for reports.
    pub url: String,
    pub addr: SocketAddr,
    /// `Host` header value: the URL's authority (`host[:port]`).
    pub host_header: String,
    /// Request target: path and query, at least `/`.
    pub path: String,
    /// For `wss://`: what each connection's TLS session starts from.
    pub tls: Option<TlsClient>,
}

/// The target of a mode's `--url`, `--allow-remote`, `--ca` and `--server-name`.
pub fn from_args(server: &Server) -> Result<Target> {
    let (mut target, parts) = resolve_parts(&server.url, server.allow_remote)?;
    if parts.secure {
        let Some(ca) = &server.ca else {
            bail!(
                "{} is a wss:// URL: give --ca PEM, the certificate authority that issued \
                 the server's certificate",
                server.url
            );
        };
        let name = server.server_name.as_deref().unwrap_or(&parts.host);
        target.tls = Some(TlsClient::new(ca, name)?);
    } else if server.ca.is_some() || server.server_name.is_some() {
        bail!(
            "--ca and --server-name are for wss:// URLs, and {} is not one",
            server.url
        );
    }
    Ok(target)
}

/// Parses `url` and resolves its host, refusing non-loopback addresses unless
/// `allow_remote`. A `wss://` URL comes back without its TLS settings.
pub fn resolve(url: &str, allow_remote: bool) -> Result<Target> {
    resolve_parts(url, allow_remote).map(|(target, _)| target)
}

fn resolve_parts(url: &str, allow_remote: bool) -> Result<(Target, UrlParts)> {
    let parts = split_url(url)?;
    let addrs: Vec<SocketAddr> = (parts.host.as_str(), parts.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve host {:?} of {url}", parts.host))?
        .collect();
    let Some(&addr) = addrs.first() else {
        bail!("host {:?} of {url} resolves to no address", parts.host);
    };
    if !allow_remote && let Some(remote) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        bail!(
            "refusing to load {url}: {} is not a loopback address \
             (wsload only targets this machine unless --allow-remote is given)",
            remote.ip()
        );
    }
    let target = Target {
        url: url.to_string(),
        addr,
        host_header: parts.authority.clone(),
        path: parts.path.clone(),
        tls: None,
    };
    Ok((target, parts))
}

/// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.x.y.z).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The pieces of a `ws://` or `wss://` URL that matter to a client.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts {
    /// `wss://`: TLS.
    secure: bool,
    authority: String,
    /// Host without IPv6 brackets, ready for name resolution.
    host: String,
    port: u16,
    path: String,
}

fn split_url(url: &str) -> Result<UrlParts> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("invalid URL {url:?}: expected ws://HOST[:PORT][/PATH] or wss://...");
    };
    let secure = if scheme.eq_ignore_ascii_case("wss") {
        true
    } else if scheme.eq_ignore_ascii_case("ws") {
        false
    } else {
        bail!("invalid URL {url:?}: scheme must be ws:// or wss://");
    };
    let split_at = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split_at);
    let tail = tail.split('#').next().unwrap_or("");
    let path = match tail {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    if authority.is_empty() {
        bail!("invalid URL {url:?}: missing host");
    }
    if authority.contains('@') {
        bail!("invalid URL {url:?}: user info is not supported");
    }
    let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
        let Some((host, after)) = after_bracket.split_once(']') else {
            bail!("invalid URL {url:?}: unterminated [IPv6] host");
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .with_context(|| format!("invalid URL {url:?}: junk after ]"))?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None if secure => 443,
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .with_context(|| format!("invalid URL {url:?}: bad port {p:?}"))?,
    };
    if host.is_empty() {
        bail!("invalid URL {url:?}: missing host");
    }
    Ok(UrlParts {
        secure,
        authority: authority.to_string(),
        host: host.to_string(),
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_common_forms() {
        let p = split_url("ws://127.0.0.1:9001").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("127.0.0.1", 9001, "/")
        );
        assert_eq!(p.authority, "127.0.0.1:9001");
        let p = split_url("ws://[::1]:8080/chat?room=1#frag").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("::1", 8080, "/chat?room=1")
        );
        let p = split_url("WS://localhost").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("localhost", 80));
        let p = split_url("ws://localhost:1?x").unwrap();
        assert_eq!(p.path, "/?x");
        assert!(!p.secure);
        let p = split_url("wss://localhost/chat").unwrap();
        assert_eq!((p.secure, p.port, p.path.as_str()), (true, 443, "/chat"));
        let p = split_url("WSS://[::1]:9443").unwrap();
        assert_eq!((p.secure, p.host.as_str(), p.port), (true, "::1", 9443));
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "127.0.0.1:80",
            "http://127.0.0.1/",
            "https://127.0.0.1/",
            "ws://",
            "ws://:80",
            "ws://127.0.0.1:0",
            "ws://127.0.0.1:99999",
            "ws://[::1",
            "ws://u@127.0.0.1",
        ] {
            assert!(split_url(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn loopback_only_by_default() {
        assert!(resolve("ws://127.0.0.1:9", false).is_ok());
        assert!(resolve("ws://127.9.9.9:9", false).is_ok());
        assert!(resolve("ws://[::1]:9", false).is_ok());
        let err = resolve("ws://10.1.2.3:9", false).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(resolve("ws://192.0.2.1:9", true).is_ok());
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        let err = resolve("wss://10.1.2.3:9", false).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
    }

    fn server(url: &str, ca: Option<&str>, server_name: Option<&str>) -> Server {
        Server {
            url: url.into(),
            allow_remote: false,
            ca: ca.map(Into::into),
            server_name: server_name.map(Into::into),
        }
    }

    #[test]
    fn wss_needs_a_ca_and_ws_takes_none() {
        let err = from_args(&server("wss://127.0.0.1:9", None, None)).unwrap_err();
        assert!(err.to_string().contains("--ca"), "{err}");
        let err = from_args(&server("ws://127.0.0.1:9", Some("ca.pem"), None)).unwrap_err();
        assert!(err.to_string().contains("wss://"), "{err}");
        let err = from_args(&server("ws://127.0.0.1:9", None, Some("localhost"))).unwrap_err();
        assert!(err.to_string().contains("wss://"), "{err}");
        let plain = from_args(&server("ws://127.0.0.1:9", None, None)).unwrap();
        assert!(plain.tls.is_none());
    }
}
