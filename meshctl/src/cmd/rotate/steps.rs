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

/// The new root in `dir`, if `prepare` wrote one there.
fn load_root(dir: &Path) -> Result<Option<RootCa>> {
    let cert = dir.join(pki::ROOT_CERT);
    if cert.symlink_metadata().is_err() {
        return Ok(None);
    }
    RootCa::load_files(&cert, &dir.join(pki::ROOT_KEY))
        .with_context(|| {
            format!(
                "loading the new root from {} (its root-cert.pem and root-key.pem are reused to \
                 resume a rotation; move them away to make a new root)",
                dir.display()
            )
        })
        .map(Some)
}

pub fn prepare(a: &PrepareArgs, clusters: &[Current]) -> Result<Plan> {
    let ns = a.common.ns.namespace.as_str();
    let existing = load_root(&a.dir)?;
    let root = match &existing {
        Some(r) => r,
        None => &RootCa::generate(&RootOptions {
            common_name: a.common_name.clone(),
            days: a.root_days,
            ..Default::default()
        })?,
    };
    let new_fp = fingerprint(root.cert_der());
    // Who is where: a cluster of another rotation, or past prepare, stops the step.
    let mut old_fp: Option<String> = None;
    let mut todo = Vec::new();
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
            Stage::Activated { .. } => bail!(
                "context {:?} is already activated: prepare is over (next: meshctl rotate activate, then finish); nothing was changed",
                c.ctx
            ),
            Stage::Inconsistent(why) => bail!("context {:?}: {why}; nothing was changed", c.ctx),
        }
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
        files: root.files(&a.dir),
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

pub fn activate(a: &ActivateArgs, clusters: &[Current]) -> Result<Plan> {
    let ns = a.common.ns.namespace.as_str();
    let Some(root) = load_root(&a.dir)? else {
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
    let (mut secrets, mut files) = (Vec::new(), Vec::new());
    for (i, c) in clusters.iter().enumerate() {
        if !matches!(c.trust.stage, Stage::Prepared) {
            continue;
        }
        let dir = a.dir.join(&c.ctx);
        let ca = new_intermediate(&root, &dir, text(c, pki::CA_CERT)?)?;
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
        // `certs verify` and `certs workload --ca` work on it.
        files.extend(ca.files(&dir));
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

/// The new intermediate of one cluster: the one in `dir` if an interrupted run left it
/// there (and it chains to `root`), else a new one with the old CA's subject.
fn new_intermediate(root: &RootCa, dir: &Path, old_ca: &str) -> Result<IntermediateCa> {
    if dir.join(pki::CA_CERT).symlink_metadata().is_ok() {
        let read = |f: &str| {
            pki::files::read_cert_pem(&dir.join(f))
                .with_context(|| format!("reading {}", dir.join(f).display()))
        };
        let key = pki::files::read_key(&dir.join(pki::CA_KEY))?;
        let ca = IntermediateCa::from_pems(&read(pki::CA_CERT)?, &key, root.cert_pem())?;
        if pki::signing_root(ca.cert_pem(), &ca.cert_chain_pem(), root.cert_pem()).is_none() {
            bail!(
                "{} holds an intermediate that does not chain to the new root; move it away; nothing was changed",
                dir.display()
            );
        }
        return Ok(ca);
    }
    let opts = IntermediateOptions::renewing(old_ca)?;
    Ok(root.issue_intermediate(&opts)?)
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
