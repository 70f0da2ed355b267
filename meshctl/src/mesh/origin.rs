//! Who made an object meshctl would write ([`origin`]), and so what meshctl may write
//! ([`writable`]): an object someone else made is used as it is (a service account, the
//! `cross-network-gateway`) or, for the gateway's workload (its Deployment, Service,
//! disruption budget and autoscaler), refused before any change, as applying over another
//! east-west gateway would merge the two. `unjoin` deletes only what [`origin`] calls
//! meshctl's.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::istio::{ISTIO_NETWORKING_GROUP, MANAGED_BY_KEY, MANAGED_BY_VALUE, MANAGED_SELECTOR};
use crate::kube::{self as kc, Cluster, Conditional};

/// The annotation meshctl puts on a ServiceAccount it creates (the reader's, the gateway's),
/// and only then: on one it finds it writes nothing. Older meshctl versions wrote no such
/// mark, and applied their service account over an existing one, which relabelled it with
/// [`MANAGED_BY_KEY`]`=meshctl` (a forced server-side apply takes the label over, so Helm's
/// `app.kubernetes.io/managed-by: Helm` became `meshctl`); [`origin`] tells those apart.
pub const CREATED_ANNOTATION: &str = "meshctl.io/created-by";
/// The value of [`CREATED_ANNOTATION`].
pub const CREATED_VALUE: &str = "meshctl";

/// Metadata that only an installer other than meshctl writes, so an object carrying any
/// of it was not made by meshctl, whatever its managed-by label says. Helm 3 puts the
/// release annotations on every object it installs (helm/helm `pkg/action/validate.go`,
/// `setMetadataVisitor`), and they survive a relabel; Istio's charts add `helm.sh/chart`,
/// `app.kubernetes.io/part-of`, `app.kubernetes.io/instance` and `release` (istio/istio
/// `manifests/charts/base/templates/reader-serviceaccount.yaml`, the `istio.labels`
/// helper), and `istioctl install` its `install.operator.istio.io/owning-resource` and
/// `operator.istio.io/component`. meshctl writes none of them.
const INSTALLER_ANNOTATIONS: &[&str] = &[HELM_RELEASE, HELM_RELEASE_NAMESPACE];
const INSTALLER_LABELS: &[&str] = &[
    "helm.sh/chart",
    "heritage",
    "release",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/part-of",
    ISTIOCTL_LABELS[0],
    ISTIOCTL_LABELS[1],
];
/// Helm's release annotations: the release, and its namespace.
const HELM_RELEASE: &str = "meta.helm.sh/release-name";
const HELM_RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";
/// The labels `istioctl install` puts on what it installs.
const ISTIOCTL_LABELS: [&str; 2] = [
    "install.operator.istio.io/owning-resource",
    "operator.istio.io/component",
];

/// Who made an object meshctl may write, as far as its metadata tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// It does not exist: meshctl creates it (and marks it [`CREATED_ANNOTATION`]).
    Absent,
    /// meshctl created it: it carries meshctl's label and [`CREATED_ANNOTATION`].
    Created,
    /// It carries meshctl's label without the creation mark and nothing of another
    /// installer: made by a meshctl older than the mark, so meshctl's.
    Labelled,
    /// Someone else made it (the reason, for messages): join uses it as it is and unjoin
    /// leaves it.
    Foreign(String),
}

/// Who made `existing` (`None`: it does not exist). The rule, in order:
/// 1. no label [`MANAGED_BY_KEY`]`=meshctl`: not meshctl's (Helm's, Istio's, the user's);
/// 2. the label and [`CREATED_ANNOTATION`]: meshctl created it;
/// 3. the label, no creation mark, but metadata only another installer writes (Helm's
///    `meta.helm.sh/release-name`, Istio's chart or `istioctl install` labels, see
///    `INSTALLER_LABELS`) or an owner reference (a controller made it): not meshctl's. An
///    older meshctl relabelled it when it applied its service account over the existing
///    one, so the label alone would have `unjoin` delete Istio's own account;
/// 4. else (the label, nothing else to go by): meshctl's, made by an older meshctl.
///
/// A service account an older meshctl relabelled that carries nothing of its maker (made
/// with `kubectl create serviceaccount` before the first join, say) cannot be told apart
/// and counts as meshctl's (4).
pub fn origin(existing: Option<&Value>) -> Origin {
    let Some(obj) = existing else {
        return Origin::Absent;
    };
    let meta = &obj["metadata"];
    if meta["labels"][MANAGED_BY_KEY] != MANAGED_BY_VALUE {
        return Origin::Foreign(format!("it has no label {MANAGED_SELECTOR}"));
    }
    if meta["annotations"][CREATED_ANNOTATION] == CREATED_VALUE {
        return Origin::Created;
    }
    // The first installer mark found, as `label release=istio-base`.
    let mark = |field: &str, what: &str, keys: &[&str]| {
        keys.iter().find_map(|k| {
            let v = &meta[field][*k];
            (!v.is_null()).then(|| format!("{what} {k}={}", v.as_str().unwrap_or("")))
        })
    };
    let owner = meta["ownerReferences"]
        .as_array()
        .and_then(|o| o.first())
        .map(|o| {
            format!(
                "ownerReference {} {}",
                o["kind"].as_str().unwrap_or("?"),
                o["name"].as_str().unwrap_or("?")
            )
        });
    match mark("annotations", "annotation", INSTALLER_ANNOTATIONS)
        .or_else(|| mark("labels", "label", INSTALLER_LABELS))
        .or(owner)
    {
        Some(why) => Origin::Foreign(format!(
            "it carries label {MANAGED_SELECTOR} from an older meshctl that relabelled it, \
             but not meshctl's {CREATED_ANNOTATION} annotation, and its {why} says another \
             installer made it"
        )),
        None => Origin::Labelled,
    }
}

/// What meshctl does with an object it would write that exists and someone else made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IfForeign {
    /// Leave it out of the writes: it does the same job (a service account, the Istio
    /// Gateway exposing `*.local` that Istio's samples make under the same name).
    UseAsIs,
    /// Refuse: the gateway's workload. A forced server-side apply over another gateway's
    /// Deployment or Service would merge the two (list items keyed by name: both
    /// gateways' containers in one pod, both Services' ports).
    Refuse,
}

/// How `o`'s kind is treated when it exists and is someone else's; `None`: meshctl's own
/// names (its roles and bindings, `meshctl-*`), the namespace and the Secrets, which have
/// their own rules.
fn if_foreign(o: &Value) -> Option<IfForeign> {
    let istio = o["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with(ISTIO_NETWORKING_GROUP));
    match o["kind"].as_str()? {
        "ServiceAccount" => Some(IfForeign::UseAsIs),
        "Gateway" if istio => Some(IfForeign::UseAsIs),
        "Deployment" | "Service" | "PodDisruptionBudget" | "HorizontalPodAutoscaler" => {
            Some(IfForeign::Refuse)
        }
        _ => None,
    }
}

/// Another installer's gateway objects where meshctl would put its own: says which, who
/// made them and how to remove them. Nothing is written in that cluster.
#[derive(Debug, thiserror::Error)]
#[error(
    "{context}: {objects} already exist{s} and {were} not made by meshctl ({why}): another \
     east-west gateway is installed there under the same name. meshctl does not apply its \
     gateway over it, as that would merge the two (both gateways' containers in one pod, \
     both Services' ports). Remove it first ({remove}), then run the same command again"
)]
pub struct ForeignGateway {
    context: String,
    objects: String,
    s: &'static str,
    were: &'static str,
    why: String,
    remove: String,
}

impl ForeignGateway {
    fn new(c: &Cluster, found: &[(Value, String)]) -> Self {
        let names: Vec<String> = found.iter().map(|(o, _)| kc::describe(o)).collect();
        let meta = &found[0].0["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or_default();
        let helm = |k: &str| meta["annotations"][k].as_str().filter(|v| !v.is_empty());
        let istioctl = ISTIOCTL_LABELS
            .iter()
            .any(|k| !meta["labels"][*k].is_null());
        let remove = match helm(HELM_RELEASE) {
            Some(r) => format!(
                "it is Helm release {r}: helm uninstall {r} -n {}",
                helm(HELM_RELEASE_NAMESPACE).unwrap_or(ns)
            ),
            None if istioctl => "istioctl installed it: take it out of the IstioOperator's \
                                 components.ingressGateways and run istioctl install again"
                .to_string(),
            None => format!(
                "kubectl --context {} -n {ns} delete {}",
                c.context,
                found
                    .iter()
                    .map(|(o, _)| format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap_or("?").to_lowercase(),
                        o["metadata"]["name"].as_str().unwrap_or("?")
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        };
        let plural = names.len() > 1;
        ForeignGateway {
            context: c.context.clone(),
            objects: names.join(", "),
            s: if plural { "" } else { "s" },
            were: if plural { "were" } else { "was" },
            why: format!("{}: {}", names[0], found[0].1),
            remove,
        }
    }
}

/// An object meshctl may write, and what held its name when that was judged: it is written
/// only while that still holds ([`write`]).
#[derive(Debug, Clone)]
pub struct Planned {
    pub obj: Value,
    found: Found,
}

/// What held an object's name when it was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// Not judged (meshctl's own names, the namespace, the Secrets): applied as it is.
    Unjudged,
    /// Nothing: created only while the name is free.
    Nothing,
    /// meshctl's object, at this resourceVersion: applied only while it is unchanged.
    Ours(String),
}

impl Planned {
    /// The objects of `planned`, as they are written and printed.
    pub fn objects(planned: &[Planned]) -> Vec<Value> {
        planned.iter().map(|p| p.obj.clone()).collect()
    }
}

/// What meshctl does with one object, by [`origin`] of what holds its name now.
enum Judged {
    Write(Planned),
    /// Left out, used as it is: the notice saying so.
    UseAsIs(String),
    /// Refused: the object found and why it is not meshctl's.
    Refuse(Value, String),
}

/// Reads what holds `o`'s name in `c` and judges it (the rules of [`writable`]).
async fn judge(c: &Cluster, o: &Value, rule: IfForeign) -> Result<Judged> {
    let av = o["apiVersion"].as_str().unwrap_or_default();
    let kind = o["kind"].as_str().unwrap_or_default();
    let ns = o["metadata"]["namespace"].as_str();
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    let existing = kc::get(c, av, kind, ns, name).await?;
    let sa = kind == "ServiceAccount";
    let mut o = o.clone();
    match &origin(existing.as_ref()) {
        Origin::Absent | Origin::Created if sa => {
            o["metadata"]["annotations"][CREATED_ANNOTATION] = json!(CREATED_VALUE);
        }
        Origin::Labelled if sa => {
            if let Some(a) = o["metadata"]["annotations"].as_object_mut() {
                a.remove(CREATED_ANNOTATION);
            }
        }
        Origin::Absent | Origin::Created | Origin::Labelled => {}
        Origin::Foreign(why) if rule == IfForeign::Refuse => {
            return Ok(Judged::Refuse(existing.unwrap_or(o), why.clone()));
        }
        Origin::Foreign(why) => {
            let what = if sa {
                "service account"
            } else {
                "Istio Gateway"
            };
            let kept = if sa { "not relabelled" } else { "not changed" };
            return Ok(Judged::UseAsIs(format!(
                "{}: {what} {}/{name} exists and was not created by meshctl ({why}): it is \
                 used as it is, {kept}, and unjoin leaves it in place",
                c.context,
                ns.unwrap_or_default()
            )));
        }
    }
    let found = match existing {
        None => Found::Nothing,
        Some(e) => Found::Ours(
            e["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
    };
    Ok(Judged::Write(Planned { obj: o, found }))
}

/// `objs` (meshctl's objects for `c`) as meshctl may apply them, by [`origin`] of what
/// exists under each name:
/// - a ServiceAccount or Istio Gateway someone else made is left out (join uses it as it
///   is, never relabels it, and unjoin leaves it), with a notice for each;
/// - a Deployment, Service, PodDisruptionBudget or HorizontalPodAutoscaler someone else
///   made is refused ([`ForeignGateway`], all of them in one error);
/// - a service account that does not exist yet, or that meshctl created, carries
///   [`CREATED_ANNOTATION`]; the rest are written as given.
///
/// Reads only: callers call it before their first change, and write each object with
/// [`write`], which holds the judgement to what was read.
pub async fn writable(c: &Cluster, objs: &[Value]) -> Result<(Vec<Planned>, Vec<String>)> {
    let mut out = Vec::new();
    let mut notices = Vec::new();
    let mut refused = Vec::new();
    for o in objs {
        let Some(rule) = if_foreign(o) else {
            out.push(Planned {
                obj: o.clone(),
                found: Found::Unjudged,
            });
            continue;
        };
        match judge(c, o, rule).await? {
            Judged::Write(p) => out.push(p),
            Judged::UseAsIs(notice) => notices.push(notice),
            Judged::Refuse(existing, why) => refused.push((existing, why)),
        }
    }
    if !refused.is_empty() {
        return Err(ForeignGateway::new(c, &refused).into());
    }
    Ok((out, notices))
}

/// How many times [`write`] judges and writes one object before it gives up: each retry
/// follows a write that found the object no longer as judged.
const WRITE_ATTEMPTS: usize = 5;

/// Writes `p` as judged: an object that was absent is created only while its name is still
/// free, and meshctl's own is applied only while unchanged since it was read (a forced
/// apply over whatever holds the name by then would merge another installer's object made
/// in between into meshctl's, or relabel its service account). When the object is no
/// longer as judged, it is judged again and written, left out, or refused
/// ([`ForeignGateway`]) as [`writable`] would have. Returns the notice when it is left out.
pub async fn write(c: &Cluster, p: &Planned) -> Result<Option<String>> {
    let mut p = p.clone();
    for _ in 0..WRITE_ATTEMPTS {
        let done = match &p.found {
            Found::Unjudged => {
                kc::apply(c, &p.obj).await?;
                Conditional::Written
            }
            // Created: applied on the created version, so that meshctl is its `Apply`
            // owner as after an apply. A change since (a controller's status update) makes
            // that race: it is judged again, and applied again while it is meshctl's.
            Found::Nothing => match kc::create(c, &p.obj).await? {
                Some(rv) => kc::apply_at(c, &p.obj, &rv).await?,
                None => Conditional::Raced,
            },
            Found::Ours(rv) => kc::apply_at(c, &p.obj, rv).await?,
        };
        if done == Conditional::Written {
            return Ok(None);
        }
        let rule = if_foreign(&p.obj).expect("judged objects have a rule");
        match judge(c, &p.obj, rule).await? {
            Judged::Write(next) => p = next,
            Judged::UseAsIs(notice) => return Ok(Some(notice)),
            Judged::Refuse(existing, why) => {
                return Err(ForeignGateway::new(c, &[(existing, why)]).into());
            }
        }
    }
    bail!(
        "{} in context {:?} was changed by another writer each of the {WRITE_ATTEMPTS} times \
         meshctl read it and tried to write it: stop the other writer (another meshctl run, an \
         installer or GitOps controller) and re-run",
        kc::describe(&p.obj),
        c.context
    )
}

/// [`write`]s every object in order, printing each notice on stderr.
pub async fn write_all(c: &Cluster, planned: &[Planned]) -> Result<()> {
    for p in planned {
        if let Some(notice) = write(c, p).await? {
            eprintln!("{notice}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_made_an_object_goes_by_label_creation_mark_and_installer_marks() {
        let sa = |labels: Value, annotations: Value| {
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sa",
                "namespace": "istio-system", "labels": labels, "annotations": annotations}})
        };
        let ours = json!({MANAGED_BY_KEY: MANAGED_BY_VALUE});
        let created = json!({CREATED_ANNOTATION: CREATED_VALUE});
        let helm = json!({"meta.helm.sh/release-name": "istio-base"});
        assert_eq!(origin(None), Origin::Absent);
        assert_eq!(
            origin(Some(&sa(ours.clone(), created.clone()))),
            Origin::Created
        );
        assert_eq!(
            origin(Some(&sa(ours.clone(), Value::Null))),
            Origin::Labelled
        );
        // Not meshctl's label: someone else's, whatever else it carries.
        for labels in [Value::Null, json!({MANAGED_BY_KEY: "Helm"})] {
            let o = origin(Some(&sa(labels, created.clone())));
            assert!(
                matches!(&o, Origin::Foreign(why) if why.contains("has no label")),
                "{o:?}"
            );
        }
        // meshctl's label over another installer's marks, without the creation mark: an
        // older meshctl relabelled it.
        for (labels, annotations, mark) in [
            (
                ours.clone(),
                helm.clone(),
                "annotation meta.helm.sh/release-name=istio-base",
            ),
            (
                json!({MANAGED_BY_KEY: MANAGED_BY_VALUE, "operator.istio.io/component": "Base"}),
                Value::Null,
                "label operator.istio.io/component=Base",
            ),
            (
                json!({MANAGED_BY_KEY: MANAGED_BY_VALUE, "app": "istio-reader", "release": "istio"}),
                Value::Null,
                "label release=istio",
            ),
        ] {
            let o = origin(Some(&sa(labels, annotations)));
            assert!(
                matches!(&o, Origin::Foreign(why) if why.contains(mark)),
                "{mark}: {o:?}"
            );
        }
        let mut owned = sa(ours.clone(), Value::Null);
        owned["metadata"]["ownerReferences"] = json!([{"kind": "IstioOperator", "name": "x"}]);
        assert!(
            matches!(origin(Some(&owned)), Origin::Foreign(why) if why.contains("IstioOperator"))
        );
        // The creation mark is meshctl's word that it made it.
        let mut both = helm.clone();
        both[CREATED_ANNOTATION] = json!(CREATED_VALUE);
        assert_eq!(origin(Some(&sa(ours, both))), Origin::Created);
    }
}
