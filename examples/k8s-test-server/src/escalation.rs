//! RBAC privilege-escalation prevention on writes of roles and bindings, as kube-apiserver's
//! RBAC storage does it (kubernetes `pkg/registry/rbac/`):
//!
//! - `clusterrole/policybased/storage.go`, `role/policybased/storage.go`: creating or updating
//!   (patch and apply included) a ClusterRole or Role is allowed to `system:masters`
//!   (`escalation_check.go`, `EscalationAllowed`), to a user allowed `escalate` on it
//!   (`RoleEscalationAuthorized`: the request's name and namespace, so none on a create), or
//!   if the user already holds every rule it grants (`validation/rule.go`,
//!   `ConfirmNoEscalation`, over `RulesFor` the role's namespace); an update that only
//!   changes owner references or finalizers is not checked (`IsOnlyMutatingGCFields`). A
//!   ClusterRole with an `aggregationRule` needs `*` on everything.
//! - `clusterrolebinding/policybased/storage.go`, `rolebinding/policybased/storage.go`: a
//!   binding is allowed to `system:masters`, to a user allowed `bind` on the role it names
//!   (`BindingAuthorized`, in the binding's namespace), or if the user holds every rule of
//!   that role (`GetRoleReferenceRules`: a missing role is a 404).
//!
//! On an update the check wraps `UpdatedObject` (`rest.WrapUpdatedObjectInfo`): it sees the
//! patched (or applied) object after the patch and an apply's conflicts, and before the
//! store validates it (`rest.BeforeUpdate`), so an invalid write that escalates is a 403
//! (`handlers.rs` computes that object unvalidated for it).
//!
//! Otherwise the answer is a 403 `Forbidden` naming the missing rules, compacted and sorted
//! as `CompactRules` and `CompactString` print them. "Holds" is decided by `Covers`
//! (`component-helpers/auth/rbac/validation/policy_comparator.go`): each requested rule is
//! broken down to one group, resource, verb and name, and each piece must be covered by one
//! held rule.

use crate::auth::Identity;
use crate::error::ApiError;
use crate::field_errors::go_quote;
use crate::rbac::{self, Attributes};
use crate::store::Store;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// A write of a role or binding: what the request names and the object it would store.
pub(crate) struct RbacWrite<'a> {
    /// `clusterroles`, `roles`, `clusterrolebindings` or `rolebindings`.
    pub resource: &'a str,
    /// The request's namespace ("" for cluster-scoped).
    pub namespace: &'a str,
    /// The name in the URL ("" on a create).
    pub url_name: &'a str,
    /// The object as it would be stored.
    pub new: &'a Value,
    /// The stored object an update replaces.
    pub old: Option<&'a Value>,
}

/// Whether writes of this resource are checked (and for whom).
pub(crate) fn applies(group: &str, resource: &str, sub: Option<&str>, id: &Identity) -> bool {
    group == RBAC_GROUP
        && sub.is_none()
        && matches!(
            resource,
            "clusterroles" | "roles" | "clusterrolebindings" | "rolebindings"
        )
        && !id.groups.iter().any(|g| g == "system:masters")
}

/// `Ok` if `id` may make this write without escalating its privileges; else the 403 (or the
/// 404 of a binding's missing role).
pub(crate) fn check(store: &Store, id: &Identity, w: &RbacWrite<'_>) -> Result<(), ApiError> {
    if id.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    if w.old.is_some_and(|old| only_gc_fields_differ(old, w.new)) {
        return Ok(());
    }
    let name = w
        .new
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let allowed = |verb: &str, resource: &str, namespace: &str, name: &str| {
        let a = Attributes {
            verb: verb.into(),
            group: RBAC_GROUP.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        };
        rbac::authorize(store, id, &a).allowed
    };
    let forbidden = |why: String| forbidden(w.resource, name, why);
    match w.resource {
        "clusterroles" | "roles" => {
            if allowed("escalate", w.resource, w.namespace, w.url_name) {
                return Ok(());
            }
            let held = rbac::rules_for(store, id, w.namespace);
            confirm_no_escalation(id, &held, &rules_of(w.new)).map_err(forbidden)?;
            let aggregates = |o: &Value| {
                o.pointer("/aggregationRule/clusterRoleSelectors")
                    .and_then(Value::as_array)
                    .is_some_and(|s| !s.is_empty())
            };
            if w.resource == "clusterroles" && (aggregates(w.new) || w.old.is_some_and(aggregates))
            {
                let everything = [
                    json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                    json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
                ];
                confirm_no_escalation(id, &held, &everything).map_err(|_| {
                    forbidden(
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    )
                })?;
            }
            Ok(())
        }
        _ => {
            let (kind, role) = rbac::role_ref(w.new);
            let role_resource = match kind {
                "ClusterRole" => "clusterroles",
                "Role" => "roles",
                other => {
                    return Err(ApiError::internal(format!(
                        "unsupported role reference kind: {other:?}"
                    )));
                }
            };
            if allowed("bind", role_resource, w.namespace, role) {
                return Ok(());
            }
            let role_ns = if kind == "Role" {
                Some(w.namespace)
            } else {
                None
            };
            let role_obj = store
                .get(&format!("{RBAC_GROUP}/v1"), kind, role_ns, role)
                .ok_or_else(|| ApiError::not_found(RBAC_GROUP, role_resource, role))?;
            let held = rbac::rules_for(store, id, w.namespace);
            confirm_no_escalation(id, &held, &rules_of(&role_obj)).map_err(forbidden)
        }
    }
}

fn rules_of(obj: &Value) -> Vec<Value> {
    obj.get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `IsOnlyMutatingGCFields`: the objects are equal but for owner references and finalizers
/// (and what every write changes).
fn only_gc_fields_differ(old: &Value, new: &Value) -> bool {
    let strip = |o: &Value| {
        let mut o = o.clone();
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "ownerReferences",
                "finalizers",
                "resourceVersion",
                "managedFields",
            ] {
                m.remove(k);
            }
        }
        o
    };
    strip(old) == strip(new)
}

fn forbidden(resource: &str, name: &str, why: String) -> ApiError {
    let qualified = format!("{resource}.{RBAC_GROUP}");
    let message = if name.is_empty() {
        format!("{qualified} is forbidden: {why}")
    } else {
        format!("{qualified} \"{name}\" is forbidden: {why}")
    };
    let mut e = ApiError::new(403, "Forbidden", message);
    let mut d = json!({"group": RBAC_GROUP, "kind": resource});
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    e.details = Some(d);
    e
}

/// One PolicyRule's lists.
#[derive(Clone, Debug, Default, PartialEq)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    urls: Vec<String>,
    verbs: Vec<String>,
}

impl Rule {
    fn from_json(v: &Value) -> Rule {
        let l = |k: &str| rbac::strs(v, k);
        Rule {
            groups: l("apiGroups"),
            resources: l("resources"),
            names: l("resourceNames"),
            urls: l("nonResourceURLs"),
            verbs: l("verbs"),
        }
    }

    /// `BreakdownRule`: one rule per group × resource × verb (× name), then per URL × verb.
    fn breakdown(&self) -> Vec<Rule> {
        let one = |s: &String| vec![s.clone()];
        let mut out = Vec::new();
        for g in &self.groups {
            for r in &self.resources {
                for v in &self.verbs {
                    let base = Rule {
                        groups: one(g),
                        resources: one(r),
                        verbs: one(v),
                        ..Default::default()
                    };
                    if self.names.is_empty() {
                        out.push(base);
                    } else {
                        out.extend(self.names.iter().map(|n| Rule {
                            names: one(n),
                            ..base.clone()
                        }));
                    }
                }
            }
        }
        for u in &self.urls {
            for v in &self.verbs {
                out.push(Rule {
                    urls: one(u),
                    verbs: one(v),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// `ruleCovers`: this (held) rule covers the broken-down `sub`.
    fn covers(&self, sub: &Rule) -> bool {
        let has = |set: &[String], x: &str| set.iter().any(|s| s == x);
        let has_all = |set: &[String], xs: &[String]| xs.iter().all(|x| has(set, x));
        let verbs = has(&self.verbs, "*") || has_all(&self.verbs, &sub.verbs);
        let groups = has(&self.groups, "*") || has_all(&self.groups, &sub.groups);
        let resources = has(&self.resources, "*")
            || sub.resources.iter().all(|r| {
                has(&self.resources, r)
                    || r.split_once('/')
                        .is_some_and(|(_, s)| has(&self.resources, &format!("*/{s}")))
            });
        let urls = sub
            .urls
            .iter()
            .all(|u| self.urls.iter().any(|o| url_covers(o, u)));
        let names = if sub.names.is_empty() {
            self.names.is_empty()
        } else {
            self.names.is_empty() || has_all(&self.names, &sub.names)
        };
        verbs && groups && resources && names && urls
    }

    /// `CompactString`: the non-empty lists, Go-quoted.
    fn compact_string(&self) -> String {
        let parts: Vec<String> = [
            ("APIGroups", &self.groups),
            ("Resources", &self.resources),
            ("NonResourceURLs", &self.urls),
            ("ResourceNames", &self.names),
            ("Verbs", &self.verbs),
        ]
        .into_iter()
        .filter(|(_, l)| !l.is_empty())
        .map(|(k, l)| format!("{k}:{}", go_quote_list(l)))
        .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// `nonResourceURLCovers`: the same path, or a held `prefix*` the path starts with.
fn url_covers(owner: &str, sub: &str) -> bool {
    owner == sub || (owner.ends_with('*') && sub.starts_with(owner.trim_end_matches('*')))
}

/// The rules of `wanted` that `held` does not cover, broken down.
fn uncovered(held: &[Value], wanted: &[Value]) -> Vec<Rule> {
    let held: Vec<Rule> = held.iter().map(Rule::from_json).collect();
    wanted
        .iter()
        .flat_map(|w| Rule::from_json(w).breakdown())
        .filter(|sub| !held.iter().any(|h| h.covers(sub)))
        .collect()
}

/// `CompactRules`: rules of one group and one resource and nothing but verbs are merged.
fn compact(rules: Vec<Rule>) -> Vec<Rule> {
    let mut simple: BTreeMap<(String, String), Rule> = BTreeMap::new();
    let mut out = Vec::new();
    for r in rules {
        if r.names.is_empty() && r.urls.is_empty() && r.groups.len() == 1 && r.resources.len() == 1
        {
            let key = (r.groups[0].clone(), r.resources[0].clone());
            match simple.get_mut(&key) {
                Some(s) => s.verbs.extend(r.verbs),
                None => {
                    simple.insert(key, r);
                }
            }
        } else {
            out.push(r);
        }
    }
    out.extend(simple.into_values());
    out
}

/// `ConfirmNoEscalation`'s verdict: `Err` with its message when `held` does not cover
/// `wanted`.
fn confirm_no_escalation(id: &Identity, held: &[Value], wanted: &[Value]) -> Result<(), String> {
    let missing = uncovered(held, wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let lines: BTreeSet<String> = compact(missing).iter().map(Rule::compact_string).collect();
    Err(format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quote(&id.user),
        go_quote_list(&id.groups),
        lines.into_iter().collect::<Vec<_>>().join("\n")
    ))
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quote_list(l: &[String]) -> String {
    let items: Vec<String> = l.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa() -> Identity {
        Identity::service_account("ns1", "maker")
    }

    #[test]
    fn held_rules_cover_the_broken_down_request() {
        let held = [
            json!({"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["get", "list"]}),
            json!({"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["get"]}),
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a", "b"], "verbs": ["get"]}),
            json!({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]}),
        ];
        let ok = |w: Value| confirm_no_escalation(&sa(), &held, &[w]).is_ok();
        assert!(ok(
            json!({"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list"]})
        ));
        assert!(ok(
            json!({"apiGroups": ["apps"], "resources": ["deployments/status"], "verbs": ["get"]})
        ));
        assert!(ok(
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["b"], "verbs": ["get"]})
        ));
        assert!(ok(
            json!({"nonResourceURLs": ["/apis/apps"], "verbs": ["get"]})
        ));
        // A rule for every name is more than a rule for some.
        assert!(!ok(
            json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
        ));
        assert!(!ok(
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["watch"]})
        ));
        assert!(!ok(
            json!({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]})
        ));
        assert!(!ok(
            json!({"nonResourceURLs": ["/metrics"], "verbs": ["get"]})
        ));
        let admin = [json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})];
        assert!(
            confirm_no_escalation(
                &sa(),
                &admin,
                &[json!({"apiGroups": ["x"], "resources": ["y/z"], "verbs": ["escalate"]})]
            )
            .is_ok()
        );
    }

    /// The message has the real server's shape: user, Go-quoted groups, one compacted rule
    /// per line, sorted.
    #[test]
    fn the_message_lists_the_missing_rules_compacted() {
        let held = [json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]})];
        let wanted = [
            json!({"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list", "watch"]}),
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["x"], "verbs": ["get"]}),
        ];
        let msg = confirm_no_escalation(&sa(), &held, &wanted).unwrap_err();
        assert_eq!(
            msg,
            "user \"system:serviceaccount:ns1:maker\" (groups=[\"system:serviceaccounts\" \
             \"system:serviceaccounts:ns1\" \"system:authenticated\"]) is attempting to grant \
             RBAC permissions not currently held:\n\
             {APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"list\" \"watch\"]}\n\
             {APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"watch\"]}\n\
             {APIGroups:[\"\"], Resources:[\"secrets\"], ResourceNames:[\"x\"], Verbs:[\"get\"]}"
        );
    }

    #[test]
    fn gc_only_updates_are_not_checked() {
        let old = json!({"metadata": {"name": "r", "resourceVersion": "1"}, "rules": []});
        let mut new = old.clone();
        new["metadata"]["ownerReferences"] = json!([{"name": "o"}]);
        new["metadata"]["resourceVersion"] = json!("2");
        assert!(only_gc_fields_differ(&old, &new));
        new["rules"] = json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]);
        assert!(!only_gc_fields_differ(&old, &new));
    }

    #[test]
    fn go_quoting() {
        assert_eq!(go_quote_list(&["x".into(), "".into()]), "[\"x\" \"\"]");
    }
}
