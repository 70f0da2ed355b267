//! join's checks before its first write, in every cluster: the Secret and service account
//! the flags name, and (by SelfSubjectAccessReview) the permission for every write it makes.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{JoinArgs, Member};
use crate::istio::{GATEWAY_API_V1, SA_NAME_ANNOTATION, SA_TOKEN_TYPE};
use crate::kube::{self as kc, Cluster};
use crate::mesh::namespace;
use crate::mesh::remote_secret::reader_rbac;

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
        && !a.mutate.dry_run
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

/// One permission join needs: verb, API group, resource (with `/subresource`), namespace.
pub(super) type Access = (&'static str, String, String, Option<String>);

/// Every write join makes in one cluster, as permissions: the objects it applies (server-side
/// apply creates or patches), and the token it requests.
pub(super) fn writes(a: &JoinArgs, m: &Member, ns: &str) -> Vec<Access> {
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
    let mut add = |verb: &'static str, group: &str, resource: &str, namespace: Option<&str>| {
        let access = (
            verb,
            group.to_string(),
            resource.to_string(),
            namespace.map(str::to_string),
        );
        if !out.contains(&access) {
            out.push(access);
        }
    };
    for o in &objs {
        let group = o["apiVersion"]
            .as_str()
            .and_then(|av| av.rsplit_once('/'))
            .map_or("", |(g, _)| g);
        let Some((resource, namespaced)) = kc::plural_of(o["kind"].as_str().unwrap_or_default())
        else {
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
    out
}

/// The permissions of `wanted` that a SelfSubjectAccessReview denies, as text. Best effort:
/// a review that cannot be made (e.g. not allowed) counts as allowed, and the resume hint
/// covers a write that fails later.
pub(super) async fn missing_permissions(c: &Cluster, wanted: &[Access]) -> Vec<String> {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(c.client.clone());
    let mut denied = Vec::new();
    for (verb, group, resource, namespace) in wanted {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let mut attrs = json!({"verb": verb, "group": group, "resource": resource});
        if !sub.is_empty() {
            attrs["subresource"] = json!(sub);
        }
        if let Some(n) = namespace {
            attrs["namespace"] = json!(n);
        }
        let Ok(review) = serde_json::from_value::<SelfSubjectAccessReview>(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs}}))
        else {
            continue;
        };
        if let Ok(r) = api.create(&Default::default(), &review).await
            && r.status.is_some_and(|s| !s.allowed)
        {
            let full = if sub.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}/{sub}")
            };
            let group = if group.is_empty() { "core" } else { group };
            denied.push(match namespace {
                Some(n) => format!("{verb} {full} ({group}) in {n}"),
                None => format!("{verb} {full} ({group})"),
            });
        }
    }
    denied
}
