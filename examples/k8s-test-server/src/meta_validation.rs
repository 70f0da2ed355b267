//! `metadata` validation every kind gets (apimachinery `api/validation/objectmeta.go`): on
//! create the name (and generateName prefix) by the kind's name rule, on every write the
//! labels and annotations.

use serde_json::Value;
use std::collections::BTreeSet;

use crate::field_errors::FieldError;
use crate::go_values::{self, Errors};
use crate::name_rules;
use crate::resources::ResourceType;

/// `TotalAnnotationSizeLimitB`: keys plus values, in bytes.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// Which `ValidateNameFunc` a kind's validation passes to `ValidateObjectMeta`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// Namespaces (`ValidateNamespaceName`).
    Dns1123Label,
    /// Services (`ValidateServiceName`).
    Dns1035Label,
    /// Roles and bindings (`ValidateRBACName`, which ignores the prefix flag).
    PathSegment,
    /// Everything else here, custom resources included.
    Dns1123Subdomain,
    /// CRDs: their own rule (`plural.group`), checked with their defaults.
    Own,
}

pub(crate) fn name_rule(rt: &ResourceType) -> NameRule {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => NameRule::Dns1123Label,
        ("", "services") => NameRule::Dns1035Label,
        ("rbac.authorization.k8s.io", _) => NameRule::PathSegment,
        ("apiextensions.k8s.io", "customresourcedefinitions") => NameRule::Own,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// `maskTrailingDash`: a generateName may end in '-' (the suffix follows). Go replaces the
/// last two bytes with "a"; kept, since it decides which prefixes pass.
fn mask_trailing_dash(prefix: &str) -> String {
    match prefix.strip_suffix('-') {
        Some(rest) => {
            let mut cut = rest.len().saturating_sub(1);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}a", &rest[..cut])
        }
        None => prefix.to_string(),
    }
}

/// The rule's messages for a name, or for a generateName prefix.
pub(crate) fn name_messages(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    let masked;
    let name = if prefix && rule != NameRule::PathSegment {
        masked = mask_trailing_dash(name);
        masked.as_str()
    } else {
        name
    };
    match rule {
        NameRule::Dns1123Label => name_rules::dns1123_label(name),
        NameRule::Dns1035Label => name_rules::dns1035_label(name),
        NameRule::PathSegment => name_rules::path_segment_name(name),
        NameRule::Dns1123Subdomain => name_rules::dns1123_subdomain(name),
        NameRule::Own => Vec::new(),
    }
}

fn string_map(meta: &Value, field: &str) -> Vec<(String, String)> {
    meta.get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// The metadata errors of a create (`create`: name and generateName too) or an update.
pub(crate) fn object_meta(rt: &ResourceType, obj: &Value, create: bool) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let meta = obj.get("metadata").unwrap_or(&Value::Null);
    let text = |f: &str| meta.get(f).and_then(Value::as_str).unwrap_or("");
    if create {
        let rule = name_rule(rt);
        let generate = text("generateName");
        if !generate.is_empty() {
            for m in name_messages(rule, generate, true) {
                errs.push(FieldError::invalid("metadata.generateName", generate, &m));
            }
        }
        let name = text("name");
        if name.is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        } else {
            for m in name_messages(rule, name, false) {
                errs.push(FieldError::invalid("metadata.name", name, &m));
            }
        }
    }
    for (k, v) in string_map(meta, "labels") {
        for m in name_rules::qualified_name(&k) {
            errs.push(FieldError::invalid("metadata.labels", k.as_str(), &m));
        }
        for m in name_rules::label_value(&v) {
            errs.push(FieldError::invalid("metadata.labels", v.as_str(), &m));
        }
    }
    let annotations = string_map(meta, "annotations");
    for (k, _) in &annotations {
        // Annotation keys are qualified names in any case.
        for m in name_rules::qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid("metadata.annotations", k.as_str(), &m));
        }
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > ANNOTATIONS_MAX_BYTES {
        errs.push(FieldError::too_long(
            "metadata.annotations",
            ANNOTATIONS_MAX_BYTES,
        ));
    }
    errs
}

/// A `metav1.Time` as Go's `time.Time.String` prints it (`2026-12-05 12:28:00 +0000 UTC`;
/// the API server decodes times into its local zone, UTC), the string itself if it is no
/// RFC 3339 time.
fn go_time(v: &Value) -> String {
    let s = v.as_str().unwrap_or("");
    match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => {
            let t = t.to_offset(time::UtcOffset::UTC);
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => s.to_string(),
    }
}

/// The metadata checks of an update (`ValidateObjectMetaAccessorUpdate`,
/// `apimachinery/pkg/api/validation/objectmeta.go`), in its order: no new finalizers once
/// the object is being deleted (`ValidateNoNewFinalizers`), then `deletionTimestamp` and
/// `deletionGracePeriodSeconds` immutable (`ValidateImmutableField`; an update already kept
/// the old ones where they were set, as `rest.BeforeUpdate` does).
pub(crate) fn object_meta_update(obj: &Value, old: &Value) -> Errors {
    let mut errs = Errors::default();
    let finalizers = |o: &Value| -> BTreeSet<String> {
        o.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect()
    };
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        let before = finalizers(old);
        let extra: Vec<Value> = finalizers(obj)
            .difference(&before)
            .map(|f| Value::String(f.clone()))
            .collect();
        if !extra.is_empty() {
            let extra = go_values::string_slice(Some(&Value::Array(extra)));
            errs.push(FieldError::forbidden(
                "metadata.finalizers",
                &format!(
                    "no new finalizers can be added if the object is being deleted, found new finalizers {extra}"
                ),
            ));
        }
    }
    let (new_ts, old_ts) = (
        obj.pointer("/metadata/deletionTimestamp"),
        old.pointer("/metadata/deletionTimestamp"),
    );
    if let Some(ts) = new_ts
        && new_ts != old_ts
    {
        errs.invalid_printed(
            "metadata.deletionTimestamp",
            go_time(ts),
            "field is immutable",
        );
    }
    let grace = |o: &Value| o.pointer("/metadata/deletionGracePeriodSeconds").cloned();
    if grace(obj) != grace(old) {
        match grace(obj).and_then(|g| g.as_i64()) {
            Some(g) => errs.push(FieldError::invalid(
                "metadata.deletionGracePeriodSeconds",
                g,
                "field is immutable",
            )),
            None => errs.invalid_printed(
                "metadata.deletionGracePeriodSeconds",
                "null".into(),
                "field is immutable",
            ),
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtins;
    use serde_json::json;

    fn rt(group: &str, plural: &str) -> ResourceType {
        builtins()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural)
            .expect("built-in type")
    }

    fn messages(errs: &[FieldError]) -> Vec<String> {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.body()))
            .collect()
    }

    #[test]
    fn names_follow_the_kinds_rule() {
        let named = |n: &str| json!({"metadata": {"name": n}});
        let svc = rt("", "services");
        assert!(object_meta(&svc, &named("web-1"), true).is_empty());
        assert_eq!(
            messages(&object_meta(&svc, &named("9bad"), true)),
            [format!(
                "metadata.name: Invalid value: \"9bad\": {}",
                name_rules::dns1035_label("9bad")[0]
            )]
        );
        let ns = rt("", "namespaces");
        assert_eq!(
            messages(&object_meta(&ns, &named("a.b"), true)),
            ["metadata.name: Invalid value: \"a.b\": must not contain dots"]
        );
        let secrets = rt("", "secrets");
        assert!(object_meta(&secrets, &named("a.b"), true).is_empty());
        assert_eq!(object_meta(&secrets, &named("A"), true).len(), 1);
        let roles = rt("rbac.authorization.k8s.io", "clusterroles");
        assert!(object_meta(&roles, &named("system:discovery"), true).is_empty());
        assert_eq!(
            messages(&object_meta(&roles, &named(".."), true)),
            ["metadata.name: Invalid value: \"..\": may not be '..'"]
        );
        // Names are only checked on create.
        assert!(object_meta(&svc, &named("9bad"), false).is_empty());
        assert_eq!(
            messages(&object_meta(&svc, &json!({"metadata": {}}), true)),
            ["metadata.name: Required value: name or generateName is required"]
        );
    }

    #[test]
    fn generate_name_prefixes_may_end_in_a_dash() {
        let svc = rt("", "services");
        let generated = |g: &str, n: &str| json!({"metadata": {"generateName": g, "name": n}});
        assert!(object_meta(&svc, &generated("web-", "web-x7k2p"), true).is_empty());
        let errs = object_meta(&svc, &generated("Web-", "Web-x7k2p"), true);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "metadata.generateName");
        assert_eq!(mask_trailing_dash("-"), "a");
        assert_eq!(mask_trailing_dash("ab-"), "aa");
    }

    #[test]
    fn labels_and_annotations() {
        let cm = rt("", "configmaps");
        let o = json!({"metadata": {"name": "c",
            "labels": {"app": "x".repeat(64), "a/b/c": "ok", "example.com/ok": ""},
            "annotations": {"Example.COM/Key": "v", "bad key": "v"}}});
        let m = messages(&object_meta(&cm, &o, false));
        assert_eq!(m.len(), 3, "{m:#?}");
        assert!(m[0].starts_with("metadata.labels: Invalid value: \"a/b/c\": a qualified name"));
        assert_eq!(
            m[1],
            format!(
                "metadata.labels: Invalid value: \"{}\": must be no more than 63 characters",
                "x".repeat(64)
            )
        );
        assert!(m[2].starts_with("metadata.annotations: Invalid value: \"bad key\": name part"));
        let big = json!({"metadata": {"name": "c", "annotations": {"k": "v".repeat(256 * 1024)}}});
        assert_eq!(
            messages(&object_meta(&cm, &big, false)),
            ["metadata.annotations: Too long: must have at most 262144 bytes"]
        );
    }
}
