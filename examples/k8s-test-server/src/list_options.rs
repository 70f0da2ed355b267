//! A list's `resourceVersion` and `resourceVersionMatch`, checked and served as kube-apiserver
//! does by default. Judged against Kubernetes 1.36, the newest release in the sources read
//! (CHANGELOG-1.37 starts "since v1.36.0"); 1.34 and 1.35 take the same paths. Sources,
//! kubernetes/kubernetes `staging/src/k8s.io/apiserver/pkg/`:
//! - Which store answers: `storage/cacher/delegator.go` `CacheDelegator.GetList` and
//!   `cacher/delegator/interface.go` `ShouldDelegateList`. `NotOlderThan`, and a version with
//!   no match and no `limit`, always go to the watch cache. `Exact`, a version with no match
//!   and a `limit` (legacy exact), and a `continue` page go through `cacher.go`
//!   `ShouldDelegateExactRV`/`ShouldDelegateContinue`/`shouldDelegateExactRV`: a revision the
//!   cache has not reached (`watchCache.notFresh`) stays in the cache whenever consistent
//!   reads work (`delegator.ConsistentReadSupported`: `ConsistentListFromCache`, GA in 1.34,
//!   and etcd's RequestWatchProgress); only a past revision the cache snapshots no longer hold
//!   goes to etcd. `ListFromCacheSnapshot` is beta and on from 1.34 (`features/kube_features.go`).
//! - A revision not reached yet: `cacher/watch_cache.go` `waitUntilFreshAndList` →
//!   `waitAndListExactRV`/`waitAndListLatestRV` → `waitUntilFreshLocked` waits `blockTimeout`
//!   (3 s), then `storage/errors.go` `NewTooLargeResourceVersionError` with
//!   `resourceVersionTooHighRetrySeconds` (1): 504 `Timeout`, "Timeout: Too large resource
//!   version: N, current: M" (apimachinery `api/errors` `NewTimeoutError`), cause
//!   `ResourceVersionTooLarge`, `retryAfterSeconds: 1` (which `endpoints/handlers/
//!   responsewriters/writers.go` `ErrorNegotiated` also sends as `Retry-After: 1`).
//! - Not modelled: a future exact list that still reaches etcd (the 1.30–1.33 defaults, before
//!   `ListFromCacheSnapshot`, or etcd without RequestWatchProgress). `etcd3/store.go` `GetList`
//!   reads `WithRev`, and `etcd3/errors.go` `interpretListError` translates only `ErrCompacted`
//!   (410), so before 1.34 etcd's `ErrFutureRev` came back at once as a 500 with no reason and
//!   the message "etcdserver: mvcc: required revision is a future revision" (kubernetes
//!   #132358); from 1.34 (#132374) `GetList` answers it at once with the 504 above, but with
//!   `retrySeconds` 0 (no `retryAfterSeconds`, no `Retry-After`).
//!
//! Here:
//! - Invalid combinations are a 422 on `ListOptions`; `continue` with a `resourceVersion`
//!   other than `"0"` is a 400 at once (storage `ValidateListOptions`).
//! - `""`/`"0"`: the latest state.
//! - A version with `NotOlderThan`, or with no match and no `limit`: the latest state, once the
//!   server has reached that version.
//! - `Exact`, and a version other than `"0"` with no match and a `limit`: the state AS OF that
//!   revision, with the list's `metadata.resourceVersion` equal to it, items deleted since
//!   included and items modified since as they were. The store rebuilds it by undoing the
//!   later events of its history (`State::objects_at`), which reaches back to `compacted`;
//!   below that the answer is 410 `Expired`, as etcd answers a compacted one. The `continue`
//!   token of such a page carries the revision, so later pages show the same snapshot.
//! - Every form above and a `continue` token (`read.rs`) at a revision the server has not
//!   reached wait for it (up to 3 s, `wait_until_fresh`), then answer the 504 above.
//! - One difference: the store keeps one history for watches and lists, so after a simulated
//!   API server restart (`restart_watch_cache`) an exact list below the restart is 410 where
//!   a real etcd, not compacted, would still serve it.

use crate::error::ApiError;
use crate::field_errors::{FieldError, into_result};
use crate::read::{self, ListResult, Page};
use crate::resources::ResourceType;
use crate::route::Query;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::Store;
use serde_json::Value;
use std::time::Duration;

/// How long the watch cache waits for a resourceVersion it has not reached (`blockTimeout`).
pub(crate) const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// What a list asks for, after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListRv {
    /// "" (latest, consistent) or "0" (any): served from the current state here.
    Any,
    /// At least this version (`NotOlderThan`, or a version without a match or `limit`).
    NotOlderThan(u64),
    /// Exactly this version (`Exact`, or a version without a match but with a `limit`).
    Exact(u64),
    /// A `continue` page, read at its token's revision (a `-1` token is `Any`).
    Continue(u64),
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
    if let Some(token) = q.get("continue").filter(|c| !c.is_empty()) {
        // Storage `ValidateListOptions`: the token is decoded first, then the version refused.
        let rev = read::continue_revision(token)?;
        if !(rv.is_empty() || rv == "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        return Ok(rev.map_or(ListRv::Any, ListRv::Continue));
    }
    if rv.is_empty() || rv == "0" {
        return Ok(ListRv::Any);
    }
    let n: u64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
    // etcd3 `GetList`'s "legacy case": a paginated list at a version is an exact read.
    let legacy_exact = matching.is_empty()
        && q.get("limit")
            .and_then(|l| l.parse::<i64>().ok())
            .is_some_and(|l| l > 0);
    Ok(if matching == "Exact" || legacy_exact {
        ListRv::Exact(n)
    } else {
        ListRv::NotOlderThan(n)
    })
}

/// Whether a list at `want` can be served, given the server's current version and the oldest
/// one its history can rebuild (`compacted`).
pub(crate) fn check(want: ListRv, current: u64, compacted: u64) -> Result<(), ApiError> {
    match want {
        ListRv::Any => Ok(()),
        ListRv::Exact(n) if n < compacted => Err(ApiError::new(
            410,
            "Expired",
            "The resourceVersion for the provided list is too old.",
        )),
        ListRv::Exact(n) | ListRv::NotOlderThan(n) | ListRv::Continue(n) if n > current => {
            Err(ApiError::too_large_resource_version(n, current))
        }
        _ => Ok(()),
    }
}

impl Store {
    /// All objects of a kind as they were at revision `rev` (direct, non-HTTP read for tests):
    /// what `resourceVersionMatch=Exact` lists, or its error (410 below the kept history).
    pub fn list_at_revision(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        rev: u64,
    ) -> Result<Vec<Value>, ApiError> {
        let (rt, v) = self.resolve_kind(api_version, kind)?;
        let (labels, fields) = (LabelSelector::default(), FieldSelector::default());
        let want = ListRv::Exact(rev);
        let page = self.list_at(&rt, &v, namespace, &labels, &fields, want, None, None)?;
        Ok(page.items)
    }

    /// A list as `want` asks: the latest state, or the state at an exact revision rebuilt
    /// from the history; checked and read under one lock, so a compaction cannot fall between.
    /// A `continue` page is read at its token's revision (`read::continue_at`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn list_at(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        want: ListRv,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListResult, ApiError> {
        let st = self.lock();
        let (rev, after) = match cont.filter(|c| !c.is_empty()) {
            Some(_) if matches!(want, ListRv::Exact(_) | ListRv::NotOlderThan(_)) => {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            Some(c) => read::continue_at(&st, c)?,
            None => {
                check(want, st.rv, st.compacted)?;
                match want {
                    ListRv::Exact(n) => (n, None),
                    _ => (st.rv, None),
                }
            }
        };
        let page = Page {
            rt,
            version,
            ns,
            labels,
            fields,
            limit,
        };
        Ok(page.read(&st, rev, after.as_deref()))
    }
}

/// Waits (at most [`FRESHNESS_WAIT`]) until the server reaches the version a list asks for,
/// as the watch cache's `waitUntilFreshLocked` does for every form that names one.
pub(crate) async fn wait_until_fresh(store: &Store, want: ListRv) {
    let (ListRv::NotOlderThan(n) | ListRv::Exact(n) | ListRv::Continue(n)) = want else {
        return;
    };
    let mut signal = store.subscribe();
    let _ = tokio::time::timeout(FRESHNESS_WAIT, signal.wait_for(|s| s.rv >= n)).await;
}
