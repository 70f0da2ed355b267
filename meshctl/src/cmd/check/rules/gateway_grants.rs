//! "gateway may read what it watches": for a gateway `gateway install` made (its ClusterRole
//! `meshctl-eastwestgateway-<ns>` exists), what the API server says its account may not list
//! or watch. A gateway installed by an older meshctl keeps the role it was given; a type read
//! since (PeerAuthentications, 2026-12-07) is then unreadable, which the gateway only logs.
//! The API server's answer counts every binding, so the role and binding are read only to
//! say what to fix.

use serde_json::{Value, json};

use super::super::facts::{ClusterFacts, Ungranted};
use super::super::hints::{Invocation, shell_word};
use super::super::report::Report;
use crate::istio::{GATEWAY_NAME, gateway_role_name};

pub const CHECK: &str = "gateway may read what it watches";

impl Ungranted {
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

/// Of `wanted`, what the rules `installed` (a role's `rules`) do not grant, as the API
/// server's authorizer counts a rule (`*` matches anything; a rule limited to
/// `resourceNames` grants no list or watch, so it is not counted).
pub fn lacking(installed: &Value, wanted: &[Ungranted]) -> Vec<Ungranted> {
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
    wanted
        .iter()
        .filter_map(|w| {
            let verbs: Vec<String> = w
                .verbs
                .iter()
                .filter(|v| !grants(&w.group, &w.resource, v))
                .cloned()
                .collect();
            (!verbs.is_empty()).then(|| Ungranted { verbs, ..w.clone() })
        })
        .collect()
}

/// The check. Skipped for a gateway meshctl did not install (no role: another installer's
/// grants are its own) and when the context may not read the role or ask the API server.
pub fn gateway_grants(r: &mut Report, scope: &str, f: &ClusterFacts, inv: &Invocation) {
    let role = gateway_role_name(&f.ns);
    let account = format!("{}/{GATEWAY_NAME}", f.ns);
    let installed = match &f.gateway_role {
        None => {
            let why = format!(
                "no ClusterRole {role}: no gateway installed by meshctl (another installer's grants are its own)"
            );
            return r.skip(scope, CHECK, why);
        }
        Some(Err(e)) => {
            let why = format!(
                "ClusterRole {role} not readable ({e}): run check with a context that may get clusterroles and clusterrolebindings"
            );
            return r.skip(scope, CHECK, why);
        }
        Some(Ok(role)) => role,
    };
    let denied = match &f.gateway_denied {
        Some(Ok(denied)) => denied,
        Some(Err(e)) => {
            let why = format!(
                "could not ask what {account} may do ({e}): run check with a context that may create subjectaccessreviews.authorization.k8s.io"
            );
            return r.skip(scope, CHECK, why);
        }
        None => return r.skip(scope, CHECK, "not asked"),
    };
    if denied.is_empty() {
        let detail = format!("{account} may list and watch each type the gateway reads");
        return r.pass(scope, CHECK, detail);
    }
    let list = denied
        .iter()
        .map(|l| format!("{} {}", l.verbs.join(", "), l.name()))
        .collect::<Vec<_>>()
        .join("; ");
    let kubectl = inv.kubectl(&f.context);
    // A binding to fix and a role that lacks rules too: both, so that following the hint is
    // enough.
    let role_lacks = !lacking(&installed["rules"], denied).is_empty();
    let hint = match binding_fix(f, &role, &kubectl) {
        Some(fix) if role_lacks => format!(
            "{fix}; then {}",
            role_fix(installed, &role, denied, &kubectl)
        ),
        Some(fix) => fix,
        None => role_fix(installed, &role, denied, &kubectl),
    };
    if denied.iter().any(Ungranted::required) {
        let detail = format!(
            "{account} may not {list}: the gateway cannot watch the endpoints it routes to"
        );
        r.fail(scope, CHECK, detail, hint);
    } else {
        let detail = format!(
            "{account} may not {list} (a role from an older meshctl?): the gateway serves without what they give and logs a warning naming each"
        );
        r.warn(scope, CHECK, detail, hint);
    }
}

/// The kubectl commands (each starting with `kubectl`, the cluster's context and flags) that
/// bind the role to the gateway's account as `gateway install` does, when its
/// ClusterRoleBinding is missing or binds something else; `None` when it is right or could
/// not be read.
fn binding_fix(f: &ClusterFacts, role: &str, kubectl: &str) -> Option<String> {
    let create = format!(
        "{kubectl} create clusterrolebinding {role} --clusterrole={role} --serviceaccount={}:{GATEWAY_NAME}",
        f.ns
    );
    let binding = match &f.gateway_binding {
        None => return Some(create),
        Some(Err(_)) => return None,
        Some(Ok(b)) => b,
    };
    // A binding's roleRef cannot be changed: it is made again.
    if binding["roleRef"]["kind"] != "ClusterRole" || binding["roleRef"]["name"] != role {
        return Some(format!(
            "{kubectl} delete clusterrolebinding {role} && {create}"
        ));
    }
    let bound = binding["subjects"].as_array().is_some_and(|s| {
        s.iter().any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == GATEWAY_NAME
                && s["namespace"] == f.ns.as_str()
        })
    });
    if bound {
        return None;
    }
    let subject = json!({"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": f.ns});
    let patch = if binding["subjects"].is_array() {
        json!([{"op": "add", "path": "/subjects/-", "value": subject}])
    } else {
        json!([{"op": "add", "path": "/subjects", "value": [subject]}])
    };
    Some(format!(
        "{kubectl} patch clusterrolebinding {role} --type=json -p {}",
        shell_word(&patch.to_string())
    ))
}

/// How to grant `denied` through the role: the JSON patch adding what its rules lack (one
/// rule per resource; the whole list when it has none, as `/rules/-` needs the array).
fn role_fix(installed: &Value, role: &str, denied: &[Ungranted], kubectl: &str) -> String {
    if installed
        .get("aggregationRule")
        .is_some_and(|a| !a.is_null())
    {
        return format!(
            "ClusterRole {role} aggregates other roles (its rules are rewritten from them): grant the reads in a ClusterRole its aggregationRule selects"
        );
    }
    let missing = lacking(&installed["rules"], denied);
    if missing.is_empty() {
        return format!(
            "ClusterRole {role} grants them, so its binding does not reach the account: {kubectl} get clusterrolebinding {role} -o yaml"
        );
    }
    let rules: Vec<Value> = missing
        .iter()
        .map(|l| json!({"apiGroups": [l.group], "resources": [l.resource], "verbs": l.verbs}))
        .collect();
    let patch = if installed["rules"].is_array() {
        Value::Array(
            rules
                .into_iter()
                .map(|rule| json!({"op": "add", "path": "/rules/-", "value": rule}))
                .collect(),
        )
    } else {
        json!([{"op": "add", "path": "/rules", "value": rules}])
    };
    format!(
        "add the rules (what `gateway install` of this meshctl writes): {kubectl} patch clusterrole {role} --type=json -p {}",
        shell_word(&patch.to_string())
    )
}

/// The rules `gateway install` wrote before 2026-12-07 (without PeerAuthentications).
#[cfg(test)]
pub fn rules_before_peer_authentications() -> Value {
    let mut rules = crate::mesh::gateway::gateway_rules();
    if let Some(r) = rules.as_array_mut() {
        r.retain(|r| r["apiGroups"][0] != "security.istio.io");
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::gateway::{GATEWAY_READ_VERBS, GATEWAY_READS, gateway_rules};

    fn reads() -> Vec<Ungranted> {
        GATEWAY_READS
            .iter()
            .map(|(g, r)| Ungranted {
                group: g.to_string(),
                resource: r.to_string(),
                verbs: GATEWAY_READ_VERBS.map(String::from).to_vec(),
            })
            .collect()
    }

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
        json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
    }

    #[test]
    fn the_role_meshctl_writes_grants_every_read_and_none_grants_nothing() {
        assert_eq!(lacking(&gateway_rules(), &reads()), vec![]);
        assert_eq!(lacking(&json!([]), &reads()), reads());
    }

    #[test]
    fn wildcards_count_and_resource_names_do_not() {
        let pa = |verbs: &[&str]| Ungranted {
            group: "security.istio.io".into(),
            resource: "peerauthentications".into(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
        };
        let wanted = [pa(&["list", "watch"])];
        let star = json!([rule(&["*"], &["*"], &["*"])]);
        assert_eq!(lacking(&star, &wanted), vec![]);
        let named = json!([{"apiGroups": ["security.istio.io"], "resources": ["peerauthentications"],
            "verbs": ["list", "watch"], "resourceNames": ["one"]}]);
        assert_eq!(lacking(&named, &wanted), wanted);
        let list_only = json!([rule(&["security.istio.io"], &["*"], &["list"])]);
        assert_eq!(lacking(&list_only, &wanted), [pa(&["watch"])]);
        assert_eq!(lacking(&Value::Null, &wanted), wanted);
    }

    #[test]
    fn an_older_role_lacks_peer_authentications_only() {
        let missing = lacking(&rules_before_peer_authentications(), &reads());
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].name(), "peerauthentications.security.istio.io");
        assert!(!missing[0].required());
        assert!(reads().iter().filter(|r| r.required()).count() == 4);
    }

    #[test]
    fn the_role_patch_appends_or_creates_the_list() {
        let pods = [Ungranted {
            group: "".into(),
            resource: "pods".into(),
            verbs: vec!["list".into()],
        }];
        let fix = role_fix(&json!({"rules": []}), "r", &pods, "kubectl");
        assert!(
            fix.ends_with(r#"-p '[{"op":"add","path":"/rules/-","value":{"apiGroups":[""],"resources":["pods"],"verbs":["list"]}}]'"#),
            "{fix}"
        );
        let fix = role_fix(&json!({}), "r", &pods, "kubectl");
        assert!(fix.contains(r#""path":"/rules","value":[{"#), "{fix}");
        let fix = role_fix(&json!({"aggregationRule": {}}), "r", &pods, "kubectl");
        assert!(fix.contains("aggregationRule selects"), "{fix}");
        let fix = role_fix(&json!({"rules": gateway_rules()}), "r", &pods, "kubectl");
        assert!(fix.contains("get clusterrolebinding r -o yaml"), "{fix}");
    }
}
