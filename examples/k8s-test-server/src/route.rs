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

/// The name a list or watch selects with `fieldSelector=metadata.name=<name>` (also as one
/// term of several, with `==`), if it is a valid path segment: kubernetes
/// `staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go` makes it the
/// request's name, so that `resourceNames` rules apply to it. Field selectors escape `\`, `,`
/// and `=` with a backslash (`apimachinery/pkg/fields/selector.go`); a selector that does not
/// parse names nothing.
pub(crate) fn selected_name(field_selector: &str) -> Option<String> {
    let mut terms = vec![String::new()];
    let mut chars = field_selector.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let next = chars.next()?;
                let term = terms.last_mut()?;
                term.push('\\');
                term.push(next);
            }
            ',' => terms.push(String::new()),
            c => terms.last_mut()?.push(c),
        }
    }
    let mut name = None;
    for term in terms.iter().filter(|t| !t.is_empty()) {
        let (key, op, value) = split_term(term)?;
        if name.is_none() && key == "metadata.name" && op != "!=" {
            name = Some(unescape(value)?);
        }
    }
    name.filter(|n| !matches!(n.as_str(), "" | "." | "..") && !n.contains(['/', '%']))
}

/// A term's key, operator and (still escaped) value, split at the first unescaped operator.
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'!' if b.get(i + 1) == Some(&b'=') => return Some((&term[..i], "!=", &term[i + 2..])),
            b'=' if b.get(i + 1) == Some(&b'=') => return Some((&term[..i], "==", &term[i + 2..])),
            b'=' => return Some((&term[..i], "=", &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

fn unescape(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                c @ ('\\' | ',' | '=') => out.push(c),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

pub(crate) fn attributes(method: &Method, path: &str, r: &Route, q: &Query) -> Attributes {
    match r {
        Route::Resource(p) => {
            let mut ns = p.namespace.clone().unwrap_or_default();
            if p.group.is_empty() && p.resource == "namespaces" {
                ns = p.name.clone().unwrap_or_default();
            }
            let verb = verb_of(method, p, q);
            let name = match (&p.name, verb) {
                (Some(n), _) => n.clone(),
                (None, "list" | "watch") => q
                    .get("fieldSelector")
                    .and_then(selected_name)
                    .unwrap_or_default(),
                (None, _) => String::new(),
            };
            Attributes {
                verb: verb.into(),
                group: p.group.clone(),
                resource: p.resource.clone(),
                subresource: p.sub.clone().unwrap_or_default(),
                namespace: ns,
                name,
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

    #[test]
    fn a_list_selecting_one_name_is_a_request_for_that_name() {
        let name = |s: &str| selected_name(s);
        assert_eq!(name("metadata.name=gw").as_deref(), Some("gw"));
        assert_eq!(name("metadata.name==gw").as_deref(), Some("gw"));
        assert_eq!(
            name("metadata.namespace=x,metadata.name=gw").as_deref(),
            Some("gw")
        );
        assert_eq!(name(r"metadata.name=a\,b").as_deref(), Some("a,b"));
        assert_eq!(name("metadata.name!=gw"), None);
        assert_eq!(name("metadata.namespace=x"), None);
        assert_eq!(name("metadata.name=a/b"), None);
        assert_eq!(name("metadata.name=.."), None);
        assert_eq!(name("metadata.name"), None);
        assert_eq!(name(""), None);

        let attrs = |method: Method, path: &str, query: &str| {
            let q = Query(crate::util::parse_query(Some(query)));
            attributes(&method, path, &route(path), &q)
        };
        let path = "/api/v1/namespaces/istio-system/secrets";
        let a = attrs(Method::GET, path, "fieldSelector=metadata.name%3Dcacerts");
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "cacerts"));
        let a = attrs(
            Method::GET,
            path,
            "watch=true&fieldSelector=metadata.name%3Dcacerts",
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "cacerts"));
        // Not for deletecollection (requestinfo.go renames only a list or a watch).
        let a = attrs(
            Method::DELETE,
            path,
            "fieldSelector=metadata.name%3Dcacerts",
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("deletecollection", ""));
    }
}
