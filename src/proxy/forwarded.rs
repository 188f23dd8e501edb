//! The client named by a trusted proxy's `Forwarded` (RFC 7239) or `X-Forwarded-For` header.
//!
//! Each proxy on the way appends the address it received the request from, so the list reads
//! from the client (left) to the last proxy (right). Anyone may write the left part: a client
//! can send either header with any address in it. So the list is read from the right, and the
//! client is the rightmost hop that is not itself a trusted proxy; if every hop is trusted,
//! the leftmost.
//!
//! `Forwarded` is read when the request has it, and `X-Forwarded-For` otherwise. A proxy must
//! therefore set (or remove) the header that is read: a proxy that appends to
//! `X-Forwarded-For` and passes the client's own `Forwarded` on would let the client choose
//! its address (docs/deploying.md removes it in the nginx example).
//!
//! A hop named `unknown` or by an obfuscated identifier (`_hidden`, RFC 7239 section 6) has no
//! address to count: the connection stays under the proxy's own address. A header that does
//! not parse gets 400 with what was wrong.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::config::AddressRange;
use crate::http::Request;
use crate::proxy::is_trusted;

/// One hop of a forwarding list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// An address, with its port when the header gave one (0 otherwise).
    Address(SocketAddr),
    /// `unknown`, an obfuscated identifier, or a `Forwarded` element without `for=`.
    Hidden,
}

/// The client's address, as the forwarding headers of a request from the trusted proxy at
/// `proxy` name it; `proxy` itself when they name none (no header, or a hidden hop). `Err`
/// says which header is malformed, and how.
pub(crate) fn client(
    request: &Request,
    proxy: SocketAddr,
    trusted: &[AddressRange],
) -> Result<SocketAddr, String> {
    let hops = match joined(request, "forwarded") {
        Some(value) => {
            forwarded(&value).map_err(|why| format!("malformed Forwarded header: {why}"))?
        }
        None => match joined(request, "x-forwarded-for") {
            Some(value) => x_forwarded_for(&value)
                .map_err(|why| format!("malformed X-Forwarded-For header: {why}"))?,
            None => Vec::new(),
        },
    };
    Ok(match rightmost_untrusted(&hops, trusted) {
        Some(Hop::Address(addr)) => addr,
        Some(Hop::Hidden) | None => proxy,
    })
}

/// Every line of a header, joined as one list (RFC 9110 section 5.3).
fn joined(request: &Request, name: &str) -> Option<String> {
    let lines: Vec<&str> = request
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect();
    (!lines.is_empty()).then(|| lines.join(","))
}

/// The client among the hops: the rightmost that is not a trusted proxy, or the leftmost.
fn rightmost_untrusted(hops: &[Hop], trusted: &[AddressRange]) -> Option<Hop> {
    for hop in hops.iter().rev() {
        match hop {
            Hop::Address(addr) if is_trusted(trusted, addr.ip()) => continue,
            other => return Some(*other),
        }
    }
    hops.first().copied()
}

/// The hops of an `X-Forwarded-For` value: addresses separated by commas, an address possibly
/// with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`), or `unknown`.
fn x_forwarded_for(value: &str) -> Result<Vec<Hop>, String> {
    let mut hops = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.eq_ignore_ascii_case("unknown") {
            hops.push(Hop::Hidden);
            continue;
        }
        let addr = if let Ok(ip) = entry.parse::<IpAddr>() {
            SocketAddr::new(ip, 0)
        } else if let Ok(addr) = entry.parse::<SocketAddr>() {
            addr
        } else {
            return Err(format!(
                "{entry:?} is not an IP address (expected a list like 203.0.113.7, 10.0.0.1)"
            ));
        };
        hops.push(Hop::Address(addr));
    }
    Ok(hops)
}

/// The hops of a `Forwarded` value (RFC 7239 section 4): elements separated by commas, each
/// a list of `name=value` pairs separated by semicolons, a value a token or a quoted string.
/// Each element is a hop: its `for=` node, or hidden if it has none. A value whose elements
/// have no `for=` at all says nothing about the client, and gives no hops.
fn forwarded(value: &str) -> Result<Vec<Hop>, String> {
    let mut hops = Vec::new();
    let mut any_for = false;
    for element in split_unquoted(value, ',')? {
        if element.trim().is_empty() {
            continue;
        }
        let mut node = None;
        for pair in split_unquoted(element, ';')? {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let Some((name, value)) = pair.split_once('=') else {
                return Err(format!("{pair:?} is not a name=value pair"));
            };
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(format!("{name:?} is not a parameter name"));
            }
            let value = pair_value(value)?;
            if name.eq_ignore_ascii_case("for") {
                if node.is_some() {
                    return Err("for= appears twice in one element".to_string());
                }
                node = Some(parse_node(&value)?);
            }
        }
        any_for |= node.is_some();
        hops.push(node.unwrap_or(Hop::Hidden));
    }
    Ok(if any_for { hops } else { Vec::new() })
}

/// Splits at `separator` outside quoted strings; an unterminated quote is an error.
fn split_unquoted(value: &str, separator: char) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&value[start..i]);
            start = i + c.len_utf8();
        }
    }
    if quoted {
        return Err("a quoted string is not closed".to_string());
    }
    parts.push(&value[start..]);
    Ok(parts)
}

/// A pair's value: a quoted string (unescaped), or a token. Colons and brackets are allowed
/// in a token too, as some proxies leave `for=192.0.2.1:4711` unquoted.
fn pair_value(value: &str) -> Result<String, String> {
    if let Some(inner) = value.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(format!("{value:?} has text after its quoted string"));
        };
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => return Err(format!("{value:?} has a quote inside its quoted string")),
                c => out.push(c),
            }
        }
        return Ok(out);
    }
    if value.is_empty() || !value.bytes().all(|b| is_tchar(b) || b"[]:".contains(&b)) {
        return Err(format!("{value:?} is not a token or a quoted string"));
    }
    Ok(value.to_string())
}

/// A node (RFC 7239 section 6): an IPv4 address, a bracketed IPv6 address, `unknown` or an
/// obfuscated identifier, then optionally `:` and a port or an obfuscated port.
fn parse_node(node: &str) -> Result<Hop, String> {
    let bad = || {
        format!(
            "for={node:?} is not a node (expected an address like 192.0.2.1, \
             \"[2001:db8::1]:4711\", unknown or an obfuscated _identifier)"
        )
    };
    let (name, port) = if let Some(rest) = node.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        let ip: IpAddr = v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?.into();
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (Some(ip), port)
    } else {
        let (name, port) = match node.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (node, None),
        };
        if name.eq_ignore_ascii_case("unknown") || is_obfuscated(name) {
            (None, port)
        } else {
            let ip: Ipv4Addr = name.parse().map_err(|_| bad())?;
            (Some(IpAddr::V4(ip)), port)
        }
    };
    let port = match port {
        None => 0,
        Some(port) if is_obfuscated(port) => 0,
        Some(port) if (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()) => {
            port.parse::<u16>().map_err(|_| bad())?
        }
        Some(_) => return Err(bad()),
    };
    Ok(match name {
        Some(ip) => Hop::Address(SocketAddr::new(ip, port)),
        None => Hop::Hidden,
    })
}

/// `_` and then letters, digits, `.`, `_` or `-` (RFC 7239 section 6.3).
fn is_obfuscated(text: &str) -> bool {
    text.len() > 1
        && text.starts_with('_')
        && text[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A token character (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;
    use proptest::prelude::*;

    const PROXY: &str = "127.0.0.1:51234";

    fn trusted() -> Vec<AddressRange> {
        vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]
    }

    fn client_of(headers: &str) -> Result<String, String> {
        let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let request = parse_head(raw.as_bytes(), 8192).unwrap().unwrap().0;
        client(&request, PROXY.parse().unwrap(), &trusted()).map(|a| a.to_string())
    }

    #[test]
    fn the_rfc_examples() {
        // RFC 7239 section 4 and 7.
        let cases = [
            ("Forwarded: for=\"_gazonk\"", PROXY),
            (
                "Forwarded: For=\"[2001:db8:cafe::17]:4711\"",
                "[2001:db8:cafe::17]:4711",
            ),
            (
                "Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43",
                "192.0.2.60:0",
            ),
            (
                "Forwarded: for=192.0.2.43, for=198.51.100.17",
                "198.51.100.17:0",
            ),
            ("Forwarded: for=unknown", PROXY),
            ("Forwarded: for=\"192.0.2.43:47011\"", "192.0.2.43:47011"),
            ("Forwarded: for=\"192.0.2.43:_hidden\"", "192.0.2.43:0"),
        ];
        for (header, expected) in cases {
            assert_eq!(
                client_of(&format!("{header}\r\n")).unwrap(),
                expected,
                "{header}"
            );
        }
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let xff = |value: &str| client_of(&format!("X-Forwarded-For: {value}\r\n"));
        assert_eq!(xff("203.0.113.7").unwrap(), "203.0.113.7:0");
        // A client that sends its own header gains nothing: its claim is on the left.
        assert_eq!(xff("1.2.3.4, 203.0.113.7").unwrap(), "203.0.113.7:0");
        // Trusted hops on the right are skipped.
        assert_eq!(
            xff("1.2.3.4, 203.0.113.7, 10.1.1.1").unwrap(),
            "203.0.113.7:0"
        );
        // Every hop trusted: the leftmost.
        assert_eq!(xff("10.2.2.2, 10.1.1.1").unwrap(), "10.2.2.2:0");
        assert_eq!(xff("2001:db8::1").unwrap(), "[2001:db8::1]:0");
        assert_eq!(xff("[2001:db8::1]:4711").unwrap(), "[2001:db8::1]:4711");
        assert_eq!(xff("unknown").unwrap(), PROXY);
        // Two lines are one list.
        assert_eq!(
            client_of("X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1\r\n").unwrap(),
            "198.51.100.1:0"
        );
        assert_eq!(client_of("").unwrap(), PROXY);
    }

    #[test]
    fn forwarded_is_preferred_to_x_forwarded_for() {
        let both = "Forwarded: for=198.51.100.17\r\nX-Forwarded-For: 203.0.113.7\r\n";
        assert_eq!(client_of(both).unwrap(), "198.51.100.17:0");
        // A Forwarded header with no for= says nothing about the client.
        let no_for = "Forwarded: proto=https\r\nX-Forwarded-For: 203.0.113.7\r\n";
        assert_eq!(client_of(no_for).unwrap(), PROXY);
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let cases = [
            ("X-Forwarded-For: nginx", "malformed X-Forwarded-For header"),
            ("Forwarded: for=\"[2001:db8::1\"", "is not a node"),
            ("Forwarded: for=2001:db8::1", "is not a node"),
            ("Forwarded: for=\"192.0.2.1", "not closed"),
            ("Forwarded: for", "not a name=value pair"),
            ("Forwarded: for=1.2.3.4;for=5.6.7.8", "twice"),
            ("Forwarded: for=1.2.3.4:99999", "is not a node"),
            ("Forwarded: for=\"a\"b", "after its quoted string"),
            ("Forwarded: for=", "not a token"),
        ];
        for (header, expected) in cases {
            let error = client_of(&format!("{header}\r\n")).unwrap_err();
            assert!(error.contains(expected), "{header}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    proptest! {
        #[test]
        fn any_header_value_parses_or_is_refused_without_panic(value in "\\PC{0,80}") {
            let _ = forwarded(&value);
            let _ = x_forwarded_for(&value);
        }

        #[test]
        fn header_like_values_never_panic(
            value in "([fF]or|by|proto)=(\"?\\[?[0-9a-f:._]{0,20}\\]?(:[0-9_a-z]{0,6})?\"?)([;,] ?)?"
        ) {
            let _ = forwarded(&value);
            let _ = x_forwarded_for(&value);
        }
    }
}
