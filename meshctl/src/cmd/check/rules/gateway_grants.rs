//! "gateway ClusterRole grants its reads": the role `gateway install` made for the gateway,
//! bound to the gateway's account and compared with what this meshctl would make. A gateway installed by an older meshctl keeps
//! the role it was given; a type added since (PeerAuthentications, 2026-12-07) is then
//! unreadable, which the gateway only logs.

use serde_json::{Value, json};

use super::super::facts::ClusterFacts;
use super::super::hints::{Invocation, shell_word};
use super::super::report::Report;
use crate::istio::{GATEWAY_NAME, gateway_role_name};
use crate::mesh::gateway::gateway_rules;

pub const CHECK: &str = "gateway ClusterRole grants its reads";

/// One resource the gateway reads and the verbs the installed role lacks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lacking {
    pub group: String,
    pub resource: String,
    pub verbs: Vec<String>,
}

impl Lacking {
    /// `resource.group`, as RBAC errors name it (`pods` for the core group).
    fn name(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }

    /// Without these the gateway has no table at all (its required watches fail).
    fn required(&self) -> bool {
        self.group.is_empty() || self.group == "discovery.k8s.io"
    }
}

/// What `wanted` (rules as `gateway_rules` writes them) grants that `installed` does not:
/// a rule counts as the API server's authorizer counts it (`*` matches anything; a rule
/// limited to `resourceNames` grants no list or watch, so it is not counted).
pub fn lacking(installed: &Value, wanted: &Value) -> Vec<Lacking> {
    let empty = Vec::new();
    let rules = installed.as_array().unwrap_or(&empty);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let grants = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has =
                |key: &str, want: &str| strings(&r[key]).iter().any(|s| s == want || s == "*");
            strings(&r["resourceNames"]).is_empty()
                && has("apiGroups", group)
                && has("resources", resource)
                && has("verbs", verb)
        })
    };
    let mut out = Vec::new();
    for rule in wanted.as_array().unwrap_or(&empty) {
        let verbs = strings(&rule["verbs"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let missing: Vec<String> = verbs
                    .iter()
                    .filter(|v| !grants(&group, &resource, v))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    out.push(Lacking {
                        group: group.clone(),
                        resource,
                        verbs: missing,
                    });
                }
            }
        }
    }
    out
}

/// The check, from the role as read: absent (a gateway meshctl did not install, or none),
/// unreadable with the context, or compared with [`gateway_rules`].
pub fn gateway_grants(r: &mut Report, scope: &str, f: &ClusterFacts, inv: &Invocation) {
    let role = gateway_role_name(&f.ns);
    let installed = match &f.gateway_role {
        None => {
            return r.skip(
                scope,
                CHECK,
                format!(
                    "no ClusterRole {role}: no gateway installed by meshctl (another installer's grants are its own)"
                ),
            );
        }
        Some(Err(e)) => {
            return r.skip(
                scope,
                CHECK,
                format!("ClusterRole {role} not readable: {e}"),
            );
        }
        Some(Ok(role)) => role,
    };
    if let Some(unbound) = unbound(f, &role) {
        let hint = format!(
            "bind it as `gateway install` does: {} create clusterrolebinding {role} --clusterrole={role} --serviceaccount={}:{GATEWAY_NAME}",
            inv.kubectl(&f.context),
            f.ns
        );
        return r.fail(scope, CHECK, unbound, hint);
    }
    let missing = lacking(&installed["rules"], &gateway_rules());
    if missing.is_empty() {
        let bound = match &f.gateway_binding {
            Some(Err(e)) => format!("its ClusterRoleBinding not readable: {e}"),
            _ => format!("bound to {}/{GATEWAY_NAME}", f.ns),
        };
        return r.pass(scope, CHECK, format!("ClusterRole {role}, {bound}"));
    }
    let list = missing
        .iter()
        .map(|l| format!("{} {}", l.verbs.join(", "), l.name()))
        .collect::<Vec<_>>()
        .join("; ");
    let hint = format!(
        "add the rules (what `gateway install` of this meshctl writes): {} patch clusterrole {role} --type=json -p {}",
        inv.kubectl(&f.context),
        shell_word(&patch(installed, &missing).to_string())
    );
    if missing.iter().any(Lacking::required) {
        let detail = format!(
            "ClusterRole {role} lacks {list}: the gateway cannot watch the endpoints it routes to"
        );
        r.fail(scope, CHECK, detail, hint);
    } else {
        let detail = format!(
            "ClusterRole {role} lacks {list} (made by an older meshctl?): the gateway serves without what they give and logs a warning naming each"
        );
        r.warn(scope, CHECK, detail, hint);
    }
}

/// Why the role does not reach the gateway's account, if it does not: the ClusterRoleBinding
/// of the same name, as `gateway install` writes it, is missing or binds something else.
/// (`None` too when the binding could not be read: the role's check still stands.)
fn unbound(f: &ClusterFacts, role: &str) -> Option<String> {
    let binding = match &f.gateway_binding {
        None => {
            return Some(format!(
                "no ClusterRoleBinding {role}: the gateway's account {}/{GATEWAY_NAME} is granted nothing, so the gateway cannot watch the endpoints it routes to",
                f.ns
            ));
        }
        Some(Err(_)) => return None,
        Some(Ok(b)) => b,
    };
    let subject = binding["subjects"].as_array().is_some_and(|s| {
        s.iter().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == GATEWAY_NAME
                && s["namespace"] == f.ns.as_str()
        })
    });
    let role_ref =
        binding["roleRef"]["kind"] == "ClusterRole" && binding["roleRef"]["name"] == role;
    if subject && role_ref {
        return None;
    }
    Some(format!(
        "ClusterRoleBinding {role} does not bind ClusterRole {role} to the gateway's account {}/{GATEWAY_NAME} (roleRef {}, subjects {}): the gateway cannot watch the endpoints it routes to",
        f.ns, binding["roleRef"], binding["subjects"]
    ))
}

/// The JSON patch adding one rule per lacking resource (the whole list when the role has
/// none, as `/rules/-` needs the array to exist).
fn patch(installed: &Value, missing: &[Lacking]) -> Value {
    let rules: Vec<Value> = missing
        .iter()
        .map(|l| json!({"apiGroups": [l.group], "resources": [l.resource], "verbs": l.verbs}))
        .collect();
    if installed["rules"].is_array() {
        Value::Array(
            rules
                .into_iter()
                .map(|rule| json!({"op": "add", "path": "/rules/-", "value": rule}))
                .collect(),
        )
    } else {
        json!([{"op": "add", "path": "/rules", "value": rules}])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
        json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
    }

    #[test]
    fn the_role_meshctl_writes_lacks_nothing() {
        assert_eq!(lacking(&gateway_rules(), &gateway_rules()), vec![]);
    }

    #[test]
    fn wildcards_count_and_resource_names_do_not() {
        let wanted = json!([rule(
            &["security.istio.io"],
            &["peerauthentications"],
            &["get", "list", "watch"]
        )]);
        let star = json!([rule(&["*"], &["*"], &["*"])]);
        assert_eq!(lacking(&star, &wanted), vec![]);
        let named = json!([{"apiGroups": ["security.istio.io"], "resources": ["peerauthentications"],
            "verbs": ["get", "list", "watch"], "resourceNames": ["one"]}]);
        assert_eq!(lacking(&named, &wanted)[0].verbs, ["get", "list", "watch"]);
        let get_only = json!([rule(&["security.istio.io"], &["*"], &["get"])]);
        assert_eq!(lacking(&get_only, &wanted)[0].verbs, ["list", "watch"]);
        assert_eq!(lacking(&Value::Null, &wanted).len(), 1);
    }

    #[test]
    fn an_older_role_lacks_peer_authentications_only() {
        let older: Vec<Value> = gateway_rules()
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["apiGroups"][0] != "security.istio.io")
            .cloned()
            .collect();
        let missing = lacking(&Value::Array(older), &gateway_rules());
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].name(), "peerauthentications.security.istio.io");
        assert!(!missing[0].required());
    }

    #[test]
    fn the_patch_appends_or_creates_the_list() {
        let missing = [Lacking {
            group: "".into(),
            resource: "pods".into(),
            verbs: vec!["list".into()],
        }];
        let p = patch(&json!({"rules": []}), &missing);
        assert_eq!(p[0]["path"], "/rules/-");
        assert_eq!(p[0]["value"]["apiGroups"], json!([""]));
        let p = patch(&json!({}), &missing);
        assert_eq!(p[0]["path"], "/rules");
        assert_eq!(p[0]["value"][0]["verbs"], json!(["list"]));
    }
}
