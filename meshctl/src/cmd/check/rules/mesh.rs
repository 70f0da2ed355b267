//! Pure judgments over what `check` gathered: the mesh-wide checks, and which pair checks can
//! run at all. A cluster meshctl cannot read makes the checks that need its data *skipped*
//! (with the reason), never failed with a hint: a guessed cluster ID would send the user to
//! register the same cluster twice.

use super::super::facts::Seen;
use super::super::hints::Invocation;
use super::super::report::Report;

/// Which checks of "the secret for `source` stored in `target`" can run.
#[derive(Debug, PartialEq, Eq)]
pub enum PairPlan {
    All,
    /// Only those on the target's data (the stored Secret); the reason the rest is skipped.
    TargetOnly(String),
    /// None; the reason.
    Skip(String),
}

pub fn pair_plan(source: &Seen, target: &Seen) -> PairPlan {
    if let Some(why) = target.unread {
        return PairPlan::Skip(format!(
            "cluster {} is {why}, so its Secrets cannot be read",
            target.context
        ));
    }
    let Some(why) = source.unread else {
        return PairPlan::All;
    };
    if source.name_known {
        return PairPlan::TargetOnly(format!("cluster {} is {why}", source.context));
    }
    PairPlan::Skip(format!(
        "cluster {ctx} is {why}, so its cluster ID (which join records on its namespace) is \
         unknown; to check this Secret anyway pass --cluster-name {ctx}=<cluster-id>",
        ctx = source.context
    ))
}

/// The clusters meshctl could not read and why, for skip reasons ("" when all were read).
fn unreachable(seen: &[Seen]) -> String {
    seen.iter()
        .filter_map(|s| s.unread.map(|why| format!("{} ({why})", s.context)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "one cluster per context": two contexts reaching one cluster (aliases such as `kind-x`
/// and `x`) make the network, name and remote-secret checks between them compare the
/// cluster with itself, and their hints would relabel it or register it as its own remote.
/// `same`: each such pair of contexts and why (`kube::Identity::same_cluster`).
pub fn one_cluster_per_context(r: &mut Report, same: &[(String, String, String)]) {
    let (scope, check) = ("mesh", "one cluster per context");
    if same.is_empty() {
        r.pass(scope, check, "");
        return;
    }
    let detail: Vec<String> = same
        .iter()
        .map(|(a, b, why)| format!("contexts {a} and {b} reach the same cluster: {why}"))
        .collect();
    let drop: Vec<&str> = same.iter().map(|(_, b, _)| b.as_str()).collect();
    r.fail(
        scope,
        check,
        detail.join("; "),
        format!(
            "pass one context per cluster (drop --context {}): the checks between contexts of \
             one cluster compare it with itself, so their hints do not apply",
            drop.join(", --context ")
        ),
    );
}

/// The mesh-wide checks; `inv`: the flags their hints repeat.
pub fn mesh_checks(r: &mut Report, seen: &[Seen], inv: &Invocation) {
    let down = unreachable(seen);
    roots(r, seen, &down, inv);
    networks(r, seen, &down, inv);
    names(r, seen);
}

fn roots(r: &mut Report, seen: &[Seen], down: &str, inv: &Invocation) {
    let (scope, check) = ("mesh", "roots identical across clusters");
    let read: Vec<&Seen> = seen.iter().filter(|s| s.unread.is_none()).collect();
    let missing: Vec<&str> = read
        .iter()
        .filter(|s| s.root.is_none())
        .map(|s| s.context.as_str())
        .collect();
    let with_root: Vec<&&Seen> = read.iter().filter(|s| s.root.is_some()).collect();
    let differing: Vec<&str> = with_root
        .iter()
        .filter(|s| s.root != with_root[0].root)
        .map(|s| s.context.as_str())
        .collect();
    if !missing.is_empty() {
        r.fail(
            scope,
            check,
            format!("no cacerts root in {}", missing.join(", ")),
            format!(
                "apply each cluster's bundle: meshctl cacerts apply certs/<cluster> --context \
                 <ctx>{}",
                inv.meshctl()
            ),
        );
    } else if !differing.is_empty() {
        r.fail(
            scope,
            check,
            format!(
                "{} has a different root than {}",
                differing.join(", "),
                with_root[0].context
            ),
            format!(
                "all bundles must come from one root: a meshctl rotate under way is completed \
                     with the same step for every cluster (meshctl rotate prepare|activate|finish \
                     --dir <its --dir> with every --context); else apply bundles of one root \
                     (meshctl certs init) with meshctl cacerts apply ...{} --force and restart \
                     istiod in each cluster",
                inv.meshctl()
            ),
        );
    } else if !down.is_empty() {
        r.skip(scope, check, format!("cannot compare with {down}"));
    } else {
        r.pass(scope, check, "");
    }
}

fn networks(r: &mut Report, seen: &[Seen], down: &str, inv: &Invocation) {
    let (scope, check) = ("mesh", "network labels distinct");
    let mut dup = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        if let Some(n) = &s.network
            && let Some(o) = seen[..i].iter().find(|o| o.network.as_ref() == Some(n))
        {
            dup.push(format!("{} and {} are both on {n}", o.context, s.context));
        }
    }
    if !dup.is_empty() {
        r.fail(scope, check, dup.join("; "),
            format!("each cluster needs its own network: meshctl label-network <unique-network> --context <ctx>{} (and re-run meshctl join)", inv.meshctl()));
    } else if !down.is_empty() {
        r.skip(scope, check, format!("the network of {down} is unknown"));
    } else {
        r.pass(scope, check, "");
    }
}

fn names(r: &mut Report, seen: &[Seen]) {
    let (scope, check) = ("mesh", "cluster names unique");
    let known: Vec<&Seen> = seen.iter().filter(|s| s.name_known).collect();
    let mut dup = Vec::new();
    for (i, s) in known.iter().enumerate() {
        if let Some(o) = known[..i].iter().find(|o| o.name == s.name) {
            dup.push(format!(
                "{} and {} are both named {}",
                o.context, s.context, s.name
            ));
        }
    }
    let unknown: Vec<String> = seen
        .iter()
        .filter(|s| !s.name_known)
        .map(|s| format!("{} ({})", s.context, s.unread.unwrap_or("not read")))
        .collect();
    if !dup.is_empty() {
        r.fail(scope, check, dup.join("; "),
            "istiod ignores a second remote secret for a known cluster ID: re-run meshctl join with distinct --cluster-name CONTEXT=NAME");
    } else if !unknown.is_empty() {
        r.skip(
            scope,
            check,
            format!(
                "the cluster ID of {} is unknown; --cluster-name CONTEXT=ID gives it",
                unknown.join(", ")
            ),
        );
    } else {
        let all: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
        r.pass(scope, check, all.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::report::{Item, Status};
    use super::*;

    /// A cluster as `check` sees it; `None` network/root for an unreachable one.
    fn seen(ctx: &str, reachable: bool, name: Option<&str>) -> Seen {
        Seen {
            context: ctx.into(),
            name: name.unwrap_or(ctx).into(),
            name_known: reachable || name.is_some(),
            name_guessed: name.is_none(),
            network: reachable.then(|| format!("{ctx}-net")),
            root: reachable.then(|| vec![b"root".to_vec()]),
            unread: (!reachable).then_some("unreachable"),
            uid: None,
        }
    }

    fn run(seen: &[Seen]) -> Vec<Item> {
        let mut r = Report::default();
        mesh_checks(&mut r, seen, &Default::default());
        r.items
    }

    fn status(items: &[Item], check: &str) -> Status {
        items.iter().find(|i| i.check == check).unwrap().status
    }

    #[test]
    fn an_unreachable_cluster_skips_the_mesh_checks_without_hints() {
        let items = run(&[seen("west", true, None), seen("east", false, None)]);
        for i in &items {
            assert_eq!(i.status, Status::Skip, "{i:?}");
            assert!(i.hint.is_none() && i.detail.contains("east"), "{i:?}");
        }
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn what_is_known_to_be_wrong_still_fails() {
        let mut a = seen("west", true, None);
        let mut b = seen("north", true, None);
        b.root = Some(vec![b"other".to_vec()]);
        b.network = a.network.clone();
        a.name = "same".into();
        b.name = "same".into();
        let items = run(&[a, b, seen("east", false, None)]);
        for check in [
            "roots identical across clusters",
            "network labels distinct",
            "cluster names unique",
        ] {
            assert_eq!(status(&items, check), Status::Fail, "{check}");
        }
    }

    #[test]
    fn all_reachable_passes() {
        let items = run(&[seen("west", true, None), seen("east", true, None)]);
        assert!(items.iter().all(|i| i.status == Status::Pass), "{items:?}");
    }

    #[test]
    fn pair_plans() {
        let (w, e) = (seen("west", true, None), seen("east", false, None));
        assert_eq!(pair_plan(&w, &w), PairPlan::All);
        let PairPlan::Skip(why) = pair_plan(&e, &w) else {
            panic!("unknown ID must skip")
        };
        assert!(why.contains("--cluster-name east="), "{why}");
        assert!(matches!(pair_plan(&w, &e), PairPlan::Skip(_)));
        let named = seen("east", false, Some("east-cluster"));
        assert!(matches!(pair_plan(&named, &w), PairPlan::TargetOnly(_)));
    }
}
