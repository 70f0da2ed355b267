//! Bad values as the real server prints them when they are not strings or numbers: maps and
//! structs go through Go's `%#v` (apimachinery `util/validation/field/errors.go` `ErrorBody`,
//! whose fallback is `%#v`; the generated `String()` methods are on pointer receivers, so a
//! dereferenced `LabelSelector` or `IntOrString` does not reach them). Clients see e.g.
//! `spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"x"},
//! MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable`.
//!
//! `field_errors.rs` quotes every string value, so [`Errors`] remembers which values are
//! printed this way and [`unquote`] takes their quotes off the finished Status.

use serde_json::Value;

use crate::error::ApiError;
use crate::field_errors::{FieldError, go_quote};

/// Field errors, with the values among them that Go prints rather than quotes.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    pub list: Vec<FieldError>,
    pub printed: Vec<String>,
}

impl Errors {
    pub fn push(&mut self, e: FieldError) {
        self.list.push(e);
    }

    pub fn extend(&mut self, errs: impl IntoIterator<Item = FieldError>) {
        self.list.extend(errs);
    }

    pub fn merge(&mut self, more: Errors) {
        self.list.extend(more.list);
        self.printed.extend(more.printed);
    }

    /// `field.Invalid(path, value, detail)` for a value Go prints with `%#v`.
    pub fn invalid_printed(&mut self, field: &str, printed: String, detail: &str) {
        self.list
            .push(FieldError::invalid(field, printed.as_str(), detail));
        self.printed.push(printed);
    }
}

/// Removes the quotes `field_errors` put around printed values, in the message and causes.
pub(crate) fn unquote(mut e: ApiError, printed: &[String]) -> ApiError {
    for p in printed {
        let quoted = go_quote(p);
        e.message = e.message.replace(&quoted, p);
        let causes = e
            .details
            .as_mut()
            .and_then(|d| d.get_mut("causes"))
            .and_then(Value::as_array_mut);
        for c in causes.into_iter().flatten() {
            if let Some(m) = c.get("message").and_then(Value::as_str) {
                c["message"] = Value::String(m.replace(&quoted, p));
            }
        }
    }
    e
}

/// `%#v` of a `map[string]string`: keys sorted (as `fmt` sorts them), `(nil)` when absent.
pub(crate) fn string_map(v: Option<&Value>) -> String {
    let Some(m) = v.and_then(Value::as_object) else {
        return "map[string]string(nil)".into();
    };
    let mut pairs: Vec<(&String, &str)> = m
        .iter()
        .map(|(k, v)| (k, v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", go_quote(k), go_quote(v)))
        .collect();
    format!("map[string]string{{{}}}", body.join(", "))
}

/// `%#v` of a `[]string`, `(nil)` when absent.
pub(crate) fn string_slice(v: Option<&Value>) -> String {
    let Some(a) = v.and_then(Value::as_array) else {
        return "[]string(nil)".into();
    };
    let items: Vec<String> = a
        .iter()
        .map(|s| go_quote(s.as_str().unwrap_or("")))
        .collect();
    format!("[]string{{{}}}", items.join(", "))
}

fn str_field(v: &Value, k: &str) -> String {
    go_quote(v.get(k).and_then(Value::as_str).unwrap_or(""))
}

/// `%#v` of a `metav1.LabelSelector` (as `v1.LabelSelector`).
pub(crate) fn label_selector(sel: &Value) -> String {
    let exprs = match sel.get("matchExpressions").and_then(Value::as_array) {
        None => "[]v1.LabelSelectorRequirement(nil)".to_string(),
        Some(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|r| {
                    format!(
                        "v1.LabelSelectorRequirement{{Key:{}, Operator:{}, Values:{}}}",
                        str_field(r, "key"),
                        str_field(r, "operator"),
                        string_slice(r.get("values"))
                    )
                })
                .collect();
            format!("[]v1.LabelSelectorRequirement{{{}}}", items.join(", "))
        }
    };
    format!(
        "v1.LabelSelector{{MatchLabels:{}, MatchExpressions:{exprs}}}",
        string_map(sel.get("matchLabels"))
    )
}

/// `%#v` of the internal `rbac.RoleRef`.
pub(crate) fn role_ref(r: &Value) -> String {
    format!(
        "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
        str_field(r, "apiGroup"),
        str_field(r, "kind"),
        str_field(r, "name")
    )
}

/// `%#v` of an `intstr.IntOrString` (Type 0 for an int, 1 for a string).
pub(crate) fn int_or_string(v: &Value) -> String {
    match v {
        Value::String(s) => format!(
            "intstr.IntOrString{{Type:1, IntVal:0, StrVal:{}}}",
            go_quote(s)
        ),
        other => format!(
            "intstr.IntOrString{{Type:0, IntVal:{}, StrVal:\"\"}}",
            other.as_i64().unwrap_or(0)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_print_like_go_sharp_v() {
        assert_eq!(
            string_map(Some(&json!({"b": "2", "a": "x\"y"}))),
            r#"map[string]string{"a":"x\"y", "b":"2"}"#
        );
        assert_eq!(string_map(None), "map[string]string(nil)");
        assert_eq!(string_map(Some(&json!({}))), "map[string]string{}");
        assert_eq!(
            label_selector(&json!({"matchLabels": {"app": "gw"}})),
            r#"v1.LabelSelector{MatchLabels:map[string]string{"app":"gw"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}"#
        );
        assert_eq!(
            label_selector(
                &json!({"matchExpressions": [{"key": "k", "operator": "In", "values": ["a", "b"]}]})
            ),
            r#"v1.LabelSelector{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement{v1.LabelSelectorRequirement{Key:"k", Operator:"In", Values:[]string{"a", "b"}}}}"#
        );
        assert_eq!(
            role_ref(
                &json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "r"})
            ),
            r#"rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"r"}"#
        );
        assert_eq!(
            int_or_string(&json!("50x")),
            r#"intstr.IntOrString{Type:1, IntVal:0, StrVal:"50x"}"#
        );
        assert_eq!(
            int_or_string(&json!(3)),
            r#"intstr.IntOrString{Type:0, IntVal:3, StrVal:""}"#
        );
    }

    #[test]
    fn printed_values_lose_their_quotes_in_message_and_causes() {
        let printed = string_map(Some(&json!({"app": "x"})));
        let mut errs = Errors::default();
        errs.invalid_printed("spec.x", printed, "bad");
        errs.push(FieldError::invalid("spec.y", "q", "also bad"));
        let e = crate::field_errors::into_result("apps", "Deployment", "d", errs.list).unwrap_err();
        let e = unquote(e, &errs.printed);
        assert_eq!(
            e.message,
            r#"Deployment.apps "d" is invalid: [spec.x: Invalid value: map[string]string{"app":"x"}: bad, spec.y: Invalid value: "q": also bad]"#
        );
        let d = e.details.unwrap();
        assert_eq!(
            d["causes"][0]["message"],
            r#"Invalid value: map[string]string{"app":"x"}: bad"#
        );
        assert_eq!(d["causes"][1]["message"], r#"Invalid value: "q": also bad"#);
    }
}
