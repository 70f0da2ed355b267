//! After a refresh: whether each cluster's istiod picks the rewritten remote secrets up by
//! itself (istio/istio#60612, fixed in 1.30.3) or needs a restart, with the command.

use anyhow::Result;
use serde::Serialize;

use crate::istio::{ISTIOD_CONTAINER, ISTIOD_SELECTOR};
use crate::kube::{self as kc, Cluster};
use crate::mesh::credentials as cred;

/// Whether one cluster's istiod picks up the rewritten secrets by itself.
#[derive(Debug, Serialize)]
pub struct IstiodNote {
    pub context: String,
    pub versions: Vec<String>,
    /// `None` when the version cannot be told.
    pub restart_needed: Option<bool>,
    pub advice: String,
}

/// Whether `c`'s istiod reloads a rewritten remote secret without a restart (1.30.3+).
pub async fn istiod_note(c: &Cluster, ns: &str, dry_run: bool) -> Result<IstiodNote> {
    let ctx = &c.context;
    let deployments = kc::list(c, "apps/v1", "Deployment", Some(ns), ISTIOD_SELECTOR).await?;
    let mut found = Vec::new();
    for d in &deployments {
        let name = d["metadata"]["name"]
            .as_str()
            .unwrap_or("istiod")
            .to_string();
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let image = containers
            .iter()
            .find(|c| c["name"] == ISTIOD_CONTAINER)
            .or(containers.first())
            .and_then(|c| c["image"].as_str())
            .unwrap_or_default()
            .to_string();
        found.push((name, image.clone(), cred::istio_version(&image)));
    }
    let versions: Vec<String> = found
        .iter()
        .map(|(n, i, v)| match v {
            Some((a, b, c)) => format!("{n} {a}.{b}.{c}"),
            None => format!("{n} ({i})"),
        })
        .collect();
    let fixed = cred::rotation_fixed_in();
    let when = if dry_run { "after a refresh, " } else { "" };
    let restart = |names: Vec<&str>| {
        names
            .iter()
            .map(|n| format!("kubectl --context {ctx} -n {ns} rollout restart deployment/{n}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let known: Option<Vec<bool>> = found
        .iter()
        .map(|(_, _, v)| v.map(cred::picks_up_rotation))
        .collect();
    let (restart_needed, advice) = match known {
        Some(ok) if !ok.is_empty() && ok.iter().all(|b| *b) => (
            Some(false),
            format!(
                "{ctx}: {when}istiod ({}) picks up the rewritten remote secrets by itself \
                 (istio/istio#60612 is fixed in {fixed}); no restart needed",
                versions.join(", ")
            ),
        ),
        Some(ok) if !ok.is_empty() => {
            let old: Vec<&str> = found
                .iter()
                .zip(&ok)
                .filter(|(_, fixed)| !**fixed)
                .map(|((n, _, _), _)| n.as_str())
                .collect();
            (
                Some(true),
                format!(
                    "{ctx}: {when}istiod ({}) is older than {fixed} and may keep using the old \
                     token until restarted (istio/istio#60612): {}; or upgrade to {fixed}+",
                    versions.join(", "),
                    restart(old)
                ),
            )
        }
        _ => (
            None,
            format!(
                "{ctx}: {when}cannot tell istiod's version (no Deployment labelled {ISTIOD_SELECTOR} \
                 in {ns} with a versioned image{}): istiod before {fixed} may keep using the old \
                 token until restarted (istio/istio#60612): {}",
                if versions.is_empty() {
                    String::new()
                } else {
                    format!("; found {}", versions.join(", "))
                },
                restart(if found.is_empty() {
                    vec!["istiod"]
                } else {
                    found.iter().map(|(n, _, _)| n.as_str()).collect()
                })
            ),
        ),
    };
    Ok(IstiodNote {
        context: ctx.clone(),
        versions,
        restart_needed,
        advice,
    })
}
