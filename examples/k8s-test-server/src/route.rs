//! Reading a request: its path (discovery, or a resource path with namespace, name and
//! subresource), its query, its verb, and the RBAC attributes it is checked against.

use crate::error::ApiError;
use crate::rbac::Attributes;
use hyper::Method;

/// A resource request path.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResPath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub sub: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Resource(ResPath),
    Unknown,
}

pub(crate) fn parse_resource(group: &str, version: &str, rest: &[&str]) -> Route {
    let mut rest = rest;
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() >= 3 && !matches!(rest[2], "status" | "finalize") {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    if rest.len() > 3 {
        return Route::Unknown;
    }
    Route::Resource(ResPath {
        group: group.into(),
        version: version.into(),
        namespace,
        resource: rest[0].into(),
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

pub(crate) fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::Api,
        ["api", "v1"] => Route::GroupVersion(String::new(), "v1".into()),
        ["api", "v1", rest @ ..] => parse_resource("", "v1", rest),
        ["apis"] => Route::Apis,
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::GroupVersion(g.to_string(), v.to_string()),
        ["apis", g, v, rest @ ..] => parse_resource(g, v, rest),
        _ => Route::Unknown,
    }
}

/// The decoded query string.
pub(crate) struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True"))
    }

    pub fn dry_run(&self) -> Result<bool, ApiError> {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(k, _)| k == "dryRun")
            .map(|(_, v)| v.as_str())
            .collect();
        match values.as_slice() {
            [] => Ok(false),
            vs if vs.iter().all(|v| *v == "All") => Ok(true),
            vs => Err(ApiError::bad_request(format!(
                "Invalid dryRun value: {vs:?}; only \"All\" is supported"
            ))),
        }
    }
}

pub(crate) fn verb_of(method: &Method, p: &ResPath, q: &Query) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if p.name.is_some() => "get",
        Method::GET | Method::HEAD if q.flag("watch") => "watch",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if p.name.is_some() => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

pub(crate) fn attributes(method: &Method, path: &str, r: &Route, q: &Query) -> Attributes {
    match r {
        Route::Resource(p) => {
            let mut ns = p.namespace.clone().unwrap_or_default();
            if p.group.is_empty() && p.resource == "namespaces" {
                ns = p.name.clone().unwrap_or_default();
            }
            Attributes {
                verb: verb_of(method, p, q).into(),
                group: p.group.clone(),
                resource: p.resource.clone(),
                subresource: p.sub.clone().unwrap_or_default(),
                namespace: ns,
                name: p.name.clone().unwrap_or_default(),
                path: None,
            }
        }
        _ => Attributes {
            verb: method.as_str().to_lowercase().replace("head", "get"),
            path: Some(path.to_string()),
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let Route::Resource(p) = route("/api/v1/namespaces/ns1/services/a") else {
            panic!()
        };
        assert_eq!(
            (
                p.namespace.as_deref(),
                p.resource.as_str(),
                p.name.as_deref()
            ),
            (Some("ns1"), "services", Some("a"))
        );
        let Route::Resource(p) = route("/api/v1/namespaces/ns1") else {
            panic!()
        };
        assert_eq!(
            (p.namespace, p.resource.as_str(), p.name.as_deref()),
            (None, "namespaces", Some("ns1"))
        );
        let Route::Resource(p) = route("/api/v1/namespaces/ns1/status") else {
            panic!()
        };
        assert_eq!(
            (p.resource.as_str(), p.sub.as_deref()),
            ("namespaces", Some("status"))
        );
        let Route::Resource(p) = route("/apis/apps/v1/deployments") else {
            panic!()
        };
        assert_eq!(
            (p.group.as_str(), p.namespace, p.name),
            ("apps", None, None)
        );
        let Route::Resource(p) = route("/api/v1/namespaces/x/serviceaccounts/sa/token") else {
            panic!()
        };
        assert_eq!(p.sub.as_deref(), Some("token"));
        assert!(matches!(route("/apis/apps/v1"), Route::GroupVersion(..)));
        assert!(matches!(route("/foo"), Route::Unknown));
    }
}
