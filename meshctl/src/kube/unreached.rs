//! Why a request to an API server got no answer, in words that lead to the fix. kube's own
//! text nests the transport's errors ("ServiceError: client error (Connect): invalid peer
//! certificate: UnknownIssuer"); the causes a user meets most (nothing listening, no route,
//! a certificate from another CA or for another name, a plain-HTTP port, a connection cut
//! before the answer) are recognised in the error's chain and said plainly. Anything else
//! keeps kube's text.

use std::error::Error;
use std::io;

use rustls::{CertificateError, InvalidMessage};

/// A recognised reason for no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreached {
    /// Nothing accepts connections at the address and port.
    Refused,
    /// No connection within meshctl's connect timeout.
    ConnectTimeout,
    /// Connected, but no answer within meshctl's read timeout.
    ReadTimeout,
    /// The host name does not resolve.
    NoSuchHost,
    /// The server's certificate is signed by a CA the kubeconfig does not name.
    UnknownIssuer,
    /// The server's certificate is not for `expected` (the server address's host, or
    /// `tls-server-name`); `presented` lists the names it is for.
    OtherName {
        expected: Option<String>,
        presented: Vec<String>,
    },
    /// The server's certificate is outside its validity (or the local clock is).
    Expired,
    NotYetValid,
    /// What answered is not TLS (a plain-HTTP port, another service).
    NotTls,
    /// The connection was closed or reset before an answer (the server, or a proxy, load
    /// balancer or firewall between).
    Dropped,
}

/// meshctl's connect timeout for any API server (a kubeconfig's or a stored one).
pub const CONNECT_TIMEOUT_S: u64 = 5;

/// `e` and its causes, outermost first. An `io::Error` wrapping another error hides it from
/// `source()` (it returns the inner error's source), and the TLS stack nests one `io::Error`
/// in another, so the wrapped error is followed too. Bounded: a chain is a few levels.
fn causes<'a>(e: &'a (dyn Error + 'static)) -> Vec<&'a (dyn Error + 'static)> {
    let mut out = vec![];
    let mut cur = Some(e);
    while let Some(err) = cur.filter(|_| out.len() < 32) {
        out.push(err);
        cur = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn Error + 'static))
            .or_else(|| err.source());
    }
    out
}

/// The first recognised cause in `e`'s chain.
pub fn unreached(e: &(dyn Error + 'static)) -> Option<Unreached> {
    causes(e).into_iter().find_map(recognise)
}

/// The text of the innermost error in `e`'s chain: the resolver's or the kernel's own words.
pub fn innermost(e: &(dyn Error + 'static)) -> String {
    causes(e).last().map_or_else(String::new, |c| c.to_string())
}

fn recognise(err: &(dyn Error + 'static)) -> Option<Unreached> {
    if let Some(r) = err.downcast_ref::<rustls::Error>() {
        return match r {
            rustls::Error::InvalidCertificate(c) => certificate(c),
            rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType) => {
                Some(Unreached::NotTls)
            }
            _ => None,
        };
    }
    if let Some(io) = err.downcast_ref::<io::Error>() {
        return match io.kind() {
            io::ErrorKind::ConnectionRefused => Some(Unreached::Refused),
            // hyper-timeout wraps the connect deadline's `Elapsed`; a read timeout has no
            // inner error.
            io::ErrorKind::TimedOut if io.get_ref().is_some() => Some(Unreached::ConnectTimeout),
            io::ErrorKind::TimedOut => Some(Unreached::ReadTimeout),
            // The TLS stack's "tls handshake eof", or a reset.
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => Some(Unreached::Dropped),
            _ => None,
        };
    }
    // hyper-util's connect error has no public type; its message names the step.
    if err.to_string() == "dns error" {
        return Some(Unreached::NoSuchHost);
    }
    None
}

fn certificate(c: &CertificateError) -> Option<Unreached> {
    match c {
        CertificateError::UnknownIssuer => Some(Unreached::UnknownIssuer),
        CertificateError::NotValidForName => Some(Unreached::OtherName {
            expected: None,
            presented: vec![],
        }),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => Some(Unreached::OtherName {
            expected: Some(expected.to_str().into_owned()),
            presented: presented.iter().map(|p| general_name(p)).collect(),
        }),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            Some(Unreached::Expired)
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            Some(Unreached::NotYetValid)
        }
        _ => None,
    }
}

/// webpki prints a presented name as `DnsName("api.example")` or `IpAddress(10.0.0.1)`:
/// the name alone is what goes into a kubeconfig.
fn general_name(p: &str) -> String {
    let inner = p
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(p);
    inner.trim_matches('"').to_string()
}

impl Unreached {
    /// What happened, for any API server meshctl talks to (a kubeconfig's or a stored one).
    pub fn text(&self) -> String {
        match self {
            Unreached::Refused => {
                "connection refused: nothing accepts connections at that address and port".into()
            }
            Unreached::ConnectTimeout => format!(
                "no connection within {CONNECT_TIMEOUT_S} s: the address is not reachable from \
                 here"
            ),
            Unreached::ReadTimeout => "connected, but no answer in time: the API server is \
                 overloaded, or something else listens at that address"
                .into(),
            Unreached::NoSuchHost => "its host name does not resolve here (DNS)".into(),
            Unreached::UnknownIssuer => "its TLS certificate is not signed by the certificate \
                 authority given for it (certificate-authority-data or certificate-authority)"
                .into(),
            Unreached::OtherName {
                expected,
                presented,
            } => {
                let name = expected.as_deref().map_or_else(
                    || "the name meshctl checked".to_string(),
                    |n| format!("{n:?}"),
                );
                let mut text = format!("its TLS certificate is not for {name}");
                if !presented.is_empty() {
                    text.push_str(&format!("; it is for {}", presented.join(", ")));
                }
                text
            }
            Unreached::Expired => "its TLS certificate has expired (or this machine's clock is \
                 ahead)"
                .into(),
            Unreached::NotYetValid => "its TLS certificate is not valid yet (or this machine's \
                 clock is behind)"
                .into(),
            Unreached::NotTls => "what answers at that address does not speak TLS (a plain-HTTP \
                 port, or another service)"
                .into(),
            Unreached::Dropped => "the connection was closed before a whole answer came: the \
                 server, or a proxy, load balancer or firewall between, dropped it"
                .into(),
        }
    }

    /// The fix when the address and CA come from the user's kubeconfig.
    pub fn kubeconfig_fix(&self) -> String {
        match self {
            Unreached::Refused => "start the cluster (kind: `kind get clusters`, `docker ps`), or \
                 correct the server address and port in the kubeconfig"
                .into(),
            Unreached::ConnectTimeout => "check the route to the cluster from this machine (a \
                 private endpoint, a VPN that is down, a firewall), or that the server address \
                 is right"
                .into(),
            Unreached::ReadTimeout => "retry; if it persists, check that the server address is \
                 the API server's"
                .into(),
            Unreached::NoSuchHost => "correct the server address in the kubeconfig, or check \
                 this machine's DNS (a VPN's resolver)"
                .into(),
            Unreached::UnknownIssuer => "the cluster was recreated since the kubeconfig was \
                 written, or the kubeconfig is for another cluster: write the kubeconfig again \
                 (kind: kind export kubeconfig --name <cluster>; a cloud: its get-credentials \
                 command)"
                .into(),
            Unreached::OtherName { presented, .. } if presented.is_empty() => {
                "use a name the certificate lists in the server address, or as tls-server-name \
                 on the kubeconfig's cluster"
                    .into()
            }
            Unreached::OtherName { .. } => "use one of those names in the server address, or \
                 as tls-server-name on the kubeconfig's cluster"
                .into(),
            Unreached::Expired | Unreached::NotYetValid => "check this machine's clock; if it \
                 is right, the API server's certificate must be renewed (kubeadm certs renew)"
                .into(),
            Unreached::NotTls => "use the API server's HTTPS address and port in the \
                 kubeconfig"
                .into(),
            Unreached::Dropped => "retry; if it persists, check that the server address is the \
                 API server's (not a load balancer or proxy that filters TLS) and that the API \
                 server is healthy"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(Box<dyn Error + Send + Sync>);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn causes_are_found_inside_io_errors_and_wrappers() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            unreached(&Outer(Box::new(tls))),
            Some(Unreached::UnknownIssuer)
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            unreached(&Outer(Box::new(refused))),
            Some(Unreached::Refused)
        );
        let plain = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType),
        );
        assert_eq!(unreached(&plain), Some(Unreached::NotTls));
        for cut in [
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            let e = io::Error::new(cut, "tls handshake eof");
            assert_eq!(
                unreached(&Outer(Box::new(e))),
                Some(Unreached::Dropped),
                "{cut:?}"
            );
        }
        let other = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(unreached(&Outer(Box::new(other))), None);
    }

    #[test]
    fn a_connect_deadline_and_a_read_deadline_are_told_apart() {
        let connect = io::Error::new(io::ErrorKind::TimedOut, "deadline has elapsed");
        assert_eq!(unreached(&connect), Some(Unreached::ConnectTimeout));
        let read = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(unreached(&read), Some(Unreached::ReadTimeout));
    }

    #[test]
    fn presented_names_are_shown_as_a_kubeconfig_takes_them() {
        assert_eq!(general_name("DnsName(\"api.example\")"), "api.example");
        assert_eq!(general_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(general_name("plain"), "plain");
        let u = certificate(&CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec![
                "DnsName(\"a.example\")".into(),
                "IpAddress(10.0.0.1)".into(),
            ],
        });
        assert_eq!(
            u.unwrap().text(),
            "its TLS certificate is not for \"127.0.0.1\"; it is for a.example, 10.0.0.1"
        );
    }
}
