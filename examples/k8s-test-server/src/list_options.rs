//! A list's `resourceVersion` and `resourceVersionMatch`, checked as kube-apiserver checks
//! them (`apimachinery/pkg/apis/meta/internalversion/validation`, the watch cache's
//! `waitUntilFreshAndBlock`, etcd3 `errors.go`): invalid combinations are a 422 on
//! `ListOptions`, `Exact` at a compacted version is 410, and a version the server has not
//! reached is waited for (up to 3 s) and then a 504.

use crate::error::ApiError;
use crate::field_errors::{FieldError, into_result};
use crate::route::Query;
use crate::store::Store;
use std::time::Duration;

/// How long the watch cache waits for a resourceVersion it has not reached.
pub(crate) const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// What a list asks for, after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListRv {
    /// "" (latest, consistent) or "0" (any): served from the current state here.
    Any,
    /// At least this version (`NotOlderThan`, or a version without a match).
    NotOlderThan(u64),
    /// Exactly this version.
    Exact(u64),
}

pub(crate) fn parse(q: &Query) -> Result<ListRv, ApiError> {
    let rv = q.get("resourceVersion").unwrap_or("");
    let matching = q.get("resourceVersionMatch").unwrap_or("");
    let mut errs = Vec::new();
    let field = "resourceVersionMatch";
    if !matching.is_empty() {
        if rv.is_empty() {
            errs.push(FieldError::forbidden(
                field,
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if q.get("continue").is_some_and(|c| !c.is_empty()) {
            errs.push(FieldError::forbidden(
                field,
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if !matches!(matching, "Exact" | "NotOlderThan") {
            errs.push(FieldError::not_supported(
                field,
                matching,
                &["", "Exact", "NotOlderThan"],
            ));
        }
        if matching == "Exact" && rv == "0" {
            errs.push(FieldError::forbidden(
                field,
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    into_result("meta.k8s.io", "ListOptions", "", errs)?;
    if rv.is_empty() || rv == "0" {
        return Ok(ListRv::Any);
    }
    let n: u64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
    Ok(if matching == "Exact" {
        ListRv::Exact(n)
    } else {
        ListRv::NotOlderThan(n)
    })
}

/// The answer for a list at `want`, given the server's current and oldest kept versions:
/// `Ok` to serve the current state.
pub(crate) fn check(want: ListRv, current: u64, compacted: u64) -> Result<(), ApiError> {
    match want {
        ListRv::Any => Ok(()),
        ListRv::Exact(n) if n < compacted => Err(ApiError::new(
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.",
        )),
        ListRv::Exact(n) | ListRv::NotOlderThan(n) if n > current => {
            Err(ApiError::too_large_resource_version(n, current))
        }
        _ => Ok(()),
    }
}

/// Waits (at most [`FRESHNESS_WAIT`]) until the server reaches the version a list asks for.
pub(crate) async fn wait_until_fresh(store: &Store, want: ListRv) {
    let (ListRv::NotOlderThan(n) | ListRv::Exact(n)) = want else {
        return;
    };
    let mut signal = store.subscribe();
    let _ = tokio::time::timeout(FRESHNESS_WAIT, signal.wait_for(|s| s.rv >= n)).await;
}
