//! Request routing: authentication, authorization, discovery and the REST verbs.

use crate::auth::{self, Identity};
use crate::discovery;
use crate::error::{ApiError, success_status};
use crate::rbac::{self, Attributes};
use crate::resources::{Handling, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::Store;
use crate::util;
use crate::watch::{self, WatchRequest};
use crate::write::{PatchKind, WriteOpts};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Duration;

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

const MAX_BODY: usize = 64 << 20;

/// What every request handler needs.
pub(crate) struct Ctx {
    pub store: Store,
    pub tokens: auth::Tokens,
    pub git_version: String,
    pub server_address: String,
    pub bookmark_interval: Duration,
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Audit-Id", util::uuid())
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .expect("valid response")
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// A resource request path.
#[derive(Debug, Clone, Default)]
struct ResPath {
    group: String,
    version: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

#[derive(Debug)]
enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    Resource(ResPath),
    Unknown,
}

fn parse_resource(group: &str, version: &str, rest: &[&str]) -> Route {
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

fn route(path: &str) -> Route {
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

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("1" | "true" | "True"))
    }

    fn dry_run(&self) -> Result<bool, ApiError> {
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

fn verb_of(method: &Method, p: &ResPath, q: &Query) -> &'static str {
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

fn attributes(method: &Method, path: &str, r: &Route, q: &Query) -> Attributes {
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

/// Handles one request.
pub(crate) async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = Query(util::parse_query(req.uri().query()));
    let r = route(&path);
    if matches!(r, Route::Health) {
        return Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(b"ok")).boxed_unsync())
            .expect("response");
    }
    let token = auth::bearer(
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    );
    let Some(id) = token.and_then(|t| auth::authenticate(&ctx.store, &ctx.tokens, t)) else {
        tracing::debug!(%method, %path, "k8s-test-server: 401 unauthorized");
        return error_response(&ApiError::unauthorized());
    };
    let attrs = attributes(&method, &path, &r, &query);
    let decision = rbac::authorize(&ctx.store, &id, &attrs);
    if !decision.allowed {
        tracing::debug!(%method, %path, user = %id.user, "k8s-test-server: 403 forbidden");
        let mut e = ApiError::new(403, "Forbidden", rbac::forbidden_message(&id, &attrs));
        if attrs.path.is_none() {
            let mut d = json!({"kind": attrs.resource});
            if !attrs.name.is_empty() {
                d["name"] = json!(attrs.name);
            }
            if !attrs.group.is_empty() {
                d["group"] = json!(attrs.group);
            }
            e.details = Some(d);
        }
        return error_response(&e);
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("reading request body: {e}")));
        }
    };
    let resp = match dispatch(ctx, &id, &method, r, &query, &accept, &content_type, &body) {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %path, user = %id.user, status = resp.status().as_u16(), "k8s-test-server request");
    resp
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    ctx: &Ctx,
    id: &Identity,
    method: &Method,
    r: Route,
    q: &Query,
    accept: &str,
    content_type: &str,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let is_get = matches!(*method, Method::GET | Method::HEAD);
    let types = || ctx.store.resource_types();
    match r {
        Route::Version if is_get => Ok(json_response(200, &discovery::version(&ctx.git_version))),
        Route::Api | Route::Apis if is_get && accept.contains("as=APIGroupDiscoveryList") => {
            let v = discovery::aggregated(&types(), matches!(r, Route::Api));
            let mut resp = json_response(200, &v);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
                ),
            );
            Ok(resp)
        }
        Route::Api if is_get => Ok(json_response(
            200,
            &discovery::core_versions(&ctx.server_address),
        )),
        Route::Apis if is_get => Ok(json_response(200, &discovery::group_list(&types()))),
        Route::Group(g) if is_get => discovery::group(&types(), &g)
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::path_not_found),
        Route::GroupVersion(g, v) if is_get => discovery::resource_list(&types(), &g, &v)
            .map(|v| json_response(200, &v))
            .ok_or_else(ApiError::path_not_found),
        Route::Resource(p) => resource(ctx, id, method, p, q, accept, content_type, body),
        Route::Unknown => Err(ApiError::path_not_found()),
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn wants_meta_only(accept: &str) -> bool {
    accept.contains("as=PartialObjectMetadata")
}

fn partial(obj: &Value) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": obj["metadata"].clone()})
}

#[allow(clippy::too_many_arguments)]
fn resource(
    ctx: &Ctx,
    id: &Identity,
    method: &Method,
    p: ResPath,
    q: &Query,
    accept: &str,
    content_type: &str,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    let store = &ctx.store;
    let rt = store
        .resolve(&p.group, &p.version, &p.resource)
        .ok_or_else(ApiError::path_not_found)?;
    if p.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::path_not_found());
    }
    let status_sub = match p.sub.as_deref() {
        None => false,
        Some("status") if rt.status => true,
        Some("token") if rt.group.is_empty() && rt.plural == "serviceaccounts" => false,
        Some(_) => return Err(ApiError::path_not_found()),
    };
    let ns = p.namespace.as_deref();
    let v = p.version.as_str();
    let meta_only = wants_meta_only(accept);
    let dry_run = q.dry_run()?;
    let manager = q
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    let opts = WriteOpts {
        dry_run,
        manager,
        status: status_sub,
        raw: false,
    };
    let render_one = |o: Value| if meta_only { partial(&o) } else { o };

    if rt.handling == Handling::SelfSubjectAccessReview {
        if *method != Method::POST || p.name.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        return Ok(json_response(
            201,
            &self_subject_access_review(store, id, &parse_json(body)?),
        ));
    }

    match (method.clone(), p.name.as_deref()) {
        (Method::GET | Method::HEAD, Some(name)) => Ok(json_response(
            200,
            &render_one(store.get_obj(&rt, v, ns, name)?),
        )),
        (Method::GET | Method::HEAD, None) => {
            let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))?;
            if q.flag("watch") {
                return Ok(watch_response(
                    ctx, &rt, v, ns, labels, fields, q, meta_only,
                ));
            }
            let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok());
            let page = store.list_objs(&rt, v, ns, &labels, &fields, limit, q.get("continue"))?;
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = page.continue_token {
                meta["continue"] = json!(c);
                meta["remainingItemCount"] = json!(page.remaining);
            }
            let (api_version, kind) = if meta_only {
                (
                    "meta.k8s.io/v1".to_string(),
                    "PartialObjectMetadataList".to_string(),
                )
            } else {
                (rt.api_version(v), format!("{}List", rt.kind))
            };
            let items: Vec<Value> = page.items.into_iter().map(render_one).collect();
            Ok(json_response(
                200,
                &json!({"kind": kind, "apiVersion": api_version, "metadata": meta, "items": items}),
            ))
        }
        (Method::POST, None) => Ok(json_response(
            201,
            &store.create_obj(&rt, v, ns, parse_json(body)?, &opts)?,
        )),
        (Method::POST, Some(name)) if p.sub.as_deref() == Some("token") => {
            let out = auth::token_request(
                store,
                &ctx.tokens,
                ns.unwrap_or(""),
                name,
                &parse_json(body)?,
                dry_run,
            )?;
            Ok(json_response(201, &out))
        }
        (Method::PUT, Some(name)) => Ok(json_response(
            200,
            &store.update_obj(&rt, v, ns, name, parse_json(body)?, &opts)?,
        )),
        (Method::PATCH, Some(name)) => {
            let ct = content_type.split(';').next().unwrap_or("").trim();
            let patch = |kind| store.patch_obj(&rt, v, ns, name, kind, parse_json(body)?, &opts);
            let (out, created) = match ct {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    (patch(PatchKind::Merge)?, false)
                }
                "application/json-patch+json" => (patch(PatchKind::Json)?, false),
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                    let applied: Value = serde_yaml::from_slice(body)
                        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                    store.server_side_apply(&rt, v, ns, name, applied, &opts)?
                }
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            Ok(json_response(if created { 201 } else { 200 }, &out))
        }
        (Method::DELETE, name) => {
            let del = if body.is_empty() {
                json!({})
            } else {
                parse_json(body)?
            };
            let dry = dry_run
                || del
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x == "All"));
            let opts = WriteOpts {
                dry_run: dry,
                ..opts
            };
            let pre_rv = del
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str);
            let pre_uid = del.pointer("/preconditions/uid").and_then(Value::as_str);
            match name {
                Some(name) => {
                    let gone = store.delete_obj(&rt, v, ns, name, &opts, pre_rv, pre_uid)?;
                    if rt.group.is_empty() && matches!(rt.plural.as_str(), "namespaces" | "pods") {
                        Ok(json_response(200, &gone))
                    } else {
                        let uid = gone
                            .pointer("/metadata/uid")
                            .and_then(Value::as_str)
                            .unwrap_or("");
                        Ok(json_response(
                            200,
                            &success_status(&rt.group, &rt.plural, name, uid),
                        ))
                    }
                }
                None => {
                    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
                    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))?;
                    let page = store.list_objs(&rt, v, ns, &labels, &fields, None, None)?;
                    let mut items = Vec::new();
                    for o in page.items {
                        let n = o
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string();
                        let ons = o
                            .pointer("/metadata/namespace")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        match store.delete_obj(&rt, v, ons.as_deref(), &n, &opts, None, None) {
                            Ok(g) => items.push(g),
                            Err(e) if e.code == 404 => {}
                            Err(e) => return Err(e),
                        }
                    }
                    let rv = store.resource_version().to_string();
                    Ok(json_response(
                        200,
                        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(v), "metadata": {"resourceVersion": rv}, "items": items}),
                    ))
                }
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

#[allow(clippy::too_many_arguments)]
fn watch_response(
    ctx: &Ctx,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    labels: LabelSelector,
    fields: FieldSelector,
    q: &Query,
    meta_only: bool,
) -> Response<Body> {
    let rv = q
        .get("resourceVersion")
        .filter(|r| !r.is_empty() && *r != "0")
        .and_then(|r| r.parse::<u64>().ok());
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(1800);
    let req = WatchRequest {
        rt: rt.clone(),
        version: version.into(),
        namespace: if rt.namespaced {
            ns.map(str::to_string)
        } else {
            None
        },
        labels,
        fields,
        resource_version: rv,
        send_initial_events: q.flag("sendInitialEvents"),
        bookmarks: q.flag("allowWatchBookmarks"),
        timeout: Duration::from_secs(timeout),
        bookmark_interval: ctx.bookmark_interval,
        meta_only,
    };
    let rx = watch::start(ctx.store.clone(), req, ctx.shutdown.clone());
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Audit-Id", util::uuid())
        .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
        .expect("valid response")
}

fn self_subject_access_review(store: &Store, id: &Identity, body: &Value) -> Value {
    let s = |p: &str| {
        body.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let attrs = if body.pointer("/spec/nonResourceAttributes").is_some() {
        Attributes {
            verb: s("/spec/nonResourceAttributes/verb"),
            path: Some(s("/spec/nonResourceAttributes/path")),
            ..Default::default()
        }
    } else {
        Attributes {
            verb: s("/spec/resourceAttributes/verb"),
            group: s("/spec/resourceAttributes/group"),
            resource: s("/spec/resourceAttributes/resource"),
            subresource: s("/spec/resourceAttributes/subresource"),
            namespace: s("/spec/resourceAttributes/namespace"),
            name: s("/spec/resourceAttributes/name"),
            path: None,
        }
    };
    let d = rbac::authorize(store, id, &attrs);
    let mut status = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        status["reason"] = json!(d.reason);
    }
    json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": body.get("spec").cloned().unwrap_or(json!({})),
        "status": status,
    })
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
