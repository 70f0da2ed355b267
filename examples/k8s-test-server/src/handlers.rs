//! Resource requests: get, list, watch, create, update, patch, delete and deletecollection,
//! the `token` subresource, SelfSubjectAccessReview, SubjectAccessReview and TokenReview,
//! answered from the store.

use crate::auth::{self, Identity};
use crate::error::{ApiError, success_status};
use crate::field_errors::{self, FieldError};
use crate::list_options;
use crate::rbac::{self, Attributes};
use crate::resources::{Handling, ResourceType};
use crate::respond::{Body, Ctx, json_response};
use crate::review_validation;
use crate::route::{Query, ResPath};
use crate::selectors::{FieldLabels, FieldSelector, LabelSelector};
use crate::store::Store;
use crate::util;
use crate::watch::{self, WatchRequest};
use crate::write::{PatchKind, WriteOpts};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Response, header};
use serde_json::{Value, json};
use std::convert::Infallible;

use crate::escalation::{self, RbacWrite};

/// The User-Agent header of a request, bytes that are not UTF-8 replaced (Go reads the
/// header as a string and ranges over it the same way).
pub(crate) fn user_agent<B>(req: &hyper::Request<B>) -> String {
    req.headers()
        .get(header::USER_AGENT)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// `FieldManagerMaxLength` (`apimachinery/pkg/apis/meta/v1/validation/validation.go`).
const FIELD_MANAGER_MAX_LENGTH: usize = 128;

/// The manager of a write without `fieldManager`: `prefixFromUserAgent`
/// (`apiserver/pkg/endpoints/handlers/create.go`, used by `managerOrUserAgent` in create,
/// update and patch): the User-Agent up to its first `/`, without unprintable characters,
/// cut to at most 128 bytes at a character boundary. `kubectl/v1.31.0 (linux/amd64)
/// kubernetes/abc` is `kubectl`.
pub(crate) fn prefix_from_user_agent(ua: &str) -> String {
    let mut out = String::new();
    for c in ua.split('/').next().unwrap_or("").chars() {
        if !printable(c) {
            continue;
        }
        if out.len() + c.len_utf8() > FIELD_MANAGER_MAX_LENGTH {
            break;
        }
        out.push(c);
    }
    out
}

/// Go's `unicode.IsPrint` ([`field_errors::is_print`]).
fn printable(c: char) -> bool {
    field_errors::is_print(c)
}

/// `ValidateFieldManager` (`apimachinery/pkg/apis/meta/v1/validation/validation.go`): at most
/// 128 bytes, and every character printable (`unicode.IsPrint`; [`printable`]), each
/// unprintable one reported with Go's `%#U` and its byte position. An empty manager is unset.
fn field_manager_errors(manager: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if manager.len() > FIELD_MANAGER_MAX_LENGTH {
        errs.push(FieldError::too_long(
            "fieldManager",
            FIELD_MANAGER_MAX_LENGTH,
        ));
    }
    for (i, c) in manager.char_indices() {
        if !printable(c) {
            // `%#U` adds the quoted character only when it is printable: never here.
            let detail = format!("invalid character U+{:04X} (at position {i})", c as u32);
            errs.push(FieldError::invalid("fieldManager", manager, &detail));
        }
    }
    errs
}

/// The 422 of invalid request options (`errors.NewInvalid` on
/// `<Create|Update|Patch>Options.meta.k8s.io` with no name, as the create, update and patch
/// handlers answer `Validate<Create|Update|Patch>Options`).
fn check_options(kind: &str, errs: Vec<FieldError>) -> Result<(), ApiError> {
    field_errors::into_result("meta.k8s.io", kind, "", errs)
}

/// Whether a deleted object of `rt` is answered with the object rather than a Success
/// `Status` (the registry's `ReturnDeletedObject`: namespaces and pods).
pub(crate) fn returns_deleted_object(rt: &ResourceType) -> bool {
    rt.group.is_empty() && matches!(rt.plural.as_str(), "namespaces" | "pods")
}

/// The field labels `rt`'s lists, watches and deletecollections accept.
fn field_labels(store: &Store, rt: &ResourceType, version: &str) -> FieldLabels {
    let selectable = store.lock().selectable_fields(rt, version);
    FieldLabels::of(rt, selectable)
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
pub(crate) fn resource(
    ctx: &Ctx,
    id: &Identity,
    method: &Method,
    p: ResPath,
    q: &Query,
    accept: &str,
    content_type: &str,
    user_agent: &str,
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
    let field_manager = q
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    let manager_errors = field_manager_errors(field_manager.as_deref().unwrap_or(""));
    // Creates and updates validate their options before the body is decoded (`create.go`,
    // `update.go`); patches in their own branch, after the patch type.
    match *method {
        Method::POST => check_options("CreateOptions", manager_errors.clone())?,
        Method::PUT => check_options("UpdateOptions", manager_errors.clone())?,
        _ => {}
    }
    // Create, update and non-apply patches fall back to the User-Agent's manager
    // (`managerOrUserAgent`); apply requires `fieldManager` (`apply.rs`).
    let updater = field_manager
        .clone()
        .unwrap_or_else(|| prefix_from_user_agent(user_agent));
    let opts = WriteOpts {
        dry_run,
        manager: Some(updater),
        status: status_sub,
        raw: false,
        force: false,
        unvalidated: false,
    };
    let render_one = |o: Value| if meta_only { partial(&o) } else { o };
    // RBAC's escalation check runs on the object a write would store, before it is stored.
    let guarded = escalation::applies(&rt.group, &rt.plural, p.sub.as_deref(), id);
    let no_escalation = |new: &Value, old: Option<&Value>| {
        let w = RbacWrite {
            resource: &rt.plural,
            namespace: ns.unwrap_or(""),
            url_name: p.name.as_deref().unwrap_or(""),
            new,
            old,
        };
        escalation::check(store, id, &w)
    };

    if rt.handling == Handling::SelfSubjectAccessReview {
        if *method != Method::POST || p.name.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        return Ok(json_response(
            201,
            &self_subject_access_review(store, id, &parse_json(body)?)?,
        ));
    }

    if rt.handling == Handling::SubjectAccessReview {
        if *method != Method::POST || p.name.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        return Ok(json_response(
            201,
            &subject_access_review(store, &parse_json(body)?)?,
        ));
    }

    if rt.handling == Handling::TokenReview {
        if *method != Method::POST || p.name.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        return Ok(json_response(
            201,
            &auth::token_review(store, &ctx.tokens, &parse_json(body)?)?,
        ));
    }

    match (method.clone(), p.name.as_deref()) {
        (Method::GET | Method::HEAD, Some(name)) => Ok(json_response(
            200,
            &render_one(store.get_obj(&rt, v, ns, name)?),
        )),
        (Method::GET | Method::HEAD, None) => {
            let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
            let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))?
                .convert(&field_labels(store, &rt, v))?;
            if q.flag("watch") {
                return Ok(watch_response(
                    ctx, &rt, v, ns, labels, fields, q, meta_only,
                ));
            }
            let want = list_options::parse(q)?;
            let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok());
            let page =
                store.list_at(&rt, v, ns, &labels, &fields, want, limit, q.get("continue"))?;
            let mut meta = json!({"resourceVersion": page.resource_version.to_string()});
            if let Some(c) = page.continue_token {
                meta["continue"] = json!(c);
                // Only without selectors: etcd counts the objects the selectors would drop
                // (`storage/etcd3/store.go` GetList: nil for a non-empty predicate).
                if labels.is_empty() && fields.is_empty() {
                    meta["remainingItemCount"] = json!(page.remaining);
                }
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
        (Method::POST, None) => {
            let obj = parse_json(body)?;
            if guarded {
                no_escalation(&obj, None)?;
            }
            Ok(json_response(
                201,
                &store.create_obj(&rt, v, ns, obj, &opts)?,
            ))
        }
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
        (Method::PUT, Some(name)) => {
            let obj = parse_json(body)?;
            if guarded {
                let old = store.get_obj(&rt, v, ns, name).ok();
                no_escalation(&obj, old.as_ref())?;
            }
            Ok(json_response(
                200,
                &store.update_obj(&rt, v, ns, name, obj, &opts)?,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let ct = content_type.split(';').next().unwrap_or("").trim();
            let kind = match ct {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    Some(PatchKind::Merge)
                }
                "application/json-patch+json" => Some(PatchKind::Json),
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => None,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            // `ValidatePatchOptions` (`apimachinery/pkg/apis/meta/v1/validation`), before
            // the object is looked at: `force`, even `force=false`, is for apply only, which
            // needs a `fieldManager`; then the manager's own checks.
            let mut errs = Vec::new();
            if kind.is_some() && q.get("force").is_some() {
                errs.push(FieldError::forbidden(
                    "force",
                    "may not be specified for non-apply patch",
                ));
            }
            if kind.is_none() && field_manager.is_none() {
                errs.push(FieldError::required(
                    "fieldManager",
                    "is required for apply patch",
                ));
            }
            errs.extend(manager_errors);
            check_options("PatchOptions", errs)?;
            let opts = match kind {
                Some(_) => opts,
                None => WriteOpts {
                    manager: field_manager,
                    force: q.flag("force"),
                    ..opts
                },
            };
            let run = |opts: &WriteOpts| -> Result<(Value, bool), ApiError> {
                match kind {
                    Some(k) => Ok((
                        store.patch_obj(&rt, v, ns, name, k, parse_json(body)?, opts)?,
                        false,
                    )),
                    None => {
                        let applied: Value = serde_yaml::from_slice(body).map_err(|e| {
                            ApiError::bad_request(format!("error decoding YAML: {e}"))
                        })?;
                        store.server_side_apply(&rt, v, ns, name, applied, opts)
                    }
                }
            };
            if guarded {
                // The check runs on the patched object, where the real RBAC storage wraps
                // `UpdatedObject` (`rest.WrapUpdatedObjectInfo` in
                // `pkg/registry/rbac/*/policybased/storage.go`): after the patch (and an
                // apply's conflicts), before validation (`rest.BeforeUpdate`), so an invalid
                // patch that also escalates is a 403. Compute it without storing or
                // validating it.
                let old = store.get_obj(&rt, v, ns, name).ok();
                let dry = WriteOpts {
                    dry_run: true,
                    unvalidated: true,
                    ..opts.clone()
                };
                let (new, _) = run(&dry)?;
                no_escalation(&new, old.as_ref())?;
            }
            let (out, created) = run(&opts)?;
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
                    let (gone, deleted) =
                        store.delete_obj(&rt, v, ns, name, opts.dry_run, pre_rv, pre_uid)?;
                    // An object its finalizers keep (marked for deletion) is answered as it
                    // now is; a deleted one as its storage's `ReturnDeletedObject` says.
                    if !deleted || returns_deleted_object(&rt) {
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
                    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))?
                        .convert(&field_labels(store, &rt, v))?;
                    let page = store.list_objs(&rt, v, ns, &labels, &fields);
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
                        match store.delete_obj(&rt, v, ons.as_deref(), &n, opts.dry_run, None, None)
                        {
                            Ok((g, _)) => items.push(g),
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
    let timeout = watch::timeout(q.get("timeoutSeconds"));
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
        timeout,
        bookmark_interval: ctx.bookmark_interval,
        meta_only,
    };
    let rx = watch::start(
        ctx.store.clone(),
        req,
        ctx.shutdown.clone(),
        ctx.end_watches.clone(),
    );
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

fn self_subject_access_review(
    store: &Store,
    id: &Identity,
    body: &Value,
) -> Result<Value, ApiError> {
    review_validation::validate(body, "SelfSubjectAccessReview", false)?;
    Ok(access_review(store, id, body, "SelfSubjectAccessReview"))
}

/// A SubjectAccessReview: what the user and groups it names may do, validated as the API
/// server validates one (`review_validation`).
fn subject_access_review(store: &Store, body: &Value) -> Result<Value, ApiError> {
    review_validation::validate(body, "SubjectAccessReview", true)?;
    let user = body
        .pointer("/spec/user")
        .and_then(Value::as_str)
        .unwrap_or("");
    let groups: Vec<String> = body
        .pointer("/spec/groups")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(|g| g.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let id = Identity {
        user: user.to_string(),
        groups,
    };
    Ok(access_review(store, &id, body, "SubjectAccessReview"))
}

fn access_review(store: &Store, id: &Identity, body: &Value, kind: &str) -> Value {
    let s = |p: &str| {
        body.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let attrs = if body
        .pointer("/spec/nonResourceAttributes")
        .is_some_and(|v| !v.is_null())
    {
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
        "kind": kind,
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
    fn the_manager_of_a_user_agent_is_its_printable_prefix_of_at_most_128_bytes() {
        let p = prefix_from_user_agent;
        assert_eq!(p("kubectl/v1.31.0 (linux/amd64) kubernetes/abc"), "kubectl");
        assert_eq!(p("Go-http-client/1.1"), "Go-http-client");
        assert_eq!(p("my tool"), "my tool");
        assert_eq!(p(""), "");
        assert_eq!(p("/x"), "");
        assert_eq!(p("a\tb\u{7f}c\u{200b}d\u{a0}e/f"), "abcde");
        assert_eq!(p(&"m".repeat(200)), "m".repeat(128));
        // A character that would cross 128 bytes ends it, and nothing after it counts.
        let long = format!("{}é{}", "m".repeat(127), "x".repeat(5));
        assert_eq!(p(&long), "m".repeat(127));
    }
}
