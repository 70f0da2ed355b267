//! The request path: health, authentication, authorization, the request body, then
//! discovery or a resource handler (`handlers.rs`).

use crate::auth;
use crate::discovery;
use crate::error::ApiError;
use crate::faults::{Answer, Fault, Stage};
use crate::handlers;
use crate::list_options;
use crate::rbac;
use crate::respond::{Body, Ctx, error_response, json_response};
use crate::route::{Query, Route, attributes, route};
use crate::util;
use auth::Identity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, header};
use serde_json::json;

/// kube-apiserver's `MaxRequestBodyBytes` (`apiserver/pkg/server/config.go`, 3 MiB): a longer
/// body is refused with 413 (`endpoints/handlers/rest.go`, `limitedReadBody`).
const MAX_BODY: usize = 3 << 20;

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
    let attrs = attributes(&method, &path, &r, &query);
    let anonymous = Identity {
        user: "system:anonymous".into(),
        groups: Vec::new(),
    };
    if let Some(f) = ctx
        .faults
        .take(Stage::BeforeAuthentication, &attrs, &anonymous)
    {
        return fault_response(&f);
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
    if let Some(f) = ctx.faults.take(Stage::BeforeAuthorization, &attrs, &id) {
        return fault_response(&f);
    }
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
    if let Some(f) = ctx.faults.take(Stage::Handler, &attrs, &id) {
        return fault_response(&f);
    }
    ctx.faults.run_interleaved(&attrs);
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
    let user_agent = handlers::user_agent(&req);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("Request entity too large: limit is {MAX_BODY}"),
            ));
        }
        Err(e) => {
            return error_response(&ApiError::bad_request(format!("reading request body: {e}")));
        }
    };
    if let Route::Resource(p) = &r
        && attrs.verb == "list"
        && p.name.is_none()
        && let Ok(want) = list_options::parse(&query)
    {
        list_options::wait_until_fresh(&ctx.store, want).await;
    }
    let resp = match dispatch(
        ctx,
        &id,
        &method,
        r,
        &query,
        &accept,
        &content_type,
        &user_agent,
        &body,
    ) {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %path, user = %id.user, status = resp.status().as_u16(), "k8s-test-server request");
    resp
}

/// An injected fault's answer (a test control; see `faults.rs`).
fn fault_response(f: &Fault) -> Response<Body> {
    tracing::debug!(fault = ?f, "k8s-test-server: injected fault");
    match f.answer() {
        Answer::Status(e) => error_response(&e),
        Answer::Text {
            code,
            text,
            headers,
        } => {
            let mut b = Response::builder()
                .status(code)
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .header("X-Content-Type-Options", "nosniff");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Full::new(Bytes::from_static(text.as_bytes())).boxed_unsync())
                .expect("response")
        }
    }
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
    user_agent: &str,
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
        Route::Resource(p) => handlers::resource(
            ctx,
            id,
            method,
            p,
            q,
            accept,
            content_type,
            user_agent,
            body,
        ),
        Route::Unknown => Err(ApiError::path_not_found()),
        _ => Err(ApiError::method_not_allowed()),
    }
}
