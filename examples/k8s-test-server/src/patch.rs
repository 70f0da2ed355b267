//! Patch semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902), the simplified
//! server-side apply merge, and the field ownership it rests on.
//!
//! A manager's fields are kept as a partial object holding the values it set: maps are
//! walked key by key, anything else (lists included) is one atomic field. That is
//! structured-merge-diff's field set for maps and atomic lists; lists keyed by merge keys
//! are coarser here (one field for the whole list).

use crate::error::ApiError;
use serde_json::{Map, Value};

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything else
/// (lists included) replaces. Strategic merge patches are applied the same way (see README).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), ApiError> {
    let idx = path
        .rfind('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {path:?}")))?;
    Ok((path[..idx].to_string(), unescape(&path[idx + 1..])))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let missing = || {
        ApiError::new(
            422,
            "Invalid",
            format!("jsonpatch add operation does not apply: doc is missing path: {path:?}"),
        )
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>().map_err(|_| missing())?
            };
            if i > a.len() {
                return Err(missing());
            }
            a.insert(i, value);
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, last) = split_pointer(path)?;
    let missing = || {
        ApiError::new(
            422,
            "Invalid",
            format!("jsonpatch remove operation does not apply: doc is missing path: {path:?}"),
        )
    };
    match doc.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last.parse::<usize>().map_err(|_| missing())?;
            if i >= a.len() {
                return Err(missing());
            }
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, move, copy, test.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    for op in ops {
        let s = |k: &str| op.get(k).and_then(Value::as_str).map(str::to_string);
        let path =
            s("path").ok_or_else(|| ApiError::bad_request("json patch operation without path"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::bad_request("json patch operation without value"))
        };
        match s("op").as_deref() {
            Some("add") => add(doc, &path, value()?)?,
            Some("remove") => {
                remove(doc, &path)?;
            }
            Some("replace") => {
                remove(doc, &path)?;
                add(doc, &path, value()?)?;
            }
            Some("move") => {
                let from = s("from").ok_or_else(|| ApiError::bad_request("move without from"))?;
                let v = remove(doc, &from)?;
                add(doc, &path, v)?;
            }
            Some("copy") => {
                let from = s("from").ok_or_else(|| ApiError::bad_request("copy without from"))?;
                let v = doc.pointer(&from).cloned().ok_or_else(|| {
                    ApiError::new(422, "Invalid", format!("copy from missing path {from:?}"))
                })?;
                add(doc, &path, v)?;
            }
            Some("test") => {
                if doc.pointer(&path) != Some(&value()?) {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!("testing value {path:?} failed"),
                    ));
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported json patch op {other:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Removes from `live` the fields that the previous applied configuration set and the new one
/// no longer sets (maps only; lists are atomic). This is the part of server-side apply that
/// managed-fields tracking exists for, reduced to one manager's last applied configuration
/// less the fields others have taken since ([`disown_changed`], [`disown_taken`]). A map the
/// manager stops applying loses only its keys, and goes when nothing else is left in it.
pub fn prune_removed(live: &mut Value, prev_applied: &Value, new_applied: &Value) {
    let (Value::Object(l), Value::Object(p)) = (live, prev_applied) else {
        return;
    };
    let none = Value::Object(Default::default());
    for (k, pv) in p {
        let nv = new_applied.get(k);
        match (nv, l.get_mut(k)) {
            (Some(nv), Some(lv)) => prune_removed(lv, pv, nv),
            (None, Some(lv)) if pv.is_object() && lv.is_object() => {
                prune_removed(lv, pv, &none);
                if lv.as_object().is_some_and(|m| m.is_empty()) {
                    l.remove(k);
                }
            }
            (None, _) => {
                l.remove(k);
            }
            (Some(_), None) => {}
        }
    }
}

/// Drops from a manager's fields those `live` no longer holds as it set them: another
/// writer changed or removed them, and so owns them now (structured-merge-diff moves a
/// changed field to the updater's manager, and to a forcing applier), so this manager's
/// later applies leave them alone and its conflicts no longer name them.
pub fn disown_changed(applied: &mut Value, live: &Value) {
    let Value::Object(a) = applied else {
        return;
    };
    a.retain(|k, av| match live.get(k) {
        Some(lv) if av.is_object() && lv.is_object() => {
            disown_changed(av, lv);
            true
        }
        Some(lv) => lv == av,
        None => false,
    });
}

/// Drops from `applied` the fields `taken` holds: what a manager stops applying is removed
/// only when no other manager owns it (structured-merge-diff prunes only fields no manager
/// keeps).
pub fn disown_taken(applied: &mut Value, taken: &Value) {
    let (Value::Object(a), Value::Object(t)) = (applied, taken) else {
        return;
    };
    for (k, tv) in t {
        match a.get_mut(k) {
            Some(av) if av.is_object() && tv.is_object() => disown_taken(av, tv),
            Some(_) => {
                a.remove(k);
            }
            None => {}
        }
    }
}

/// The fields of `new` that `old` does not hold with the same value (added or changed), as a
/// partial object: what an update's manager comes to own (`fieldmanager`'s
/// `managedFieldsUpdater`: the fields an update changes move to its manager). `None` when
/// nothing changed.
pub fn changed(old: Option<&Value>, new: &Value) -> Option<Value> {
    match (old, new) {
        (Some(Value::Object(o)), Value::Object(n)) => {
            let out: Map<String, Value> = n
                .iter()
                .filter_map(|(k, nv)| changed(o.get(k), nv).map(|c| (k.clone(), c)))
                .collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        (_, Value::Object(n)) if !n.is_empty() => changed(Some(&Value::Object(Map::new())), new),
        (Some(o), n) if o == n => None,
        (_, n) => Some(n.clone()),
    }
}

/// The fields of `owned` (another manager's) that applying `applied` over `live` would
/// change: the conflicts of a non-forced apply (structured-merge-diff's `Updater`: the
/// other managers' fields among those the merge modifies or adds). Each is a path of field
/// names, sorted.
pub fn conflicts(applied: &Value, live: &Value, owned: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    walk_conflicts(applied, Some(live), owned, &mut Vec::new(), &mut out);
    out.sort();
    out
}

fn walk_conflicts(
    applied: &Value,
    live: Option<&Value>,
    owned: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    if let (Value::Object(a), Value::Object(o)) = (applied, owned) {
        for (k, av) in a {
            if let Some(ov) = o.get(k) {
                path.push(k.clone());
                walk_conflicts(av, live.and_then(|l| l.get(k)), ov, path, out);
                path.pop();
            }
        }
        return;
    }
    // One of the two is a single field here: the applied value replaces or merges into it.
    let changes = match live {
        Some(l) => {
            let mut merged = l.clone();
            apply_merge(&mut merged, applied);
            merged != *l
        }
        None => true,
    };
    if !changes {
        return;
    }
    match owned {
        Value::Object(o) if !o.is_empty() => leaves(owned, path, out),
        _ => out.push(path.clone()),
    }
}

/// Every field path of a partial object under `path`.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                path.push(k.clone());
                leaves(c, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

/// Deep merge for apply: objects merge recursively, other values (and `null`) replace.
pub fn apply_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(tv) if tv.is_object() && v.is_object() => apply_merge(tv, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut d = json!({"a": {"b": [1, 2]}, "x": 1});
        json_patch(
            &mut d,
            &json!([
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "replace", "path": "/x", "value": 2},
                {"op": "test", "path": "/x", "value": 2},
                {"op": "copy", "from": "/x", "path": "/y"},
                {"op": "move", "from": "/y", "path": "/z"},
                {"op": "remove", "path": "/a/b/0"},
            ]),
        )
        .unwrap();
        assert_eq!(d, json!({"a": {"b": [2, 3]}, "x": 2, "z": 2}));
        assert!(json_patch(&mut d, &json!([{"op": "test", "path": "/x", "value": 9}])).is_err());
        assert!(json_patch(&mut d, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn an_update_owns_what_it_adds_or_changes() {
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}});
        let new = json!({"metadata": {"labels": {"a": "1", "b": "3", "c": "4"}}, "data": {"x": "1"}, "l": [1]});
        assert_eq!(
            changed(Some(&old), &new),
            Some(json!({"metadata": {"labels": {"b": "3", "c": "4"}}, "l": [1]}))
        );
        assert_eq!(changed(Some(&old), &old), None);
        assert_eq!(changed(None, &old), Some(old.clone()));
    }

    #[test]
    fn conflicts_are_the_owned_fields_an_apply_changes() {
        let live = json!({"spec": {"a": "1", "b": "2", "l": [1, 2], "m": {"x": "1"}}});
        let owned = json!({"spec": {"a": "1", "b": "2", "l": [1, 2], "m": {"x": "1"}}});
        let path = |p: &str| p.split('.').map(str::to_string).collect::<Vec<_>>();
        // The same values: shared, no conflict.
        assert!(conflicts(&json!({"spec": {"a": "1", "l": [1, 2]}}), &live, &owned).is_empty());
        // Other values, an atomic list, a map replaced by a scalar.
        assert_eq!(
            conflicts(
                &json!({"spec": {"a": "9", "l": [1], "m": "s", "new": "x"}}),
                &live,
                &owned
            ),
            vec![path("spec.a"), path("spec.l"), path("spec.m.x")]
        );
        // Fields the other does not own are free.
        assert!(conflicts(&json!({"spec": {"c": "3"}}), &live, &owned).is_empty());
    }

    #[test]
    fn apply_prunes_only_own_fields() {
        let mut live = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "x"}}});
        let prev = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let new = json!({"metadata": {"labels": {"a": "3"}}});
        prune_removed(&mut live, &prev, &new);
        apply_merge(&mut live, &new);
        assert_eq!(
            live,
            json!({"metadata": {"labels": {"a": "3", "other": "x"}}})
        );
    }
}
