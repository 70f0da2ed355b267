//! RBAC evaluation over the ClusterRoles, ClusterRoleBindings, Roles and RoleBindings stored
//! in the server (no aggregation rules). Members of `system:masters` are always allowed,
//! as in the real authorizer.

use crate::auth::Identity;
use crate::store::{ObjKey, State, Store};
use serde_json::Value;

/// What a request wants to do.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// For non-resource requests (`/version`, `/apis`): the path.
    pub path: Option<String>,
}

/// The authorizer's answer.
#[derive(Clone, Debug)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// The strings of list `k` of a PolicyRule (or any object); none if it is missing.
pub(crate) fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A binding's `roleRef` as (kind, name); "" for what is missing.
pub(crate) fn role_ref(binding: &Value) -> (&str, &str) {
    let s = |k: &str| {
        binding
            .pointer(&format!("/roleRef/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    (s("kind"), s("name"))
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether one PolicyRule allows `a`, as kubernetes `pkg/apis/rbac/v1/evaluation_helpers.go`
/// (`VerbMatches`, `APIGroupMatches`, `ResourceMatches`, `ResourceNameMatches`,
/// `NonResourceURLMatches`) decides it. A rule's resource matches the request's
/// `resource/subresource` exactly, or is `*`, or `*/<subresource>`: `pods/*` matches no
/// subresource (it names a resource called `pods/*`).
fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(rule, "verbs");
    if !has(&verbs, &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return strs(rule, "nonResourceURLs")
            .iter()
            .any(|u| non_resource_url_matches(u, path));
    }
    if !has(&strs(rule, "apiGroups"), &a.group) {
        return false;
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let resource_ok = strs(rule, "resources").iter().any(|r| {
        r == "*"
            || *r == combined
            || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !resource_ok {
        return false;
    }
    let names = strs(rule, "resourceNames");
    names.is_empty() || names.contains(&a.name)
}

/// A `nonResourceURLs` entry: `*`, the exact path, or a prefix ending in `*`.
fn non_resource_url_matches(rule_url: &str, path: &str) -> bool {
    rule_url == "*"
        || rule_url == path
        || (rule_url.ends_with('*') && path.starts_with(rule_url.trim_end_matches('*')))
}

fn subject_matches(subject: &Value, id: &Identity, binding_ns: &str) -> bool {
    let s = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or("");
    match s("kind") {
        "User" => s("name") == id.user,
        "Group" => id.groups.iter().any(|g| g == s("name")),
        "ServiceAccount" => {
            let ns = if s("namespace").is_empty() {
                binding_ns
            } else {
                s("namespace")
            };
            id.user == format!("system:serviceaccount:{ns}:{}", s("name"))
        }
        _ => false,
    }
}

fn rbac_key(resource: &str, ns: &str, name: &str) -> ObjKey {
    ObjKey {
        group: "rbac.authorization.k8s.io".into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
    }
}

fn objects_of<'a>(
    st: &'a State,
    resource: &'a str,
) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
    st.objects
        .range(rbac_key(resource, "", "")..)
        .take_while(move |(k, _)| k.group == "rbac.authorization.k8s.io" && k.resource == resource)
}

/// Where a set of rules comes from: a binding of `id` and the role it names.
struct Grant {
    /// `ClusterRoleBinding "x" of ClusterRole "y"`, for the authorizer's reason.
    source: String,
    rules: Vec<Value>,
}

/// The rules bound to `id`: through every ClusterRoleBinding, and through the RoleBindings
/// of `namespace` (none for ""), in that order, as kubernetes
/// `pkg/registry/rbac/validation/rule.go` (`VisitRulesFor`) walks them. A binding whose role
/// is missing grants nothing.
fn grants(st: &State, id: &Identity, namespace: &str) -> Vec<Grant> {
    let role_rules = |kind: &str, ns: &str, name: &str| -> Vec<Value> {
        let key = match kind {
            "ClusterRole" => rbac_key("clusterroles", "", name),
            "Role" => rbac_key("roles", ns, name),
            _ => return Vec::new(),
        };
        st.objects
            .get(&key)
            .and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let bound = |b: &Value, ns: &str| {
        b.get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|subjects| subjects.iter().any(|s| subject_matches(s, id, ns)))
    };
    let mut out = Vec::new();
    for (k, b) in objects_of(st, "clusterrolebindings") {
        let (kind, role) = role_ref(b);
        if kind != "ClusterRole" || !bound(b, "") {
            continue;
        }
        out.push(Grant {
            source: format!(
                "ClusterRoleBinding \"{}\" of ClusterRole \"{role}\"",
                k.name
            ),
            rules: role_rules("ClusterRole", "", role),
        });
    }
    if namespace.is_empty() {
        return out;
    }
    for (k, b) in objects_of(st, "rolebindings") {
        if k.namespace != namespace || !bound(b, &k.namespace) {
            continue;
        }
        let (kind, role) = role_ref(b);
        out.push(Grant {
            source: format!(
                "RoleBinding \"{}/{}\" of {kind} \"{role}\"",
                k.namespace, k.name
            ),
            rules: role_rules(kind, &k.namespace, role),
        });
    }
    out
}

/// Every rule `id` holds in `namespace` ("" for cluster-wide only): what kubernetes
/// `ConfirmNoEscalation` compares a role's rules against (`RulesFor`).
pub(crate) fn rules_for(store: &Store, id: &Identity, namespace: &str) -> Vec<Value> {
    grants(&store.lock(), id, namespace)
        .into_iter()
        .flat_map(|g| g.rules)
        .collect()
}

/// Decides whether `id` may do `a`.
pub fn authorize(store: &Store, id: &Identity, a: &Attributes) -> Decision {
    if id.groups.iter().any(|g| g == "system:masters") {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    // Non-resource requests are cluster-wide: RoleBindings never allow them.
    let namespace = if a.path.is_none() {
        a.namespace.as_str()
    } else {
        ""
    };
    let found = grants(&store.lock(), id, namespace)
        .into_iter()
        .find(|g| g.rules.iter().any(|r| rule_allows(r, a)));
    match found {
        Some(g) => Decision {
            allowed: true,
            reason: format!("RBAC: allowed by {} to {}", g.source, id.user),
        },
        None => Decision {
            allowed: false,
            reason: String::new(),
        },
    }
}

/// The message of a 403, worded like the real API server's.
pub fn forbidden_message(id: &Identity, a: &Attributes) -> String {
    if let Some(path) = &a.path {
        return format!(
            "forbidden: User \"{}\" cannot {} path \"{path}\"",
            id.user, a.verb
        );
    }
    let res = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let subject = if a.name.is_empty() {
        res
    } else {
        format!("{res} \"{}\"", a.name)
    };
    let full = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{full}\" in API group \"{}\" {scope}",
        id.user, a.verb, a.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rules() {
        let r = json!({"apiGroups": [""], "resources": ["services", "pods/*"], "verbs": ["get", "list"]});
        assert!(rule_allows(&r, &attrs("list", "", "services", "", "")));
        assert!(!rule_allows(&r, &attrs("list", "", "secrets", "", "")));
        assert!(!rule_allows(&r, &attrs("watch", "", "services", "", "")));
        assert!(!rule_allows(&r, &attrs("get", "apps", "services", "", "")));
        // `pods/*` is not a wildcard: only `*` and `*/<sub>` are (ResourceMatches).
        assert!(!rule_allows(&r, &attrs("get", "", "pods", "log", "")));
        assert!(!rule_allows(&r, &attrs("get", "", "pods", "", "")));
        let sub = json!({"apiGroups": [""], "resources": ["*/log", "pods/exec"], "verbs": ["get"]});
        assert!(rule_allows(&sub, &attrs("get", "", "pods", "log", "")));
        assert!(rule_allows(&sub, &attrs("get", "", "pods", "exec", "")));
        assert!(!rule_allows(&sub, &attrs("get", "", "pods", "status", "")));
        assert!(!rule_allows(&sub, &attrs("get", "", "pods", "", "")));
        assert!(!rule_allows(&sub, &attrs("get", "", "nodes", "exec", "")));
        assert!(!rule_allows(
            &r,
            &attrs("get", "", "services", "status", "")
        ));
        let named =
            json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "resourceNames": ["x"]});
        assert!(rule_allows(
            &named,
            &attrs("get", "apps", "deployments", "", "x")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("get", "apps", "deployments", "", "y")
        ));
        assert!(!rule_allows(
            &named,
            &attrs("list", "apps", "deployments", "", "")
        ));
        let nr = json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]});
        let p = |path: &str| Attributes {
            verb: "get".into(),
            path: Some(path.into()),
            ..Default::default()
        };
        assert!(rule_allows(&nr, &p("/apis/apps/v1")));
        assert!(rule_allows(&nr, &p("/version")));
        assert!(!rule_allows(&nr, &p("/metrics")));
    }

    #[test]
    fn subjects() {
        let id = Identity::service_account("ns1", "reader");
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "reader", "namespace": "ns1"}),
            &id,
            ""
        ));
        assert!(subject_matches(
            &json!({"kind": "ServiceAccount", "name": "reader"}),
            &id,
            "ns1"
        ));
        assert!(!subject_matches(
            &json!({"kind": "ServiceAccount", "name": "reader", "namespace": "ns2"}),
            &id,
            ""
        ));
        assert!(subject_matches(
            &json!({"kind": "Group", "name": "system:serviceaccounts:ns1"}),
            &id,
            ""
        ));
        assert!(subject_matches(
            &json!({"kind": "User", "name": "system:serviceaccount:ns1:reader"}),
            &id,
            ""
        ));
    }
}
