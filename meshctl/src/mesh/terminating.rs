//! Objects being deleted ("Terminating"): a DELETE of an object with finalizers only sets
//! its `metadata.deletionTimestamp`, and the object stays until its finalizers are taken off
//! (k8s.io/apiserver `pkg/registry/generic/registry/store.go`, `Delete`, `markAsDeleting`,
//! `ShouldDeleteDuringUpdate`). A server-side apply to such an object succeeds, and the
//! object is removed all the same when the last finalizer goes: on a cloud cluster the
//! service controller puts `service.kubernetes.io/load-balancer-cleanup` on every
//! LoadBalancer Service, so `unjoin` then `join` would report a gateway that disappears once
//! the load balancer is torn down. In a Terminating namespace every create is refused (the
//! NamespaceLifecycle admission plugin, 403 "because it is being terminated").
//!
//! Commands that write find what they will write among the objects being deleted ([`of`],
//! pure; [`find`] reads), then wait for those to go ([`DeletionWait::wait_gone`], bounded by
//! `--deletion-wait`) before their first write, or stop with nothing changed.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::kube::{self as kc, Cluster};

/// How often an object being deleted is read again while waiting.
const POLL: Duration = Duration::from_secs(1);

/// One object meshctl will write that exists with a `deletionTimestamp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminating {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// The UID of the object being deleted: an object of the same name with another UID is
    /// a new one.
    pub uid: Option<String>,
    /// `metadata.finalizers`, and for a Namespace also `spec.finalizers` (`kubernetes`,
    /// which the namespace controller takes off once the namespace's content is gone).
    pub finalizers: Vec<String>,
    /// A Namespace's conditions that say what holds it (the namespace controller's
    /// `NamespaceContentRemaining`, `NamespaceFinalizersRemaining`, ...), as `Type: message`.
    pub remaining: Vec<String>,
}

/// The object as read (`read`) when it is being deleted; `planned` (what meshctl would write)
/// names it when the answer lacks `apiVersion` or `kind`.
pub fn of(planned: &Value, read: &Value) -> Option<Terminating> {
    let meta = &read["metadata"];
    meta.get("deletionTimestamp").filter(|t| !t.is_null())?;
    let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let pick = |f: &str| s(&read[f]).or_else(|| s(&planned[f])).unwrap_or_default();
    let kind = pick("kind");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(&s).collect())
            .unwrap_or_default()
    };
    let mut finalizers = strings(&meta["finalizers"]);
    let mut remaining = Vec::new();
    if kind == "Namespace" {
        for f in strings(&read["spec"]["finalizers"]) {
            if !finalizers.contains(&f) {
                finalizers.push(f);
            }
        }
        for c in read["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if c["status"] == "True"
                && let (Some(t), Some(m)) = (s(&c["type"]), s(&c["message"]))
            {
                remaining.push(format!("{t}: {m}"));
            }
        }
    }
    Some(Terminating {
        api_version: pick("apiVersion"),
        kind,
        namespace: s(&meta["namespace"]).or_else(|| s(&planned["metadata"]["namespace"])),
        name: s(&meta["name"]).or_else(|| s(&planned["metadata"]["name"]))?,
        uid: s(&meta["uid"]),
        finalizers,
        remaining,
    })
}

impl Terminating {
    /// `Kind ns/name`, as messages name objects.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// `finalizers: a, b` (or that none is listed: the object then goes on its own soon).
    fn finalizer_list(&self) -> String {
        if self.finalizers.is_empty() {
            "no finalizers listed".to_string()
        } else {
            format!("finalizers: {}", self.finalizers.join(", "))
        }
    }

    /// The command that shows the object go.
    fn watch_command(&self, context: &str) -> String {
        let kind = self.kind.to_lowercase();
        match &self.namespace {
            Some(ns) => format!(
                "kubectl --context {context} get {kind} -n {ns} {} -w",
                self.name
            ),
            None => format!("kubectl --context {context} get {kind} {} -w", self.name),
        }
    }

    /// Who takes the finalizers off.
    fn holders(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        for f in &self.finalizers {
            let who = match f.as_str() {
                "service.kubernetes.io/load-balancer-cleanup" => {
                    "the cloud controller, once it has torn down the Service's load balancer"
                        .to_string()
                }
                "kubernetes" => {
                    "the namespace controller, once the namespace's content is deleted (objects \
                     in it with finalizers of their own hold it too)"
                        .to_string()
                }
                "foregroundDeletion" | "orphan" => {
                    "the garbage collector, once the object's dependents are handled".to_string()
                }
                other => format!("the controller that set {other}"),
            };
            if !out.contains(&who) {
                out.push(who);
            }
        }
        if out.is_empty() {
            "the API server (no finalizer holds it: it should go at once)".to_string()
        } else {
            out.join(", and ")
        }
    }
}

/// Reads the namespace `ns` and then each object in `objs` meshctl will write, and returns
/// those being deleted: the namespace alone when it is (its objects go with it, and nothing
/// can be created in it meanwhile), else the objects that are. Objects of a kind meshctl
/// does not know are left out, and after a read that fails the rest (the write meets what
/// stopped it); a failed read of the namespace is an error, as every writer reads it anyway.
pub async fn find(c: &Cluster, ns: &str, objs: &[Value]) -> Result<Vec<Terminating>> {
    let nsobj = kc::get(c, "v1", "Namespace", None, ns).await?;
    if let Some(t) = nsobj.as_ref().and_then(|n| of(&namespace_stub(ns), n)) {
        return Ok(vec![t]);
    }
    let mut out = Vec::new();
    for o in objs {
        if o["kind"] == "Namespace" {
            continue;
        }
        // A namespaced object in a missing namespace does not exist.
        if nsobj.is_none() && o["metadata"]["namespace"].as_str() == Some(ns) {
            continue;
        }
        match read_one(c, o).await {
            Ok(t) => out.extend(t),
            // Best effort past the namespace: the write meets what stopped the read.
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Namespace `ns` if it is being deleted, read best effort: `None` also when it cannot be
/// read, for the commands that otherwise only touch objects inside it (`rotate`,
/// `credentials refresh`), whose credential may be confined to it by a Role (which cannot
/// grant `get` on the Namespace object). Their writes then meet what stopped the read.
pub async fn namespace_being_deleted(c: &Cluster, ns: &str) -> Option<Terminating> {
    let n = kc::get(c, "v1", "Namespace", None, ns).await.ok()??;
    of(&namespace_stub(ns), &n)
}

/// `o` as it is in the cluster, if it is being deleted.
pub async fn read_one(c: &Cluster, o: &Value) -> Result<Option<Terminating>> {
    let av = o["apiVersion"].as_str().unwrap_or_default();
    let kind = o["kind"].as_str().unwrap_or_default();
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    if kc::plural_of(kind).is_none() || name.is_empty() {
        return Ok(None);
    }
    let ns = o["metadata"]["namespace"].as_str();
    Ok(kc::get(c, av, kind, ns, name)
        .await?
        .and_then(|read| of(o, &read)))
}

/// A Namespace object naming `ns` (for [`of`]).
pub fn namespace_stub(ns: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
}

/// `--deletion-wait`: how long one command waits, in all, for the objects it will write to
/// finish deleting. The clock starts at the first wait.
#[derive(Debug)]
pub struct DeletionWait {
    limit: Duration,
    deadline: Option<Instant>,
}

impl DeletionWait {
    pub fn new(limit: Duration) -> DeletionWait {
        DeletionWait {
            limit,
            deadline: None,
        }
    }

    /// How long the command waits in all (`--deletion-wait`).
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Waits until every object in `found` (read from `c`) is gone, polling about every
    /// second, and says on stderr once per object what it waits for. Returns whether it
    /// waited (then the caller checks again what it checked before: the cluster changed).
    /// Fails, naming each object left, its finalizers and what to do, when the wait ends
    /// with one still there (at once with `--deletion-wait 0`). A dry run only reports them.
    pub async fn wait_gone(
        &mut self,
        c: &Cluster,
        found: &[Terminating],
        dry_run: bool,
    ) -> Result<bool> {
        let left = self.wait_left(c, found, dry_run).await?;
        if left.is_empty() {
            return Ok(!found.is_empty() && !dry_run);
        }
        bail!("{}", still_deleting(&c.context, &left, self.limit))
    }

    /// [`wait_gone`](Self::wait_gone), for a command whose writes do not depend on each
    /// other (`credentials refresh`): returns the objects of `found` still being deleted
    /// when the wait ends (the caller leaves them unwritten and says why, with
    /// [`still_deleting_one`]) instead of failing. A dry run only reports them and returns
    /// none. Once the deadline has passed it returns what is left without a word.
    pub async fn wait_left(
        &mut self,
        c: &Cluster,
        found: &[Terminating],
        dry_run: bool,
    ) -> Result<Vec<Terminating>> {
        if found.is_empty() {
            return Ok(Vec::new());
        }
        if dry_run {
            for t in found {
                eprintln!(
                    "# dry run: context {:?}: {} is being deleted ({}); a real run {}",
                    c.context,
                    t.describe(),
                    t.finalizer_list(),
                    if self.limit.is_zero() {
                        "stops with nothing changed (--deletion-wait 0)".to_string()
                    } else {
                        format!(
                            "waits up to {} (--deletion-wait) for it to go before its first change",
                            humantime::format_duration(self.limit)
                        )
                    }
                );
            }
            return Ok(Vec::new());
        }
        let limit = self.limit;
        let deadline = *self.deadline.get_or_insert_with(|| {
            let now = Instant::now();
            // A limit past what the clock holds (`--deletion-wait 1000y`) is a year.
            now.checked_add(limit)
                .unwrap_or(now + Duration::from_secs(365 * 86400))
        });
        let mut left: Vec<Terminating> = found.to_vec();
        if !self.limit.is_zero() && Instant::now() < deadline {
            for t in &left {
                eprintln!(
                    "{}: waiting for {} to finish deleting ({})",
                    c.context,
                    t.describe(),
                    t.finalizer_list()
                );
            }
        }
        // Bounded by the deadline, and in count (a poll a second, plus two).
        let polls = limit.as_secs().min(365 * 86400) + 2;
        for _ in 0..polls {
            let now = Instant::now();
            if left.is_empty() || now >= deadline {
                break;
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
            let mut still = Vec::new();
            for t in left {
                let stub = serde_json::json!({"apiVersion": t.api_version, "kind": t.kind,
                    "metadata": {"name": t.name, "namespace": t.namespace}});
                let read =
                    kc::get(c, &t.api_version, &t.kind, t.namespace.as_deref(), &t.name).await?;
                match read.as_ref().and_then(|r| of(&stub, r)) {
                    // Another object of the same name (made since) is not the one waited for.
                    Some(cur) if cur.uid == t.uid => still.push(cur),
                    _ => {}
                }
            }
            left = still;
        }
        Ok(left)
    }
}

/// How many times a command checks again before its first write when each check finds
/// objects it writes being deleted and it waits for them to go (bounded: each round is
/// also bounded by the one deadline of `--deletion-wait`).
pub const ROUNDS: usize = 10;

/// Why a command stops when what it writes was deleted again after each of [`ROUNDS`]
/// waits.
pub fn deleted_again(context: &str, command: &str) -> String {
    format!(
        "context {context:?}: objects {command} writes were deleted again each of the {ROUNDS} \
         times it waited for them to go: stop whatever deletes them (an unjoin, a GitOps \
         controller) and run the same command again. Nothing was changed"
    )
}

/// One object still being deleted when the wait ended: what holds it, who takes that off,
/// and how to watch it go.
pub fn still_deleting_one(context: &str, t: &Terminating, limit: Duration) -> String {
    let mut s = format!(
        "{} ({}) is still being deleted{}: it goes once its finalizers are taken off, by {}; \
         watch it go with {}",
        t.describe(),
        t.finalizer_list(),
        if limit.is_zero() {
            String::new()
        } else {
            format!(" after {}", humantime::format_duration(limit))
        },
        t.holders(),
        t.watch_command(context)
    );
    if !t.remaining.is_empty() {
        s.push_str(&format!(" (it reports: {})", t.remaining.join("; ")));
    }
    s
}

/// Why a command stops when objects it would write are still being deleted, and what to do.
pub fn still_deleting(context: &str, left: &[Terminating], limit: Duration) -> String {
    let each: Vec<String> = left
        .iter()
        .map(|t| still_deleting_one(context, t, limit))
        .collect();
    format!(
        "context {context:?}: {}. Writing now would be lost: an apply to an object being \
         deleted succeeds, and the object is removed all the same once its finalizers are off \
         (and nothing can be created in a namespace being deleted). Wait for the controller \
         holding the finalizer (e.g. the cloud load balancer teardown), then run the same \
         command again, or give it more time with --deletion-wait (now {}). Nothing was changed",
        each.join("; "),
        humantime::format_duration(limit)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LB: &str = "service.kubernetes.io/load-balancer-cleanup";

    #[test]
    fn only_objects_with_a_deletion_timestamp_are_terminating() {
        let planned = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "gw", "namespace": "istio-system"}});
        let live = json!({"metadata": {"name": "gw", "namespace": "istio-system",
            "finalizers": [LB]}});
        assert_eq!(of(&planned, &live), None);
        let mut dying = live.clone();
        dying["metadata"]["deletionTimestamp"] = json!("2026-01-02T03:04:05Z");
        dying["metadata"]["uid"] = json!("u1");
        let t = of(&planned, &dying).unwrap();
        assert_eq!(t.describe(), "Service istio-system/gw");
        assert_eq!(t.finalizers, [LB]);
        assert_eq!(t.uid.as_deref(), Some("u1"));
        let text = still_deleting("west", &[t], Duration::from_secs(1));
        assert!(
            text.contains(&format!("Service istio-system/gw (finalizers: {LB})")),
            "{text}"
        );
        assert!(text.contains("cloud controller"), "{text}");
        assert!(
            text.contains("kubectl --context west get service -n istio-system gw -w"),
            "{text}"
        );
        assert!(text.ends_with("Nothing was changed"), "{text}");
    }

    #[test]
    fn a_namespace_lists_its_spec_finalizers_and_what_remains() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "istio-system", "deletionTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Terminating", "conditions": [
                {"type": "NamespaceContentRemaining", "status": "True",
                 "message": "Some resources are remaining: services. has 1 resource instances"},
                {"type": "NamespaceDeletionDiscoveryFailure", "status": "False", "message": "ok"}]}});
        let t = of(&namespace_stub("istio-system"), &ns).unwrap();
        assert_eq!(t.describe(), "Namespace istio-system");
        assert_eq!(t.finalizers, ["kubernetes"]);
        assert_eq!(t.remaining.len(), 1);
        let text = still_deleting("east", &[t], Duration::ZERO);
        assert!(
            text.contains("kubectl --context east get namespace istio-system -w"),
            "{text}"
        );
        assert!(text.contains("namespace controller"), "{text}");
        assert!(
            text.contains("services. has 1 resource instances"),
            "{text}"
        );
    }
}
