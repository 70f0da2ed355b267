//! Does a stored remote-secret kubeconfig work, and does its account hold every permission
//! istiod's remote-cluster registry uses (`reader_rules`)? One SelfSubjectAccessReview per
//! rule and verb, made with the stored token.

use std::time::Duration;

use anyhow::{Result, anyhow};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::Report;
use crate::kube as kc;
use crate::mesh::reader_rules::{READER_RULES, permission_name};

/// Lists services with the stored kubeconfig: its address, CA and token work. The error
/// says whether the token was refused (401), for the hint.
pub(super) async fn try_kubeconfig(
    k: Kubeconfig,
) -> std::result::Result<(kube::Client, String), (kc::Failure, String)> {
    let other = |e: String| (kc::Failure::Answered, e);
    let mut cfg = kube::Config::from_custom_kubeconfig(k, &KubeConfigOptions::default())
        .await
        .map_err(|e| other(e.to_string()))?;
    cfg.connect_timeout = Some(Duration::from_secs(5));
    cfg.read_timeout = Some(Duration::from_secs(15));
    let server = cfg.cluster_url.to_string();
    let client = kube::Client::try_from(cfg).map_err(|e| other(e.to_string()))?;
    let list = Api::<Service>::all(client.clone())
        .list(&ListParams::default().limit(500))
        .await;
    match list {
        Ok(l) => Ok((client, format!("listed {} services", l.items.len()))),
        Err(e) => Err(match kc::classify(&e) {
            kc::Failure::CredentialRefused => (
                kc::Failure::CredentialRefused,
                format!(
                    "the API server at {server} refused the stored token ({}): it is wrong, \
                     expired or revoked (e.g. its token Secret was deleted)",
                    kc::error_text(&e)
                ),
            ),
            kc::Failure::Unreachable => (
                kc::Failure::Unreachable,
                format!("cannot reach {server}: {}", kc::error_text(&e)),
            ),
            f => (f, format!("listing services: {}", kc::error_text(&e))),
        }),
    }
}

/// The reader permissions (`reader_rules`) the stored account lacks, asked with one
/// cluster-wide SelfSubjectAccessReview per rule and verb, as istiod's informers need them.
async fn missing_reader_permissions(client: &kube::Client) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for rule in READER_RULES {
        for verb in rule.verbs {
            let review: SelfSubjectAccessReview =
                serde_json::from_value(json!({"spec": {"resourceAttributes": {
                "verb": verb, "group": rule.group, "resource": rule.resource}}}))?;
            let out = Api::<SelfSubjectAccessReview>::all(client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| anyhow!("SelfSubjectAccessReview: {}", kc::error_text(&e)))?;
            if !out.status.is_some_and(|s| s.allowed) {
                missing.push(permission_name(rule.group, rule.resource, verb));
            }
        }
    }
    Ok(missing)
}

/// "reader permissions": every permission istiod's remote-cluster registry uses.
pub(super) async fn reader_permissions(
    r: &mut Report,
    scope: &str,
    client: &kube::Client,
    rejoin: &str,
) {
    let check = "reader permissions";
    match missing_reader_permissions(client).await {
        Ok(missing) if missing.is_empty() => {
            let names: Vec<String> = READER_RULES
                .iter()
                .map(|r| permission_name(r.group, r.resource, &r.verbs.join("/")))
                .collect();
            r.pass(scope, check, names.join(", "));
        }
        Ok(missing) => r.fail(
            scope,
            check,
            format!(
                "the account may not {}: istiod cannot sync this cluster",
                missing.join(", ")
            ),
            format!("restore the reader role: {rejoin}"),
        ),
        Err(e) => r.fail(scope, check, format!("{e:#}"), rejoin.to_string()),
    }
}
