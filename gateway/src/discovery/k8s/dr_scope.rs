//! Which DestinationRules istiod gives the gateway for a Service, as its per-proxy lookup
//! does (`pilot/pkg/model/push_context.go`, `destinationRule(proxyNamespace, service)`):
//!
//! 1. the rules in the gateway's own namespace that namespace may see (`exportTo` unset,
//!    `*`, `.` or the namespace itself); when that namespace is the root namespace, only its
//!    private ones (`.` or itself alone), so that a mesh-wide rule there (`*.local`) does not
//!    hide the Services' own rules;
//! 2. else the Service's namespace's rules exported beyond it, if exported to the gateway's
//!    namespace (unset or `*`, or naming it);
//! 3. else the same of the root namespace (`--root-namespace`, istiod's
//!    `meshConfig.rootNamespace`, by default its own namespace).
//!
//! In each, the most specific host wins (`MostSpecificHostMatch`: the Service's exact host,
//! else the longest wildcard that matches it), and only that host's rules are merged, as
//! istiod merges them: rules with different `exportTo` stay apart ([`consolidate`]), those not
//! exported to the gateway's namespace drop out, and the newest entry left is the gateway's
//! ([`choose`]). A rule with a workload selector never applies to the gateway, but in the
//! gateway's namespace it holds its host's place as in istiod (no other namespace's rule is
//! looked at for that host). A rule
//! in any other namespace never reaches the gateway: it cannot change which endpoints 15443
//! dials. (Before, every namespace's rules were merged for a host, so a rule anyone could
//! write in their own namespace decided the subsets and the TLS mode of any Service.)

use std::collections::HashMap;

use super::project::DrInfo;

/// One namespace's rules by host, each host's oldest first; wildcard hosts apart (few).
#[derive(Default)]
struct NsRules<'a> {
    exact: HashMap<&'a str, Vec<&'a DrInfo>>,
    wildcard: Vec<(&'a str, Vec<&'a DrInfo>)>,
}

/// Rules by namespace and host, built once per table.
pub struct DrScope<'a> {
    by_ns: HashMap<&'a str, NsRules<'a>>,
    gateway_ns: &'a str,
    root_ns: &'a str,
}

impl<'a> DrScope<'a> {
    pub fn new(
        rules: impl IntoIterator<Item = &'a DrInfo>,
        gateway_ns: &'a str,
        root_ns: &'a str,
    ) -> Self {
        let mut by_ns: HashMap<&str, NsRules> = HashMap::new();
        for r in rules {
            let ns = by_ns.entry(&r.namespace).or_default();
            if r.host.starts_with('*') {
                match ns.wildcard.iter_mut().find(|(h, _)| *h == r.host) {
                    Some((_, list)) => list.push(r),
                    None => ns.wildcard.push((&r.host, vec![r])),
                }
            } else {
                ns.exact.entry(&r.host).or_default().push(r);
            }
        }
        for ns in by_ns.values_mut() {
            let lists = ns
                .exact
                .values_mut()
                .chain(ns.wildcard.iter_mut().map(|(_, l)| l));
            for list in lists {
                list.sort_by(|a, b| a.order.cmp(&b.order));
            }
        }
        DrScope {
            by_ns,
            gateway_ns,
            root_ns,
        }
    }

    /// The rules istiod would merge for the gateway and `host`, a Service's in `svc_ns`:
    /// oldest first, all of one host (exact or wildcard); empty when none applies.
    pub fn rules_for(&self, svc_ns: &str, host: &str) -> Vec<&'a DrInfo> {
        let own: fn(&DrInfo) -> bool = if self.gateway_ns == self.root_ns {
            DrInfo::private_only
        } else {
            DrInfo::visible_in_own_namespace
        };
        if let Some(rules) = self.pick(self.gateway_ns, host, own) {
            // Found here, istiod looks no further, even when no entry is the gateway's.
            return choose(&consolidate(&rules));
        }
        for ns in [svc_ns, self.root_ns] {
            if let Some(rules) = self.pick(ns, host, |r| !r.private_only()) {
                let mut entries = consolidate(&rules);
                entries.retain(|e| e[0].exported_to(self.gateway_ns));
                if !entries.is_empty() {
                    return choose(&entries);
                }
            }
        }
        Vec::new()
    }

    /// istiod's `MostSpecificHostMatch` over the rules of `ns` that `admit` takes: the exact
    /// host's, else the longest matching wildcard's (`*.shop.svc.cluster.local` before
    /// `*.cluster.local` before `*`).
    fn pick(
        &self,
        ns: &str,
        host: &str,
        admit: impl Fn(&DrInfo) -> bool,
    ) -> Option<Vec<&'a DrInfo>> {
        let rules = self.by_ns.get(ns)?;
        let admitted = |list: &[&'a DrInfo]| -> Vec<&'a DrInfo> {
            list.iter().copied().filter(|r| admit(r)).collect()
        };
        if let Some(list) = rules.exact.get(host) {
            let list = admitted(list);
            if !list.is_empty() {
                return Some(list);
            }
        }
        let mut best: Option<(&str, Vec<&'a DrInfo>)> = None;
        for (pattern, list) in &rules.wildcard {
            if !wildcard_matches(pattern, host)
                || best.as_ref().is_some_and(|(b, _)| b.len() >= pattern.len())
            {
                continue;
            }
            let list = admitted(list);
            if !list.is_empty() {
                best = Some((pattern, list));
            }
        }
        best.map(|(_, list)| list)
    }
}

impl DrInfo {
    /// In istiod's index of its own namespace (`exportTo` unset, `*`, `.` or that namespace).
    fn visible_in_own_namespace(&self) -> bool {
        self.export_to.is_empty()
            || self
                .export_to
                .iter()
                .any(|e| matches!(&**e, "*" | ".") || *e == self.namespace)
    }

    /// Exported to its own namespace only (`.` or the namespace, alone): never in the index
    /// other namespaces read.
    fn private_only(&self) -> bool {
        matches!(&self.export_to[..], [one] if &**one == "." || *one == self.namespace)
    }

    /// `exportTo` as the set istiod compares when it merges.
    fn export_set(&self) -> std::collections::BTreeSet<&str> {
        self.export_to.iter().map(|e| &**e).collect()
    }

    fn exported_to(&self, ns: &str) -> bool {
        self.export_to.is_empty() || self.export_to.iter().any(|e| &**e == "*" || &**e == ns)
    }
}

/// One of istiod's consolidated rules: its first rule, then those merged into it, oldest
/// first.
type Entry<'a> = Vec<&'a DrInfo>;

/// istiod's `mergeDestinationRule` (with `ENABLE_ENHANCED_DESTINATIONRULE_MERGE`, its
/// default) over one index's rules for one host, oldest first: a rule merges into each entry
/// whose `exportTo` it equals or, when that entry's is not empty, contains, unless both have
/// workload selectors that differ; it becomes an entry of its own too unless the last entry
/// it was compared with took it whole (same `exportTo`, and both without a selector or with
/// equal ones). So rules with different `exportTo` stay apart.
fn consolidate<'a>(rules: &[&'a DrInfo]) -> Vec<Entry<'a>> {
    let mut entries: Vec<Entry<'a>> = Vec::new();
    for &r in rules {
        let set = r.export_set();
        let mut append = true;
        for e in entries.iter_mut() {
            let first = e[0];
            let both_without = r.selector.is_none() && first.selector.is_none();
            let both_with = r.selector.is_some() && first.selector.is_some();
            let same_selector = r.selector == first.selector;
            let theirs = first.export_set();
            if set == theirs {
                append = !(both_without || (both_with && same_selector));
            } else if !theirs.is_empty() && set.is_superset(&theirs) {
                append = true;
            } else {
                append = true;
                continue;
            }
            if both_with && !same_selector {
                append = true;
                continue;
            }
            if both_without || (both_with && same_selector) {
                append = false;
            }
            e.push(r);
        }
        if entries.is_empty() || append {
            entries.push(vec![r]);
        }
    }
    entries
}

/// The entry istiod's `SidecarScope.DestinationRule` gives a gateway: the last one without a
/// workload selector (one with a selector would need the gateway's own labels to match it,
/// which it does not know; no east-west install writes such a rule).
fn choose<'a>(entries: &[Entry<'a>]) -> Vec<&'a DrInfo> {
    entries
        .iter()
        .rev()
        .find(|e| e[0].selector.is_none())
        .cloned()
        .unwrap_or_default()
}

/// istiod's `host.Name.Matches` for a wildcard against a Service's host: `*` matches every
/// host, `*.x.y` every host ending in `.x.y`.
fn wildcard_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => suffix.starts_with('.') && host.ends_with(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const HOST: &str = "catalog.shop.svc.cluster.local";

    fn rule(ns: &str, name: &str, host: &str, export_to: &[&str], age: i64) -> DrInfo {
        let t = k8s_openapi::jiff::Timestamp::from_second(1_000_000 - age).unwrap();
        DrInfo {
            host: host.into(),
            namespace: ns.into(),
            export_to: export_to.iter().map(|e| Box::from(*e)).collect(),
            order: (Some(Time(t)), format!("{ns}/{name}")),
            ..DrInfo::default()
        }
    }

    fn names(rules: &[&DrInfo]) -> Vec<String> {
        rules.iter().map(|r| r.order.1.clone()).collect()
    }

    fn selected(ns: &str, name: &str, age: i64) -> DrInfo {
        DrInfo {
            selector: Some([("app".to_string(), "frontend".to_string())].into()),
            ..rule(ns, name, HOST, &["."], age)
        }
    }

    /// istiod's enhanced merge (its default): rules for one host whose `exportTo` differ are
    /// separate entries; those not exported to the gateway drop out; the newest left wins.
    #[test]
    fn rules_with_different_export_to_stay_apart() {
        let gw = "istio-system";
        let old = rule("shop", "catalog", HOST, &[], 10);
        let star = rule("shop", "b", HOST, &["*"], 5);
        let hidden = rule("shop", "none", HOST, &["~"], 5);
        let same = rule("shop", "c", HOST, &[], 5);
        let scope = DrScope::new([&old, &star], gw, gw);
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/b"]);
        let scope = DrScope::new([&old, &hidden], gw, gw);
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/catalog"]);
        let older_hidden = rule("shop", "none", HOST, &["~"], 20);
        let scope = DrScope::new([&older_hidden, &old], gw, gw);
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/catalog"]);
        // Equal `exportTo`: one entry, merged oldest first.
        let scope = DrScope::new([&old, &same], gw, gw);
        assert_eq!(
            names(&scope.rules_for("shop", HOST)),
            ["shop/catalog", "shop/c"]
        );
        // A wider `exportTo` than a non-empty one merges into it, and is taken whole there.
        let named = rule("shop", "named", HOST, &["istio-system"], 10);
        let wider = rule("shop", "wider", HOST, &["istio-system", "other"], 5);
        let scope = DrScope::new([&named, &wider], gw, gw);
        assert_eq!(
            names(&scope.rules_for("shop", HOST)),
            ["shop/named", "shop/wider"]
        );
    }

    /// A selector rule in the gateway's namespace: the host is found there, and as the rule is
    /// not the gateway's, no rule applies (the Service namespace's is not looked at).
    #[test]
    fn a_selector_rule_in_the_gateways_namespace_holds_its_hosts_place() {
        let mine = selected("gw", "ws", 5);
        let svc = rule("shop", "catalog", HOST, &[], 9);
        let scope = DrScope::new([&mine, &svc], "gw", "istio-system");
        assert!(scope.rules_for("shop", HOST).is_empty());
        let catch_all = rule("gw", "all", HOST, &["."], 1);
        let scope = DrScope::new([&mine, &svc, &catch_all], "gw", "istio-system");
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["gw/all"]);
        // Elsewhere it is private to its namespace: it changes nothing.
        let theirs = selected("shop", "ws", 5);
        let scope = DrScope::new([&theirs, &svc], "gw", "istio-system");
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/catalog"]);
    }

    #[test]
    fn a_rule_in_another_namespace_never_applies() {
        let rules = [
            rule("evil", "a", HOST, &[], 10),
            rule("evil", "b", HOST, &["*"], 9),
            rule("evil", "c", HOST, &["istio-system"], 8),
        ];
        let scope = DrScope::new(&rules, "istio-system", "istio-system");
        assert!(scope.rules_for("shop", HOST).is_empty());
    }

    #[test]
    fn the_gateways_namespace_then_the_services_then_the_roots() {
        let gw = rule("gw", "g", HOST, &["."], 1);
        let svc = rule("shop", "s", HOST, &[], 2);
        let root = rule("istio-system", "r", HOST, &[], 3);
        let all = [gw.clone(), svc.clone(), root.clone()];
        let scope = DrScope::new(&all, "gw", "istio-system");
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["gw/g"]);
        let scope = DrScope::new([&svc, &root], "gw", "istio-system");
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/s"]);
        let scope = DrScope::new([&root], "gw", "istio-system");
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["istio-system/r"]);
    }

    #[test]
    fn export_to_is_honoured() {
        let private = rule("shop", "p", HOST, &["."], 1);
        let own = rule("shop", "o", HOST, &["shop"], 1);
        let elsewhere = rule("shop", "e", HOST, &["other"], 1);
        let to_gw = rule("shop", "t", HOST, &["istio-system"], 1);
        for r in [&private, &own, &elsewhere] {
            let scope = DrScope::new([r], "istio-system", "istio-system");
            assert!(
                scope.rules_for("shop", HOST).is_empty(),
                "{:?}",
                r.export_to
            );
        }
        let scope = DrScope::new([&to_gw], "istio-system", "istio-system");
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/t"]);
        // In the gateway's own namespace, a private rule applies (istiod's namespace-local
        // index), and one exported only elsewhere does not.
        let gw_private = rule("istio-system", "gp", HOST, &["."], 1);
        let gw_elsewhere = rule("istio-system", "ge", HOST, &["shop"], 1);
        let scope = DrScope::new([&gw_private], "istio-system", "istio-system");
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["istio-system/gp"]);
        let scope = DrScope::new([&gw_elsewhere], "istio-system", "istio-system");
        assert!(scope.rules_for("shop", HOST).is_empty());
    }

    #[test]
    fn the_most_specific_host_wins_and_only_its_rules_merge() {
        let root = "istio-system";
        let rules = [
            rule(root, "any", "*", &[], 5),
            rule(root, "local", "*.cluster.local", &[], 4),
            rule(root, "ns", "*.shop.svc.cluster.local", &[], 3),
            rule(root, "ns2", "*.shop.svc.cluster.local", &[], 2),
        ];
        let scope = DrScope::new(&rules, root, root);
        assert_eq!(
            names(&scope.rules_for("shop", HOST)),
            ["istio-system/ns", "istio-system/ns2"]
        );
        // `*.shop.svc.cluster.local` is no match for another namespace's host.
        assert_eq!(
            names(&scope.rules_for("other", "cart.other.svc.cluster.local")),
            ["istio-system/local"]
        );
        let mut with_exact = rules.to_vec();
        with_exact.push(rule(root, "exact", HOST, &[], 1));
        let scope = DrScope::new(&with_exact, root, root);
        assert_eq!(
            names(&scope.rules_for("shop", HOST)),
            ["istio-system/exact"]
        );
        // The Service's own rule beats the root namespace's mesh-wide ones, for a gateway in
        // the root namespace as for any.
        let mut in_shop = rules.to_vec();
        in_shop.push(rule("shop", "exact", HOST, &[], 1));
        let scope = DrScope::new(&in_shop, root, root);
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/exact"]);
        // Unless the root namespace keeps a rule to itself: that one is the gateway's.
        in_shop.push(rule(root, "mine", "*.cluster.local", &["."], 9));
        let scope = DrScope::new(&in_shop, root, root);
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["istio-system/mine"]);
        let scope = DrScope::new(&in_shop, "gw", root);
        assert_eq!(names(&scope.rules_for("shop", HOST)), ["shop/exact"]);
        assert!(!wildcard_matches("*.local", "cluster-local"));
        assert!(!wildcard_matches(
            "*.shop.svc.cluster.local",
            "shop.svc.cluster.local"
        ));
    }
}
