//! Reads: get, and list with label and field selectors and `limit`/`continue` pages, at the
//! latest state or at an exact earlier revision.

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{ObjKey, State, Store, meta_str};
use crate::util;
use serde_json::Value;

impl Store {
    // ---- direct (non-HTTP) reads for tests ------------------------------------------------

    /// One object, or `None`.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (rt, v) = self.resolve_kind(api_version, kind).ok()?;
        self.get_obj(&rt, &v, namespace, name).ok()
    }

    /// All objects of a kind, in one namespace or (with `None`) all of them.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok((rt, v)) = self.resolve_kind(api_version, kind) else {
            return Vec::new();
        };
        self.list_objs(
            &rt,
            &v,
            namespace,
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
        .items
    }

    // ---- reads --------------------------------------------------------------------------

    pub(crate) fn get_obj(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let st = self.lock();
        st.objects
            .get(&ObjKey::new(rt, ns, name))
            .map(|o| Store::render(rt, version, o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// Every object that matches, at the latest state. Paginated lists and lists at a
    /// requested resourceVersion go through `Store::list_at` (`list_options.rs`).
    pub(crate) fn list_objs(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> ListResult {
        let st = self.lock();
        let page = Page {
            rt,
            version,
            ns,
            labels,
            fields,
            limit: None,
        };
        page.read(&st, st.rv, None)
    }
}

/// A `continue` token's revision (`None` for `-1`: continue at the latest state) and the last
/// key it served; the token is base64 of `<revision>|<namespace>/<name>`.
fn decode_continue(token: &str) -> Result<(Option<u64>, String), ApiError> {
    let invalid = || ApiError::bad_request("continue key is not valid");
    let raw = util::b64_decode(token)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let (rv, key) = raw.split_once('|').ok_or_else(invalid)?;
    let rv = match rv {
        "-1" => None,
        rv => Some(rv.parse().map_err(|_| invalid())?),
    };
    Ok((rv, key.to_string()))
}

/// The revision a `continue` token reads at, for the wait before it (`list_options::parse`).
pub(crate) fn continue_revision(token: &str) -> Result<Option<u64>, ApiError> {
    decode_continue(token).map(|(rv, _)| rv)
}

/// Where a `continue` token resumes: its revision and the last key it served. A page is read
/// at the token's revision, as etcd3 `GetList` does
/// (`staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go`), so every page of a list shows
/// one snapshot; a compacted revision is 410 with a token that continues at the latest state
/// (`etcd3/errors.go`); a revision not reached yet (a forged token) is the watch cache's 504,
/// after the wait (`cacher/watch_cache.go` `waitAndListExactRV`).
pub(crate) fn continue_at(st: &State, token: &str) -> Result<(u64, Option<String>), ApiError> {
    let (rv, key) = decode_continue(token)?;
    let rv = rv.unwrap_or(st.rv);
    if rv < st.compacted {
        let fresh = util::b64(format!("-1|{key}").as_bytes());
        return Err(ApiError::continue_expired(fresh));
    }
    if rv > st.rv {
        return Err(ApiError::too_large_resource_version(rv, st.rv));
    }
    Ok((rv, Some(key)))
}

/// What one list request selects.
pub(crate) struct Page<'a> {
    pub rt: &'a ResourceType,
    pub version: &'a str,
    pub ns: Option<&'a str>,
    pub labels: &'a LabelSelector,
    pub fields: &'a FieldSelector,
    pub limit: Option<usize>,
}

impl Page<'_> {
    /// The page at revision `rev` (not below `st.compacted`) after key `after`
    /// (`namespace/name`), with a `continue` token carrying `rev` when more items match.
    pub(crate) fn read(&self, st: &State, rev: u64, after: Option<&str>) -> ListResult {
        let ns = if self.rt.namespaced { self.ns } else { None };
        let mut items = Vec::new();
        let mut next = None;
        let mut remaining = 0usize;
        for (k, o) in st.objects_at(&self.rt.group, &self.rt.plural, ns, rev) {
            if let Some(a) = after {
                let (ans, aname) = a.split_once('/').unwrap_or(("", a));
                if (k.namespace.as_str(), k.name.as_str()) <= (ans, aname) {
                    continue;
                }
            }
            if !self.labels.matches(o) || !self.fields.matches(o) {
                continue;
            }
            if self.limit.is_some_and(|l| l > 0 && items.len() >= l) {
                if next.is_none()
                    && let Some(last) = items.last()
                {
                    let lk = format!(
                        "{}/{}",
                        meta_str(last, "namespace").unwrap_or(""),
                        meta_str(last, "name").unwrap_or("")
                    );
                    next = Some(util::b64(format!("{rev}|{lk}").as_bytes()));
                }
                remaining += 1;
                continue;
            }
            items.push(Store::render(self.rt, self.version, o));
        }
        ListResult {
            items,
            resource_version: rev,
            continue_token: next,
            remaining,
        }
    }
}

/// One page of a list.
pub(crate) struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: usize,
}
