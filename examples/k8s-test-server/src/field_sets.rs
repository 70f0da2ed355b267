//! Server-side apply's merge and the field ownership it rests on.
//!
//! A manager's fields are kept as a partial object holding the values it set: maps are
//! walked key by key, associative lists (`list_keys.rs`: `+listType=map` by their key
//! fields, `set` by value) item by item, anything else (atomic lists included) is one field.
//! That is structured-merge-diff's field set, with values kept so that a field another writer
//! changed can be told from one still as this manager set it.

use crate::list_keys::{
    ListType, Lists, Lookup, PathElement, find, is_key, item_key, merge_order, position,
};
use serde_json::{Map, Value};

/// A partial item's mark: its key fields only name it, and the manager does not own the item
/// itself (an update that changed a field of an item it did not add; an applier whose item
/// another applier applies too). structured-merge-diff tells the two apart by whether the
/// item's own path is in the manager's set (`typed/compare.go`: an added item's path is, the
/// parent of a modified field is not), and prunes an item a manager stops applying whole
/// unless another manager's set holds the item itself (`merge/update.go`, `prune`). No
/// Kubernetes field has this name.
const KEY_ONLY: &str = "(key only)";

/// The type of the associative list at `lookup` when `a` and `b` are both lists there.
fn keyed(lookup: &Lookup<'_>, a: &Value, b: &Value) -> Option<ListType> {
    if a.is_array() && b.is_array() {
        lookup.list_type()
    } else {
        None
    }
}

/// Whether a manager's partial object holds any field: maps left empty after its fields went
/// hold none (structured-merge-diff's set has no member under them), any other value (an
/// atomic list, an associative list's items, a scalar) is one.
pub fn owns_anything(owned: &Value) -> bool {
    match owned {
        Value::Object(m) => m.iter().any(|(k, v)| k != KEY_ONLY && owns_anything(v)),
        _ => true,
    }
}

/// Whether a manager owns the item itself, not only fields in it (set items always).
fn is_member(item: &Value) -> bool {
    item.get(KEY_ONLY).is_none()
}

/// The fields of a partial item a manager owns, less the key fields naming it.
fn non_key_fields(t: ListType, item: &Value) -> Map<String, Value> {
    let Value::Object(m) = item else {
        return Map::new();
    };
    m.iter()
        .filter(|(k, _)| *k != KEY_ONLY && !is_key(t, k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Removes from `live` the fields that the previous applied configuration set and the new one
/// no longer sets. This is the part of server-side apply that managed-fields tracking exists
/// for, reduced to one manager's last applied configuration less the fields others have
/// taken since ([`disown_changed`], [`disown_taken`]). A map the manager stops applying loses
/// only its keys, and goes when nothing else is left in it. An associative list
/// (`list_keys.rs`) is pruned item by item: an item it stops applying goes whole, unless
/// another manager holds the item itself, which then loses only this manager's fields; a list
/// it stops applying goes when no item is left. An atomic list is one field.
pub fn prune_removed(lists: &Lists, live: &mut Value, prev_applied: &Value, new_applied: &Value) {
    prune_at(&mut Lookup::new(lists), live, prev_applied, new_applied);
}

fn prune_at(lookup: &mut Lookup<'_>, live: &mut Value, prev: &Value, new: &Value) {
    let (Value::Object(l), Value::Object(p)) = (live, prev) else {
        return;
    };
    let none = Value::Object(Map::new());
    for (k, pv) in p {
        lookup.push(k.clone());
        let nv = new.get(k);
        let remove = match l.get_mut(k) {
            Some(lv) => match (keyed(lookup, lv, pv), nv) {
                (Some(t), nv) if nv.is_none_or(Value::is_array) => {
                    let empty = Vec::new();
                    let applied = nv.and_then(Value::as_array).unwrap_or(&empty);
                    prune_items(lookup, t, lv, pv, applied);
                    nv.is_none() && lv.as_array().is_some_and(Vec::is_empty)
                }
                (_, Some(nv)) => {
                    prune_at(lookup, lv, pv, nv);
                    false
                }
                (_, None) if pv.is_object() && lv.is_object() => {
                    prune_at(lookup, lv, pv, &none);
                    lv.as_object().is_some_and(Map::is_empty)
                }
                (_, None) => true,
            },
            None => false,
        };
        if remove {
            l.remove(k);
        }
        lookup.pop();
    }
}

fn prune_items(
    lookup: &mut Lookup<'_>,
    t: ListType,
    live: &mut Value,
    prev: &Value,
    new: &[Value],
) {
    let (Value::Array(live), Value::Array(prev)) = (live, prev) else {
        return;
    };
    let empty = Value::Object(Map::new());
    lookup.push("[]".into());
    for pi in prev {
        let Ok(key) = item_key(t, pi) else {
            continue;
        };
        let named = |v: &Value| item_key(t, v).ok().as_ref() == Some(&key);
        let applied = find(t, new, &key);
        if applied.is_none() && is_member(pi) {
            // Every live item of that key (`typed/remove.go` removes each).
            live.retain(|li| !named(li));
            continue;
        }
        if let Some(li) = live.iter_mut().find(|li| named(li)) {
            // Never the key fields: the item stays, and they name it.
            let fields = Value::Object(non_key_fields(t, pi));
            prune_at(lookup, li, &fields, applied.unwrap_or(&empty));
        }
    }
    lookup.pop();
}

/// Drops from a manager's fields those `live` no longer holds as it set them: another
/// writer changed or removed them, and so owns them now (structured-merge-diff moves a
/// changed field to the updater's manager, and to a forcing applier), so this manager's
/// later applies leave them alone and its conflicts no longer name them. An associative
/// list's item goes when the live object no longer has it; the key fields that name it stay.
pub fn disown_changed(lists: &Lists, applied: &mut Value, live: &Value) {
    disown_at(&mut Lookup::new(lists), applied, live);
}

fn disown_at(lookup: &mut Lookup<'_>, owned: &mut Value, live: &Value) {
    let Value::Object(a) = owned else {
        return;
    };
    let fields: Vec<String> = a.keys().filter(|k| *k != KEY_ONLY).cloned().collect();
    for k in fields {
        lookup.push(k.clone());
        let keep = match (a.get_mut(&k), live.get(&k)) {
            (Some(av), Some(lv)) => still_owned(lookup, av, lv),
            _ => false,
        };
        if !keep {
            a.remove(&k);
        }
        lookup.pop();
    }
}

/// Whether a manager still owns `owned`, the value it set, where `live` is now; drops what it
/// no longer owns inside maps and associative lists.
fn still_owned(lookup: &mut Lookup<'_>, owned: &mut Value, live: &Value) -> bool {
    if let Some(t) = keyed(lookup, owned, live) {
        return disown_items(lookup, t, owned, live);
    }
    if owned.is_object() && live.is_object() {
        disown_at(lookup, owned, live);
        return true;
    }
    owned == live
}

fn disown_items(lookup: &mut Lookup<'_>, t: ListType, owned: &mut Value, live: &Value) -> bool {
    let (Value::Array(items), Value::Array(live)) = (owned, live) else {
        return false;
    };
    if items.is_empty() {
        // The empty list, set as a single field (structured-merge-diff's `emptyPromoteToLeaf`).
        return live.is_empty();
    }
    lookup.push("[]".into());
    items.retain_mut(|it| {
        let Some(li) = item_key(t, it).ok().and_then(|k| find(t, live, &k)) else {
            return false;
        };
        if matches!(t, ListType::Set) {
            return true;
        }
        disown_at(lookup, it, li);
        is_member(it) || !non_key_fields(t, it).is_empty()
    });
    lookup.pop();
    !items.is_empty()
}

/// Drops from `applied` the fields `taken` holds: what a manager stops applying is removed
/// only when no other manager owns it (structured-merge-diff prunes only fields no manager
/// keeps). In an associative list, an item another manager holds itself is kept as a name
/// for this manager's fields in it ([`KEY_ONLY`]).
pub fn disown_taken(lists: &Lists, applied: &mut Value, taken: &Value) {
    take_at(&mut Lookup::new(lists), applied, taken);
}

fn take_at(lookup: &mut Lookup<'_>, applied: &mut Value, taken: &Value) {
    let (Value::Object(a), Value::Object(t)) = (applied, taken) else {
        return;
    };
    for (k, tv) in t {
        if k == KEY_ONLY {
            continue;
        }
        lookup.push(k.clone());
        let remove = match a.get_mut(k) {
            Some(av) => match keyed(lookup, av, tv) {
                Some(lt) => {
                    take_items(lookup, lt, av, tv);
                    false
                }
                None if av.is_object() && tv.is_object() => {
                    take_at(lookup, av, tv);
                    false
                }
                None => true,
            },
            None => false,
        };
        if remove {
            a.remove(k);
        }
        lookup.pop();
    }
}

fn take_items(lookup: &mut Lookup<'_>, t: ListType, applied: &mut Value, taken: &Value) {
    let (Value::Array(items), Value::Array(taken)) = (applied, taken) else {
        return;
    };
    lookup.push("[]".into());
    for ti in taken {
        let Some(i) = item_key(t, ti).ok().and_then(|k| position(t, items, &k)) else {
            continue;
        };
        if matches!(t, ListType::Set) {
            items.remove(i);
            continue;
        }
        let it = &mut items[i];
        if is_member(ti)
            && let Some(m) = it.as_object_mut()
        {
            m.insert(KEY_ONLY.into(), Value::Bool(true));
        }
        take_at(lookup, it, &Value::Object(non_key_fields(t, ti)));
        if !is_member(it) && non_key_fields(t, it).is_empty() {
            items.remove(i);
        }
    }
    lookup.pop();
}

/// The fields of `new` that `old` does not hold with the same value (added or changed), as a
/// partial object: what an update's manager comes to own (`fieldmanager`'s
/// `managedFieldsUpdater`: the fields an update changes move to its manager). `None` when
/// nothing changed. In an associative list an added item is owned whole, and a changed item
/// only in its changed fields ([`KEY_ONLY`]); removing items owns nothing.
pub fn changed(lists: &Lists, old: Option<&Value>, new: &Value) -> Option<Value> {
    changed_at(&mut Lookup::new(lists), old, new)
}

fn changed_at(lookup: &mut Lookup<'_>, old: Option<&Value>, new: &Value) -> Option<Value> {
    let leaf = || (old != Some(new)).then(|| new.clone());
    match (old, new) {
        (Some(Value::Object(o)), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, nv) in n {
                lookup.push(k.clone());
                if let Some(c) = changed_at(lookup, o.get(k), nv) {
                    out.insert(k.clone(), c);
                }
                lookup.pop();
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        (_, Value::Object(n)) if !n.is_empty() => {
            changed_at(lookup, Some(&Value::Object(Map::new())), new)
        }
        (_, Value::Array(n)) => {
            let old_items = old.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            match lookup.list_type() {
                // Two empty lists compare as one field (`emptyPromoteToLeaf`).
                Some(t) if !(n.is_empty() && old_items.is_empty()) => {
                    changed_items(lookup, t, old_items, n)
                }
                _ => leaf(),
            }
        }
        _ => leaf(),
    }
}

fn changed_items(
    lookup: &mut Lookup<'_>,
    t: ListType,
    old: &[Value],
    new: &[Value],
) -> Option<Value> {
    lookup.push("[]".into());
    let mut out = Vec::new();
    for item in new {
        let before = item_key(t, item).ok().and_then(|k| find(t, old, &k));
        match (before, t) {
            (None, _) => out.push(item.clone()),
            (Some(_), ListType::Set) => {}
            (Some(before), ListType::Map(keys)) => {
                if let Some(Value::Object(mut c)) = changed_at(lookup, Some(before), item) {
                    for k in keys {
                        if let Some(v) = item.get(k.name) {
                            c.entry(k.name.to_string()).or_insert_with(|| v.clone());
                        }
                    }
                    c.insert(KEY_ONLY.into(), Value::Bool(true));
                    out.push(Value::Object(c));
                }
            }
        }
    }
    lookup.pop();
    (!out.is_empty()).then_some(Value::Array(out))
}

/// The fields of `owned` (another manager's) that applying `applied` over `live` would
/// change: the conflicts of a non-forced apply (structured-merge-diff's `Updater`: the
/// other managers' fields among those the merge modifies or adds). Each is a field path
/// (`.spec.ports[port=15443,protocol="TCP"].targetPort`), sorted as structured-merge-diff
/// sorts them.
pub fn conflicts(
    lists: &Lists,
    applied: &Value,
    live: &Value,
    owned: &Value,
) -> Vec<Vec<PathElement>> {
    let mut out = Vec::new();
    walk_conflicts(
        applied,
        Some(live),
        owned,
        &mut Lookup::new(lists),
        &mut Vec::new(),
        &mut out,
    );
    out.sort();
    out
}

fn walk_conflicts(
    applied: &Value,
    live: Option<&Value>,
    owned: &Value,
    lookup: &mut Lookup<'_>,
    path: &mut Vec<PathElement>,
    out: &mut Vec<Vec<PathElement>>,
) {
    if let (Value::Object(a), Value::Object(o)) = (applied, owned) {
        for (k, av) in a {
            let Some(ov) = o.get(k).filter(|_| k != KEY_ONLY) else {
                continue;
            };
            lookup.push(k.clone());
            path.push(PathElement::Field(k.clone()));
            let lv = live.and_then(|l| l.get(k));
            let both_empty = av.as_array().is_some_and(Vec::is_empty)
                && ov.as_array().is_some_and(Vec::is_empty);
            match keyed(lookup, av, ov) {
                Some(t) if !both_empty => item_conflicts(t, av, lv, ov, lookup, path, out),
                _ => walk_conflicts(av, lv, ov, lookup, path, out),
            }
            path.pop();
            lookup.pop();
        }
        return;
    }
    // One of the two is a single field here: the applied value replaces or merges into it.
    let changes = match live {
        Some(l) => {
            let mut merged = l.clone();
            merge_at(&mut lookup.clone(), &mut merged, applied);
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

/// The conflicts in an associative list: per applied item another manager holds, the item
/// itself when the apply adds it, and its fields the apply changes.
fn item_conflicts(
    t: ListType,
    applied: &Value,
    live: Option<&Value>,
    owned: &Value,
    lookup: &mut Lookup<'_>,
    path: &mut Vec<PathElement>,
    out: &mut Vec<Vec<PathElement>>,
) {
    let (Some(applied), Some(owned)) = (applied.as_array(), owned.as_array()) else {
        return;
    };
    let live = live.and_then(Value::as_array);
    lookup.push("[]".into());
    for a in applied {
        let Ok(key) = item_key(t, a) else {
            continue;
        };
        let Some(o) = find(t, owned, &key) else {
            continue;
        };
        let l = live.and_then(|live| find(t, live, &key));
        path.push(key);
        if l.is_none() && is_member(o) {
            out.push(path.clone());
        }
        if matches!(t, ListType::Map(_)) {
            // Key fields that only name the item are not the owner's.
            let mut fields = non_key_fields(t, o);
            if is_member(o)
                && let Value::Object(m) = o
            {
                for (k, v) in m.iter().filter(|(k, _)| is_key(t, k)) {
                    fields.insert(k.clone(), v.clone());
                }
            }
            walk_conflicts(a, l, &Value::Object(fields), lookup, path, out);
        }
        path.pop();
    }
    lookup.pop();
}

/// Every field path of a partial object under `path`.
fn leaves(v: &Value, path: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m.iter().filter(|(k, _)| *k != KEY_ONLY) {
                path.push(PathElement::Field(k.clone()));
                leaves(c, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

/// Deep merge for apply: objects merge recursively, an associative list item by item
/// (`list_keys::merge_order`: applied items in their order, others' items kept), other values
/// (atomic lists, `null`) replace. The same merge unites two managers' partial objects.
pub fn apply_merge(lists: &Lists, target: &mut Value, applied: &Value) {
    merge_at(&mut Lookup::new(lists), target, applied);
}

fn merge_at(lookup: &mut Lookup<'_>, target: &mut Value, applied: &Value) {
    if let Some(t) = keyed(lookup, target, applied) {
        if let (Value::Array(live), Value::Array(items)) = (&*target, applied) {
            *target = Value::Array(merge_items(lookup, t, live, items));
        }
        return;
    }
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                lookup.push(k.clone());
                match t.get_mut(k) {
                    Some(tv)
                        if (tv.is_object() && v.is_object()) || keyed(lookup, tv, v).is_some() =>
                    {
                        merge_at(lookup, tv, v)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
                lookup.pop();
            }
        }
        (t, a) => *t = a.clone(),
    }
}

fn merge_items(
    lookup: &mut Lookup<'_>,
    t: ListType,
    live: &[Value],
    applied: &[Value],
) -> Vec<Value> {
    lookup.push("[]".into());
    let mut out = Vec::with_capacity(live.len().max(applied.len()));
    for pair in merge_order(t, live, applied) {
        out.push(match pair {
            (Some(i), Some(j)) => {
                let mut m = live[i].clone();
                merge_at(lookup, &mut m, &applied[j]);
                // The item is held whole if either side held it.
                if (is_member(&live[i]) || is_member(&applied[j]))
                    && let Some(o) = m.as_object_mut()
                {
                    o.remove(KEY_ONLY);
                }
                m
            }
            (Some(i), None) => live[i].clone(),
            (None, Some(j)) => applied[j].clone(),
            (None, None) => continue,
        });
    }
    lookup.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc_lists() -> Lists {
        Lists::builtin("", "Service")
    }

    #[test]
    fn an_update_owns_what_it_adds_or_changes() {
        let old = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}});
        let new = json!({"metadata": {"labels": {"a": "1", "b": "3", "c": "4"}}, "data": {"x": "1"}, "l": [1]});
        assert_eq!(
            changed(&svc_lists(), Some(&old), &new),
            Some(json!({"metadata": {"labels": {"b": "3", "c": "4"}}, "l": [1]}))
        );
        assert_eq!(changed(&svc_lists(), Some(&old), &old), None);
        assert_eq!(changed(&svc_lists(), None, &old), Some(old.clone()));
    }

    #[test]
    fn conflicts_are_the_owned_fields_an_apply_changes() {
        let live = json!({"spec": {"a": "1", "b": "2", "l": [1, 2], "m": {"x": "1"}}});
        let owned = json!({"spec": {"a": "1", "b": "2", "l": [1, 2], "m": {"x": "1"}}});
        let path = |p: &str| {
            p.split('.')
                .map(|f| PathElement::Field(f.into()))
                .collect::<Vec<_>>()
        };
        // The same values: shared, no conflict.
        assert!(
            conflicts(
                &svc_lists(),
                &json!({"spec": {"a": "1", "l": [1, 2]}}),
                &live,
                &owned
            )
            .is_empty()
        );
        // Other values, an atomic list, a map replaced by a scalar.
        assert_eq!(
            conflicts(
                &svc_lists(),
                &json!({"spec": {"a": "9", "l": [1], "m": "s", "new": "x"}}),
                &live,
                &owned
            ),
            vec![path("spec.a"), path("spec.l"), path("spec.m.x")]
        );
        // Fields the other does not own are free.
        assert!(conflicts(&svc_lists(), &json!({"spec": {"c": "3"}}), &live, &owned).is_empty());
    }

    #[test]
    fn apply_prunes_only_own_fields() {
        let mut live = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "x"}}});
        let prev = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let new = json!({"metadata": {"labels": {"a": "3"}}});
        prune_removed(&svc_lists(), &mut live, &prev, &new);
        apply_merge(&svc_lists(), &mut live, &new);
        assert_eq!(
            live,
            json!({"metadata": {"labels": {"a": "3", "other": "x"}}})
        );
    }

    fn svc(ports: Value) -> Value {
        json!({"spec": {"ports": ports}})
    }

    #[test]
    fn an_apply_merges_associative_lists_by_key_and_prunes_only_its_items() {
        let a = json!({"name": "a", "port": 1, "targetPort": 1});
        let b = json!({"name": "b", "port": 2, "targetPort": 2});
        let other = json!({"name": "o", "port": 3, "protocol": "TCP", "targetPort": 3});
        let mut live = svc(json!([a, b, other]));
        let prev = svc(json!([a, b]));
        let new = svc(json!([{"name": "a", "port": 1, "targetPort": 9}]));
        prune_removed(&svc_lists(), &mut live, &prev, &new);
        apply_merge(&svc_lists(), &mut live, &new);
        assert_eq!(
            live,
            svc(json!([{"name": "a", "port": 1, "targetPort": 9}, other]))
        );
        // An atomic list is replaced whole.
        let mut role = json!({"rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]});
        apply_merge(
            &svc_lists(),
            &mut role,
            &json!({"rules": [{"verbs": ["watch"]}]}),
        );
        assert_eq!(role, json!({"rules": [{"verbs": ["watch"]}]}));
    }

    #[test]
    fn an_update_owns_the_items_it_adds_and_the_fields_it_changes() {
        let old = svc(json!([{"port": 1, "protocol": "TCP", "targetPort": 1}]));
        let new = svc(json!([
            {"port": 1, "protocol": "TCP", "targetPort": 8},
            {"port": 2, "protocol": "UDP", "targetPort": 2},
        ]));
        assert_eq!(
            changed(&svc_lists(), Some(&old), &new),
            Some(svc(json!([
                {"port": 1, "protocol": "TCP", "targetPort": 8, KEY_ONLY: true},
                {"port": 2, "protocol": "UDP", "targetPort": 2},
            ])))
        );
        // Removing an item owns nothing.
        assert_eq!(
            changed(&svc_lists(), Some(&new), &old),
            Some(svc(
                json!([{"port": 1, "protocol": "TCP", "targetPort": 1, KEY_ONLY: true}])
            ))
        );
        assert_eq!(changed(&svc_lists(), Some(&old), &svc(json!([]))), None);
    }

    #[test]
    fn an_item_another_manager_holds_is_kept_without_this_managers_fields() {
        let mut live = svc(json!([{"name": "a", "port": 1, "protocol": "TCP", "targetPort": 5}]));
        let mut mine = svc(json!([{"name": "a", "port": 1, "targetPort": 5}]));
        // Another applier applies the same item; this one stops applying it.
        disown_taken(
            &svc_lists(),
            &mut mine,
            &svc(json!([{"port": 1, "targetPort": 5}])),
        );
        prune_removed(&svc_lists(), &mut live, &mine, &svc(json!([])));
        assert_eq!(
            live,
            svc(json!([{"port": 1, "protocol": "TCP", "targetPort": 5}]))
        );
        // An updater that only changed a field does not hold the item: it goes whole.
        let mut live = svc(json!([{"name": "a", "port": 1, "protocol": "TCP", "targetPort": 6}]));
        let mut mine = svc(json!([{"name": "a", "port": 1}]));
        disown_taken(
            &svc_lists(),
            &mut mine,
            &svc(json!([{"port": 1, "protocol": "TCP", "targetPort": 6, KEY_ONLY: true}])),
        );
        prune_removed(&svc_lists(), &mut live, &mine, &json!({}));
        assert_eq!(live, json!({}), "the emptied list and map go too");
    }

    #[test]
    fn a_set_of_emptied_maps_owns_nothing() {
        assert!(!owns_anything(&json!({})));
        assert!(!owns_anything(
            &json!({"data": {}, "metadata": {"labels": {}}})
        ));
        assert!(owns_anything(&json!({"data": {"a": "1"}})));
        assert!(owns_anything(&json!({"spec": {"ports": []}})));
    }

    #[test]
    fn conflicts_name_the_item_by_its_keys() {
        let live = svc(json!([{"port": 15443, "protocol": "TCP", "targetPort": 9443}]));
        let owned =
            svc(json!([{"port": 15443, "protocol": "TCP", "targetPort": 9443, KEY_ONLY: true}]));
        let applied = svc(json!([{"port": 15443, "targetPort": 15443, "name": "tls"}]));
        let found: Vec<String> = conflicts(&svc_lists(), &applied, &live, &owned)
            .iter()
            .map(|p| p.iter().map(ToString::to_string).collect())
            .collect();
        assert_eq!(
            found,
            vec![r#".spec.ports[port=15443,protocol="TCP"].targetPort"#]
        );
        // The same value, or an item the other does not hold: no conflict.
        let same = svc(json!([{"port": 15443, "targetPort": 9443}, {"port": 1}]));
        assert!(conflicts(&svc_lists(), &same, &live, &owned).is_empty());
    }
}
