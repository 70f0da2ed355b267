//! Which lists server-side apply merges item by item, how it names an item, and in what order
//! it merges two of them. Everything else about a list is atomic: one field, replaced whole.
//!
//! structured-merge-diff takes a list's type from the OpenAPI schema
//! (kube-openapi `pkg/schemaconv/smd.go`, `getListElementRelationship`):
//! `x-kubernetes-list-type: map` with `x-kubernetes-list-map-keys`, `set`, or `atomic`; with no
//! list type, `x-kubernetes-patch-strategy: merge` makes it associative, keyed by
//! `x-kubernetes-patch-merge-key` (a set without one); anything else is atomic. The markers
//! below are those of `staging/src/k8s.io/api/core/v1/types.go` (`ServiceSpec.Ports`,
//! `PodSpec`, `Container`), `apimachinery/pkg/apis/meta/v1/types.go` (`ObjectMeta`), and, for
//! lists that stay atomic, `rbac/v1` (`Rules`, `Subjects`: neither marker, so atomic),
//! `discovery/v1` (`Endpoints`, `Ports`: `+listType=atomic`), `core/v1` (`Tolerations`,
//! `Endpoints.Subsets`, `Container.Args`, `EnvFrom`: `+listType=atomic`) and
//! `autoscaling/v2` `Metrics` (atomic).
//!
//! The tables are per kind ([`Lists`]): `metadata`'s lists are every kind's (`ObjectMeta`), a
//! Service's `spec.ports` only a Service's, a `PodSpec`'s lists a Pod's and a Deployment's. A
//! custom resource's lists are what its CRD's `openAPIV3Schema` declares with
//! `x-kubernetes-list-type` (`map` keyed by `x-kubernetes-list-map-keys`, `set`); a list it
//! declares no type for is atomic, as structured-merge-diff converts a CRD's schema (CRDs carry
//! no patch strategy).

use crate::field_errors::go_quote;
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A key field of a map-type list, with the OpenAPI default an item may leave it to
/// (`+default=` on the field; structured-merge-diff's `getAssociativeKeyDefault`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KeyField {
    pub name: &'static str,
    pub default: Option<&'static str>,
}

/// How structured-merge-diff merges a list that is not atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListType {
    /// `+listType=map`: object items identified by their key fields.
    Map(&'static [KeyField]),
    /// `+listType=set`: scalar items identified by their value.
    Set,
}

const fn key(name: &'static str) -> KeyField {
    KeyField {
        name,
        default: None,
    }
}

const NAME: &[KeyField] = &[key("name")];
const UID: &[KeyField] = &[key("uid")];
/// `ServicePort`: `+listMapKey=port`, `+listMapKey=protocol`; `Protocol` has `+default="TCP"`.
const SERVICE_PORT: &[KeyField] = &[
    key("port"),
    KeyField {
        name: "protocol",
        default: Some("TCP"),
    },
];
/// `ContainerPort`: `+listMapKey=containerPort`, `+listMapKey=protocol` (`+default="TCP"`).
const CONTAINER_PORT: &[KeyField] = &[
    key("containerPort"),
    KeyField {
        name: "protocol",
        default: Some("TCP"),
    },
];

/// `PodSpec`'s associative lists.
const POD_SPEC: &[(&str, ListType)] = &[
    ("containers", ListType::Map(NAME)),
    ("initContainers", ListType::Map(NAME)),
    ("ephemeralContainers", ListType::Map(NAME)),
    ("volumes", ListType::Map(NAME)),
    ("imagePullSecrets", ListType::Map(NAME)),
    ("hostAliases", ListType::Map(&[key("ip")])),
    (
        "topologySpreadConstraints",
        ListType::Map(&[key("topologyKey"), key("whenUnsatisfiable")]),
    ),
    ("schedulingGates", ListType::Map(NAME)),
    ("resourceClaims", ListType::Map(NAME)),
];

/// `Container`'s associative lists (`command`, `args`, `envFrom`, `resizePolicy` are atomic).
const CONTAINER: &[(&str, ListType)] = &[
    ("ports", ListType::Map(CONTAINER_PORT)),
    ("env", ListType::Map(NAME)),
    ("volumeMounts", ListType::Map(&[key("mountPath")])),
    ("volumeDevices", ListType::Map(&[key("devicePath")])),
    ("resources.claims", ListType::Map(NAME)),
];

/// The lists holding `Container`s.
const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// Where each kind's lists are declared.
#[derive(Clone, Debug)]
pub(crate) enum Lists {
    /// A built-in kind, by group and kind: the tables above.
    Builtin { group: String, kind: String },
    /// A custom resource: its CRD's `openAPIV3Schema` for the version written (`None`: the
    /// CRD declares none).
    Custom(Option<Arc<Value>>),
}

impl Lists {
    pub(crate) fn builtin(group: &str, kind: &str) -> Lists {
        Lists::Builtin {
            group: group.to_string(),
            kind: kind.to_string(),
        }
    }

    /// The type of the list at `path` (field names from the object's root, `"[]"` for a
    /// list item); `None`: atomic.
    pub(crate) fn list_type<S: AsRef<str>>(&self, path: &[S]) -> Option<ListType> {
        let p: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
        match p.as_slice() {
            // `ObjectMeta.OwnerReferences`: patch merge key uid; `Finalizers`: patch strategy
            // merge without a key, a set. Every kind's, custom resources' too.
            ["metadata", "ownerReferences"] => return Some(ListType::Map(UID)),
            ["metadata", "finalizers"] => return Some(ListType::Set),
            ["metadata", ..] => return None,
            _ => {}
        }
        match self {
            Lists::Builtin { group, kind } => builtin_list(group, kind, &p),
            Lists::Custom(schema) => schema.as_deref().and_then(|s| schema_list(s, &p)),
        }
    }
}

fn builtin_list(group: &str, kind: &str, p: &[&str]) -> Option<ListType> {
    let pod_spec_at: &[&str] = match (group, kind) {
        ("", "Service") if p == ["spec", "ports"] => return Some(ListType::Map(SERVICE_PORT)),
        ("", "Pod") => &["spec"],
        ("apps", "Deployment") => &["spec", "template", "spec"],
        _ => return None,
    };
    p.strip_prefix(pod_spec_at).and_then(pod_spec_list)
}

/// The list type a CRD schema declares at `path`: properties by name (or
/// `additionalProperties`), `items` for `"[]"`.
fn schema_list(schema: &Value, path: &[&str]) -> Option<ListType> {
    let mut s = schema;
    for step in path {
        s = if *step == "[]" {
            s.get("items")?
        } else {
            match s.get("properties").and_then(|p| p.get(*step)) {
                Some(f) => f,
                None => s.get("additionalProperties").filter(|a| a.is_object())?,
            }
        };
    }
    match s.get("x-kubernetes-list-type").and_then(Value::as_str)? {
        "set" => Some(ListType::Set),
        "map" => {
            let props = s.pointer("/items/properties");
            let keys: Vec<(String, Option<String>)> = s
                .get("x-kubernetes-list-map-keys")?
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .map(|k| {
                    let default = props
                        .and_then(|p| p.get(k))
                        .and_then(|f| f.get("default"))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    (k.to_string(), default)
                })
                .collect();
            (!keys.is_empty()).then(|| ListType::Map(intern_keys(keys)))
        }
        _ => None,
    }
}

/// The key fields of a CRD's map-type list, kept for the life of the process (one copy per
/// distinct set of keys) so that [`ListType`] stays `Copy`.
fn intern_keys(keys: Vec<(String, Option<String>)>) -> &'static [KeyField] {
    static INTERNED: Mutex<Vec<&'static [KeyField]>> = Mutex::new(Vec::new());
    let mut all = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    let same = |k: &&'static [KeyField]| {
        k.len() == keys.len()
            && k.iter()
                .zip(&keys)
                .all(|(a, (n, d))| a.name == n && a.default == d.as_deref())
    };
    if let Some(k) = all.iter().find(|k| same(k)) {
        return k;
    }
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let fields: Vec<KeyField> = keys
        .into_iter()
        .map(|(n, d)| KeyField {
            name: leak(n),
            default: d.map(leak),
        })
        .collect();
    let k: &'static [KeyField] = Box::leak(fields.into_boxed_slice());
    all.push(k);
    k
}

/// A path being walked in one kind's object, to look its lists up with.
#[derive(Clone, Debug)]
pub(crate) struct Lookup<'a> {
    lists: &'a Lists,
    path: Vec<String>,
}

impl<'a> Lookup<'a> {
    pub(crate) fn new(lists: &'a Lists) -> Self {
        Lookup {
            lists,
            path: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, step: String) {
        self.path.push(step);
    }

    pub(crate) fn pop(&mut self) {
        self.path.pop();
    }

    /// The type of the list at the current path; `None`: atomic.
    pub(crate) fn list_type(&self) -> Option<ListType> {
        self.lists.list_type(&self.path)
    }
}

fn pod_spec_list(rest: &[&str]) -> Option<ListType> {
    let find = |table: &[(&str, ListType)], name: &str| {
        table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    };
    match rest {
        [list] => find(POD_SPEC, list),
        [list, "[]", field @ ..] if CONTAINER_LISTS.contains(list) => {
            find(CONTAINER, &field.join("."))
        }
        _ => None,
    }
}

/// One step of a field path, printed as structured-merge-diff's `PathElement.String`
/// (`fieldpath/element.go`): `.name`, a keyed item `[port=15443,protocol="TCP"]` (keys sorted
/// by name), a set item `[="x"]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum PathElement {
    Field(String),
    Key(Vec<(String, Value)>),
    Value(Value),
}

impl Eq for PathElement {}

/// `value.ToString`: strings Go-quoted, numbers and booleans as they are.
fn value_string(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        other => other.to_string(),
    }
}

impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(n) => write!(f, ".{n}"),
            PathElement::Key(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(n, v)| format!("{n}={}", value_string(v)))
                    .collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={}]", value_string(v)),
        }
    }
}

/// `value.Compare`'s order: numbers, then strings, then booleans, then the rest.
fn compare_values(a: &Value, b: &Value) -> Ordering {
    let rank = |v: &Value| match v {
        Value::Number(_) => 0,
        Value::String(_) => 1,
        Value::Bool(_) => 2,
        _ => 3,
    };
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.partial_cmp(&y).unwrap_or(Ordering::Equal)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

impl Ord for PathElement {
    /// `PathElement.Compare`: field names before keys before values.
    fn cmp(&self, other: &Self) -> Ordering {
        use PathElement::*;
        match (self, other) {
            (Field(a), Field(b)) => a.cmp(b),
            (Key(a), Key(b)) => {
                for ((an, av), (bn, bv)) in a.iter().zip(b) {
                    let c = an.cmp(bn).then_with(|| compare_values(av, bv));
                    if c != Ordering::Equal {
                        return c;
                    }
                }
                a.len().cmp(&b.len())
            }
            (Value(a), Value(b)) => compare_values(a, b),
            (Field(_), _) | (Key(_), Value(_)) => Ordering::Less,
            _ => Ordering::Greater,
        }
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The path element naming `item` in a list of type `t`, or structured-merge-diff's reason
/// it has none (`typed/helpers.go`, `keyedAssociativeListItemToPathElement`,
/// `setItemToPathElement`).
pub(crate) fn item_key(t: ListType, item: &Value) -> Result<PathElement, String> {
    match t {
        ListType::Map(keys) => {
            let m = match item {
                Value::Object(m) => m,
                Value::Null => {
                    return Err("associative list with keys may not have a null element".into());
                }
                _ => {
                    return Err("associative list with keys may not have non-map elements".into());
                }
            };
            let mut fields = Vec::with_capacity(keys.len());
            for k in keys {
                let v = match (m.get(k.name), k.default) {
                    (Some(v), _) => v.clone(),
                    (None, Some(d)) => Value::String(d.into()),
                    (None, None) => {
                        return Err(format!(
                            "associative list with keys has an element that omits key field {} (and doesn't have default value)",
                            go_quote(k.name)
                        ));
                    }
                };
                fields.push((k.name.to_string(), v));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(PathElement::Key(fields))
        }
        ListType::Set => match item {
            Value::Object(_) => {
                Err("associative list without keys has an element that's a map type".into())
            }
            Value::Array(_) => Err("not supported: associative list with lists as elements".into()),
            Value::Null => {
                Err("associative list without keys has an element that's an explicit null".into())
            }
            v => Ok(PathElement::Value(v.clone())),
        },
    }
}

/// Whether `field` is one of a map-type list's key fields.
pub(crate) fn is_key(t: ListType, field: &str) -> bool {
    matches!(t, ListType::Map(keys) if keys.iter().any(|k| k.name == field))
}

/// The index of the first item of `items` named `key`.
pub(crate) fn position(t: ListType, items: &[Value], key: &PathElement) -> Option<usize> {
    items
        .iter()
        .position(|i| item_key(t, i).ok().as_ref() == Some(key))
}

/// The first item of `items` named `key`.
pub(crate) fn find<'a>(t: ListType, items: &'a [Value], key: &PathElement) -> Option<&'a Value> {
    position(t, items, key).map(|i| &items[i])
}

/// The order structured-merge-diff's merge gives the union of a live list and an applied one
/// (`typed/merge.go`, `visitListItems`): the applied items in their order, a live item they
/// share where the applied list has it, a live-only item where it was among the live ones; a
/// live item repeating a merged key is dropped. Pairs of (live index, applied index).
pub(crate) fn merge_order(
    t: ListType,
    live: &[Value],
    applied: &[Value],
) -> Vec<(Option<usize>, Option<usize>)> {
    let lk: Vec<Option<PathElement>> = live.iter().map(|v| item_key(t, v).ok()).collect();
    let rk: Vec<Option<PathElement>> = applied.iter().map(|v| item_key(t, v).ok()).collect();
    let in_applied = |k: &Option<PathElement>| k.is_some() && rk.contains(k);
    let shared: Vec<&PathElement> = rk
        .iter()
        .flatten()
        .filter(|k| lk.iter().any(|l| l.as_ref() == Some(*k)))
        .collect();
    let mut next = 0;
    let mut merged: Vec<&PathElement> = Vec::new();
    let mut out = Vec::with_capacity(live.len().max(applied.len()));
    let (mut l, mut r) = (0, 0);
    while l < live.len() || r < applied.len() {
        if l < live.len() && r < applied.len() {
            if let Some(k) = &lk[l]
                && Some(k) == rk[r].as_ref()
            {
                out.push((Some(l), Some(r)));
                merged.push(k);
                (l, r, next) = (l + 1, r + 1, next + 1);
                continue;
            }
            // A shared item, but not the next one the applied order wants: it comes with
            // its applied twin.
            if in_applied(&lk[l]) && shared.get(next).copied() != lk[l].as_ref() {
                l += 1;
                continue;
            }
        }
        if l < live.len() {
            match &lk[l] {
                k if !in_applied(k) => {
                    out.push((Some(l), None));
                    l += 1;
                    continue;
                }
                Some(k) if merged.contains(&k) => {
                    l += 1;
                    continue;
                }
                _ => {}
            }
        }
        if r < applied.len() {
            let k = rk[r].as_ref();
            let twin = k.and_then(|k| lk.iter().position(|x| x.as_ref() == Some(k)));
            out.push((twin, Some(r)));
            if let Some(k) = k {
                merged.push(k);
                if shared.get(next).copied() == Some(k) {
                    next += 1;
                }
            }
            r += 1;
            continue;
        }
        // Unreachable with the branches above; it keeps the loop finite whatever the input.
        l += 1;
    }
    out
}

/// The errors structured-merge-diff's conversion of an applied configuration reports for its
/// associative lists (`typed/validate.go`, `visitListItems`, duplicates not allowed): per
/// list, `element <i>: <why it has no key>` (and the rest of that list is not looked at), or
/// `duplicate entries for key [name="x"]`. Each as `<path of the list>: <message>`.
pub(crate) fn check_keys(lists: &Lists, obj: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    if let Value::Object(m) = obj {
        check_map(m, &mut Lookup::new(lists), &mut Vec::new(), &mut errs);
    }
    errs
}

fn check_map(
    m: &Map<String, Value>,
    lookup: &mut Lookup<'_>,
    path: &mut Vec<PathElement>,
    errs: &mut Vec<String>,
) {
    for (k, v) in m {
        lookup.push(k.clone());
        path.push(PathElement::Field(k.clone()));
        match (v, lookup.list_type()) {
            (Value::Array(items), Some(t)) => check_list(t, items, lookup, path, errs),
            (Value::Object(child), _) => check_map(child, lookup, path, errs),
            _ => {}
        }
        path.pop();
        lookup.pop();
    }
}

fn check_list(
    t: ListType,
    items: &[Value],
    lookup: &mut Lookup<'_>,
    path: &mut Vec<PathElement>,
    errs: &mut Vec<String>,
) {
    let at: String = path.iter().map(ToString::to_string).collect();
    let mut seen: Vec<PathElement> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let pe = match item_key(t, item) {
            Ok(pe) => pe,
            Err(why) => {
                errs.push(format!("{at}: element {i}: {why}"));
                return;
            }
        };
        if seen.contains(&pe) {
            errs.push(format!("{at}: duplicate entries for key {pe}"));
        }
        seen.push(pe.clone());
        if let Value::Object(child) = item {
            lookup.push("[]".into());
            path.push(pe);
            check_map(child, lookup, path, errs);
            path.pop();
            lookup.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_keys_the_lists_kubernetes_declares() {
        let of = |group: &str, kind: &str, p: &str| {
            Lists::builtin(group, kind).list_type(&p.split('.').collect::<Vec<_>>())
        };
        let svc = |p: &str| of("", "Service", p);
        let deploy = |p: &str| of("apps", "Deployment", p);
        assert_eq!(svc("spec.ports"), Some(ListType::Map(SERVICE_PORT)));
        assert_eq!(
            deploy("spec.template.spec.containers.[].env"),
            Some(ListType::Map(NAME))
        );
        assert_eq!(
            of("", "Pod", "spec.containers.[].ports"),
            Some(ListType::Map(CONTAINER_PORT))
        );
        assert_eq!(
            deploy("spec.template.spec.volumes"),
            Some(ListType::Map(NAME))
        );
        assert_eq!(svc("metadata.finalizers"), Some(ListType::Set));
        for (kind, atomic) in [
            ("ClusterRole", "rules"),
            ("ClusterRoleBinding", "subjects"),
            ("EndpointSlice", "endpoints"),
            ("EndpointSlice", "ports"),
            ("Endpoints", "subsets"),
            ("Service", "spec.clusterIPs"),
            // Another kind's path: a Pod has no `spec.ports`, a Service no pod template.
            ("Pod", "spec.ports"),
            ("Service", "spec.template.spec.containers"),
        ] {
            assert_eq!(of("", kind, atomic), None, "{kind} {atomic}");
        }
        for atomic in [
            "spec.template.spec.tolerations",
            "spec.template.spec.containers.[].args",
            "spec.template.spec.containers.[].envFrom",
            "spec.containers",
        ] {
            assert_eq!(deploy(atomic), None, "{atomic}");
        }
        assert_eq!(
            of("autoscaling", "HorizontalPodAutoscaler", "spec.metrics"),
            None
        );
    }

    #[test]
    fn a_custom_resource_has_the_lists_its_schema_declares() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ports": {"type": "array", "items": {"type": "object"}},
            "servers": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["port", "proto"],
                "items": {"type": "object", "properties": {"proto": {"type": "string", "default": "TCP"}}}},
            "hosts": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "tags": {"type": "object", "additionalProperties": {"type": "array", "x-kubernetes-list-type": "set"}}}}}});
        let cr = Lists::Custom(Some(Arc::new(schema)));
        let t = |p: &str| cr.list_type(&p.split('.').collect::<Vec<_>>());
        assert_eq!(t("spec.ports"), None, "no list type: atomic");
        assert_eq!(t("spec.hosts"), Some(ListType::Set));
        assert_eq!(t("spec.tags.any"), Some(ListType::Set));
        assert_eq!(t("metadata.finalizers"), Some(ListType::Set));
        let Some(ListType::Map(keys)) = t("spec.servers") else {
            panic!("spec.servers is a map list");
        };
        assert_eq!(
            keys,
            &[
                key("port"),
                KeyField {
                    name: "proto",
                    default: Some("TCP")
                }
            ]
        );
        assert_eq!(Lists::Custom(None).list_type(&["spec", "ports"]), None);
    }

    #[test]
    fn items_are_named_as_structured_merge_diff_prints_them() {
        let ports = ListType::Map(SERVICE_PORT);
        let k = item_key(ports, &json!({"port": 15443, "name": "tls"})).unwrap();
        assert_eq!(k.to_string(), r#"[port=15443,protocol="TCP"]"#);
        let env = item_key(ListType::Map(NAME), &json!({"name": "A\"B"})).unwrap();
        assert_eq!(env.to_string(), r#"[name="A\"B"]"#);
        assert_eq!(
            item_key(ListType::Set, &json!("x")).unwrap().to_string(),
            r#"[="x"]"#
        );
        assert_eq!(
            item_key(ListType::Map(NAME), &json!({"value": "1"})).unwrap_err(),
            r#"associative list with keys has an element that omits key field "name" (and doesn't have default value)"#
        );
    }

    #[test]
    fn merge_keeps_applied_order_and_live_only_items_in_place() {
        let t = ListType::Map(NAME);
        let items =
            |names: &[&str]| -> Vec<Value> { names.iter().map(|n| json!({"name": n})).collect() };
        let order = merge_order(t, &items(&["a", "x", "b"]), &items(&["b", "a", "c"]));
        assert_eq!(
            order,
            vec![
                (Some(1), None),
                (Some(2), Some(0)),
                (Some(0), Some(1)),
                (None, Some(2)),
            ]
        );
        let order = merge_order(t, &items(&["a", "b", "c"]), &items(&["a", "b"]));
        assert_eq!(
            order,
            vec![(Some(0), Some(0)), (Some(1), Some(1)), (Some(2), None)]
        );
    }

    #[test]
    fn duplicate_and_keyless_items_are_reported_with_their_path() {
        let obj = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "env": [{"name": "A"}, {"name": "A"}],
             "ports": [{"containerPort": 1}, {"containerPort": 1, "protocol": "TCP"}]}]}}}});
        assert_eq!(
            check_keys(&Lists::builtin("apps", "Deployment"), &obj),
            vec![
                r#".spec.template.spec.containers[name="c"].env: duplicate entries for key [name="A"]"#,
                r#".spec.template.spec.containers[name="c"].ports: duplicate entries for key [containerPort=1,protocol="TCP"]"#,
            ]
        );
        let keyless = json!({"spec": {"ports": [{"port": 1}, {"name": "x"}]}});
        assert_eq!(
            check_keys(&Lists::builtin("", "Service"), &keyless),
            vec![
                r#".spec.ports: element 1: associative list with keys has an element that omits key field "port" (and doesn't have default value)"#
            ]
        );
    }
}
