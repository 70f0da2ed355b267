//! istiod's PeerAuthentication rules, as far as an east-west gateway follows them: a sidecar
//! endpoint whose composed mTLS mode for its port is DISABLE takes no classic (15443)
//! connection, as its sidecar would not terminate the mesh's mTLS there
//! (`mtlsChecker.checkMtlsEnabled` in `pilot/pkg/xds/endpoints/mtls_checker.go`). Pure
//! functions of the projected objects; `specs` asks once per endpoint and port.
//!
//! The composition is istiod's (`ComposePeerAuthentication` in
//! `pilot/pkg/security/authn/policy_applier.go`, with `AuthenticationPolicies` in
//! `pilot/pkg/model/authentication.go`): starting from PERMISSIVE, the root namespace's
//! selector-less policy (mesh-wide), then the workload namespace's, then the oldest policy of
//! that namespace whose `selector.matchLabels` the workload's labels contain each set the mode
//! unless theirs is UNSET; only that workload policy's `portLevelMtls` count, an UNSET entry
//! inheriting. Oldest is by `creationTimestamp`, then name, as istiod sorts them.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde_json::Value;

use crate::routes::Labels;

/// A PeerAuthentication's mTLS mode; no `mtls`, or no `mode`, is `Unset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    /// The mode of an `mtls` object; `None` for one istiod would not take (a mode it does
    /// not know, or not a string: the CRD's schema refuses both).
    fn of(mtls: Option<&Value>) -> Option<MtlsMode> {
        let Some(mtls) = mtls.filter(|m| !m.is_null()) else {
            return Some(MtlsMode::Unset);
        };
        match mtls.get("mode") {
            None | Some(Value::Null) => Some(MtlsMode::Unset),
            Some(m) => match m.as_str()? {
                "UNSET" => Some(MtlsMode::Unset),
                "DISABLE" => Some(MtlsMode::Disable),
                "PERMISSIVE" => Some(MtlsMode::Permissive),
                "STRICT" => Some(MtlsMode::Strict),
                _ => None,
            },
        }
    }

    /// `over` when it is set, else `self` (how each narrower scope applies).
    fn then(self, over: MtlsMode) -> MtlsMode {
        if over == MtlsMode::Unset { self } else { over }
    }
}

/// What a PeerAuthentication contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaInfo {
    pub namespace: Box<str>,
    /// `(creationTimestamp, name)`: the oldest wins within a scope, as in istiod.
    pub order: (Option<Time>, Box<str>),
    /// `spec.selector.matchLabels`; `None` when absent or empty (the whole namespace, or the
    /// whole mesh in the root namespace).
    pub selector: Option<Labels>,
    pub mode: MtlsMode,
    /// `spec.portLevelMtls`, by the workload's own port.
    pub ports: BTreeMap<u32, MtlsMode>,
}

/// A PeerAuthentication's selector, mode and port modes; `None` for an object istiod would
/// not take (an unknown mode, a port that is not a number).
pub fn project_peer_authentication(pa: &DynamicObject) -> Option<PaInfo> {
    let spec = pa.data.get("spec").filter(|s| !s.is_null());
    let field = |name: &str| spec.and_then(|s| s.get(name)).filter(|v| !v.is_null());
    let selector: Labels = field("selector")
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    let mut ports = BTreeMap::new();
    if let Some(levels) = field("portLevelMtls") {
        for (port, mtls) in levels.as_object()? {
            ports.insert(port.parse::<u32>().ok()?, MtlsMode::of(Some(mtls))?);
        }
    }
    let m = &pa.metadata;
    Some(PaInfo {
        namespace: m.namespace.as_deref().unwrap_or("").into(),
        order: (
            m.creation_timestamp.clone(),
            m.name.as_deref().unwrap_or("").into(),
        ),
        selector: (!selector.is_empty()).then_some(selector),
        mode: MtlsMode::of(field("mtls"))?,
        ports,
    })
}

/// The policies that can apply, indexed as istiod looks them up.
#[derive(Debug)]
pub struct PeerAuths<'a> {
    root: &'a str,
    /// Each namespace's oldest selector-less policy (the root namespace's is mesh-wide).
    wide: HashMap<&'a str, &'a PaInfo>,
    /// Each namespace's policies with a selector, oldest first. The root namespace's never
    /// apply (istiod ignores them) and are left out.
    workload: HashMap<&'a str, Vec<&'a PaInfo>>,
}

impl<'a> PeerAuths<'a> {
    pub fn new(policies: impl Iterator<Item = &'a PaInfo>, root: &'a str) -> Self {
        let mut wide: HashMap<&str, &PaInfo> = HashMap::new();
        let mut workload: HashMap<&str, Vec<&PaInfo>> = HashMap::new();
        for p in policies {
            match p.selector {
                None => {
                    let slot = wide.entry(&p.namespace).or_insert(p);
                    if p.order < slot.order {
                        *slot = p;
                    }
                }
                Some(_) if &*p.namespace != root => {
                    workload.entry(&p.namespace).or_default().push(p);
                }
                Some(_) => {}
            }
        }
        for list in workload.values_mut() {
            list.sort_by(|a, b| a.order.cmp(&b.order));
        }
        PeerAuths {
            root,
            wide,
            workload,
        }
    }

    /// No policy could change a mode: PERMISSIVE everywhere.
    pub fn is_empty(&self) -> bool {
        self.wide.is_empty() && self.workload.is_empty()
    }

    /// The composed mode of port `port` of a workload in `ns` whose labels `label` gives
    /// (istiod matches the endpoint's labels, its Pod's with what `AugmentLabels` adds).
    pub fn mode<'l>(
        &self,
        ns: &str,
        label: impl Fn(&str) -> Option<&'l str>,
        port: u16,
    ) -> MtlsMode {
        let mut mode = MtlsMode::Permissive;
        if let Some(mesh) = self.wide.get(self.root) {
            mode = mode.then(mesh.mode);
        }
        if ns == self.root {
            return mode;
        }
        if let Some(namespace) = self.wide.get(ns) {
            mode = mode.then(namespace.mode);
        }
        let selects = |p: &&&PaInfo| {
            p.selector
                .iter()
                .flatten()
                .all(|(k, v)| label(k) == Some(v.as_str()))
        };
        let Some(w) = self.workload.get(ns).and_then(|l| l.iter().find(selects)) else {
            return mode;
        };
        mode = mode.then(w.mode);
        match w.ports.get(&u32::from(port)) {
            Some(&p) => mode.then(p),
            None => mode,
        }
    }

    /// Whether port `port` of that workload has mTLS disabled.
    pub fn disables<'l>(
        &self,
        ns: &str,
        label: impl Fn(&str) -> Option<&'l str>,
        port: u16,
    ) -> bool {
        self.mode(ns, label, port) == MtlsMode::Disable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pa(ns: &str, name: &str, secs: i64, spec: Value) -> PaInfo {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": ns,
                "creationTimestamp": format!("2026-12-07T00:00:{secs:02}Z")},
            "spec": spec,
        }))
        .unwrap();
        project_peer_authentication(&obj).unwrap()
    }

    fn labels(pairs: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<&'static str> {
        let pairs = pairs.to_vec();
        move |k| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
    }

    #[test]
    fn modes_parse_as_istiod_reads_them() {
        let p = pa("shop", "a", 0, json!({}));
        assert_eq!(
            (p.mode, p.selector, p.ports.len()),
            (MtlsMode::Unset, None, 0)
        );
        let p = pa(
            "shop",
            "a",
            0,
            json!({"mtls": {}, "selector": {"matchLabels": {}}}),
        );
        assert_eq!((p.mode, p.selector), (MtlsMode::Unset, None));
        let p = pa(
            "shop",
            "a",
            0,
            json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"},
                "portLevelMtls": {"5432": {"mode": "DISABLE"}, "9090": {}}}),
        );
        assert_eq!(p.mode, MtlsMode::Strict);
        assert_eq!(p.selector.unwrap()["app"], "db");
        assert_eq!(p.ports[&5432], MtlsMode::Disable);
        assert_eq!(p.ports[&9090], MtlsMode::Unset);
        // What the CRD's schema refuses is not taken.
        for bad in [
            json!({"mtls": {"mode": "OFF"}}),
            json!({"mtls": {"mode": 1}}),
            json!({"portLevelMtls": {"http": {"mode": "DISABLE"}}}),
            json!({"portLevelMtls": []}),
        ] {
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "x", "namespace": "shop"}, "spec": bad}))
            .unwrap();
            assert!(project_peer_authentication(&obj).is_none(), "{bad}");
        }
    }

    #[test]
    fn narrower_scopes_override_unless_unset() {
        let db = labels(&[("app", "db")]);
        let web = labels(&[("app", "web")]);
        let policies = [
            pa(
                "istio-system",
                "mesh",
                0,
                json!({"mtls": {"mode": "STRICT"}}),
            ),
            pa("shop", "ns", 1, json!({"mtls": {"mode": "DISABLE"}})),
            pa(
                "shop",
                "db",
                2,
                json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "UNSET"},
                    "portLevelMtls": {"5432": {"mode": "PERMISSIVE"}, "9000": {}}}),
            ),
        ];
        let s = PeerAuths::new(policies.iter(), "istio-system");
        assert_eq!(s.mode("other", &web, 80), MtlsMode::Strict, "mesh-wide");
        assert!(
            s.disables("shop", &web, 80),
            "the namespace's over the mesh's"
        );
        assert!(
            s.disables("shop", &db, 80),
            "UNSET inherits the namespace's"
        );
        assert!(!s.disables("shop", &db, 5432), "the workload's port level");
        assert!(s.disables("shop", &db, 9000), "an UNSET port inherits");
        // In the root namespace only the mesh-wide policy counts.
        assert_eq!(s.mode("istio-system", &db, 5432), MtlsMode::Strict);
        assert!(!PeerAuths::new([].iter(), "istio-system").disables("shop", &db, 80));
    }

    #[test]
    fn the_oldest_of_a_scope_wins_then_the_first_name() {
        let db = labels(&[("app", "db"), ("version", "v1")]);
        let policies = [
            pa("shop", "b-new", 5, json!({"mtls": {"mode": "STRICT"}})),
            pa("shop", "b-old", 1, json!({"mtls": {"mode": "DISABLE"}})),
            pa("shop", "a-old", 1, json!({"mtls": {"mode": "PERMISSIVE"}})),
            pa(
                "shop",
                "w2",
                3,
                json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "DISABLE"}}),
            ),
            pa(
                "shop",
                "w1",
                4,
                json!({"selector": {"matchLabels": {"version": "v1"}}, "mtls": {"mode": "STRICT"}}),
            ),
            pa(
                "shop",
                "w0",
                2,
                json!({"selector": {"matchLabels": {"app": "db", "zone": "x"}},
                    "mtls": {"mode": "STRICT"}}),
            ),
        ];
        let s = PeerAuths::new(policies.iter(), "istio-system");
        // a-old and b-old are equally old: a-old by name. w0 does not select db (no zone
        // label); w2 is older than w1.
        assert_eq!(s.mode("shop", labels(&[]), 80), MtlsMode::Permissive);
        assert!(s.disables("shop", &db, 80));
    }

    #[test]
    fn root_namespace_selectors_and_other_namespaces_do_not_apply() {
        let db = labels(&[("app", "db")]);
        let policies = [
            pa(
                "istio-system",
                "sel",
                0,
                json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "DISABLE"}}),
            ),
            pa("web", "ns", 0, json!({"mtls": {"mode": "DISABLE"}})),
        ];
        let s = PeerAuths::new(policies.iter(), "istio-system");
        assert!(!s.disables("shop", &db, 80));
        assert!(s.disables("web", &db, 80));
    }
}
