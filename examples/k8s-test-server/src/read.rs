//! Reads: get, and list with label and field selectors and `limit`/`continue` pages.

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{ObjKey, Store, meta_str};
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
            None,
            None,
        )
        .map(|l| l.items)
        .unwrap_or_default()
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

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn list_objs(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListResult, ApiError> {
        let st = self.lock();
        let ns = if rt.namespaced { ns } else { None };
        let (list_rv, after) = match cont {
            Some(c) if !c.is_empty() => {
                let raw = util::b64_decode(c)
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                let (rv, key) = raw
                    .split_once('|')
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                // "-1" continues at the latest state (the token a 410 hands out).
                let rv: u64 = match rv {
                    "-1" => st.rv,
                    rv => rv
                        .parse()
                        .map_err(|_| ApiError::bad_request("continue key is not valid"))?,
                };
                if rv < st.compacted {
                    let fresh = util::b64(format!("-1|{key}").as_bytes());
                    return Err(ApiError::continue_expired(fresh));
                }
                (rv, Some(key.to_string()))
            }
            _ => (st.rv, None),
        };
        let start = ObjKey {
            group: rt.group.clone(),
            resource: rt.plural.clone(),
            namespace: ns.unwrap_or("").into(),
            name: String::new(),
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut remaining = 0usize;
        for (k, o) in st.objects.range(start..) {
            if k.group != rt.group
                || k.resource != rt.plural
                || ns.is_some_and(|n| n != k.namespace)
            {
                break;
            }
            if let Some(a) = after.as_deref() {
                let (ans, aname) = a.split_once('/').unwrap_or(("", a));
                if (k.namespace.as_str(), k.name.as_str()) <= (ans, aname) {
                    continue;
                }
            }
            if !labels.matches(o) || !fields.matches(o) {
                continue;
            }
            if limit.is_some_and(|l| l > 0 && items.len() >= l) {
                if next.is_none() {
                    let last: &Value = items.last().expect("limit > 0");
                    let lk = format!(
                        "{}/{}",
                        meta_str(last, "namespace").unwrap_or(""),
                        meta_str(last, "name").unwrap_or("")
                    );
                    next = Some(util::b64(format!("{list_rv}|{lk}").as_bytes()));
                }
                remaining += 1;
                continue;
            }
            items.push(Store::render(rt, version, o));
        }
        Ok(ListResult {
            items,
            resource_version: list_rv,
            continue_token: next,
            remaining,
        })
    }
}

/// One page of a list.
pub(crate) struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: usize,
}
