//! Kubernetes `Status` errors, shaped like the real API server's.

use serde_json::{Value, json};

/// An API error that the server returns as a `Status` object.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// `metadata.continue` of the Status (a 410 for an expired continue token carries one
    /// that continues at the latest state).
    pub list_continue: Option<String>,
}

fn details(group: &str, resource: &str, name: &str) -> Value {
    let mut d = json!({ "kind": resource });
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            list_continue: None,
        }
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        ApiError {
            details: Some(details(group, resource, name)),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(group, resource)),
            )
        }
    }

    /// The NamespaceLifecycle admission plugin's 403 for a create in a namespace whose
    /// phase is `Terminating` (`plugin/pkg/admission/namespace/lifecycle`, through
    /// `admission.NewForbidden` and `errors.NewForbidden`, with its `NamespaceTerminating`
    /// cause). `name` is the object's name, else its `generateName`.
    pub fn namespace_terminating(group: &str, resource: &str, name: &str, ns: &str) -> Self {
        let why = format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        );
        let message = if name.is_empty() {
            format!("{} is forbidden: {why}", qualified(group, resource))
        } else {
            format!(
                "{} \"{name}\" is forbidden: {why}",
                qualified(group, resource)
            )
        };
        let mut d = details(group, resource, name);
        d["causes"] = json!([{"reason": "NamespaceTerminating",
            "message": format!("namespace {ns} is being terminated"),
            "field": "metadata.namespace"}]);
        ApiError {
            details: Some(d),
            ..Self::new(403, "Forbidden", message)
        }
    }

    /// The server does not serve this path (unknown group, version or resource).
    pub fn path_not_found() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )
        }
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        ApiError {
            details: Some(details(group, resource, name)),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(group, resource)),
            )
        }
    }

    pub fn conflict(group: &str, resource: &str, name: &str) -> Self {
        Self::conflict_because(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `NewConflict(resource, name, why)`: 409 Conflict with the reason the write could not
    /// be made. `resource` is what the caller qualified the error with (a plural, or the Kind
    /// where kube-apiserver passes `gvk.Kind`, as `rest.BeforeDelete` does).
    pub fn conflict_because(group: &str, resource: &str, name: &str, why: &str) -> Self {
        ApiError {
            details: Some(details(group, resource, name)),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": {why}",
                    qualified(group, resource)
                ),
            )
        }
    }

    /// 422 Invalid with one cause, like field validation errors.
    pub fn invalid(
        group: &str,
        kind: &str,
        name: &str,
        field: &str,
        cause: &str,
        msg: &str,
    ) -> Self {
        let mut d = json!({
            "name": name, "kind": kind,
            "causes": [{ "reason": cause, "message": msg, "field": field }],
        });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        ApiError {
            details: Some(d),
            ..Self::new(
                422,
                "Invalid",
                format!(
                    "{} \"{name}\" is invalid: {field}: {msg}",
                    qualified(group, kind)
                ),
            )
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn method_not_allowed() -> Self {
        ApiError {
            details: Some(json!({})),
            ..Self::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )
        }
    }

    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json; got {ct:?}"
            ),
        )
    }

    /// 410 Gone for a resourceVersion older than the compacted history.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 410 for a list continue token whose resourceVersion was compacted (etcd3 `errors.go`):
    /// the Status carries a token that continues the list at the latest resourceVersion.
    pub fn continue_expired(token: String) -> Self {
        ApiError {
            list_continue: Some(token),
            ..Self::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue \
                 token in this response to retrieve the remainder of the results. Continuing with \
                 the provided token results in an inconsistent list - objects that were created, \
                 modified, or deleted between the time the first chunk was returned and now may \
                 show up in the list.",
            )
        }
    }

    /// 504 for a list at a resourceVersion the server has not reached after the watch cache's
    /// 3 s wait (`list_options::FRESHNESS_WAIT`): `storage.NewTooLargeResourceVersionError(
    /// requested, current, 1)`, whose message `NewTimeoutError` prefixes with "Timeout: ".
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        ApiError {
            details: Some(json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            })),
            ..Self::new(
                504,
                "Timeout",
                format!("Timeout: Too large resource version: {requested}, current: {current}"),
            )
        }
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, "InternalError", msg)
    }

    /// The `Status` object the server writes in the response body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "code": self.code,
        });
        // `reason` is omitempty in metav1.Status: an unclassified error has none.
        if !self.reason.is_empty() {
            s["reason"] = json!(self.reason);
        }
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        if let Some(c) = &self.list_continue {
            s["metadata"]["continue"] = json!(c);
        }
        s
    }
}

/// A `Status` of success, as returned by some DELETE calls.
pub fn success_status(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut d = details(group, resource, name);
    d["uid"] = json!(uid);
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d })
}
