//! The server under test: a parsed `ws://` URL, resolved to one address.
//!
//! A load generator is a small denial-of-service tool, so by default it only
//! talks to this machine: every address the host name resolves to must be a
//! loopback address (127.0.0.0/8 or ::1) unless `--allow-remote` is given.

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
}

/// Parses `url` and resolves its host, refusing non-loopback addresses unless
/// `allow_remote`.
pub fn resolve(url: &str, allow_remote: bool) -> Result<Target> {
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
    Ok(Target {
        url: url.to_string(),
        addr,
        host_header: parts.authority,
        path: parts.path,
    })
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

/// The pieces of a `ws://` URL that matter to a client.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts {
    authority: String,
    /// Host without IPv6 brackets, ready for name resolution.
    host: String,
    port: u16,
    path: String,
}

fn split_url(url: &str) -> Result<UrlParts> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("invalid URL {url:?}: expected ws://HOST[:PORT][/PATH]");
    };
    if scheme.eq_ignore_ascii_case("wss") {
        bail!("invalid URL {url:?}: wss:// (TLS) is not supported, use ws://");
    }
    if !scheme.eq_ignore_ascii_case("ws") {
        bail!("invalid URL {url:?}: scheme must be ws://");
    }
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
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "127.0.0.1:80",
            "http://127.0.0.1/",
            "wss://127.0.0.1/",
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
    }
}
