//! Small helpers: base64, random ids, timestamps, URL query decoding.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use rand::Rng;
use std::time::SystemTime;

/// Go's `base64.StdEncoding`, which lets non-zero trailing bits through.
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Standard base64 with padding (what Kubernetes uses for `Secret.data`).
pub fn b64(input: &[u8]) -> String {
    STANDARD.encode(input)
}

/// URL-safe base64 without padding (JWT segments).
pub fn b64url(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

/// Decodes base64 as the API server decodes a `[]byte` field such as `Secret.data`
/// (Go's `base64.StdEncoding`: padding required, CR and LF skipped). `None` when malformed.
pub fn b64_decode(input: &str) -> Option<Vec<u8>> {
    let compact: String = input
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect();
    GO_STD.decode(compact).ok()
}

/// A random RFC 4122 version-4 UUID string.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Random lowercase alphanumeric suffix, as used for `generateName`.
pub fn random_suffix(n: usize) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Random token bytes, base64url-encoded.
pub fn random_b64url(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill(&mut b[..]);
    b64url(&b)
}

/// RFC 3339 timestamp with second precision in UTC, like Kubernetes' `metav1.Time`.
pub fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Percent-decodes one query-string component (`+` is a space).
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a query string into (key, value) pairs, decoded.
pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = b64(s.as_bytes());
            assert_eq!(b64_decode(&e).unwrap(), s.as_bytes());
        }
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64url(b"fo"), "Zm8");
    }

    /// The API server decodes `Secret.data` as Go's `encoding/json` decodes `[]byte`:
    /// `base64.StdEncoding`, padding required, standard alphabet, CR and LF skipped.
    #[test]
    fn decodes_like_go_std_encoding() {
        assert_eq!(b64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(b64_decode("Zm9v\r\nYmFy").unwrap(), b"foobar");
        assert_eq!(b64_decode("").unwrap(), b"");
        assert!(b64_decode("Zm8").is_none(), "padding is required");
        assert!(
            b64_decode("-_-_").is_none(),
            "URL-safe alphabet is not base64.StdEncoding"
        );
        assert!(b64_decode("Zm8=Zm8=").is_none(), "data after padding");
        assert!(b64_decode("Zm 8=").is_none());
    }

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("app%3Dfoo%2Cx+in+(a)"), "app=foo,x in (a)");
        assert_eq!(url_decode("100%"), "100%");
    }

    #[test]
    fn uuid_shape() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
