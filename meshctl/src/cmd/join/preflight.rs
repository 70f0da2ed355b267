//! join's checks before its first write, in every cluster: the Secret and service account
//! the flags name, and (by SelfSubjectAccessReview) the permission for every write it makes,
//! including what its roles and bindings grant (RBAC refuses to let a user grant permissions
//! it does not hold unless it may `escalate` or `bind`).

use anyhow::{Result, bail};
use serde_json::{Value, json};
use std::collections::HashMap;

use super::{JoinArgs, Member};
use crate::istio::{GATEWAY_API_V1, SA_NAME_ANNOTATION, SA_TOKEN_TYPE};
use crate::kube::{self as kc, Cluster, Identity};
use crate::mesh::namespace;
use crate::mesh::remote_secret::reader_rbac;
use crate::mesh::terminating::{self, Terminating};

/// Phase 1, `--secret-name` and `--create-service-account=false` and `--token-ttl`: what
/// `reader::build` would refuse only after other clusters were changed.
pub(super) async fn preflight_secret(a: &JoinArgs, c: &Cluster, ns: &str) -> Result<()> {
    let sa = a.secret.service_account.as_str();
    if a.secret.token_ttl.is_some() {
        if c.ca_pem.is_none() {
            bail!(
                "context {:?} has no certificate-authority data in the kubeconfig; --token-ttl \
                 takes the API server CA from there. Nothing was changed",
                c.context
            );
        }
    } else if let Some(n) = &a.secret.secret_name {
        let Some(s) = kc::get(c, "v1", "Secret", Some(ns), n).await? else {
            bail!(
                "--secret-name: Secret {ns}/{n} not found in context {:?} (create it, or drop \
                 --secret-name to let join find or create the token Secret). Nothing was changed",
                c.context
            );
        };
        if s["type"] != SA_TOKEN_TYPE || s["metadata"]["annotations"][SA_NAME_ANNOTATION] != sa {
            bail!(
                "--secret-name: Secret {ns}/{n} in context {:?} is not a {SA_TOKEN_TYPE} Secret of \
                 service account {sa}. Nothing was changed",
                c.context
            );
        }
    }
    if !a.secret.create_service_account
        && kc::get(c, "v1", "ServiceAccount", Some(ns), sa)
            .await?
            .is_none()
    {
        bail!(
            "service account {ns}/{sa} not found in context {:?}; create it or drop \
             --create-service-account=false. Nothing was changed",
            c.context
        );
    }
    Ok(())
}

/// Refuses (usage error, exit 2) a context that reaches a cluster an earlier one in `seen`
/// reaches too (alias contexts such as `kind-x` and `x`): joining a cluster with itself
/// would overwrite its cacerts and network label with the other's.
pub(super) fn refuse_same_cluster(seen: &[Identity], new: &Identity) -> Result<()> {
    for old in seen {
        let Some(why) = old.same_cluster(new) else {
            continue;
        };
        return Err(crate::cli::usage(format!(
            "contexts {:?} and {:?} reach the same cluster: {why}. Joining a cluster with \
             itself would overwrite its cacerts and network label with the other's and store \
             remote secrets pointing at itself: pass one context per cluster. Nothing was \
             changed",
            old.context, new.context
        )));
    }
    Ok(())
}

/// Server-side dry-run apply (`dryRun=All`: validated and admitted, never stored) of every
/// object in `objs`, so that the API server's refusals (an invalid field, an admission
/// webhook or policy) surface before join changes anything. Namespaced objects are checked
/// in `ns`, or in `default` while `ns` does not exist yet (a dry run in a missing namespace
/// is refused). An object a webhook cannot dry-run is left unchecked.
///
/// A dry run the API server does not take up (unreachable, or 429/503/504 past meshctl's
/// retries: `kube::unanswered`) stops join here, with nothing changed. The dry run is a
/// write request like the real one and meets the same outage; leaving it to the real write
/// (as before) had the write wait out the same retries again, so a persistent outage took
/// twice as long to fail, and failed after other clusters were changed. Stopping costs
/// one retry budget (`kube::retry`), and a re-run starts from a clean state. Any other
/// answer that is no refusal of the object (500, a conflict) leaves the rest unchecked: the
/// real write meets it with its own message, as it is not retried twice.
///
/// Returns the objects being deleted (`mesh::terminating`), read from the same answers (an
/// apply to an object being deleted keeps its `deletionTimestamp`): the namespace alone when
/// it is being deleted (nothing is dry-run then: creates in it are refused, and its objects
/// go with it); the objects the dry run left unchecked are read one by one, best effort.
pub(super) async fn dry_run_writes(
    c: &Cluster,
    ns: &str,
    objs: &[Value],
) -> Result<Vec<Terminating>> {
    use kube::api::{Api, DynamicObject, Patch, PatchParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let target = match kc::get(c, "v1", "Namespace", None, ns).await {
        Ok(Some(n)) => match terminating::of(&terminating::namespace_stub(ns), &n) {
            Some(t) => return Ok(vec![t]),
            None => ns,
        },
        Ok(None) => "default",
        Err(_) => return Ok(Vec::new()),
    };
    let pp = PatchParams::apply(crate::istio::MANAGER).force().dry_run();
    let mut found = Vec::new();
    let mut unchecked: Vec<&Value> = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        let av = o["apiVersion"].as_str().unwrap_or_default();
        let kind = o["kind"].as_str().unwrap_or_default();
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let Some((plural, namespaced)) = kc::plural_of(kind) else {
            continue;
        };
        let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
        let ar =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let mut probe = o.clone();
        let api: Api<DynamicObject> = if namespaced {
            probe["metadata"]["namespace"] = json!(target);
            Api::namespaced_with(c.client.clone(), target, &ar)
        } else {
            Api::all_with(c.client.clone(), &ar)
        };
        match api.patch(name, &pp, &Patch::Apply(&probe)).await {
            // In `default` (while `ns` is missing) a namespaced answer is not the object.
            Ok(answer) if !namespaced || target == ns => {
                let answer = serde_json::to_value(answer).unwrap_or_default();
                found.extend(terminating::of(o, &answer));
            }
            Ok(_) => {}
            // A webhook without `sideEffects: None` answers every dry run 400 "admission
            // webhook ... does not support dry run" (kubernetes apiserver
            // pkg/admission/plugin/webhook/errors, `NewDryRunUnsupportedErr`): no verdict.
            Err(kube::Error::Api(s)) if s.message.contains("does not support dry run") => {
                unchecked.push(o);
            }
            Err(kube::Error::Api(s)) if crate::mesh::gateway::refuses_object(s.code) => {
                let why = kc::error_text(&kube::Error::Api(s));
                bail!(
                    "context {:?} refuses {} (a server-side dry run of each change join makes, \
                     before the first): {why}. Fix what it names (a flag's value, or the policy \
                     that refused it) and run join again. Nothing was changed",
                    c.context,
                    kc::describe(o)
                );
            }
            Err(e) if kc::unanswered(&e) => {
                bail!(
                    "context {:?} did not take up the server-side dry run of {} that join makes \
                     before its first change: {}. Its writes would meet the same, part-way \
                     through the join. Nothing was changed; run join again once the API server \
                     answers",
                    c.context,
                    kc::describe(o),
                    kc::error_text(&e)
                );
            }
            Err(_) => {
                unchecked.extend(&objs[i..]);
                break;
            }
        }
    }
    for o in unchecked {
        if target != ns && o["metadata"]["namespace"].as_str() == Some(ns) {
            continue;
        }
        match terminating::read_one(c, o).await {
            Ok(t) => found.extend(t),
            // Unreachable or refused: the real write meets it with its own message.
            Err(_) => break,
        }
    }
    Ok(found)
}

/// One permission join needs: verb, API group, resource (with `/subresource`), namespace,
/// and the object's name when the permission is about one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Access {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Access {
    fn new(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Access {
        Access {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.map(str::to_string),
            name: None,
        }
    }

    fn named(self, name: &str) -> Access {
        Access {
            name: Some(name.into()),
            ..self
        }
    }

    /// `list nodes (core)`, `bind clusterroles "x" (rbac.authorization.k8s.io) in ns`.
    fn describe(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let mut out = format!("{} {}", self.verb, self.resource);
        if let Some(n) = &self.name {
            out.push_str(&format!(" {n:?}"));
        }
        out.push_str(&format!(" ({group})"));
        if let Some(ns) = &self.namespace {
            out.push_str(&format!(" in {ns}"));
        }
        out
    }
}

/// What one of join's writes needs.
pub(super) enum Need {
    /// One permission.
    Can(Access),
    /// Writing a role, or a binding to one, grants that role's rules: the API server allows it
    /// only to a user who holds every one of them already (`held`), or may `escalate` the
    /// role or `bind` it (`or`): RBAC escalation prevention (kubernetes
    /// `pkg/registry/rbac/clusterrole/policybased/storage.go`,
    /// `clusterrolebinding/policybased/storage.go`).
    Grant {
        what: String,
        held: Vec<Access>,
        or: Access,
    },
}

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The permissions a role's `rules` grant, one per group, resource, verb (and name), in
/// `namespace` (`None`: cluster-wide). `nonResourceURLs` are left out (no role join writes
/// has any).
fn rule_accesses(role: &Value, namespace: Option<&str>) -> Vec<Access> {
    let list = |r: &Value, k: &str| -> Vec<String> {
        r[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out: Vec<Access> = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let names = list(rule, "resourceNames");
        for g in list(rule, "apiGroups") {
            for r in list(rule, "resources") {
                for v in list(rule, "verbs") {
                    let base = Access::new(&v, &g, &r, namespace);
                    if names.is_empty() {
                        out.push(base);
                    } else {
                        out.extend(names.iter().map(|n| base.clone().named(n)));
                    }
                }
            }
        }
    }
    out.dedup();
    out
}

/// The escalation needs of the roles and bindings among `objs`: a ClusterRole or Role is
/// written only by who holds its rules or may `escalate` it; a binding to one of them only
/// by who holds its rules (in the binding's namespace) or may `bind` it.
fn grants(objs: &[Value], ns: &str) -> Vec<Need> {
    let s = |o: &Value, p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let mut out = Vec::new();
    for o in objs {
        let kind = s(o, "/kind");
        let name = s(o, "/metadata/name");
        match kind.as_str() {
            "ClusterRole" | "Role" => {
                let (resource, scope) = if kind == "Role" {
                    ("roles", Some(ns))
                } else {
                    ("clusterroles", None)
                };
                out.push(Need::Grant {
                    what: format!("{kind} {name:?}"),
                    held: rule_accesses(o, scope),
                    or: Access::new("escalate", RBAC_GROUP, resource, scope).named(&name),
                });
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                let (ref_kind, ref_name) = (s(o, "/roleRef/kind"), s(o, "/roleRef/name"));
                let Some(role) = objs
                    .iter()
                    .find(|r| s(r, "/kind") == ref_kind && s(r, "/metadata/name") == ref_name)
                else {
                    continue;
                };
                let scope = (kind == "RoleBinding").then_some(ns);
                let resource = if ref_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                out.push(Need::Grant {
                    what: format!("{kind} {name:?} (of {ref_kind} {ref_name:?})"),
                    held: rule_accesses(role, scope),
                    or: Access::new("bind", RBAC_GROUP, resource, scope).named(&ref_name),
                });
            }
            _ => {}
        }
    }
    out
}

/// Every write join makes in one cluster, as permissions: the objects it applies (server-side
/// apply creates or patches), the token it requests, and what writing its roles and bindings
/// grants.
pub(super) fn writes(a: &JoinArgs, m: &Member, ns: &str) -> Vec<Need> {
    let mut objs: Vec<Value> = vec![
        m.cacerts.clone(),
        namespace::namespace_object(ns, Some(&m.network), Some(&m.name)),
    ];
    objs.extend(m.gateway.iter().cloned());
    if a.secret.create_service_account {
        objs.extend(reader_rbac(
            ns,
            &a.secret.service_account,
            a.secret.reader_allow_secrets,
        ));
    }
    let mut out: Vec<Access> = Vec::new();
    let mut add = |verb: &str, group: &str, resource: &str, namespace: Option<&str>| {
        let access = Access::new(verb, group, resource, namespace);
        if !out.contains(&access) {
            out.push(access);
        }
    };
    for o in &objs {
        let Some((group, resource, namespaced)) = resource_of(o) else {
            continue;
        };
        let namespace = namespaced.then_some(ns);
        add("create", group, resource, namespace);
        add("patch", group, resource, namespace);
    }
    if a.ambient {
        let group = GATEWAY_API_V1.split_once('/').map_or("", |(g, _)| g);
        for (verb, resource) in [
            ("create", "gateways"),
            ("patch", "gateways"),
            ("patch", "gateways/status"),
        ] {
            add(verb, group, resource, Some(ns));
        }
    }
    if a.secret.token_ttl.is_some() {
        add("create", "", "serviceaccounts/token", Some(ns));
    }
    let mut needs: Vec<Need> = out.into_iter().map(Need::Can).collect();
    needs.extend(grants(&objs, ns));
    needs
}

/// An object's API group, resource (plural) and whether it is namespaced; `None` for a
/// kind meshctl does not write.
fn resource_of(o: &Value) -> Option<(&str, &'static str, bool)> {
    let (resource, namespaced) = kc::plural_of(o["kind"].as_str().unwrap_or_default())?;
    let group = o["apiVersion"]
        .as_str()
        .and_then(|av| av.rsplit_once('/'))
        .map_or("", |(g, _)| g);
    Some((group, resource, namespaced))
}

/// What `unjoin` needs in one cluster to remove `planned` (its dry run's list): delete each
/// kind listed (in `ns`, or cluster-wide), and patch the Namespace whose label it removes.
pub(super) fn deletes(planned: &[Value], ns: &str) -> Vec<Need> {
    let mut out: Vec<Access> = Vec::new();
    for o in planned {
        let Some((group, resource, namespaced)) = resource_of(o) else {
            continue;
        };
        let access = if o["kind"] == "Namespace" {
            Access::new("patch", group, resource, None).named(ns)
        } else {
            Access::new("delete", group, resource, namespaced.then_some(ns))
        };
        if !out.contains(&access) {
            out.push(access);
        }
    }
    out.into_iter().map(Need::Can).collect()
}

/// The SelfSubjectAccessReviews of one cluster: the answers so far, and whether one was
/// not taken up (see [`allowed`]).
#[derive(Default)]
struct Reviews {
    seen: HashMap<Access, bool>,
    unanswered: bool,
}

/// Whether a SelfSubjectAccessReview allows `a`; answers are remembered in `r`. Best
/// effort: a review that cannot be made (e.g. not allowed) counts as allowed, and the resume
/// hint covers a write that fails later. Once one is not taken up (unreachable, or
/// 429/503/504 past meshctl's retries) no other is asked and all count as allowed: each
/// would wait out the same retries (join asks a few dozen), and the dry run that follows
/// meets the outage and stops join.
async fn allowed(c: &Cluster, a: &Access, r: &mut Reviews) -> bool {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    if r.unanswered {
        return true;
    }
    if let Some(known) = r.seen.get(a) {
        return *known;
    }
    let (resource, sub) = a.resource.split_once('/').unwrap_or((&a.resource, ""));
    let mut attrs = json!({"verb": a.verb, "group": a.group, "resource": resource});
    if !sub.is_empty() {
        attrs["subresource"] = json!(sub);
    }
    if let Some(n) = &a.namespace {
        attrs["namespace"] = json!(n);
    }
    if let Some(n) = &a.name {
        attrs["name"] = json!(n);
    }
    let answer = match serde_json::from_value::<SelfSubjectAccessReview>(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attrs}}))
    {
        Ok(review) => {
            let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(c.client.clone());
            match api.create(&Default::default(), &review).await {
                Ok(got) => got.status.as_ref().is_none_or(|s| s.allowed),
                Err(e) => {
                    r.unanswered = kc::unanswered(&e);
                    true
                }
            }
        }
        Err(_) => true,
    };
    r.seen.insert(a.clone(), answer);
    answer
}

/// The needs of `wanted` that SelfSubjectAccessReviews deny, as text: a missing permission,
/// or a role or binding whose rules this context neither holds nor may grant (naming the
/// rules it lacks).
pub(super) async fn missing_permissions(c: &Cluster, wanted: &[Need]) -> Vec<String> {
    let mut seen = Reviews::default();
    let mut denied = Vec::new();
    for need in wanted {
        match need {
            Need::Can(a) => {
                if !allowed(c, a, &mut seen).await {
                    denied.push(a.describe());
                }
            }
            Need::Grant { what, held, or } => {
                if allowed(c, or, &mut seen).await {
                    continue;
                }
                let mut lacking = Vec::new();
                for a in held {
                    if !allowed(c, a, &mut seen).await {
                        lacking.push(a.describe());
                    }
                }
                if !lacking.is_empty() {
                    denied.push(format!(
                        "{what} grants permissions this context does not hold [{}], which \
                         Kubernetes refuses unless it may {} (RBAC escalation prevention)",
                        lacking.join(", "),
                        or.describe()
                    ));
                }
            }
        }
    }
    denied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_bindings_need_their_rules_or_escalate_and_bind() {
        let objs = reader_rbac("istio-system", "reader", false);
        let needs = grants(&objs, "istio-system");
        assert_eq!(needs.len(), 2, "the ClusterRole and its binding");
        let role_name = objs[1]["metadata"]["name"].as_str().unwrap();
        for (need, verb) in needs.iter().zip(["escalate", "bind"]) {
            let Need::Grant { held, or, .. } = need else {
                panic!("a grant")
            };
            assert_eq!(
                or,
                &Access::new(verb, RBAC_GROUP, "clusterroles", None).named(role_name)
            );
            assert!(held.contains(&Access::new("list", "", "nodes", None)));
            assert!(held.contains(&Access::new("watch", "", "nodes", None)));
        }
        // A RoleBinding to a ClusterRole grants its rules in the binding's namespace only.
        let mut rb = objs[2].clone();
        rb["kind"] = json!("RoleBinding");
        let needs = grants(&[objs[1].clone(), rb], "ns1");
        let Need::Grant { held, or, .. } = &needs[1] else {
            panic!("a grant")
        };
        assert!(held.contains(&Access::new("list", "", "nodes", Some("ns1"))));
        assert_eq!(or.namespace.as_deref(), Some("ns1"));
    }

    #[test]
    fn resource_names_are_separate_permissions() {
        let role = json!({"rules": [{"apiGroups": [""], "resources": ["secrets"],
            "resourceNames": ["a", "b"], "verbs": ["get"]}]});
        let got: Vec<String> = rule_accesses(&role, Some("ns"))
            .iter()
            .map(Access::describe)
            .collect();
        assert_eq!(
            got,
            [
                "get secrets \"a\" (core) in ns",
                "get secrets \"b\" (core) in ns"
            ]
        );
    }
}
