//! The three steps' decisions: from every cluster's trust state to the Secrets to apply,
//! refusing (before anything changes) when a cluster is not ready for the step.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use pki::{IntermediateCa, IntermediateOptions, RootCa, RootOptions};

use super::{ActivateArgs, Current, FinishArgs, Plan, PrepareArgs};
use crate::istio::{
    ROTATION_ACTIVATED_AT_ANNOTATION as AT, ROTATION_NEW_ROOT_ANNOTATION as NEW,
    ROTATION_OLD_ROOT_ANNOTATION as OLD, ROTATION_STAGE_ANNOTATION as STAGE,
};
use crate::mesh::cacerts::pem_ders;
use crate::mesh::rotation::{BundleTexts, Stage, cacerts_secret, fingerprint, short};

/// What istiod does with a changed `root-cert.pem` (prepare, finish): istio/istio
/// `pilot/pkg/bootstrap/istio_ca.go` `handleEvent` reloads it only with `ISTIO_MULTIROOT_MESH`
/// (default false, package `pilot/pkg/features`) and one bundle holding the other.
fn roots_changed(ns: &str) -> String {
    format!(
        "istiod reloads a changed root-cert.pem by itself only with ISTIO_MULTIROOT_MESH=true \
         (default false); otherwise it logs \"Multi root is disabled, updating new ROOT-CA not \
         supported\" and keeps its old CA, so restart istiod in each cluster: kubectl -n {ns} \
         rollout restart deploy/istiod"
    )
}

/// How the roots reach workloads: the namespace controller's `istio-ca-root-cert`
/// ConfigMaps, and the roots returned with every workload certificate (SDS `ROOTCA`).
const ROOTS_PUBLISHED: &str = "istiod then writes root-cert.pem into the istio-ca-root-cert \
     ConfigMap of every namespace and gives it to each proxy with its next workload certificate \
     (restart workloads to hurry it)";

/// A new intermediate under an unchanged `root-cert.pem` (activate): the `cacerts` file watch
/// (istio/istio PR #31522, on by default since Istio 1.18).
fn intermediate_changed(ns: &str) -> String {
    format!(
        "istiod 1.18+ loads the new intermediate from its mounted cacerts by itself (it logs \
         \"Istiod has detected the newly added intermediate CA\"); restart an older istiod \
         without AUTO_RELOAD_PLUGIN_CERTS=true: kubectl -n {ns} rollout restart deploy/istiod"
    )
}

/// RFC 3339 (seconds) of a time, or "the far future" past 9999-12-31 (humantime's
/// formatter fails on those, and `to_string` would then panic).
fn format_time(t: SystemTime) -> String {
    let max = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(crate::mesh::credentials::MAX_UNIX_TIME);
    if t > max {
        return "the far future".to_string();
    }
    humantime::format_rfc3339_seconds(t).to_string()
}

fn annotations(stage: &str, old: &str, new: &str, at: Option<&str>) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        (STAGE.to_string(), stage.to_string()),
        (OLD.to_string(), old.to_string()),
        (NEW.to_string(), new.to_string()),
    ]);
    if let Some(at) = at {
        m.insert(AT.to_string(), at.to_string());
    }
    m
}

/// A file of the cluster's `cacerts` (the stage checks made sure it is there).
fn text<'c>(c: &'c Current, file: &str) -> Result<&'c str> {
    match c.files.get(file) {
        Some(t) => Ok(t),
        None => bail!(
            "context {:?}: cacerts has no {file}; nothing was changed",
            c.ctx
        ),
    }
}

fn list(cs: &[&Current]) -> String {
    cs.iter()
        .map(|c| c.ctx.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How much of a set of files that a step writes together (a private key and what belongs
/// to it) is in a directory: a set is used whole or made whole, never completed file by file.
enum Set {
    Absent,
    Complete,
    /// Some files there (`present`), the others not (`missing`): refused, naming both.
    Partial {
        present: Vec<&'static str>,
        missing: Vec<&'static str>,
    },
}

/// Which of `names` are in `dir` (anything at the path counts: a symlink, a directory),
/// after settling a write into `dir` that a crash interrupted (`pki::files::recover_dir`),
/// so that a set is never judged half-written while its journal can still complete it.
fn set_in(dir: &Path, names: &[&'static str]) -> Result<Set> {
    if let Some(note) = pki::files::recover_dir(dir)? {
        eprintln!("note: {note}");
    }
    let (present, missing): (Vec<&'static str>, Vec<&'static str>) = names
        .iter()
        .partition(|n| dir.join(n).symlink_metadata().is_ok());
    Ok(if present.is_empty() {
        Set::Absent
    } else if missing.is_empty() {
        Set::Complete
    } else {
        Set::Partial { present, missing }
    })
}

/// `dir/a, dir/b` of some file names.
fn paths(dir: &Path, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| dir.join(n).display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which step loads the new root: what to tell the user when `--dir` holds half of it.
#[derive(Clone, Copy)]
enum RootFor {
    Prepare,
    Activate,
}

/// The new root in `dir`, if `prepare` wrote one there: root-cert.pem and root-key.pem
/// both (the key must belong to the certificate), or neither; one without the other is
/// refused, since a new root's certificate written beside a stray key would leave the
/// clusters trusting a root whose key exists nowhere.
fn load_root(dir: &Path, step: RootFor) -> Result<Option<RootCa>> {
    match set_in(dir, &[pki::ROOT_CERT, pki::ROOT_KEY])? {
        Set::Absent => Ok(None),
        Set::Partial { present, missing } => {
            let fix = match step {
                RootFor::Prepare => format!(
                    "move {} away to make a new root there (or pass another --dir), or put the \
                     matching {} back beside it to resume with that root",
                    paths(dir, &present),
                    missing.join(", ")
                ),
                RootFor::Activate => format!(
                    "put back {} of the root that meshctl rotate prepare wrote to {} (the \
                     clusters trust that root; activate signs with its key)",
                    paths(dir, &missing),
                    dir.display()
                ),
            };
            bail!(
                "{} holds {} but no {}: a rotation keeps its new root there as a pair \
                 (root-cert.pem and root-key.pem), and meshctl neither uses nor completes half of \
                 one; nothing was changed (in the clusters or on disk). Fix: {fix}",
                dir.display(),
                present.join(", "),
                missing.join(", ")
            )
        }
        Set::Complete => RootCa::load_files(&dir.join(pki::ROOT_CERT), &dir.join(pki::ROOT_KEY))
            .with_context(|| {
                format!(
                    "loading the new root from {} (its root-cert.pem and root-key.pem are reused \
                     to resume a rotation; move them away to make a new root); nothing was changed",
                    dir.display()
                )
            })
            .map(Some),
    }
}

pub fn prepare(a: &PrepareArgs, clusters: &[Current]) -> Result<Plan> {
    let ns = a.common.ns.namespace.as_str();
    let existing = load_root(&a.dir, RootFor::Prepare)?;
    let root = match &existing {
        Some(r) => r,
        None => &RootCa::generate(&RootOptions {
            common_name: a.common_name.clone(),
            days: a.root_days,
            ..Default::default()
        })?,
    };
    let new_fp = fingerprint(root.cert_der());
    // Who is where: a cluster of another rotation stops the step; one past prepare is kept.
    let mut old_fp: Option<String> = None;
    let mut todo = Vec::new();
    let mut activated: Vec<&str> = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let t = &c.trust;
        match &t.stage {
            Stage::Stable | Stage::Finished => {
                let fp = t.roots.first().map(|r| fingerprint(r)).unwrap_or_default();
                if t.signing.is_none() {
                    bail!(
                        "context {:?}: cacerts does not chain to its root; fix it (meshctl check) before rotating; nothing was changed",
                        c.ctx
                    );
                }
                if fp == new_fp {
                    bail!(
                        "context {:?} already uses the root in {} as its only root; nothing was changed",
                        c.ctx,
                        a.dir.display()
                    );
                }
                todo.push(i);
                check_same_old(&mut old_fp, &fp, c)?;
            }
            Stage::Prepared | Stage::Activated { .. } if t.new_fp.as_deref() != Some(&new_fp) => {
                bail!(
                    "context {:?} is in a rotation to another root ({}): resume it with the --dir \
                     that rotation used{}; nothing was changed",
                    c.ctx,
                    short(t.new_fp.as_deref().unwrap_or_default()),
                    if existing.is_none() {
                        " (this --dir holds no root yet)"
                    } else {
                        ""
                    }
                );
            }
            Stage::Prepared => {
                check_same_old(&mut old_fp, t.old_fp.as_deref().unwrap_or_default(), c)?
            }
            // Already past prepare (activated with only some contexts, which leaves the
            // others trusting the old root alone): kept as it is, so that preparing the rest
            // is the way back to a rotation every cluster can finish.
            Stage::Activated { .. } => {
                check_same_old(&mut old_fp, t.old_fp.as_deref().unwrap_or_default(), c)?;
                activated.push(c.ctx.as_str());
            }
            Stage::Inconsistent(why) => bail!("context {:?}: {why}; nothing was changed", c.ctx),
        }
    }
    if todo.is_empty() && !activated.is_empty() {
        bail!(
            "{} already activated: prepare is over (next: meshctl rotate activate, then finish); \
             nothing was changed",
            activated
                .iter()
                .map(|c| format!("context {c:?} is"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let old = old_fp.unwrap_or_default();
    let mut secrets = Vec::new();
    for i in todo {
        let c = &clusters[i];
        let mut files = c.files.clone();
        let bundle = format!(
            "{}\n{}",
            text(c, pki::ROOT_CERT)?.trim_end(),
            root.cert_pem().trim_end()
        );
        files.insert(pki::ROOT_CERT, format!("{bundle}\n"));
        secrets.push((
            i,
            cacerts_secret(&files, ns, &annotations("prepared", &old, &new_fp, None))?,
        ));
    }
    Ok(Plan {
        secrets,
        // A root already in --dir is reused as it is: nothing to write.
        files: if existing.is_some() {
            Vec::new()
        } else {
            root.files(&a.dir)
        },
        done: format!(
            "Prepared: every cluster trusts the old root {} and the new root {}; the old intermediates still sign.",
            short(&old),
            short(&new_fp)
        ),
        next: format!(
            "{}. {ROOTS_PUBLISHED}; confirm that kubectl -n <app namespace> get configmap \
             istio-ca-root-cert shows two certificates and meshctl check shows every cluster \
             \"prepared\", then: meshctl rotate activate --dir {} --context ...",
            roots_changed(ns),
            a.dir.display()
        ),
        half_done: "Meanwhile the updated clusters trust the old and the new root, the others \
             only the old one; every cluster still signs with the old root, so traffic between \
             them is unaffected (activate refuses until every cluster is prepared)."
            .into(),
    })
}

fn check_same_old(old: &mut Option<String>, fp: &str, c: &Current) -> Result<()> {
    match old {
        Some(o) if o != fp => bail!(
            "context {:?} has root {} but another cluster has {}: the clusters must share one root \
             before a rotation (meshctl check); nothing was changed",
            c.ctx,
            short(fp),
            short(o)
        ),
        _ => {
            *old = Some(fp.to_string());
            Ok(())
        }
    }
}

/// The directory under `--dir` that keeps each context's new intermediate: the context's name
/// when it is one plain path component, else that name with every other character than
/// letters, digits, `.`, `_`, `-` and `@` made `_` (an EKS context is an ARN with `:` and `/`;
/// `../x` or `/tmp/x` must not put a CA key outside `--dir`). Two contexts that would share
/// one are refused before anything is written.
fn context_dirs<'a>(contexts: impl Iterator<Item = &'a str>) -> Result<Vec<String>> {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    let mut out: Vec<(&str, String)> = Vec::new();
    for ctx in contexts {
        let mut name: String = ctx.chars().map(|c| if safe(c) { c } else { '_' }).collect();
        if name.starts_with('.') {
            name.replace_range(..1, "_");
        }
        if let Some((other, _)) = out.iter().find(|(_, o)| *o == name) {
            bail!(
                "contexts {other:?} and {ctx:?} would both keep their new intermediate in \
                 --dir/{name}; run activate for each with its own --dir, or rename one (kubectl \
                 config rename-context); nothing was changed"
            );
        }
        out.push((ctx, name));
    }
    Ok(out.into_iter().map(|(_, name)| name).collect())
}

pub fn activate(a: &ActivateArgs, clusters: &[Current]) -> Result<Plan> {
    let ns = a.common.ns.namespace.as_str();
    let Some(root) = load_root(&a.dir, RootFor::Activate)? else {
        bail!(
            "{} holds no new root: run meshctl rotate prepare --dir {} first; nothing was changed",
            a.dir.display(),
            a.dir.display()
        );
    };
    let new_fp = fingerprint(root.cert_der());
    let not_ready: Vec<&Current> = clusters
        .iter()
        .filter(|c| {
            !matches!(c.trust.stage, Stage::Prepared | Stage::Activated { .. })
                || c.trust.new_fp.as_deref() != Some(&new_fp)
        })
        .collect();
    if !not_ready.is_empty() {
        bail!(
            "not every cluster trusts both roots yet: {} (stage {}); run meshctl rotate prepare --dir {} \
             for every cluster first; nothing was changed",
            list(&not_ready),
            not_ready
                .iter()
                .map(|c| c.trust.stage.name())
                .collect::<Vec<_>>()
                .join(", "),
            a.dir.display()
        );
    }
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let dirs = context_dirs(clusters.iter().map(|c| c.ctx.as_str()))?;
    // Every cluster's directory is judged before any intermediate is made: all the stray
    // files are named at once.
    let mut kept = Vec::new();
    let mut partial = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        if !matches!(c.trust.stage, Stage::Prepared) {
            continue;
        }
        let dir = a.dir.join(&dirs[i]);
        match set_in(&dir, &INTERMEDIATE_SET)? {
            Set::Absent => kept.push((i, dir, false)),
            Set::Complete => kept.push((i, dir, true)),
            Set::Partial { present, missing } => partial.push(format!(
                "{} holds {} but no {}",
                dir.display(),
                present.join(", "),
                missing.join(", ")
            )),
        }
    }
    if !partial.is_empty() {
        bail!(
            "{}: activate keeps each cluster's new intermediate in --dir/<context> as one set of \
             four files ({}), and neither uses nor completes part of one; nothing was changed (in \
             the clusters or on disk). Fix: move the files named away (a new intermediate is then \
             made), or put back the rest of the set they came from",
            partial.join("; "),
            INTERMEDIATE_SET.join(", ")
        );
    }
    let (mut secrets, mut files) = (Vec::new(), Vec::new());
    for (i, dir, complete) in kept {
        let c = &clusters[i];
        let ca = if complete {
            resumed_intermediate(&root, &dir)?
        } else {
            root.issue_intermediate(&IntermediateOptions::renewing(text(c, pki::CA_CERT)?)?)?
        };
        let mut texts = BundleTexts::new();
        texts.insert(pki::CA_CERT, ca.cert_pem().to_string());
        texts.insert(pki::CA_KEY, ca.key_pem().to_string());
        texts.insert(pki::CERT_CHAIN, ca.cert_chain_pem());
        texts.insert(pki::ROOT_CERT, text(c, pki::ROOT_CERT)?.to_string());
        let old = c.trust.old_fp.clone().unwrap_or_default();
        secrets.push((
            i,
            cacerts_secret(
                &texts,
                ns,
                &annotations("activated", &old, &new_fp, Some(&now)),
            )?,
        ));
        // A complete bundle (root-cert.pem: the new root, as after finish), so that
        // `certs verify` and `certs workload --ca` work on it; one kept from an interrupted
        // run is reused as it is.
        if !complete {
            files.extend(ca.files(&dir));
        }
    }
    Ok(Plan {
        secrets,
        files,
        done: format!(
            "Activated: every cluster signs with an intermediate of the new root {}; both roots are still trusted.",
            short(&new_fp)
        ),
        next: format!(
            "{}; workloads get certificates from the new intermediate as theirs are renewed \
             (restart them to hurry it). After the longest workload certificate lifetime (Istio: 24h): \
             meshctl rotate finish --context ... (or --confirm once you checked)",
            intermediate_changed(ns)
        ),
        half_done: "Meanwhile the updated clusters sign with the new root and the others with \
             the old one; every cluster trusts both roots since prepare, so traffic between them \
             keeps working as long as istiod and the workloads took up prepare's two-root \
             bundle (meshctl check: \"cross-cluster trust of signing roots\"); finish refuses \
             until every cluster is activated."
            .into(),
    })
}

/// The files of a cluster's new intermediate in `--dir/<context>`, written and reused
/// together.
const INTERMEDIATE_SET: [&str; 4] = [pki::CA_CERT, pki::CA_KEY, pki::CERT_CHAIN, pki::ROOT_CERT];

/// The new intermediate an interrupted run left complete in `dir`: its key must belong to
/// its certificate, the certificate chain to `root`, and cert-chain.pem and root-cert.pem be
/// the ones activate writes beside them.
fn resumed_intermediate(root: &RootCa, dir: &Path) -> Result<IntermediateCa> {
    let refuse = |why: String| {
        anyhow::anyhow!(
            "{why}; nothing was changed (in the clusters or on disk). Move {} away (a new \
             intermediate is then made)",
            paths(dir, &INTERMEDIATE_SET)
        )
    };
    let read = |f: &str| {
        pki::files::read_cert_pem(&dir.join(f))
            .with_context(|| format!("reading {}", dir.join(f).display()))
    };
    let key = pki::files::read_key(&dir.join(pki::CA_KEY))
        .with_context(|| format!("reading {}", dir.join(pki::CA_KEY).display()))?;
    let ca = IntermediateCa::from_pems(&read(pki::CA_CERT)?, &key, root.cert_pem())
        .map_err(|e| refuse(format!("{}: {e}", dir.display())))?;
    if pki::signing_root(ca.cert_pem(), &ca.cert_chain_pem(), root.cert_pem()).is_none() {
        return Err(refuse(format!(
            "{} holds an intermediate that does not chain to the new root",
            dir.display()
        )));
    }
    for (f, want) in [
        (pki::CERT_CHAIN, ca.cert_chain_pem()),
        (pki::ROOT_CERT, root.cert_pem().to_string()),
    ] {
        if pem_ders(read(f)?.as_bytes()) != pem_ders(want.as_bytes()) {
            return Err(refuse(format!(
                "{} is not the one activate writes beside {} (it must hold {})",
                dir.join(f).display(),
                pki::CA_CERT,
                if f == pki::ROOT_CERT {
                    "the new root"
                } else {
                    "ca-cert.pem, then the new root"
                }
            )));
        }
    }
    Ok(ca)
}

pub fn finish(a: &FinishArgs, clusters: &[Current]) -> Result<Plan> {
    let ns = a.common.ns.namespace.as_str();
    let new_fps: Vec<&str> = clusters
        .iter()
        .filter_map(|c| c.trust.new_fp.as_deref())
        .collect();
    let not_ready: Vec<&Current> = clusters
        .iter()
        .filter(|c| {
            !matches!(c.trust.stage, Stage::Activated { .. } | Stage::Finished)
                || c.trust.new_fp.as_deref() != new_fps.first().copied()
        })
        .collect();
    if !not_ready.is_empty() {
        bail!(
            "not every cluster signs with the new root yet: {} (stage {}); run meshctl rotate activate \
             for every cluster first; nothing was changed",
            list(&not_ready),
            not_ready
                .iter()
                .map(|c| c.trust.stage.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !a.confirm {
        let mut latest = None;
        for c in clusters {
            let Stage::Activated { activated_at } = &c.trust.stage else {
                continue;
            };
            let Ok(at) = humantime::parse_rfc3339(activated_at) else {
                bail!(
                    "context {:?}: annotation {AT} {activated_at:?} is not an RFC 3339 time, so \
                     meshctl cannot tell when old workload certificates expire; pass --confirm \
                     once no workload holds one; nothing was changed",
                    c.ctx
                );
            };
            latest = latest.max(Some(at));
        }
        if let Some(latest) = latest {
            let safe = latest.checked_add(a.workload_lifetime);
            if safe.is_none_or(|safe| SystemTime::now() < safe) {
                bail!(
                    "workload certificates from the old root may still be valid until {} (last \
                     activation + --workload-lifetime {}); finish then, or pass --confirm once no \
                     workload holds one; nothing was changed",
                    safe.map_or("the far future".to_string(), format_time),
                    humantime::format_duration(a.workload_lifetime)
                );
            }
        }
    }
    let mut secrets = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let Stage::Activated { activated_at } = &c.trust.stage else {
            continue;
        };
        let Some(signing) = &c.trust.signing else {
            continue;
        };
        let mut files = c.files.clone();
        files.insert(pki::ROOT_CERT, pki::der_to_pem(signing));
        let (old, new) = (
            c.trust.old_fp.clone().unwrap_or_default(),
            fingerprint(signing),
        );
        secrets.push((
            i,
            cacerts_secret(
                &files,
                ns,
                &annotations("finished", &old, &new, Some(activated_at)),
            )?,
        ));
    }
    Ok(Plan {
        secrets,
        files: Vec::new(),
        done: "Finished: every cluster trusts the new root only.".into(),
        next: format!(
            "{}. {ROOTS_PUBLISHED}; confirm that istio-ca-root-cert shows one certificate. Keep \
             the new root's key in --dir offline (or delete it once every cluster's intermediate \
             is in place).",
            roots_changed(ns)
        ),
        half_done: "Meanwhile the updated clusters trust only the new root, the others both; \
             every cluster already signs with the new root, so traffic between them keeps \
             working (a workload still holding an old-root certificate is refused by the updated \
             clusters, as after a complete finish)."
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::context_dirs;

    /// A context name never puts a CA key outside `--dir` (nor in a nested directory).
    #[test]
    fn context_names_become_one_directory_under_dir() {
        let dirs = |c: &[&str]| context_dirs(c.iter().copied());
        assert_eq!(
            dirs(&[
                "west",
                "kind-east",
                "arn:aws:eks:eu-west-1:1:cluster/south",
                "../up",
                "/tmp/x",
                ".."
            ])
            .unwrap(),
            [
                "west",
                "kind-east",
                "arn_aws_eks_eu-west-1_1_cluster_south",
                "_._up",
                "_tmp_x",
                "_."
            ]
        );
        let e = dirs(&["a/b", "a:b"]).unwrap_err().to_string();
        assert!(
            e.contains("\"a/b\" and \"a:b\"") && e.contains("--dir/a_b"),
            "{e}"
        );
    }

    use std::time::{Duration, UNIX_EPOCH};

    use super::format_time;

    #[test]
    fn times_past_year_9999_are_the_far_future_not_a_panic() {
        let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
        assert_eq!(format_time(last), "9999-12-31T23:59:59Z");
        assert_eq!(format_time(last + Duration::from_secs(1)), "the far future");
        assert_eq!(
            format_time(last + Duration::from_secs(9_999_999_999 * 3600)),
            "the far future"
        );
    }
}
