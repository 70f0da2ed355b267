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

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verbs = strs(rule, "verbs");
    if !has(&verbs, &a.verb) {
        return false;
    }
    if let Some(path) = &a.path {
        return strs(rule, "nonResourceURLs").iter().any(|u| {
            u == "*" || u == path || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
        });
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
            || (!a.subresource.is_empty()
                && (*r == format!("{}/*", a.resource) || *r == format!("*/{}", a.subresource)))
    });
    if !resource_ok {
        return false;
    }
    let names = strs(rule, "resourceNames");
    names.is_empty() || (!a.name.is_empty() && names.contains(&a.name))
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

/// Decides whether `id` may do `a`.
pub fn authorize(store: &Store, id: &Identity, a: &Attributes) -> Decision {
    if id.groups.iter().any(|g| g == "system:masters") {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    let st = store.lock();
    let role_rules = |kind: &str, ns: &str, name: &str| -> Vec<Value> {
        let key = if kind == "ClusterRole" {
            rbac_key("clusterroles", "", name)
        } else {
            rbac_key("roles", ns, name)
        };
        st.objects
            .get(&key)
            .and_then(|r| r.get("rules"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for (k, b) in objects_of(&st, "clusterrolebindings") {
        let subjects = b
            .get("subjects")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !subjects.iter().any(|s| subject_matches(s, id, ""))
            || b.pointer("/roleRef/kind").and_then(Value::as_str) != Some("ClusterRole")
        {
            continue;
        }
        let role = b
            .pointer("/roleRef/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if role_rules("ClusterRole", "", role)
            .iter()
            .any(|r| rule_allows(r, a))
        {
            return Decision {
                allowed: true,
                reason: format!(
                    "RBAC: allowed by ClusterRoleBinding \"{}\" of ClusterRole \"{role}\" to {}",
                    k.name, id.user
                ),
            };
        }
    }
    if a.path.is_none() && !a.namespace.is_empty() {
        for (k, b) in objects_of(&st, "rolebindings") {
            if k.namespace != a.namespace {
                continue;
            }
            let subjects = b
                .get("subjects")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !subjects
                .iter()
                .any(|s| subject_matches(s, id, &k.namespace))
            {
                continue;
            }
            let kind = b
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let role = b
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if role_rules(kind, &k.namespace, role)
                .iter()
                .any(|r| rule_allows(r, a))
            {
                return Decision {
                    allowed: true,
                    reason: format!(
                        "RBAC: allowed by RoleBinding \"{}/{}\" of {kind} \"{role}\" to {}",
                        k.namespace, k.name, id.user
                    ),
                };
            }
        }
    }
    Decision {
        allowed: false,
        reason: String::new(),
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
        assert!(rule_allows(&r, &attrs("get", "", "pods", "log", "")));
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
