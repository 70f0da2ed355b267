//! Secret and ConfigMap validation (kubernetes `pkg/apis/core/validation`: `ValidateSecret`,
//! `ValidateSecretUpdate`, `ValidateConfigMap`, `ValidateConfigMapUpdate`): data keys are
//! config keys, at most 1 MiB of data, required keys by Secret type, and the update rules
//! (`type` and `immutable: true` contents are frozen).

use serde_json::{Map, Value};

use crate::field_errors::FieldError;
use crate::name_rules;
use crate::util;

/// `core.MaxSecretSize`, also the ConfigMap limit.
const MAX_DATA_BYTES: usize = 1024 * 1024;
const FROZEN: &str = "field is immutable when `immutable` is set";

fn map<'a>(obj: &'a Value, field: &str) -> impl Iterator<Item = (&'a String, &'a Value)> {
    obj.get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(Map::iter)
}

/// The decoded size of a base64 `[]byte` value (malformed base64 was refused earlier).
fn decoded_len(v: &Value) -> usize {
    let s = v.as_str().unwrap_or("");
    util::b64_decode(s).map_or(s.len(), |b| b.len())
}

fn key_errors(field: &str, key: &str, errs: &mut Vec<FieldError>) {
    for m in name_rules::config_map_key(key) {
        errs.push(FieldError::invalid(&format!("{field}[{key}]"), key, &m));
    }
}

fn is_immutable(obj: &Value) -> bool {
    obj.get("immutable") == Some(&Value::Bool(true))
}

/// An absent map and an empty one are the same data.
fn same_map(a: &Value, b: &Value, field: &str) -> bool {
    let get = |o: &Value| o.get(field).filter(|v| !v.is_null()).cloned();
    let empty = Value::Object(Map::new());
    get(a).unwrap_or(empty.clone()) == get(b).unwrap_or(empty)
}

/// `immutable: true` freezes itself and the data fields.
fn frozen(obj: &Value, old: &Value, fields: &[&str], errs: &mut Vec<FieldError>) {
    if !is_immutable(old) {
        return;
    }
    if !is_immutable(obj) {
        errs.push(FieldError::forbidden("immutable", FROZEN));
    }
    for f in fields {
        if !same_map(obj, old, f) {
            errs.push(FieldError::forbidden(f, FROZEN));
        }
    }
}

/// A Secret's errors; `old` is the stored object on an update.
pub(crate) fn secret(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let ty = obj.get("type").and_then(Value::as_str).unwrap_or("");
    if let Some(old) = old {
        let old_ty = old.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != old_ty {
            errs.push(FieldError::invalid("type", ty, "field is immutable"));
        }
        frozen(obj, old, &["data"], &mut errs);
    }
    let mut total = 0usize;
    for (k, v) in map(obj, "data") {
        key_errors("data", k, &mut errs);
        total = total.saturating_add(decoded_len(v));
    }
    if total > MAX_DATA_BYTES {
        errs.push(FieldError::too_long("data", MAX_DATA_BYTES));
    }
    let has = |k: &str| obj.get("data").and_then(|d| d.get(k)).is_some();
    match ty {
        "kubernetes.io/service-account-token" => {
            let sa = obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if sa.is_empty() {
                errs.push(FieldError::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/tls" => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    errs.push(FieldError::required(&format!("data[{k}]"), ""));
                }
            }
        }
        _ => {}
    }
    errs
}

/// A ConfigMap's errors; `old` is the stored object on an update.
pub(crate) fn config_map(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(old) = old {
        frozen(obj, old, &["data", "binaryData"], &mut errs);
    }
    let binary = obj.get("binaryData").and_then(Value::as_object);
    let mut total = 0usize;
    for (k, v) in map(obj, "data") {
        key_errors("data", k, &mut errs);
        if binary.is_some_and(|b| b.contains_key(k)) {
            let field = format!("data[{k}]");
            errs.push(FieldError::invalid(
                &field,
                k.as_str(),
                "duplicate of key present in binaryData",
            ));
        }
        total = total.saturating_add(v.as_str().map_or(0, str::len));
    }
    for (k, v) in map(obj, "binaryData") {
        key_errors("binaryData", k, &mut errs);
        total = total.saturating_add(decoded_len(v));
    }
    if total > MAX_DATA_BYTES {
        // Go's field.NewPath("") prints as "[]": the error is about the whole object.
        errs.push(FieldError::too_long("[]", MAX_DATA_BYTES));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.body()))
            .collect()
    }

    #[test]
    fn secret_keys_size_and_types() {
        let s = json!({"type": "Opaque", "data": {"ok.key": "eA==", "a/b": "eA=="}});
        let l = lines(&secret(&s, None));
        assert_eq!(l.len(), 1);
        assert!(
            l[0].starts_with("data[a/b]: Invalid value: \"a/b\": a valid config key"),
            "{l:?}"
        );
        // Exactly 1 MiB decoded is fine, one more byte is not.
        let fill = |n: usize| util::b64(&vec![0u8; n]);
        let at_limit = json!({"type": "Opaque", "data": {"a": fill(1 << 19), "b": fill(1 << 19)}});
        assert!(secret(&at_limit, None).is_empty());
        let over = json!({"type": "Opaque", "data": {"a": fill((1 << 20) + 1)}});
        assert_eq!(
            lines(&secret(&over, None)),
            ["data: Too long: must have at most 1048576 bytes"]
        );
        let tls = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        assert_eq!(
            lines(&secret(&tls, None)),
            ["data[tls.key]: Required value"]
        );
        let sa = json!({"type": "kubernetes.io/service-account-token"});
        assert_eq!(
            lines(&secret(&sa, None)),
            ["metadata.annotations[kubernetes.io/service-account.name]: Required value"]
        );
    }

    #[test]
    fn secret_updates_keep_type_and_immutable_data() {
        let old = json!({"type": "Opaque", "immutable": true, "data": {"a": "eA=="}});
        assert!(secret(&old, Some(&old)).is_empty());
        let new = json!({"type": "kubernetes.io/tls", "data": {"a": "eQ==", "tls.crt": "", "tls.key": ""}});
        assert_eq!(
            lines(&secret(&new, Some(&old))),
            [
                "type: Invalid value: \"kubernetes.io/tls\": field is immutable",
                "immutable: Forbidden: field is immutable when `immutable` is set",
                "data: Forbidden: field is immutable when `immutable` is set",
            ]
        );
        // Metadata-only changes of an immutable Secret are fine.
        let relabeled = json!({"type": "Opaque", "immutable": true, "data": {"a": "eA=="},
            "metadata": {"labels": {"x": "y"}}});
        assert!(secret(&relabeled, Some(&old)).is_empty());
    }

    #[test]
    fn config_maps() {
        let cm =
            json!({"data": {"k": "v", "..x": "v"}, "binaryData": {"k": "eA==", "b/c": "eA=="}});
        let l = lines(&config_map(&cm, None));
        assert_eq!(l.len(), 3, "{l:#?}");
        assert_eq!(
            l[0],
            "data[..x]: Invalid value: \"..x\": must not start with '..'"
        );
        assert_eq!(
            l[1],
            "data[k]: Invalid value: \"k\": duplicate of key present in binaryData"
        );
        assert!(l[2].starts_with("binaryData[b/c]: Invalid value: \"b/c\""));
        let big = json!({"data": {"a": "x".repeat(1 << 20)}, "binaryData": {"b": "eA=="}});
        assert_eq!(
            lines(&config_map(&big, None)),
            ["[]: Too long: must have at most 1048576 bytes"]
        );
        let old = json!({"immutable": true, "data": {"a": "1"}});
        let new = json!({"immutable": true, "data": {"a": "2"}, "binaryData": {}});
        assert_eq!(
            lines(&config_map(&new, Some(&old))),
            ["data: Forbidden: field is immutable when `immutable` is set"]
        );
    }
}
