//! Sans-IO PROXY protocol parser, v2 (binary: AWS NLB, GCP) and v1 (text: HAProxy's
//! `send-proxy`, ELB Classic and other balancers), for a load balancer in front. Envoy's
//! listener filter accepts both, so a balancer set up for Istio's gateway works here too.
//! Every refusal is decided within [`MAX_HEADER`] bytes (v1 within [`V1_MAX`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const FIXED: usize = 16;
/// Largest header accepted; NLB headers with TLVs are a few hundred bytes.
pub const MAX_HEADER: usize = 4096;
/// The v1 line's start, and its longest form, CRLF included (the spec's 107 bytes).
const V1_PREFIX: &[u8; 6] = b"PROXY ";
pub const V1_MAX: usize = 107;
/// v2 address block sizes by family (source and destination, with ports for IP).
const INET_LEN: usize = 12;
const INET6_LEN: usize = 36;
const UNIX_LEN: usize = 216;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// The original client and the address it connected to; `None` for LOCAL commands (the
    /// balancer's own health checks), v1 `UNKNOWN` and families we do not map.
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

/// Whether `buf` starts with a whole PROXY signature (v2's 12 bytes or v1's `PROXY `): a
/// header where none is expected names the misconfiguration instead of "not TLS".
pub fn starts_with_header(buf: &[u8]) -> bool {
    buf.starts_with(SIGNATURE) || buf.starts_with(V1_PREFIX)
}

pub fn parse(buf: &[u8]) -> Parse {
    let prefix_of = |sig: &[u8]| buf[..buf.len().min(sig.len())] == sig[..buf.len().min(sig.len())];
    if prefix_of(SIGNATURE) {
        parse_v2(buf)
    } else if prefix_of(V1_PREFIX) {
        parse_v1(buf)
    } else {
        Parse::Invalid("missing PROXY header signature")
    }
}

fn parse_v2(buf: &[u8]) -> Parse {
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
    // The spec's families (UNSPEC, INET, INET6, UNIX) and transports (UNSPEC, STREAM,
    // DGRAM); receivers should drop anything else.
    if fam >> 4 > 3 || fam & 0x0f > 2 {
        return Parse::Invalid("unknown PROXY address family or transport");
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = FIXED + len;
    if total > MAX_HEADER {
        return Parse::Invalid("PROXY header too long");
    }
    if buf.len() < total {
        return Parse::NeedMore;
    }
    let body = &buf[FIXED..total];
    if cmd == 1 {
        let need = match fam >> 4 {
            1 => INET_LEN,
            2 => INET6_LEN,
            3 => UNIX_LEN,
            _ => 0,
        };
        if body.len() < need {
            return Parse::Invalid("PROXY address block shorter than its family");
        }
    }
    let (source, destination) = match (cmd, fam) {
        (0, _) => (None, None),
        (_, 0x11) => {
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

/// `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` or `PROXY UNKNOWN ...\r\n`, at most
/// [`V1_MAX`] bytes; nothing is read past the line.
fn parse_v1(buf: &[u8]) -> Parse {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Parse::Invalid("PROXY v1 line without CRLF in 107 bytes");
        }
        if !window
            .iter()
            .all(|&b| b == b'\r' || b.is_ascii_graphic() || b == b' ')
        {
            return Parse::Invalid("PROXY v1 line is not printable ASCII");
        }
        return Parse::NeedMore;
    };
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Parse::Invalid("PROXY v1 line does not end in CRLF");
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Parse::Invalid("PROXY v1 line is not printable ASCII");
    };
    if !line.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Parse::Invalid("PROXY v1 line is not printable ASCII");
    }
    let len = lf + 1;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let v4 = match fields.next() {
        Some("TCP4") => true,
        Some("TCP6") => false,
        // The balancer could not tell the client: the rest of the line is ignored.
        Some("UNKNOWN") => {
            return Parse::Done(Header::Proxied {
                source: None,
                destination: None,
                len,
            });
        }
        _ => return Parse::Invalid("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let rest: Vec<&str> = fields.collect();
    let &[src, dst, sport, dport] = rest.as_slice() else {
        return Parse::Invalid("PROXY v1 line does not have four address fields");
    };
    let ip = |s: &str| match s.parse::<IpAddr>() {
        Ok(a) if a.is_ipv4() == v4 => Some(a),
        _ => None,
    };
    let (Some(src), Some(dst)) = (ip(src), ip(dst)) else {
        return Parse::Invalid("PROXY v1 address is not of its protocol's family");
    };
    let (Some(sport), Some(dport)) = (v1_port(sport), v1_port(dport)) else {
        return Parse::Invalid("PROXY v1 port is not a decimal in 0..=65535");
    };
    Parse::Done(Header::Proxied {
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
        len,
    })
}

/// Digits only (`u16::from_str` takes a `+`), no leading zero, at most 65535.
fn v1_port(s: &str) -> Option<u16> {
    let canonical = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
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
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parse::Invalid(_)));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&long), Parse::Invalid("PROXY header too long"));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&short), Parse::Invalid(_)));
    }

    #[test]
    fn v2_family_and_transport_must_be_known_and_fit_the_block() {
        let v2 = |fam: u8, body: &[u8]| {
            let mut h = SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, fam]);
            h.extend_from_slice(&(body.len() as u16).to_be_bytes());
            h.extend_from_slice(body);
            parse(&h)
        };
        for fam in [0x41, 0xf1, 0x13, 0x1f] {
            assert_eq!(
                v2(fam, &[0; 36]),
                Parse::Invalid("unknown PROXY address family or transport"),
                "{fam:#x}"
            );
        }
        let short = Parse::Invalid("PROXY address block shorter than its family");
        assert_eq!(v2(0x21, &[0; 12]), short, "IPv4-sized block for IPv6");
        assert_eq!(v2(0x31, &[0; 36]), short, "UNIX needs 216 bytes");
        assert_eq!(v2(0x12, &[0; 11]), short, "UDP over IPv4 too");
        // UNSPEC carries nothing; UNIX and UDP carry addresses we do not report.
        for (fam, n) in [(0x00, 0), (0x31, 216), (0x12, 12)] {
            assert!(
                matches!(
                    v2(fam, &vec![0; n]),
                    Parse::Done(Header::Proxied { source: None, .. })
                ),
                "{fam:#x}"
            );
        }
        // TLVs after the address block are skipped, whatever lengths they claim.
        let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0x9c, 0x40, 0x3c, 0x43];
        body.extend_from_slice(&[0x04, 0xff, 0xff]);
        let Parse::Done(Header::Proxied { source, len, .. }) = v2(0x11, &body) else {
            panic!("not parsed")
        };
        assert_eq!(
            (source, len),
            (Some("192.0.2.7:40000".parse().unwrap()), 31)
        );
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown_every_prefix() {
        let cases: [(&[u8], Option<&str>); 4] = [
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 15443\r\n",
                Some("192.0.2.7:40000"),
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 0 15443\r\n",
                Some("[2001:db8::1]:0"),
            ),
            (b"PROXY UNKNOWN\r\n", None),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
                None,
            ),
        ];
        for (line, source) in cases {
            for i in 0..line.len() {
                assert_eq!(parse(&line[..i]), Parse::NeedMore, "{:?}", &line[..i]);
            }
            let mut buf = line.to_vec();
            buf.extend_from_slice(b"\x16\x03\x01");
            let Parse::Done(Header::Proxied {
                source: got, len, ..
            }) = parse(&buf)
            else {
                panic!("{line:?} not parsed")
            };
            assert_eq!((got, len), (source.map(|s| s.parse().unwrap()), line.len()));
        }
    }

    #[test]
    fn v1_refusals_are_decided_within_107_bytes() {
        let invalid = |b: &[u8]| match parse(b) {
            Parse::Invalid(why) => why,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(b)),
        };
        // No CRLF: undecided until the spec's longest line, refused at it.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(V1_MAX - 1, b'1');
        assert_eq!(parse(&long), Parse::NeedMore);
        long.push(b'1');
        assert!(invalid(&long).contains("without CRLF"));
        // A line that would end just past the bound is refused too.
        let mut late = b"PROXY UNKNOWN ".to_vec();
        late.resize(V1_MAX - 1, b'x');
        late.extend_from_slice(b"\r\n");
        assert!(invalid(&late).contains("without CRLF"));
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 15443\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 01 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1\r\n",
            b"PROXY TCP4 192.0.2.7  10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2 3\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.07 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7\t10.0.0.1 1 2\r\n",
            b"PROXY TCP4 \xc3\xa9\r\n",
        ] {
            invalid(bad);
        }
        assert!(invalid(b"PROXY TCP4 \x00").contains("printable"));
        assert!(invalid(b"PROXZ").contains("signature"));
    }

    #[test]
    fn a_header_is_recognised_only_by_its_whole_signature() {
        assert!(starts_with_header(
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n\x16"
        ));
        assert!(starts_with_header(&encode(
            "192.0.2.7:1".parse().unwrap(),
            "10.0.0.1:2".parse().unwrap()
        )));
        assert!(!starts_with_header(b"PROXY"));
        assert!(!starts_with_header(b"\r\n\r\n"));
        assert!(!starts_with_header(b"\x16\x03\x01\x00\x05"));
    }
}
