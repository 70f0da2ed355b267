//! Hiding private keys in printed objects. Every `--dry-run` and `-o yaml|json` rendering
//! goes through here; only `--show-secrets` prints keys.

use base64::Engine as _;
use serde_json::{Value, json};

/// What a redacted private key is printed as.
pub const REDACTED_KEY: &str = "<redacted private key: pass --show-secrets to print it>";

/// Whether printed objects may carry private keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Secrets {
    #[default]
    Redact,
    Show,
}

impl Secrets {
    pub fn from_flag(show_secrets: bool) -> Secrets {
        if show_secrets {
            Secrets::Show
        } else {
            Secrets::Redact
        }
    }
}

/// `objs` with every private key in a Secret's `data` or `stringData` replaced.
pub fn redact(objs: &[Value], secrets: Secrets) -> Vec<Value> {
    let mut objs = objs.to_vec();
    if secrets == Secrets::Redact {
        objs.iter_mut().for_each(redact_secret);
    }
    objs
}

fn redact_secret(obj: &mut Value) {
    if obj["kind"] != "Secret" {
        return;
    }
    if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
        for (name, v) in data.iter_mut() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_default();
            if is_key(name, &decoded) {
                *v = json!(REDACTED_KEY);
            }
        }
    }
    if let Some(data) = obj.get_mut("stringData").and_then(Value::as_object_mut) {
        for (name, v) in data.iter_mut() {
            if is_key(name, v.as_str().unwrap_or_default().as_bytes()) {
                *v = json!(REDACTED_KEY);
            }
        }
    }
}

/// A PEM private key (any `... PRIVATE KEY` block), or an entry named like one.
fn is_key(name: &str, bytes: &[u8]) -> bool {
    const MARK: &[u8] = b"PRIVATE KEY-----";
    name.ends_with("key.pem")
        || name.ends_with(".key")
        || bytes.windows(MARK.len()).any(|w| w == MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_data_and_string_data_are_redacted_unless_shown() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let key = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        let objs = vec![
            json!({"kind": "Secret", "data": {"ca-key.pem": b64(key), "ca-cert.pem": b64("CERT"),
                "other": b64(key)}, "stringData": {"tls.key": "x", "kubeconfig": "token: t"}}),
            json!({"kind": "ConfigMap", "data": {"ca-key.pem": "kept"}}),
        ];
        let out = redact(&objs, Secrets::Redact);
        assert_eq!(out[0]["data"]["ca-key.pem"], REDACTED_KEY);
        assert_eq!(out[0]["data"]["other"], REDACTED_KEY);
        assert_eq!(out[0]["data"]["ca-cert.pem"], b64("CERT"));
        assert_eq!(out[0]["stringData"]["tls.key"], REDACTED_KEY);
        assert_eq!(out[0]["stringData"]["kubeconfig"], "token: t");
        assert_eq!(out[1], objs[1]);
        assert_eq!(redact(&objs, Secrets::Show), objs);
    }
}
