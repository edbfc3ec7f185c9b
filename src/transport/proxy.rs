//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), read in
//! front of a relayed connection so a listener behind HAProxy, an AWS
//! load balancer or Envoy learns the real client's address. Python rpyc
//! has no counterpart; the format is HAProxy's `proxy-protocol.txt`,
//! parsed by the `ppp` crate.
//!
//! **Trust.** The header is a claim by whoever opened the TCP connection.
//! A listener reads it only when configured to
//! ([`TcpAcceptor::with_proxy_protocol`](super::TcpAcceptor::with_proxy_protocol)),
//! and then *requires* it: a connection without a valid header is refused.
//! Turn it on only where nothing but the proxy can reach the port. A
//! listener without the option never looks for a header; one sent anyway
//! is garbage to TLS or RPyC and the connection fails as any garbage does.
//!
//! **Reading.** Exactly the header's bytes are read, never one more: what
//! follows (a TLS ClientHello, the first RPyC frame) stays in the socket
//! for the next layer. v2: the 16 fixed bytes, then the length they
//! announce (at most [`V2_MAX_BODY`]). v1: `PROXY`, then steps of two bytes
//! (one after a CR) until CRLF, at most [`V1_MAX`] bytes in all — until the
//! CRLF has arrived, at least two more bytes belong to the header, so no
//! step can overrun it. HAProxy's `LOCAL` command (its health checks) and
//! v1 `UNKNOWN` mean "no client behind me": the socket's own address is
//! used. TLVs (v2 extensions) are ignored.

use ppp::v2;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, CRLF included (the protocol's own limit).
pub const V1_MAX: usize = 107;
/// The most bytes a v2 header may carry after its 16 fixed bytes
/// (addresses and TLVs). The format allows 65,535; the addresses take at
/// most 216 and the TLVs HAProxy, AWS and Envoy send (SSL details, a
/// unique id, an endpoint id) a few hundred, so 4 KiB refuses nothing real
/// while bounding what a stalled peer makes us hold.
pub const V2_MAX_BODY: usize = 4096;

const V2_FIXED: usize = 16;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    /// The connection does not start with a PROXY header.
    #[error(
        "the connection does not start with a PROXY protocol header (is the proxy configured to send one, \
         e.g. HAProxy `send-proxy-v2`? or is a client connecting directly, bypassing it?)"
    )]
    Missing,
    /// A header that does not parse.
    #[error("invalid PROXY protocol v{version} header: {reason}")]
    Invalid {
        /// 1 or 2.
        version: u8,
        /// What is wrong with it.
        reason: String,
    },
    /// A header longer than the limit.
    #[error("PROXY protocol v{version} header longer than {limit} bytes")]
    TooLong {
        /// 1 or 2.
        version: u8,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A header naming a source this listener cannot use.
    #[error("PROXY protocol header describes {0}, which a stream listener cannot use")]
    Unsupported(&'static str),
    /// The socket failed or closed before the header was complete.
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What a PROXY header says about the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxySource {
    /// The client's address and port.
    Client(SocketAddr),
    /// No client (v2 `LOCAL`, e.g. the proxy's health check, v1 `UNKNOWN`,
    /// v2 `UNSPEC`): the socket's own peer address stands.
    Local,
}

/// Reads one PROXY header (v1 or v2) from the start of `stream`, and not
/// a byte more. Bound it with a deadline: a peer may send nothing.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxySource, ProxyHeaderError> {
    let mut start = [0u8; V2_FIXED];
    stream.read_exact(&mut start[..5]).await?;
    if start.get(..5) == Some(b"PROXY".as_slice()) {
        return read_v1(stream).await;
    }
    if v2::PROTOCOL_PREFIX.starts_with(start.get(..5).unwrap_or_default()) {
        stream.read_exact(&mut start[5..]).await?;
        return read_v2(stream, start).await;
    }
    Err(ProxyHeaderError::Missing)
}

async fn read_v1<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxySource, ProxyHeaderError> {
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(b"PROXY");
    loop {
        let step = if line.last() == Some(&b'\r') { 1 } else { 2 };
        if line.len() + step > V1_MAX {
            return Err(ProxyHeaderError::TooLong { version: 1, limit: V1_MAX });
        }
        let at = line.len();
        line.resize(at + step, 0);
        stream.read_exact(line.get_mut(at..).unwrap_or_default()).await?;
        if let Some(cr) = line.iter().position(|&b| b == b'\r') {
            if cr + 1 < line.len() {
                if line.get(cr + 1) == Some(&b'\n') && cr + 2 == line.len() {
                    break;
                }
                return Err(invalid(1, "a CR not followed by LF and the end of the header"));
            }
        }
    }
    let header = ppp::v1::Header::try_from(line.as_slice()).map_err(|e| invalid(1, e))?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Unknown => ProxySource::Local,
    })
}

async fn read_v2<S: AsyncRead + Unpin>(stream: &mut S, fixed: [u8; V2_FIXED]) -> Result<ProxySource, ProxyHeaderError> {
    if fixed.get(..v2::PROTOCOL_PREFIX.len()) != Some(v2::PROTOCOL_PREFIX) {
        return Err(ProxyHeaderError::Missing);
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_BODY {
        return Err(ProxyHeaderError::TooLong { version: 2, limit: V2_FIXED + V2_MAX_BODY });
    }
    let mut whole = Vec::with_capacity(V2_FIXED + len);
    whole.extend_from_slice(&fixed);
    whole.resize(V2_FIXED + len, 0);
    stream.read_exact(whole.get_mut(V2_FIXED..).unwrap_or_default()).await?;
    let header = v2::Header::try_from(whole.as_slice()).map_err(|e| invalid(2, e))?;
    if header.command == v2::Command::Local {
        return Ok(ProxySource::Local);
    }
    if header.protocol == v2::Protocol::Datagram {
        return Err(ProxyHeaderError::Unsupported("a UDP datagram flow"));
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::IPv6(a) => ProxySource::Client(SocketAddr::new(a.source_address.into(), a.source_port)),
        v2::Addresses::Unspecified => ProxySource::Local,
        v2::Addresses::Unix(_) => return Err(ProxyHeaderError::Unsupported("a Unix-socket client")),
    })
}

fn invalid(version: u8, reason: impl std::fmt::Display) -> ProxyHeaderError {
    ProxyHeaderError::Invalid { version, reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a header from `bytes`; returns it and what is left unread.
    async fn read(bytes: &[u8]) -> (Result<ProxySource, ProxyHeaderError>, Vec<u8>) {
        let mut s = bytes;
        let r = read_header(&mut s).await;
        (r, s.to_vec())
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend((body.len() as u16).to_be_bytes());
        h.extend(body);
        h
    }

    fn client(s: &str) -> ProxySource {
        ProxySource::Client(s.parse().unwrap())
    }

    #[tokio::test]
    async fn v1_as_haproxy_writes_it_and_not_a_byte_more() {
        let (r, rest) = read(b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n\x16\x03\x01").await;
        assert_eq!(r.unwrap(), client("203.0.113.7:56324"));
        assert_eq!(rest, b"\x16\x03\x01");
        let (r, rest) = read(b"PROXY TCP6 2001:db8::7 ::1 56324 443\r\nX").await;
        assert_eq!(r.unwrap(), client("[2001:db8::7]:56324"));
        assert_eq!(rest, b"X");
        let (r, rest) = read(b"PROXY UNKNOWN\r\nRPYC").await;
        assert_eq!(r.unwrap(), ProxySource::Local);
        assert_eq!(rest, b"RPYC");
        // The longest legal header (107 bytes) is accepted.
        let long = format!("PROXY UNKNOWN {a} {a} 65535 65535\r\n", a = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(long.len(), V1_MAX);
        assert!(read(long.as_bytes()).await.0.is_ok());
    }

    #[tokio::test]
    async fn v2_proxy_local_families_and_tlvs() {
        let mut v4 = vec![203, 0, 113, 7, 127, 0, 0, 1];
        v4.extend(56324u16.to_be_bytes());
        v4.extend(443u16.to_be_bytes());
        let mut with_tlvs = v4.clone();
        with_tlvs.extend([0x05, 0, 3, b'a', b'b', b'c']); // PP2_TYPE_UNIQUE_ID
        for body in [v4.clone(), with_tlvs] {
            let mut bytes = v2(1, 0x11, &body);
            bytes.extend(b"\x16\x03\x01");
            let (r, rest) = read(&bytes).await;
            assert_eq!(r.unwrap(), client("203.0.113.7:56324"));
            assert_eq!(rest, b"\x16\x03\x01");
        }
        let mut v6 = Vec::new();
        v6.extend("2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        v6.extend(std::net::Ipv6Addr::LOCALHOST.octets());
        v6.extend([0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(read(&v2(1, 0x21, &v6)).await.0.unwrap(), client("[2001:db8::7]:56324"));
        // LOCAL (HAProxy's health checks), with or without addresses.
        assert_eq!(read(&v2(0, 0x00, &[])).await.0.unwrap(), ProxySource::Local);
        assert_eq!(read(&v2(0, 0x11, &v4)).await.0.unwrap(), ProxySource::Local);
        assert_eq!(read(&v2(1, 0x00, &[])).await.0.unwrap(), ProxySource::Local);
    }

    #[tokio::test]
    async fn refusals() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\x16\x03\x01\x02\x00".to_vec(), "does not start with a PROXY"),
            (b"\x00\x00\x00\x10\x00".to_vec(), "does not start with a PROXY"),
            (b"PROXY TCP4 203.0.113.7 127.0.0.1 56324\r\n".to_vec(), "invalid PROXY protocol v1"),
            (b"PROXY TCP4 999.0.113.7 127.0.0.1 1 2\r\n".to_vec(), "invalid PROXY protocol v1"),
            (b"PROXY TCP4 1.2.3.4\rX".to_vec(), "CR not followed by LF"),
            ([b"PROXY ".as_slice(), &[b'A'; 200]].concat(), "longer than 107"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1".to_vec(), "failed"),
            (v2(1, 0x11, &[1, 2, 3]), "invalid PROXY protocol v2"),
            (v2(3, 0x11, &[0; 12]), "invalid PROXY protocol v2"),
            (v2(1, 0x12, &[0; 12]), "UDP"),
            (v2(1, 0x31, &[0; 216]), "Unix-socket"),
            ([&v2(1, 0x11, &[0; 12])[..14], &[0xff, 0xff]].concat(), "longer than 4112"),
            (v2(1, 0x11, &[0; 12])[..10].to_vec(), "failed"),
            (v2(1, 0x11, &[0; 12])[..20].to_vec(), "failed"),
        ];
        for (bytes, want) in cases {
            let e = read(&bytes).await.0.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{bytes:?}: {e}");
        }
    }

    #[tokio::test]
    async fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for n in 0..4000usize {
            let mut bytes = if n % 2 == 0 { b"PROXY ".to_vec() } else { v2::PROTOCOL_PREFIX.to_vec() };
            for _ in 0..(n % 150) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push((seed & 0xff) as u8);
            }
            let _ = read(&bytes).await;
        }
    }
}
