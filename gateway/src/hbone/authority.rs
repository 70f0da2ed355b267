//! The `:authority` of an HBONE CONNECT, sans-IO: `<service FQDN>:<service port>`, as ztunnel
//! sends it (`create_hbone_request`). The host is looked up in the same table as SNI hosts,
//! so it must pass the same host check; case is ignored as in DNS.
//!
//! Refused (the caller answers 400): no port, a port that is not 1-65535, userinfo, an IP
//! literal in brackets, anything that is not a DNS name. A bare IPv4 address passes the
//! DNS-label check and then finds no route, like Istio's gateway, which has no pod-IP chain.

use crate::sni_name;

/// A routable authority: lower-cased host and service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("authority is not valid UTF-8")]
    NotUtf8,
    #[error("authority {0:?} has no \":<port>\"; HBONE sends <service host>:<service port>")]
    NoPort(String),
    #[error("authority {0:?}: port must be a number 1-65535")]
    BadPort(String),
    #[error("authority {0:?}: host is not a service host name: {1}")]
    BadHost(String, String),
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses an authority as received (bytes: h2 hands the header value through).
pub fn parse(raw: &[u8]) -> Result<Authority, AuthorityError> {
    let s = std::str::from_utf8(raw).map_err(|_| AuthorityError::NotUtf8)?;
    let shown = || s.chars().take(300).collect::<String>();
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(AuthorityError::NoPort(shown()));
    };
    // Digits only: u16::from_str would also take a leading '+'.
    let port = (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()))
        .then(|| port.parse::<u16>().ok())
        .flatten()
        .filter(|&p| p != 0)
        .ok_or_else(|| AuthorityError::BadPort(shown()))?;
    let host = host.to_ascii_lowercase();
    sni_name::validate_host(&host).map_err(|e| AuthorityError::BadHost(shown(), e.to_string()))?;
    Ok(Authority { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_ztunnel_sends() {
        let a = parse(b"catalog.istioinaction.svc.cluster.local:80").unwrap();
        assert_eq!(a.host, "catalog.istioinaction.svc.cluster.local");
        assert_eq!(a.port, 80);
        assert_eq!(a.to_string(), "catalog.istioinaction.svc.cluster.local:80");
        assert_eq!(
            parse(b"Catalog.NS.svc:65535").unwrap().host,
            "catalog.ns.svc"
        );
    }

    #[test]
    fn refuses_what_is_not_host_and_port() {
        use AuthorityError::*;
        let e = |s: &[u8]| parse(s).unwrap_err();
        assert!(matches!(e(b"catalog.ns.svc"), NoPort(_)));
        assert!(matches!(e(b""), NoPort(_)));
        for bad in [
            &b"a.svc:"[..],
            b"a.svc:0",
            b"a.svc:65536",
            b"a.svc:+80",
            b"a.svc:8a",
            b"a.svc:000080",
        ] {
            assert!(matches!(e(bad), BadPort(_)), "{:?}", e(bad));
        }
        for bad in [
            &b":80"[..],
            b"user@a.svc:80",
            b"[::1]:80",
            b"a..svc:80",
            b"-a.svc:80",
            b"a_.svc:80",
            b"a.svc:80:80",
        ] {
            assert!(matches!(e(bad), BadHost(..)), "{:?}", e(bad));
        }
        assert_eq!(e(b"\xff:80"), NotUtf8);
    }

    #[test]
    fn error_text_is_bounded() {
        let long = format!("{}:x", "a".repeat(100_000));
        assert!(parse(long.as_bytes()).unwrap_err().to_string().len() < 400);
    }

    proptest! {
        /// Any bytes: no panic, and what parses prints back to an equal authority.
        #[test]
        fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(a) = parse(&raw) {
                prop_assert_eq!(parse(a.to_string().as_bytes()), Ok(a.clone()));
                prop_assert!(a.port != 0);
            }
        }

        /// Every valid host and port round-trips.
        #[test]
        fn valid_authorities_parse(
            labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..5),
            port in 1u16..,
        ) {
            let host = labels.join(".");
            let a = parse(format!("{host}:{port}").as_bytes()).unwrap();
            prop_assert_eq!(a, Authority { host, port });
        }
    }
}
