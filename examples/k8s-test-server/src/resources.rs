//! The resource types this TEST SERVER serves: built-ins, plus any type defined by a
//! `CustomResourceDefinition` object in the store.

use serde_json::Value;
use std::cmp::Ordering;

/// Verbs of an ordinary stored resource.
pub const STD_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// How requests to a resource are handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Kept in the store.
    Stored,
    /// `selfsubjectaccessreviews`: create-only, answered and never stored.
    SelfSubjectAccessReview,
    /// `subjectaccessreviews`: the same for a user and groups the request names.
    SubjectAccessReview,
    /// `tokenreviews`: create-only, answered and never stored.
    TokenReview,
}

/// One served resource type.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    /// Has a `status` subresource (status is ignored on the main resource, and only status
    /// is taken from writes to `/status`).
    pub status: bool,
    pub handling: Handling,
    /// Defined by a CustomResourceDefinition (rather than built in).
    pub custom: bool,
}

impl ResourceType {
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn preferred_version(&self) -> &str {
        &self.versions[0]
    }

    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        match self.handling {
            Handling::Stored => STD_VERBS.to_vec(),
            Handling::SelfSubjectAccessReview
            | Handling::SubjectAccessReview
            | Handling::TokenReview => vec!["create"],
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn rt(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![version.into()],
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        status,
        handling: Handling::Stored,
        custom: false,
    }
}

/// The built-in resource types.
pub fn builtins() -> Vec<ResourceType> {
    let mut v = vec![
        rt("", "v1", "namespaces", "Namespace", false, &["ns"], true),
        rt("", "v1", "services", "Service", true, &["svc"], true),
        rt("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
        rt("", "v1", "pods", "Pod", true, &["po"], true),
        rt("", "v1", "nodes", "Node", false, &["no"], true),
        rt("", "v1", "secrets", "Secret", true, &[], false),
        rt("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
        rt(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
            false,
        ),
        rt(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            false,
        ),
        rt(
            "apps",
            "v1",
            "deployments",
            "Deployment",
            true,
            &["deploy"],
            true,
        ),
        rt(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            &["pdb"],
            true,
        ),
        rt(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            true,
            &["hpa"],
            true,
        ),
        rt(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            &[],
            false,
        ),
        rt(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ),
    ];
    let mut ssar = rt(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        &[],
        false,
    );
    ssar.handling = Handling::SelfSubjectAccessReview;
    v.push(ssar);
    let mut sar = rt(
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
        &[],
        false,
    );
    sar.handling = Handling::SubjectAccessReview;
    v.push(sar);
    let mut token_review = rt(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        false,
        &[],
        false,
    );
    token_review.handling = Handling::TokenReview;
    v.push(token_review);
    v
}

/// Orders Kubernetes versions by priority: GA before beta before alpha, higher numbers first
/// (`v1` > `v1beta2` > `v1beta1` > `v1alpha3`); non-conforming names last, alphabetically.
pub fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u32, u8, u32)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let major: u32 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (stage, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        Some((major, stage, n.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, sa, na)), Some((mb, sb, nb))) => sb.cmp(&sa).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The resource type a CustomResourceDefinition object defines (served versions only).
pub fn from_crd(crd: &Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let plural = s(names, "plural")?;
    let kind = s(names, "kind")?;
    let mut versions: Vec<(String, bool)> = spec
        .get("versions")?
        .as_array()?
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
        .filter_map(|v| Some((s(v, "name")?, v.pointer("/subresources/status").is_some())))
        .collect();
    if versions.is_empty() {
        return None;
    }
    versions.sort_by(|a, b| version_priority(&a.0, &b.0));
    Some(ResourceType {
        group: s(spec, "group")?,
        status: versions.iter().any(|v| v.1),
        versions: versions.into_iter().map(|v| v.0).collect(),
        singular: s(names, "singular").unwrap_or_else(|| kind.to_lowercase()),
        plural,
        kind,
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        short_names: names
            .get("shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        handling: Handling::Stored,
        custom: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order() {
        let mut v = vec!["v1alpha3", "v1", "v1beta1", "v2", "foo", "v1beta2"];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(v, ["v2", "v1", "v1beta2", "v1beta1", "v1alpha3", "foo"]);
    }
}
