//! The PROXY protocol (HAProxy's specification, versions 1 and 2): a header a TCP proxy sends
//! before anything else on the connection, naming the client it accepted.
//!
//! ```text
//! v1: PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n          (text, at most 107 bytes)
//! v2: \r\n\r\n\0\r\nQUIT\n, version|command, family|transport, length (u16), addresses, TLVs
//! ```
//!
//! `LOCAL` (v2), `UNKNOWN` (v1) and address families other than TCP over IPv4 or IPv6 mean
//! "no client to name": the connection's own peer is used, as the specification asks.
//!
//! The header is read from the raw TCP stream before TLS or HTTP, and exactly: what follows
//! it (a ClientHello, a request) stays in the socket for them. v1 is read up to its CRLF,
//! v2 as its fixed part and then the length it gives.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Instant;

/// The twelve bytes every v2 header starts with: chosen to be invalid in any text protocol.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED_LEN: usize = 16;

/// The address block of a v2 header for TCP over IPv4 (two addresses, two ports), and IPv6.
const V2_INET_LEN: usize = 12;
const V2_INET6_LEN: usize = 36;

/// How every v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 header, CRLF included: the specification's own bound (`PROXY UNKNOWN`
/// with two full IPv6 addresses and ports). A line without CRLF by then is not a header.
const V1_MAX_LEN: usize = 107;

/// The shortest v1 header: `PROXY UNKNOWN\r\n`. This much can be read at once without
/// reading past a header.
const V1_MIN_LEN: usize = 15;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// The client's address, as the proxy accepted it.
    Client(SocketAddr),
    /// No client to name (a health check, `LOCAL`, `UNKNOWN`): use the connection's peer.
    Local,
}

/// How far a buffer's bytes go towards a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole header, of this many bytes.
    Complete(Header, usize),
    /// Not yet whole: at least this many bytes in all are needed, and reading up to that many
    /// cannot read past the header.
    Incomplete(usize),
}

/// Why no header could be read from a connection.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The handshake timeout expired first.
    Timeout,
    /// The peer closed the connection after this many bytes.
    Closed(usize),
    /// What came is not a PROXY protocol header; the text says how.
    Malformed(String),
    /// The connection failed.
    Io(io::Error),
}

/// Parses a header at the start of `buf`. Errors are one line saying what was expected.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete(1));
    };
    if first == V2_SIGNATURE[0] {
        parse_v2(buf)
    } else if first == V1_PREFIX[0] {
        parse_v1(buf)
    } else {
        Err(format!(
            "no PROXY protocol header (first byte {first:#04x}; expected \"PROXY \" or the v2 \
             signature)"
        ))
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, String> {
    if buf.len() < V2_FIXED_LEN {
        return Ok(Parsed::Incomplete(V2_FIXED_LEN));
    }
    if buf[..V2_SIGNATURE.len()] != V2_SIGNATURE {
        return Err("broken PROXY protocol v2 signature".to_string());
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(format!(
            "PROXY protocol version {version} in a v2 header (expected 2)"
        ));
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED_LEN + len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete(total));
    }
    let block = &buf[V2_FIXED_LEN..total];
    let header = match command {
        // LOCAL: the proxy's own connection (a health check); the addresses are to be ignored.
        0 => Header::Local,
        1 => match (family, transport) {
            (1, 1) if len >= V2_INET_LEN => {
                let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
                let port = u16::from_be_bytes([block[8], block[9]]);
                Header::Client(SocketAddr::new(IpAddr::V4(ip), port))
            }
            (2, 1) if len >= V2_INET6_LEN => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[..16]);
                let port = u16::from_be_bytes([block[32], block[33]]);
                Header::Client(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
            }
            (1 | 2, 1) => {
                return Err(format!(
                    "PROXY protocol v2 address block of {len} bytes is too short for its \
                     family (expected {V2_INET_LEN} for IPv4, {V2_INET6_LEN} for IPv6)"
                ));
            }
            // UNSPEC, UNIX sockets, datagrams: nothing this server can count, so the peer.
            (0..=3, 0..=2) => Header::Local,
            _ => {
                return Err(format!(
                    "unknown PROXY protocol v2 family and transport {:#04x}",
                    buf[13]
                ));
            }
        },
        other => {
            return Err(format!(
                "unknown PROXY protocol v2 command {other} (expected 0, LOCAL, or 1, PROXY)"
            ));
        }
    };
    Ok(Parsed::Complete(header, total))
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, String> {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf[..seen] != V1_PREFIX[..seen] {
        return Err("no PROXY protocol header (a line that does not start with \"PROXY \")".into());
    }
    let Some(end) = buf[..buf.len().min(V1_MAX_LEN)]
        .windows(2)
        .position(|w| w == b"\r\n")
    else {
        if buf.len() >= V1_MAX_LEN {
            return Err(format!(
                "PROXY protocol v1 header without CRLF within {V1_MAX_LEN} bytes"
            ));
        }
        // The CRLF may end at the next byte (after a CR) or the one after.
        let more = if buf.ends_with(b"\r") { 1 } else { 2 };
        return Ok(Parsed::Incomplete((buf.len() + more).max(V1_MIN_LEN)));
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| "PROXY protocol v1 header that is not ASCII".to_string())?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["UNKNOWN", ..] => Header::Local,
        [
            protocol @ ("TCP4" | "TCP6"),
            source,
            _destination,
            source_port,
            _destination_port,
        ] => {
            let ip: IpAddr = match *protocol {
                "TCP4" => source.parse::<Ipv4Addr>().map(IpAddr::V4),
                _ => source.parse::<Ipv6Addr>().map(IpAddr::V6),
            }
            .map_err(|_| {
                format!("PROXY protocol v1 {protocol} source {source:?} is not an address")
            })?;
            check_v1_fields(protocol, &fields[2..])?;
            let port = parse_port(source_port)
                .ok_or_else(|| format!("PROXY protocol v1 source port {source_port:?}"))?;
            Header::Client(SocketAddr::new(ip, port))
        }
        _ => {
            return Err(format!(
                "malformed PROXY protocol v1 line {line:?} (expected \"PROXY TCP4|TCP6 SOURCE \
                 DESTINATION SOURCE_PORT DESTINATION_PORT\" or \"PROXY UNKNOWN\")"
            ));
        }
    };
    Ok(Parsed::Complete(header, end + 2))
}

/// The destination address and both ports of a v1 line must be valid too, or the line is not
/// what the proxy meant to send.
fn check_v1_fields(protocol: &str, fields: &[&str]) -> Result<(), String> {
    let [destination, source_port, destination_port] = fields else {
        return Err("PROXY protocol v1 line with missing fields".to_string());
    };
    let valid = match protocol {
        "TCP4" => destination.parse::<Ipv4Addr>().is_ok(),
        _ => destination.parse::<Ipv6Addr>().is_ok(),
    };
    if !valid {
        return Err(format!(
            "PROXY protocol v1 {protocol} destination {destination:?} is not an address"
        ));
    }
    for port in [source_port, destination_port] {
        if parse_port(port).is_none() {
            return Err(format!(
                "PROXY protocol v1 port {port:?} is not a number from 0 to 65535"
            ));
        }
    }
    Ok(())
}

/// A port as v1 writes it: 1 to 5 digits.
fn parse_port(text: &str) -> Option<u16> {
    let digits = (1..=5).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// Reads a header from the start of a blocking stream before `deadline`, and not a byte more.
pub(crate) fn read_header(stream: &TcpStream, deadline: Instant) -> Result<Header, ReadError> {
    let mut buf = Vec::with_capacity(V1_MAX_LEN);
    loop {
        let need = match parse(&buf).map_err(ReadError::Malformed)? {
            Parsed::Complete(header, len) => {
                debug_assert_eq!(len, buf.len(), "read exactly the header");
                stream.set_read_timeout(None).map_err(ReadError::Io)?;
                return Ok(header);
            }
            Parsed::Incomplete(need) => need,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
        let filled = buf.len();
        buf.resize(need, 0);
        let read = (&*stream).read(&mut buf[filled..]);
        buf.truncate(filled + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) => return Err(ReadError::Closed(filled)),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete(header, len)) => (header, len),
            other => panic!("{other:?} for {buf:?}"),
        }
    }

    fn client(text: &str) -> Header {
        Header::Client(text.parse().unwrap())
    }

    #[test]
    fn the_specifications_v1_examples() {
        let header = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let line = format!("{header}GET / HTTP/1.1\r\n");
        assert_eq!(
            complete(line.as_bytes()),
            (client("192.168.0.1:56324"), header.len())
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 443\r\n";
        assert_eq!(complete(line).0, client("[2001:db8::1]:4711"));
        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
        // The longest header the specification allows.
        let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let worst = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX_LEN, "{worst}");
        assert_eq!(complete(worst.as_bytes()), (Header::Local, V1_MAX_LEN));
    }

    #[test]
    fn v1_is_read_no_further_than_its_crlf() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let mut need = 0;
        for len in 0..line.len() {
            match parse(&line[..len]).unwrap() {
                Parsed::Incomplete(n) => {
                    assert!(n > len && n <= line.len(), "{len}: {n}");
                    need = n;
                }
                other => panic!("{other:?} at {len}"),
            }
        }
        assert_eq!(need, line.len());
    }

    #[test]
    fn broken_v1_headers() {
        let cases: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\n",
            b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ];
        for case in cases {
            let error = parse(case).unwrap_err();
            assert!(!error.contains('\n'), "{error}");
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(
            parse(&long)
                .unwrap_err()
                .contains("without CRLF within 107")
        );
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(block.len() as u16).to_be_bytes());
        header.extend_from_slice(block);
        header
    }

    #[test]
    fn v2_tcp4_tcp6_local_and_tlvs() {
        let inet = [192, 0, 2, 1, 192, 0, 2, 2, 0x12, 0x67, 0x01, 0xbb];
        let header = v2(1, 0x11, &inet);
        assert_eq!(complete(&header), (client("192.0.2.1:4711"), 28));
        // TLVs after the addresses are skipped, and what follows the header is not read.
        let mut with_tlv = v2(1, 0x11, &[&inet[..], &[0x04, 0x00, 0x01, 0x00]].concat());
        with_tlv.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(complete(&with_tlv), (client("192.0.2.1:4711"), 32));
        let mut inet6 = Vec::new();
        inet6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        inet6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        inet6.extend_from_slice(&[0x12, 0x67, 0x01, 0xbb]);
        assert_eq!(
            complete(&v2(1, 0x21, &inet6)).0,
            client("[2001:db8::1]:4711")
        );
        assert_eq!(complete(&v2(0, 0x00, &[])), (Header::Local, 16));
        assert_eq!(complete(&v2(0, 0x11, &inet)).0, Header::Local);
        assert_eq!(complete(&v2(1, 0x00, &[])).0, Header::Local);
        assert_eq!(complete(&v2(1, 0x31, &[0; 216])).0, Header::Local);
        // Incomplete: the fixed part first, then exactly the length it gives.
        assert_eq!(parse(&header[..5]).unwrap(), Parsed::Incomplete(16));
        assert_eq!(parse(&header[..16]).unwrap(), Parsed::Incomplete(28));
    }

    #[test]
    fn broken_v2_headers() {
        let inet = [192, 0, 2, 1, 192, 0, 2, 2, 0x12, 0x67, 0x01, 0xbb];
        let mut bad_signature = v2(1, 0x11, &inet);
        bad_signature[8] = b'X';
        let mut version_1 = v2(1, 0x11, &inet);
        version_1[12] = 0x11;
        let cases = [
            bad_signature,
            version_1,
            v2(2, 0x11, &inet),
            v2(1, 0x11, &inet[..8]),
            v2(1, 0x21, &inet),
            v2(1, 0x41, &inet),
        ];
        for case in cases {
            let error = parse(&case).unwrap_err();
            assert!(!error.contains('\n'), "{error}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Parsed::Incomplete(need)) = parse(&bytes) {
                prop_assert!(need > bytes.len());
            }
            if let Ok(Parsed::Complete(_, len)) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        #[test]
        fn bytes_after_a_signature_never_panic(
            rest in proptest::collection::vec(any::<u8>(), 0..80),
            v1 in any::<bool>(),
        ) {
            let start: &[u8] = if v1 { b"PROXY " } else { &V2_SIGNATURE };
            let bytes = [start, &rest].concat();
            let _ = parse(&bytes);
        }

        #[test]
        fn v1_like_lines_never_panic(line in "PROXY (TCP4|TCP6|UNKNOWN)( [0-9a-f.:]{0,16}){0,5}\r?\n?") {
            let _ = parse(line.as_bytes());
        }
    }
}
