//! Validation of access reviews as `pkg/apis/authorization/validation` does it
//! (`ValidateSubjectAccessReview`, `ValidateSelfSubjectAccessReview`), every error collected
//! into one 422 (`NewInvalid` with the kind and an empty name, `subjectaccessreview/rest.go`):
//! exactly one of `resourceAttributes` and `nonResourceAttributes`; for a
//! SubjectAccessReview a user or a group; and empty metadata but for `managedFields` (a
//! review is never stored, so a name or labels mean a mistaken client).

use serde_json::Value;

use crate::error::ApiError;
use crate::field_errors;
use crate::field_errors::go_quote;
use crate::go_values::{self, Errors, string_map, string_slice};

/// The review's errors, as the API server orders them; `names_subject` for a
/// SubjectAccessReview (which must name a user or a group).
pub(crate) fn validate(body: &Value, kind: &str, names_subject: bool) -> Result<(), ApiError> {
    let present = |p: &str| body.pointer(p).is_some_and(|v| !v.is_null());
    let mut errs = Errors::default();
    let non_resource = body.pointer("/spec/nonResourceAttributes");
    match (
        present("/spec/resourceAttributes"),
        present("/spec/nonResourceAttributes"),
    ) {
        (true, true) => errs.invalid_printed(
            "spec.nonResourceAttributes",
            non_resource_attributes(non_resource.unwrap_or(&Value::Null)),
            "cannot be specified in combination with resourceAttributes",
        ),
        // The value shown is the absent nonResourceAttributes: Go prints a nil pointer as
        // the string "null".
        (false, false) => errs.push(field_errors::FieldError::invalid(
            "spec.resourceAttributes",
            "null",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        _ => {}
    }
    if names_subject {
        let user = body
            .pointer("/spec/user")
            .and_then(Value::as_str)
            .unwrap_or("");
        let groups = body
            .pointer("/spec/groups")
            .and_then(Value::as_array)
            .is_some_and(|g| !g.is_empty());
        if user.is_empty() && !groups {
            errs.push(field_errors::FieldError::invalid(
                "spec.user",
                user,
                "at least one of user or group must be specified",
            ));
        }
    }
    if let Some(meta) = body.get("metadata").and_then(Value::as_object)
        && meta
            .iter()
            .any(|(k, v)| k != "managedFields" && !is_zero(v))
    {
        errs.invalid_printed(
            "metadata",
            object_meta(body["metadata"].clone()),
            "must be empty",
        );
    }
    let printed = std::mem::take(&mut errs.printed);
    field_errors::into_result("authorization.k8s.io", kind, "", errs.list)
        .map_err(|e| go_values::unquote(e, &printed))
}

/// Whether Go's semantic equality takes `v` for its type's zero value (nil and empty maps
/// and slices are equal there).
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// `%#v` of the internal `authorization.NonResourceAttributes`.
fn non_resource_attributes(v: &Value) -> String {
    let s = |k: &str| go_quote(v.get(k).and_then(Value::as_str).unwrap_or(""));
    format!(
        "authorization.NonResourceAttributes{{Path:{}, Verb:{}}}",
        s("path"),
        s("verb")
    )
}

/// `%#v` of a `v1.ObjectMeta`. Its owner references and managed fields are abbreviated to
/// `{…}` when present, and a set timestamp to its RFC 3339 text: Go prints every field of
/// those.
fn object_meta(meta: Value) -> String {
    let s = |k: &str| go_quote(meta.get(k).and_then(Value::as_str).unwrap_or(""));
    let int = |k: &str| meta.get(k).and_then(Value::as_i64).unwrap_or(0);
    let list = |k: &str, ty: &str| match meta.get(k).and_then(Value::as_array) {
        Some(a) if !a.is_empty() => format!("[]{ty}{{…}}"),
        Some(_) => format!("[]{ty}{{}}"),
        None => format!("[]{ty}(nil)"),
    };
    let created = match meta.get("creationTimestamp").and_then(Value::as_str) {
        Some(t) => format!("v1.Time{{Time:{t}}}"),
        None => "v1.Time{Time:time.Date(1, time.January, 1, 0, 0, 0, 0, time.UTC)}".into(),
    };
    let deleted = match meta.get("deletionTimestamp").and_then(Value::as_str) {
        Some(t) => format!("&v1.Time{{Time:{t}}}"),
        None => "<nil>".into(),
    };
    let grace = match meta
        .get("deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
    {
        Some(n) => format!("(*int64)({n})"),
        None => "(*int64)(nil)".into(),
    };
    format!(
        "v1.ObjectMeta{{Name:{}, GenerateName:{}, Namespace:{}, SelfLink:{}, UID:{}, \
         ResourceVersion:{}, Generation:{}, CreationTimestamp:{created}, \
         DeletionTimestamp:{deleted}, DeletionGracePeriodSeconds:{grace}, Labels:{}, \
         Annotations:{}, OwnerReferences:{}, Finalizers:{}, ManagedFields:{}}}",
        s("name"),
        s("generateName"),
        s("namespace"),
        s("selfLink"),
        s("uid"),
        s("resourceVersion"),
        int("generation"),
        string_map(meta.get("labels")),
        string_map(meta.get("annotations")),
        list("ownerReferences", "v1.OwnerReference"),
        string_slice(meta.get("finalizers")),
        list("managedFields", "v1.ManagedFieldsEntry"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(body: Value, subject: bool) -> (String, Vec<(String, String)>) {
        let e = validate(&body, "SubjectAccessReview", subject).unwrap_err();
        let s = e.to_status();
        let causes = s["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let f = |k: &str| c[k].as_str().unwrap().to_string();
                (f("field"), f("message"))
            })
            .collect();
        (s["message"].as_str().unwrap().to_string(), causes)
    }

    #[test]
    fn every_error_is_reported_in_the_servers_order() {
        let (message, c) = causes(json!({"metadata": {"name": "x"}, "spec": {}}), true);
        let fields: Vec<&str> = c.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["spec.resourceAttributes", "spec.user", "metadata"]);
        assert_eq!(
            c[0].1,
            "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"
        );
        assert_eq!(
            c[1].1,
            "Invalid value: \"\": at least one of user or group must be specified"
        );
        assert!(
            c[2].1
                .starts_with("Invalid value: v1.ObjectMeta{Name:\"x\", GenerateName:\"\", ")
                && c[2]
                    .1
                    .ends_with("ManagedFields:[]v1.ManagedFieldsEntry(nil)}: must be empty"),
            "{}",
            c[2].1
        );
        assert!(
            message.starts_with(
                "SubjectAccessReview.authorization.k8s.io \"\" is invalid: [spec.resourceAttributes: "
            ),
            "{message}"
        );
    }

    #[test]
    fn both_kinds_of_attributes_show_the_non_resource_ones() {
        let body = json!({"spec": {"user": "u", "resourceAttributes": {"verb": "get"},
            "nonResourceAttributes": {"path": "/healthz", "verb": "get"}}});
        let (_, c) = causes(body, true);
        assert_eq!(
            c,
            [(
                "spec.nonResourceAttributes".to_string(),
                "Invalid value: authorization.NonResourceAttributes{Path:\"/healthz\", Verb:\"get\"}: cannot be specified in combination with resourceAttributes".to_string()
            )]
        );
    }

    #[test]
    fn empty_metadata_and_managed_fields_pass() {
        let attrs = json!({"verb": "get", "resource": "pods"});
        for meta in [
            json!({}),
            json!({"name": "", "labels": {}, "creationTimestamp": null}),
            json!({"managedFields": [{"manager": "m"}]}),
        ] {
            let body =
                json!({"metadata": meta, "spec": {"groups": ["g"], "resourceAttributes": attrs}});
            assert!(
                validate(&body, "SubjectAccessReview", true).is_ok(),
                "{meta}"
            );
        }
        // A SelfSubjectAccessReview names no subject.
        let own = json!({"spec": {"resourceAttributes": attrs}});
        assert!(validate(&own, "SelfSubjectAccessReview", false).is_ok());
        let named =
            json!({"metadata": {"generateName": "r-"}, "spec": {"resourceAttributes": attrs}});
        assert!(validate(&named, "SelfSubjectAccessReview", false).is_err());
    }
}
