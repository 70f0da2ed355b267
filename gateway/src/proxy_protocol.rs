//! Sans-IO PROXY protocol v2 header parser, for a load balancer in front (e.g. AWS NLB).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const FIXED: usize = 16;
/// Largest header accepted; NLB headers with TLVs are a few hundred bytes.
pub const MAX_HEADER: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// The original client and the address it connected to; `None` for LOCAL commands (the
    /// balancer's own health checks) and for address families we do not map.
    Proxied {
        source: Option<SocketAddr>,
        destination: Option<SocketAddr>,
        len: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    Done(Header),
    NeedMore,
    Invalid(&'static str),
}

pub fn parse(buf: &[u8]) -> Parse {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] != SIGNATURE[..n] {
        return Parse::Invalid("missing PROXY v2 signature");
    }
    if buf.len() < FIXED {
        return Parse::NeedMore;
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Parse::Invalid("unsupported PROXY protocol version");
    }
    let cmd = ver_cmd & 0x0f;
    if cmd > 1 {
        return Parse::Invalid("unknown PROXY command");
    }
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = FIXED + len;
    if total > MAX_HEADER {
        return Parse::Invalid("PROXY header too long");
    }
    if buf.len() < total {
        return Parse::NeedMore;
    }
    let body = &buf[FIXED..total];
    let (source, destination) = match (cmd, fam) {
        (0, _) => (None, None),
        (_, 0x11) => {
            if body.len() < 12 {
                return Parse::Invalid("PROXY IPv4 block too short");
            }
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        (_, 0x21) => {
            if body.len() < 36 {
                return Parse::Invalid("PROXY IPv6 block too short");
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        // UNSPEC, UNIX or UDP: accepted, but no address to report.
        _ => (None, None),
    };
    Parse::Done(Header::Proxied {
        source,
        destination,
        len: total,
    })
}

/// Encodes a v2 PROXY header for a TCP connection (used by tests and benchmarks).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_v4_and_v6_every_prefix() {
        for (s, d) in [
            ("192.0.2.7:40000", "10.0.0.1:15443"),
            ("[2001:db8::1]:5555", "[2001:db8::2]:15443"),
        ] {
            let (s, d): (SocketAddr, SocketAddr) = (s.parse().unwrap(), d.parse().unwrap());
            let mut h = encode(s, d);
            let len = h.len();
            for i in 0..len {
                assert_eq!(parse(&h[..i]), Parse::NeedMore, "prefix {i}");
            }
            h.extend_from_slice(b"\x16\x03\x01");
            assert_eq!(
                parse(&h),
                Parse::Done(Header::Proxied {
                    source: Some(s),
                    destination: Some(d),
                    len
                })
            );
        }
    }

    #[test]
    fn local_and_garbage() {
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert!(matches!(
            parse(&local),
            Parse::Done(Header::Proxied {
                source: None,
                len: 16,
                ..
            })
        ));
        assert!(matches!(parse(b"\x16\x03\x01\x00"), Parse::Invalid(_)));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4"), Parse::Invalid(_)));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&long), Parse::Invalid("PROXY header too long"));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&short), Parse::Invalid(_)));
    }
}
