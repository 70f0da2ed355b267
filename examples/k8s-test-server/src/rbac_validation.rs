//! RBAC object validation (kubernetes `pkg/apis/rbac/validation/validation.go`): a role's
//! rules (`validatePolicyRule`), a binding's roleRef and subjects
//! (`ValidateRoleBinding`, `ValidateClusterRoleBinding`, `validateRoleBindingSubject`), and
//! on update a roleRef that may not change (`ValidateClusterRoleBindingUpdate`: "cannot
//! change roleRef"; the binding must be deleted and created again).

use serde_json::Value;

use crate::field_errors::FieldError;
use crate::go_values::{self, Errors};
use crate::name_rules;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The rules of a Role (`namespaced`) or ClusterRole.
pub(crate) fn role(obj: &Value, namespaced: bool) -> Errors {
    let mut errs = Errors::default();
    let rules = obj.get("rules").and_then(Value::as_array);
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        let len = |k: &str| strs(rule.get(k)).len();
        if len("verbs") == 0 {
            errs.push(FieldError::required(
                &at("verbs"),
                "verbs must contain at least one value",
            ));
        }
        let urls = strs(rule.get("nonResourceURLs"));
        if !urls.is_empty() {
            let printed = || go_values::string_slice(rule.get("nonResourceURLs"));
            if namespaced {
                errs.invalid_printed(
                    &at("nonResourceURLs"),
                    printed(),
                    "namespaced rules cannot apply to non-resource URLs",
                );
            }
            if len("apiGroups") + len("resources") + len("resourceNames") > 0 {
                errs.invalid_printed(
                    &at("nonResourceURLs"),
                    printed(),
                    "rules cannot apply to both regular resources and non-resource URLs",
                );
            }
            continue;
        }
        if len("apiGroups") == 0 {
            errs.push(FieldError::required(
                &at("apiGroups"),
                "resource rules must supply at least one api group",
            ));
        }
        if len("resources") == 0 {
            errs.push(FieldError::required(
                &at("resources"),
                "resource rules must supply at least one resource",
            ));
        }
        if len("resourceNames") > 0 && len("resources") > 1 {
            errs.push(FieldError::required(
                &at("resourceNames"),
                "resource names cannot apply to multiple resources",
            ));
        }
    }
    errs
}

/// A RoleBinding (`namespaced`) or ClusterRoleBinding; `old` is the stored object of an
/// update.
pub(crate) fn binding(obj: &Value, old: Option<&Value>, namespaced: bool) -> Errors {
    let mut errs = Errors::default();
    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
    let group = s(role_ref, "apiGroup");
    if group != RBAC_GROUP {
        errs.push(FieldError::not_supported(
            "roleRef.apiGroup",
            group,
            &[RBAC_GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    let kind = s(role_ref, "kind");
    if !kinds.contains(&kind) {
        errs.push(FieldError::not_supported("roleRef.kind", kind, kinds));
    }
    let name = s(role_ref, "name");
    if name.is_empty() {
        errs.push(FieldError::required("roleRef.name", ""));
    }
    for m in name_rules::path_segment_name(name) {
        errs.push(FieldError::invalid("roleRef.name", name, &m));
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, sub) in subjects.into_iter().flatten().enumerate() {
        errs.extend(subject(sub, namespaced, &format!("subjects[{i}]")));
    }
    if let Some(old) = old {
        let was = old.get("roleRef").unwrap_or(&Value::Null);
        let fields = ["apiGroup", "kind", "name"];
        if fields.iter().any(|k| s(role_ref, k) != s(was, k)) {
            errs.invalid_printed(
                "roleRef",
                go_values::role_ref(role_ref),
                "cannot change roleRef",
            );
        }
    }
    errs
}

/// `validateRoleBindingSubject`, after v1 defaulting (`SetDefaults_Subject`: an empty
/// apiGroup of a User or Group is rbac.authorization.k8s.io).
fn subject(sub: &Value, namespaced: bool, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let at = |f: &str| format!("{path}.{f}");
    let name = s(sub, "name");
    let group = s(sub, "apiGroup");
    if name.is_empty() {
        errs.push(FieldError::required(&at("name"), ""));
    }
    match s(sub, "kind") {
        "ServiceAccount" => {
            if !name.is_empty() {
                for m in name_rules::dns1123_subdomain(name) {
                    errs.push(FieldError::invalid(&at("name"), name, &m));
                }
            }
            if !group.is_empty() {
                errs.push(FieldError::not_supported(&at("apiGroup"), group, &[""]));
            }
            if !namespaced && s(sub, "namespace").is_empty() {
                errs.push(FieldError::required(&at("namespace"), ""));
            }
        }
        kind @ ("User" | "Group") => {
            if name.is_empty() {
                let what = if kind == "User" { "user" } else { "group" };
                let msg = format!("{what} name cannot be empty");
                errs.push(FieldError::invalid(&at("name"), name, &msg));
            }
            if !group.is_empty() && group != RBAC_GROUP {
                errs.push(FieldError::not_supported(
                    &at("apiGroup"),
                    group,
                    &[RBAC_GROUP],
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            &at("kind"),
            other,
            &["ServiceAccount", "User", "Group"],
        )),
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(list: &[FieldError], printed: &[String]) -> Vec<String> {
        list.iter()
            .map(|e| {
                let mut l = format!("{}: {}", e.field, e.body());
                for p in printed {
                    l = l.replace(&crate::field_errors::go_quote(p), p);
                }
                l
            })
            .collect()
    }

    fn crb(role: &str) -> Value {
        json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "gw", "namespace": "istio-system"},
                {"kind": "Group", "name": "system:masters"}]})
    }

    #[test]
    fn bindings_check_role_ref_and_subjects() {
        assert!(binding(&crb("r"), None, false).list.is_empty());
        let bad = json!({"roleRef": {"kind": "Role", "name": "a/b"},
            "subjects": [{"kind": "ServiceAccount", "name": "Gw", "apiGroup": "x"},
                {"kind": "User", "apiGroup": "x"}, {"kind": "Robot", "name": "r"}]});
        let e = binding(&bad, None, false);
        assert_eq!(
            lines(&e.list, &e.printed),
            [
                "roleRef.apiGroup: Unsupported value: \"\": supported values: \"rbac.authorization.k8s.io\"",
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "roleRef.name: Invalid value: \"a/b\": may not contain '/'",
                "subjects[0].name: Invalid value: \"Gw\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                "subjects[0].apiGroup: Unsupported value: \"x\": supported values: \"\"",
                "subjects[0].namespace: Required value",
                "subjects[1].name: Required value",
                "subjects[1].name: Invalid value: \"\": user name cannot be empty",
                "subjects[1].apiGroup: Unsupported value: \"x\": supported values: \"rbac.authorization.k8s.io\"",
                "subjects[2].kind: Unsupported value: \"Robot\": supported values: \"ServiceAccount\", \"User\", \"Group\"",
            ]
        );
        // A RoleBinding may name a Role, and its ServiceAccounts default to its namespace.
        let rb = json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "gw"}]});
        assert!(binding(&rb, None, true).list.is_empty());
    }

    #[test]
    fn role_ref_cannot_change() {
        let e = binding(&crb("new"), Some(&crb("old")), false);
        assert_eq!(
            lines(&e.list, &e.printed),
            [
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"new\"}: cannot change roleRef"
            ]
        );
        assert!(
            binding(&crb("old"), Some(&crb("old")), false)
                .list
                .is_empty()
        );
    }

    #[test]
    fn role_rules() {
        let ok = json!({"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
            {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]});
        assert!(role(&ok, false).list.is_empty());
        let bad = json!({"rules": [{"resources": ["a", "b"], "resourceNames": ["n"]}]});
        let e = role(&bad, true);
        assert_eq!(
            lines(&e.list, &e.printed),
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[0].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[0].resourceNames: Required value: resource names cannot apply to multiple resources",
            ]
        );
        let urls =
            json!({"rules": [{"nonResourceURLs": ["/x"], "apiGroups": [""], "verbs": ["get"]}]});
        let e = role(&urls, true);
        assert_eq!(
            lines(&e.list, &e.printed),
            [
                "rules[0].nonResourceURLs: Invalid value: []string{\"/x\"}: namespaced rules cannot apply to non-resource URLs",
                "rules[0].nonResourceURLs: Invalid value: []string{\"/x\"}: rules cannot apply to both regular resources and non-resource URLs",
            ]
        );
    }
}
