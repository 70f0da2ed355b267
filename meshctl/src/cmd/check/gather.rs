//! `check`'s API calls, and nothing else: a readable cluster's objects ([`ClusterFacts`]),
//! why a cluster cannot be read ([`Unread`]), the remote secrets stored in a cluster, and
//! whether a stored kubeconfig works and which reader permissions (`reader_rules`) its
//! account lacks (one SelfSubjectAccessReview per rule and verb, made with the stored token).
//! The judging is in `rules/`.

use std::time::Duration;

use anyhow::{Result, anyhow};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SubjectAccessReview};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use super::facts::{
    AmbientFacts, CanaryBinding, ClusterFacts, LiveFailure, StoredRemote, Ungranted, Unread,
    WaypointBinding,
};
use crate::istio::{
    APP_LABEL, CACERTS_SECRET, GATEWAY_NAME, MULTICLUSTER_LABEL, gateway_role_name,
    reader_role_name,
};
use crate::kube::{self as kc, Cluster, ConnectError};
use crate::mesh::gateway::{GATEWAY_READ_VERBS, GATEWAY_READS};
use crate::mesh::reader_rules::{READER_RULES, permission_name};

/// What a failed `connect` says about the cluster.
pub fn unread(e: &anyhow::Error) -> Unread {
    match e.downcast_ref::<ConnectError>() {
        Some(ConnectError::CredentialRefused { server, user, .. }) => Unread::Refused {
            server: server.clone(),
            user: user.clone(),
            error: format!("{e:#}"),
        },
        Some(ConnectError::Unusable { user, .. }) => Unread::Unusable {
            user: user.clone(),
            error: format!("{e:#}"),
        },
        // The fix goes in the hint, not twice.
        Some(ConnectError::Unreachable {
            context,
            server,
            detail,
            fix,
        }) => Unread::Unreachable {
            error: kc::cannot_reach(context, server, detail),
            fix: fix.clone(),
        },
        _ => Unread::Unreachable {
            error: format!("{e:#}"),
            fix: kc::UNREACHED_FIX.to_string(),
        },
    }
}

/// The namespace, cacerts, gateway Service, pods and ClusterRole of a reachable cluster.
pub async fn cluster(c: &Cluster, ns: &str) -> Result<ClusterFacts> {
    let namespace = kc::get_as(c, "v1", "Namespace", None, ns).await?;
    let cacerts = if namespace.is_some() {
        kc::get_as(c, "v1", "Secret", Some(ns), CACERTS_SECRET).await?
    } else {
        None
    };
    let gateway: Option<Service> = kc::get_as(c, "v1", "Service", Some(ns), GATEWAY_NAME).await?;
    // The pods the Service sends to: its selector (what its endpoints are), else join's label.
    let selector = gateway
        .as_ref()
        .and_then(|s| s.spec.as_ref()?.selector.as_ref())
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| format!("{APP_LABEL}={GATEWAY_NAME}"));
    let pods = kc::list_as(c, "v1", "Pod", Some(ns), &selector).await?;
    let node_port = gateway
        .as_ref()
        .and_then(|s: &Service| s.spec.as_ref()?.type_.as_deref())
        == Some("NodePort");
    let nodes = if node_port {
        Some(
            kc::list_as(c, "v1", "Node", None, "")
                .await
                .map_err(|e| format!("{e:#}")),
        )
    } else {
        None
    };
    let rbac = "rbac.authorization.k8s.io/v1";
    let role_name = gateway_role_name(ns);
    let read = |kind: &'static str| {
        let role_name = &role_name;
        async move {
            match kc::get(c, rbac, kind, None, role_name).await {
                Ok(o) => o.map(Ok),
                Err(e) => Some(Err(format!("{e:#}"))),
            }
        }
    };
    let gateway_role = read("ClusterRole").await;
    let (gateway_binding, gateway_denied) = match gateway_role {
        Some(Ok(_)) => (
            read("ClusterRoleBinding").await,
            Some(
                gateway_denied(&c.client, ns)
                    .await
                    .map_err(|e| format!("{e:#}")),
            ),
        ),
        _ => (None, None),
    };
    Ok(ClusterFacts {
        context: c.context.clone(),
        ns: ns.to_string(),
        namespace,
        cacerts,
        gateway,
        pods,
        nodes,
        gateway_role,
        gateway_binding,
        gateway_denied,
    })
}

/// What the gateway's account (`<ns>/istio-eastwestgateway`, with the groups a service
/// account's token gives) may not do of [`GATEWAY_READS`], cluster-wide: one
/// SubjectAccessReview per resource and verb, so every binding and role counts as the API
/// server counts them.
async fn gateway_denied(client: &kube::Client, ns: &str) -> Result<Vec<Ungranted>> {
    let user = format!("system:serviceaccount:{ns}:{GATEWAY_NAME}");
    let groups = [
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_string(),
    ];
    let asked = GATEWAY_READS
        .iter()
        .flat_map(|r| GATEWAY_READ_VERBS.iter().map(move |v| (*r, *v)));
    let answers = denied(client, Some((&user, &groups)), asked).await?;
    let mut ungranted: Vec<Ungranted> = Vec::new();
    for ((group, resource), verb) in answers {
        match ungranted.last_mut() {
            Some(u) if u.group == group && u.resource == resource => u.verbs.push(verb.into()),
            _ => ungranted.push(Ungranted {
                group: group.into(),
                resource: resource.into(),
                verbs: vec![verb.into()],
            }),
        }
    }
    Ok(ungranted)
}

/// Which of `asked` ((group, resource), verb), cluster-wide, the API server denies, in their
/// order: for `subject` (user and groups) by SubjectAccessReviews, or for the caller itself
/// by SelfSubjectAccessReviews. Four reviews run at a time, not one round trip after another.
async fn denied<'a>(
    client: &kube::Client,
    subject: Option<(&str, &[String])>,
    asked: impl Iterator<Item = ((&'a str, &'a str), &'a str)>,
) -> Result<Vec<((&'a str, &'a str), &'a str)>> {
    let reviews = asked.map(|((group, resource), verb)| async move {
        let attributes = json!({"verb": verb, "group": group, "resource": resource});
        let allowed = match subject {
            Some((user, groups)) => {
                let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {
                    "user": user, "groups": groups, "resourceAttributes": attributes}}))?;
                let out = Api::<SubjectAccessReview>::all(client.clone())
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|e| anyhow!("SubjectAccessReview: {}", kc::error_text(&e)))?;
                out.status.is_some_and(|s| s.allowed)
            }
            None => {
                let review: SelfSubjectAccessReview =
                    serde_json::from_value(json!({"spec": {"resourceAttributes": attributes}}))?;
                let out = Api::<SelfSubjectAccessReview>::all(client.clone())
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|e| anyhow!("SelfSubjectAccessReview: {}", kc::error_text(&e)))?;
                out.status.is_some_and(|s| s.allowed)
            }
        };
        Ok::<_, anyhow::Error>((!allowed).then_some(((group, resource), verb)))
    });
    // A few at a time: each open request may hold a connection of its own.
    let answers: Vec<_> = futures::stream::iter(reviews)
        .buffered(4)
        .try_collect()
        .await?;
    Ok(answers.into_iter().flatten().collect())
}

/// The Secrets labelled `istio/multiCluster=true` in `ns` (the remote secrets istiod
/// watches); [`stored_remotes`] parses each one's kubeconfigs.
pub async fn remote_secrets(c: &Cluster, ns: &str) -> Result<Vec<Secret>> {
    let selector = format!("{MULTICLUSTER_LABEL}=true");
    kc::list_as(c, "v1", "Secret", Some(ns), &selector).await
}

/// Every cluster key of a remote Secret and its parsed kubeconfig (`data`, else
/// `stringData`): istiod registers a cluster per key (`secretcontroller.go`, `addSecret`). A
/// kubeconfig that would run a command, read a file of this machine or send its token
/// unencrypted (`kube::stored_problems`) comes back as an error naming the Secret and those
/// fields: no client is built from it.
pub fn stored_remotes(secret: &Secret) -> Vec<StoredRemote> {
    let entries: Vec<(&String, std::result::Result<String, String>)> =
        match (&secret.data, &secret.string_data) {
            (Some(d), _) => d
                .iter()
                .map(|(k, v)| {
                    let text = String::from_utf8(v.0.clone())
                        .map_err(|_| "it is not UTF-8 text".to_string());
                    (k, text)
                })
                .collect(),
            (None, Some(d)) => d.iter().map(|(k, v)| (k, Ok(v.clone()))).collect(),
            (None, None) => Vec::new(),
        };
    let meta = &secret.metadata;
    let name = meta.name.clone().unwrap_or_default();
    entries
        .into_iter()
        .map(|(cluster, text)| {
            // Never the parser's Display: it quotes the lines around the fault, token included.
            let kubeconfig = text.and_then(|t| kc::parse_kubeconfig(&t)).and_then(|k| {
                let problems = kc::stored_problems(&k);
                if problems.is_empty() {
                    return Ok(k);
                }
                Err(format!(
                    "Secret {}/{name} (key {}) was not used: its kubeconfig has {}. meshctl check \
                     never runs a command, reads a file of this machine or sends a token \
                     unencrypted for a kubeconfig stored in a cluster (istiod refuses exec, \
                     tokenFile, client certificate and key files and auth providers other than \
                     oidc too)",
                    meta.namespace.as_deref().unwrap_or_default(),
                    kc::shown(cluster),
                    problems.join("; ")
                ))
            });
            StoredRemote {
                secret: name.clone(),
                cluster: cluster.clone(),
                kubeconfig,
            }
        })
        .collect()
}

/// Lists services with the stored kubeconfig: its address, CA and token work. The error
/// says whether the token was refused (401), for the hint. The kubeconfig is checked again
/// (`kube::stored_problems`) before any client is built from it.
///
/// A kubeconfig no client can be built from (invalid base64 or PEM, a current-context that
/// names no context) is [`LiveFailure::Unusable`]: no request was sent, so it says nothing
/// about the API server.
/// The UID of namespace kube-system as `client` (a stored credential) reads it: by a list
/// for that name, as istiod's reader may list namespaces but not get one.
pub async fn kube_system_uid(client: &kube::Client) -> std::result::Result<Option<String>, String> {
    let api = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let by_name = ListParams::default().fields("metadata.name=kube-system");
    match api.list(&by_name).await {
        Ok(l) => Ok(l
            .items
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some("kube-system"))
            .and_then(|n| n.metadata.uid)
            .filter(|u| !u.is_empty())),
        Err(e) => Err(kc::error_text(&e)),
    }
}

pub async fn try_kubeconfig(
    k: Kubeconfig,
) -> std::result::Result<(kube::Client, String), (LiveFailure, String)> {
    let failed = |f: kc::Failure, e: String| (LiveFailure::Request(f), e);
    let problems = kc::stored_problems(&k);
    if !problems.is_empty() {
        return Err(failed(
            kc::Failure::CredentialUnusable,
            format!(
                "the stored kubeconfig was not used: it has {}",
                problems.join("; ")
            ),
        ));
    }
    let unusable = |e: String| {
        (
            LiveFailure::Unusable,
            format!("the stored kubeconfig cannot be used, no request was sent: {e}"),
        )
    };
    let mut cfg = kube::Config::from_custom_kubeconfig(k, &KubeConfigOptions::default())
        .await
        .map_err(|e| unusable(e.to_string()))?;
    cfg.connect_timeout = Some(Duration::from_secs(kc::CONNECT_TIMEOUT_S));
    cfg.read_timeout = Some(Duration::from_secs(15));
    let server = kc::shown_server(&cfg.cluster_url.to_string());
    let who = format!("the stored kubeconfig's server {server}");
    let client = kc::client(cfg, &who).map_err(|e| {
        if e.credential {
            let detail = format!("the stored credential cannot be used: {}", e.detail);
            failed(kc::Failure::CredentialUnusable, detail)
        } else {
            unusable(e.detail)
        }
    })?;
    let list = Api::<Service>::all(client.clone())
        .list(&ListParams::default().limit(500))
        .await;
    match list {
        Ok(l) => Ok((client, format!("listed {} services", l.items.len()))),
        Err(e) => Err(failed_request(&e, &server)),
    }
}

/// A failed request with the stored kubeconfig: what it means, and the detail.
fn failed_request(e: &kube::Error, server: &str) -> (LiveFailure, String) {
    let (f, detail) = match kc::classify(e) {
        kc::Failure::CredentialRefused => (
            kc::Failure::CredentialRefused,
            format!(
                "the API server at {server} refused the stored token ({}): it is wrong, \
                     expired or revoked (e.g. its token Secret was deleted)",
                kc::error_text(e)
            ),
        ),
        kc::Failure::Unreachable => (
            kc::Failure::Unreachable,
            format!("cannot reach {server}: {}", kc::error_text(e)),
        ),
        kc::Failure::CredentialUnusable => (
            kc::Failure::CredentialUnusable,
            format!(
                "the stored credential cannot be used: {}",
                kc::error_text(e)
            ),
        ),
        f => (f, format!("listing services: {}", kc::error_text(e))),
    };
    (LiveFailure::Request(f), detail)
}

/// Whether `source` has meshctl's reader binding for service account `ns/sa`: the
/// ClusterRoleBinding `reader_role_name(ns, sa)` (what `create-remote-secret` makes for it),
/// to the ClusterRole of that name, with that account among its subjects.
pub async fn reader_binding(source: &Cluster, ns: &str, sa: &str) -> Result<bool> {
    let role = reader_role_name(ns, sa);
    let rbac = "rbac.authorization.k8s.io/v1";
    let Some(b) = kc::get(source, rbac, "ClusterRoleBinding", None, &role).await? else {
        return Ok(false);
    };
    let binds = b["subjects"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == ns)
    });
    Ok(binds && b["roleRef"]["kind"] == "ClusterRole" && b["roleRef"]["name"] == role.as_str())
}

/// The reader permissions (`reader_rules`) the stored account lacks, asked with one
/// cluster-wide SelfSubjectAccessReview per rule and verb, as istiod's informers need them.
pub async fn missing_reader_permissions(client: &kube::Client) -> Result<Vec<String>> {
    let asked = READER_RULES
        .iter()
        .flat_map(|r| r.verbs.iter().map(move |v| ((r.group, r.resource), *v)));
    let missing = denied(client, None, asked).await?;
    Ok(missing
        .into_iter()
        .map(|((group, resource), verb)| permission_name(group, resource, verb))
        .collect())
}

/// The ambient objects of a readable cluster: istiod's Deployments, the gateway's Deployment
/// and certificate Secret, the `istio-remote` Gateways and the global Services.
pub async fn ambient(c: &Cluster, ns: &str) -> Result<AmbientFacts> {
    use crate::istio::{
        GATEWAY_API_V1, GLOBAL_SERVICE_LABEL, HBONE_CERTS_SECRET, ISTIOD_SELECTOR,
        REMOTE_GATEWAY_CLASS, USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL,
    };
    use std::collections::{BTreeMap, BTreeSet};
    let istiods = kc::list_as(c, "apps/v1", "Deployment", None, ISTIOD_SELECTOR).await?;
    let gateway = kc::get_as(c, "apps/v1", "Deployment", Some(ns), GATEWAY_NAME).await?;
    let hbone_secret = kc::get_as(c, "v1", "Secret", Some(ns), HBONE_CERTS_SECRET).await?;
    let name_of = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let gateways = kc::list(c, GATEWAY_API_V1, "Gateway", None, "").await?;
    // istiod takes any Gateway with addresses as a waypoint (`WaypointsCollection`).
    let ready_waypoints: BTreeSet<String> = gateways
        .iter()
        .filter(|g| {
            g["status"]["addresses"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .map(name_of)
        .collect();
    let remote_gateways = gateways
        .into_iter()
        .filter(|g| g["spec"]["gatewayClassName"] == REMOTE_GATEWAY_CLASS)
        .collect();
    let selector = format!("{GLOBAL_SERVICE_LABEL}=true");
    let services = kc::list(c, "v1", "Service", None, &selector).await?;
    let global_services = services.iter().map(name_of).collect();
    // A Service's own `istio.io/use-waypoint` decides (`none` opts out), else its Namespace's.
    let mut waypoint_bound = Vec::new();
    let mut namespaces: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for s in &services {
        let ns = s["metadata"]["namespace"].as_str().unwrap_or_default();
        let from_namespace = s["metadata"]["labels"][USE_WAYPOINT_LABEL].is_null();
        let source = if from_namespace {
            if !namespaces.contains_key(ns) {
                // Unreadable (RBAC): no namespace binding known; the check only warns.
                let n = kc::get(c, "v1", "Namespace", None, ns).await.ok().flatten();
                namespaces.insert(ns.to_string(), n);
            }
            namespaces[ns]
                .as_ref()
                .map_or(Value::Null, |n| n["metadata"].clone())
        } else {
            s["metadata"].clone()
        };
        let labels = &source["labels"];
        let Some(label) = labels[USE_WAYPOINT_LABEL].as_str().filter(|w| *w != "none") else {
            continue;
        };
        let wp_ns = labels[USE_WAYPOINT_NAMESPACE_LABEL].as_str().unwrap_or(ns);
        let waypoint = format!("{wp_ns}/{label}");
        let canary = canary_of(ns, &s["metadata"], from_namespace.then_some(&source)).map(
            |(waypoint, weight)| CanaryBinding {
                ready: ready_waypoints.contains(&waypoint),
                waypoint,
                weight,
            },
        );
        waypoint_bound.push(WaypointBinding {
            service: name_of(s),
            label: label.to_string(),
            ready: ready_waypoints.contains(&waypoint),
            waypoint,
            from_namespace,
            canary,
        });
    }
    Ok(AmbientFacts {
        istiods,
        gateway,
        hbone_secret,
        remote_gateways,
        global_services,
        waypoint_bound,
    })
}

/// The canary waypoint (`namespace/name`) and weight annotation a Service in `ns` names with
/// its waypoint: from its own metadata `svc`, or, when its waypoint is its Namespace's
/// (`from_ns`, that Namespace's metadata), from the Namespace with the Service's own label and
/// annotation first (istiod's `getUseWaypointCanary`, `getCanaryWeight`). `""` and `none`
/// name none.
fn canary_of(ns: &str, svc: &Value, from_ns: Option<&Value>) -> Option<(String, Option<String>)> {
    use crate::istio::{
        CANARY_WEIGHT_ANNOTATION, USE_WAYPOINT_CANARY_LABEL, USE_WAYPOINT_CANARY_NAMESPACE_LABEL,
    };
    let labelled = |m: &Value| !m["labels"][USE_WAYPOINT_CANARY_LABEL].is_null();
    let named = match from_ns {
        Some(n) if !labelled(svc) => n,
        _ => svc,
    };
    let name = named["labels"][USE_WAYPOINT_CANARY_LABEL]
        .as_str()
        .filter(|n| !n.is_empty() && *n != "none")?;
    let wp_ns = named["labels"][USE_WAYPOINT_CANARY_NAMESPACE_LABEL]
        .as_str()
        .unwrap_or(ns);
    let weight = |m: &Value| {
        m["annotations"][CANARY_WEIGHT_ANNOTATION]
            .as_str()
            .map(str::to_owned)
    };
    let weight = weight(svc).or_else(|| from_ns.and_then(weight));
    Some((format!("{wp_ns}/{name}"), weight))
}
