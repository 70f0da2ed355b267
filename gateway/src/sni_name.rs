//! Istio's passthrough contract, defined once: the SNI name layout
//! (`outbound_.<port>_.<subset>_.<host>`), the mTLS ALPN values, and host allow patterns.
//!
//! The layout is Istio's `BuildDNSSrvSubsetKey`; sidecars use it as the SNI of
//! mTLS connections. Parsing is stricter than Istio's `ParseSubsetKey`, which
//! never fails: here every field is validated, so a name that parses is
//! canonical and formats back to the same string. Discovery validates hosts and
//! subsets with [`validate_host`] and [`validate_subset`], the same checks the parse makes.

use std::fmt;
use std::str::FromStr;

const SEP: &str = "_.";
const OUTBOUND: &str = "outbound";

/// The port of Istio's SNI passthrough listener on east-west gateways (`tls` on
/// `istio-eastwestgateway`, 15443), the port this gateway listens on by default.
pub const PASSTHROUGH_PORT: u16 = 15443;

/// The longest `server_name` a TLS client sends: openssl and BoringSSL (Envoy's, so every
/// sidecar's) refuse a longer one (`TLSEXT_MAXLEN_host_name`), and gnutls too. A route whose
/// SNI name is longer is valid but unreachable through 15443 (HBONE names it differently).
pub const MAX_SNI_LEN: usize = 255;

/// ALPN values of Istio's AUTO_PASSTHROUGH filter chains (`allIstioMtlsALPNs`).
pub const ISTIO_ALPNS: [&[u8]; 5] = [
    b"istio",
    b"istio-peer-exchange",
    b"istio-http/1.0",
    b"istio-http/1.1",
    b"istio-h2",
];

/// Whether any offered ALPN protocol is one an Istio gateway chain matches. ALPN names are
/// opaque bytes (GREASE values are not UTF-8), compared exactly.
pub fn offers_istio_alpn<A: AsRef<[u8]>>(offered: &[A]) -> bool {
    offered.iter().any(|p| ISTIO_ALPNS.contains(&p.as_ref()))
}

/// A routable SNI name: service port, subset (`""` for none) and host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SniName {
    pub port: u16,
    pub subset: String,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("not of the form outbound_.<port>_.<subset>_.<host>")]
    Layout,
    #[error("direction {0:?} is not routable (only \"outbound\")")]
    Direction(String),
    #[error("port {0:?} is not a decimal in 1..=65535 without leading zeros")]
    Port(String),
    #[error("subset {0:?} is not a DNS-1123 label")]
    Subset(String),
    #[error("host {host:?}: {reason}")]
    Host { host: String, reason: &'static str },
    #[error("host pattern {pattern:?}: {reason}")]
    Pattern {
        pattern: String,
        reason: &'static str,
    },
}

/// Parses `outbound_.<port>_.<subset>_.<host>`, lower-casing it first (SNI is
/// case-insensitive).
///
/// The port is canonical decimal: `1..=65535`, digits only, no leading zero
/// (Istio writes it with `strconv.Itoa`), so `080` is rejected rather than
/// aliased to `80`.
pub fn parse(sni: &str) -> Result<SniName, NameError> {
    parse_owned(sni.to_string())
}

/// [`parse`] of a name the caller owns: lower-cased in place, and its allocation becomes
/// the host (no copy of the name when it is already lower case, as a decoded SNI is).
pub fn parse_owned(mut lower: String) -> Result<SniName, NameError> {
    lower.make_ascii_lowercase();
    let fields = split_sep(&lower).and_then(|(direction, rest)| {
        let (port, rest) = split_sep(rest)?;
        let (subset, host) = split_sep(rest)?;
        Some((direction, port, subset, host))
    });
    let Some((direction, port, subset, host)) = fields else {
        return match split_sep(&lower) {
            Some((dir, _)) if dir != OUTBOUND => Err(NameError::Direction(dir.to_string())),
            _ => Err(NameError::Layout),
        };
    };
    if direction != OUTBOUND {
        return Err(NameError::Direction(direction.to_string()));
    }
    let port = parse_port(port).ok_or_else(|| NameError::Port(port.to_string()))?;
    if !subset.is_empty() && !is_dns1123_label(subset) {
        return Err(NameError::Subset(subset.to_string()));
    }
    check_host_field(host)?;
    let subset = subset.to_string();
    // The host is the name's tail: the lower-cased copy becomes it, one allocation fewer.
    let host_at = lower.len() - host.len();
    lower.drain(..host_at);
    Ok(SniName {
        port,
        subset,
        host: lower,
    })
}

/// `s` split at the first [`SEP`]. A byte scan: std's substring search sets up a two-way
/// searcher on every call, which was most of the cost of parsing a name.
fn split_sep(s: &str) -> Option<(&str, &str)> {
    let i = find_sep(s)?;
    Some((&s[..i], &s[i + SEP.len()..]))
}

fn find_sep(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let &[first, second] = SEP.as_bytes() else {
        unreachable!("SEP is two bytes")
    };
    let mut from = 0;
    while let Some(i) = b[from..].iter().position(|&c| c == first) {
        let at = from + i;
        if b.get(at + 1) == Some(&second) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

impl SniName {
    /// A name from parts already known to be valid (a route's host and port).
    pub fn new(port: u16, subset: impl Into<String>, host: impl Into<String>) -> Self {
        SniName {
            port,
            subset: subset.into(),
            host: host.into(),
        }
    }

    /// The length of the name [`Display`](fmt::Display) writes, without writing it.
    pub fn len_of(port: u16, subset: &str, host: &str) -> usize {
        let digits = port.checked_ilog10().unwrap_or(0) as usize + 1;
        OUTBOUND.len() + SEP.len() + digits + SEP.len() + subset.len() + SEP.len() + host.len()
    }
}

/// Checks that `host` can appear in an SNI name, as [`parse`] checks it (case is ignored,
/// as in SNI). Discovery calls this so that every host it publishes is routable.
pub fn validate_host(host: &str) -> Result<(), NameError> {
    check_host_field(&host.to_ascii_lowercase())
}

/// The host field of a lower-cased name.
fn check_host_field(host: &str) -> Result<(), NameError> {
    // A DNS name has no `_`, so only a refused host needs the look for the separator that
    // picks the message.
    check_host(host).map_err(|reason| match find_sep(host) {
        // Istio's ParseSubsetKey yields an empty host for these.
        Some(_) => host_error(host, "contains the separator \"_.\""),
        None => host_error(host, reason),
    })
}

/// Checks that `subset` is a non-empty subset name an SNI name can carry: a DNS-1123 label,
/// case ignored as in [`parse`] (Istio allows upper case in subset names, and sidecars send
/// it). Discovery keeps names lower-cased, as [`parse`] yields them.
pub fn validate_subset(subset: &str) -> Result<(), NameError> {
    if is_dns1123_label(&subset.to_ascii_lowercase()) {
        Ok(())
    } else {
        Err(NameError::Subset(subset.to_string()))
    }
}

impl FromStr for SniName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { port, subset, host } = self;
        // The one place the layout is written out; `parse` reads it through `SEP`.
        write!(f, "outbound_.{port}_.{subset}_.{host}")
    }
}

fn host_error(host: &str, reason: &'static str) -> NameError {
    NameError::Host {
        host: host.to_string(),
        reason,
    }
}

fn parse_port(s: &str) -> Option<u16> {
    let canonical = !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && !s.starts_with('0');
    canonical.then(|| s.parse().ok()).flatten()
}

/// A DNS-1123 label: 1–63 of `[a-z0-9-]`, starting and ending alphanumeric (lower case only,
/// as Kubernetes' `IsDNS1123Label`, the rule for namespace names).
pub fn is_dns1123_label(s: &str) -> bool {
    is_label(s.as_bytes())
}

fn is_label(b: &[u8]) -> bool {
    (1..=63).contains(&b.len())
        && b.iter().all(|&c| LABEL_BYTE[usize::from(c)])
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

/// Labels as [`is_label`] joined by single dots, in one pass over the bytes.
fn is_dns_name(b: &[u8]) -> bool {
    let (mut label, mut prev) = (0usize, b'.');
    for &c in b {
        if c == b'.' {
            if label == 0 || prev == b'-' {
                return false;
            }
            label = 0;
        } else {
            if !LABEL_BYTE[usize::from(c)] || (label == 0 && c == b'-') || label == 63 {
                return false;
            }
            label += 1;
        }
        prev = c;
    }
    label > 0 && prev != b'-'
}

/// `[a-z0-9-]` as a table: one load per byte of every name a connection sends.
static LABEL_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
        c += 1;
    }
    t
};

/// A lower-case DNS name: labels as above, at most 253 bytes, no trailing dot.
fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("empty");
    }
    if host.len() > 253 {
        return Err("longer than 253 bytes");
    }
    if is_dns_name(host.as_bytes()) {
        Ok(())
    } else {
        Err("not a DNS name (labels of 1-63 [a-z0-9-], not starting or ending with '-')")
    }
}

/// A host allow pattern, as in the `hosts` of an Istio Gateway server:
/// `*` (any host), `*.<suffix>` (at least one label before `.<suffix>`), or an
/// exact DNS name. Matching ignores ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(Kind);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    Any,
    /// The suffix with its leading dot, e.g. `.local`.
    Suffix(String),
    Exact(String),
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, NameError> {
        let lower = pattern.to_ascii_lowercase();
        let err = |reason| NameError::Pattern {
            pattern: pattern.to_string(),
            reason,
        };
        if lower == "*" {
            return Ok(HostPattern(Kind::Any));
        }
        let (kind, name) = match lower.strip_prefix("*.") {
            Some(suffix) => (Kind::Suffix(format!(".{suffix}")), suffix),
            None => (Kind::Exact(lower.clone()), lower.as_str()),
        };
        check_host(name).map_err(err)?;
        Ok(HostPattern(kind))
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = host.as_bytes();
        match &self.0 {
            Kind::Any => true,
            Kind::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            Kind::Suffix(suffix) => {
                host.len() > suffix.len() && {
                    let (head, tail) = host.split_at(host.len() - suffix.len());
                    tail.eq_ignore_ascii_case(suffix.as_bytes()) && !head.ends_with(b".")
                }
            }
        }
    }
}

impl FromStr for HostPattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Any => f.write_str("*"),
            Kind::Suffix(suffix) => write!(f, "*{suffix}"),
            Kind::Exact(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = "catalog.istioinaction.svc.cluster.local";

    fn name(port: u16, subset: &str, host: &str) -> SniName {
        SniName {
            port,
            subset: subset.into(),
            host: host.into(),
        }
    }

    #[test]
    fn len_of_is_the_written_length() {
        for (port, subset, host) in [
            (0, "", "a"),
            (9, "v1", "a.b"),
            (10, "", "x"),
            (65535, "blue-green", "c.d.svc"),
        ] {
            let written = SniName::new(port, subset, host).to_string();
            assert_eq!(
                SniName::len_of(port, subset, host),
                written.len(),
                "{written}"
            );
        }
    }

    #[test]
    fn parses_istio_names() {
        let s = format!("outbound_.80_._.{CATALOG}");
        assert_eq!(parse(&s), Ok(name(80, "", CATALOG)));
        assert_eq!(parse(&s).unwrap().to_string(), s);
        let v1 = format!("outbound_.80_.v1_.{CATALOG}");
        assert_eq!(parse(&v1), Ok(name(80, "v1", CATALOG)));
        assert_eq!(parse(&v1).unwrap().to_string(), v1);
        assert_eq!(
            parse("OUTBOUND_.8080_.V1_.Foo.Example.ORG"),
            Ok(name(8080, "v1", "foo.example.org"))
        );
        assert_eq!(parse("outbound_.65535_._.a"), Ok(name(65535, "", "a")));
        let longest = ["a"; 127].join(".");
        assert_eq!(
            parse(&format!("outbound_.1_._.{longest}")).unwrap().host,
            longest
        );
    }

    #[test]
    fn rejects_bad_names() {
        use NameError::*;
        let bad = |s: &str| parse(s).unwrap_err();
        assert_eq!(bad(CATALOG), Layout);
        assert_eq!(bad("outbound_.80_.v1"), Layout);
        assert_eq!(bad(""), Layout);
        assert_eq!(bad("outbound|80||a.local"), Layout);
        assert_eq!(bad("inbound_.80_._.a.local"), Direction("inbound".into()));
        assert_eq!(bad("inbound_.80"), Direction("inbound".into()));
        assert_eq!(bad("inbound-vip_.80_._.a"), Direction("inbound-vip".into()));
        for port in [
            "0", "080", "+80", "-80", "65536", "99999999", "", "8o", " 80",
        ] {
            let s = [OUTBOUND, port, "", "a"].join(SEP);
            assert_eq!(bad(&s), Port(port.into()));
        }
        for subset in ["-v1", "v1-", "v_1", "v.1", &"a".repeat(64)] {
            let s = format!("outbound_.80_.{subset}_.a.local");
            assert!(matches!(bad(&s), Subset(_) | Host { .. }), "{s}");
        }
        for host in [
            "",
            "a.local.",
            ".a",
            "a..b",
            "-a.local",
            "a-.local",
            "a_b.local",
            "*.local",
            "a_.b",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            let s = format!("outbound_.80_._.{host}");
            assert!(matches!(bad(&s), Host { .. }), "{s}");
        }
        assert!(
            bad("outbound_.80_._.a_.b")
                .to_string()
                .contains("separator")
        );
    }

    /// The one-pass check is the definition: labels split at dots, each a DNS-1123 label.
    #[test]
    fn one_pass_name_check_is_the_split_definition() {
        let by_split = |b: &[u8]| b.split(|&c| c == b'.').all(is_label);
        let long = |n: usize| "a".repeat(n);
        let edges = [
            String::new(),
            ".".into(),
            "a".into(),
            "a.".into(),
            ".a".into(),
            "a..b".into(),
            "-a".into(),
            "a-".into(),
            "a-b.c".into(),
            "a.-b".into(),
            "a.b-".into(),
            "0.9".into(),
            long(63),
            long(64),
            format!("{}.b", long(63)),
            format!("{}.b", long(64)),
            format!("b.{}", long(64)),
        ];
        for e in &edges {
            assert_eq!(is_dns_name(e.as_bytes()), by_split(e.as_bytes()), "{e:?}");
        }
        use proptest::prelude::*;
        proptest!(ProptestConfig::with_cases(4000), |(name in "[a-c0-9._A-]{0,12}|[a.-]{60,70}")| {
            prop_assert_eq!(is_dns_name(name.as_bytes()), by_split(name.as_bytes()), "{:?}", name);
        });
    }

    #[test]
    fn host_patterns() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("*.local").matches(CATALOG));
        assert!(p("*.LOCAL").matches("A.Local"));
        assert!(!p("*.local").matches("local"));
        assert!(!p("*.local").matches(".local"));
        assert!(!p("*.local").matches("a.localhost"));
        assert!(!p("*.local").matches("alocal"));
        assert!(p("*.cluster.local").matches(CATALOG));
        assert!(p(CATALOG).matches(&CATALOG.to_uppercase()));
        assert!(!p(CATALOG).matches(&format!("x.{CATALOG}")));
        assert!(p("*").matches("anything"));
        for s in ["*.local", "*", CATALOG] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(s.parse::<HostPattern>(), Ok(p(s)));
        }
        for bad in [
            "",
            "*.",
            "**.local",
            "a.*.local",
            "ns/*.local",
            "*local",
            "a..b",
            "a.",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn istio_alpn() {
        assert!(offers_istio_alpn(&[&b"istio-peer-exchange"[..], b"istio"]));
        let h2 = ISTIO_ALPNS[4].to_vec();
        assert!(offers_istio_alpn(&[b"h2".to_vec(), h2.clone()]));
        assert!(!offers_istio_alpn(&[b"h2".as_slice(), b"http/1.1"]));
        assert!(!offers_istio_alpn::<&[u8]>(&[]));
        // Opaque bytes: a GREASE value is simply not Istio's, and a prefix does not match.
        assert!(!offers_istio_alpn(&[&[0xda, 0xda][..], b"isti"]));
        assert!(!offers_istio_alpn(&[h2[..h2.len() - 1].to_vec()]));
    }

    #[test]
    fn validate_agrees_with_parse() {
        let hosts = [
            CATALOG, "A.Local", "", "a..b", "a_.b", "-a.local", "*.local", "a",
        ];
        for host in hosts {
            let full = [OUTBOUND, "80", "", host].join(SEP);
            assert_eq!(
                validate_host(host).is_ok(),
                parse(&full).is_ok(),
                "{host:?}"
            );
        }
        assert!(matches!(validate_host("a_.b"), Err(NameError::Host { .. })));
        for subset in ["v1", "V1", "", "-v1", "v_1", "v.1", "a_.b", &"a".repeat(64)] {
            let full = [OUTBOUND, "80", subset, "a.local"].join(SEP);
            let parses = !subset.is_empty() && parse(&full).is_ok();
            assert_eq!(validate_subset(subset).is_ok(), parses, "{subset:?}");
        }
        assert_eq!(validate_subset("v.1"), Err(NameError::Subset("v.1".into())));
        let n = SniName::new(80, "v1", CATALOG);
        assert_eq!(n.to_string().parse::<SniName>(), Ok(n));
    }
}
