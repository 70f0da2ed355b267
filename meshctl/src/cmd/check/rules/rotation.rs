//! Root rotation (`meshctl rotate`): each cluster's stage, and whether the mix of stages
//! keeps cross-cluster trust: every cluster's signing root must be in every other cluster's
//! bundle, and all clusters must be in the same rotation. Pure: the trust states come from
//! `mesh::rotation::trust_of` on the gathered `cacerts`.

use super::super::hints::{Invocation, shell_word};
use super::super::report::Report;
use crate::mesh::rotation::{Stage, Trust, fingerprint, short};

/// One cluster's trust, `None` when it was not read or has no `cacerts` (other checks say so).
pub struct ClusterTrust<'a> {
    pub context: &'a str,
    pub trust: Option<Trust>,
}

/// Each cluster's rotation stage and the cross-cluster trust; `inv`: the flags the hints
/// repeat.
pub fn rotation_checks(r: &mut Report, clusters: &[ClusterTrust<'_>], inv: &Invocation) {
    for c in clusters {
        let Some(t) = &c.trust else { continue };
        let scope = format!("cluster {}", c.context);
        let check = "root rotation stage";
        match &t.stage {
            Stage::Inconsistent(why) => r.fail(&scope, check, why.clone(),
                format!("re-run the meshctl rotate step this cluster was in (it is idempotent), or re-apply its bundle with meshctl cacerts apply certs/<cluster> --context {}{} --force", shell_word(c.context), inv.meshctl())),
            Stage::Stable => r.pass(&scope, check, "none (one root)"),
            Stage::Prepared => r.pass(&scope, check, "prepared: trusts the old and the new root, signs with the old"),
            Stage::Activated { activated_at } => r.pass(&scope, check, format!("activated at {activated_at}: trusts both roots, signs with the new")),
            Stage::Finished => r.pass(&scope, check, "finished: trusts the new root only"),
        }
    }
    cross_trust(r, clusters, inv);
}

/// "cross-cluster trust during rotation": A's signing root in B's bundle, for every A ≠ B.
fn cross_trust(r: &mut Report, clusters: &[ClusterTrust<'_>], inv: &Invocation) {
    let (scope, check) = ("mesh", "cross-cluster trust of signing roots");
    let read: Vec<(&str, &Trust)> = clusters
        .iter()
        .filter_map(|c| Some((c.context, c.trust.as_ref()?)))
        .collect();
    let mut broken = Vec::new();
    for (a, ta) in &read {
        let Some(signing) = &ta.signing else { continue };
        for (b, tb) in &read {
            if a != b && !tb.roots.contains(signing) {
                broken.push(format!(
                    "{b} does not trust {a}'s signing root {}",
                    short(&fingerprint(signing))
                ));
            }
        }
    }
    let rotations: Vec<&str> = read
        .iter()
        .filter_map(|(_, t)| t.new_fp.as_deref())
        .collect();
    let mixed = read
        .iter()
        .any(|(_, t)| matches!(t.stage, Stage::Prepared | Stage::Activated { .. }))
        && rotations.windows(2).any(|w| w[0] != w[1]);
    if !broken.is_empty() {
        r.fail(scope, check, broken.join("; "),
            format!("workloads across these clusters fail mTLS: finish the step in progress everywhere (meshctl rotate prepare|activate ...{} with every --context), never finish before every cluster is activated", inv.meshctl()));
    } else if mixed {
        r.fail(
            scope,
            check,
            "clusters are in rotations to different new roots",
            "resume one rotation with the --dir it used, in every cluster",
        );
    } else if read.len() < clusters.len().max(2) {
        // Trust between clusters holds only when every cluster's roots were read.
        let unread: Vec<&str> = clusters
            .iter()
            .filter(|c| c.trust.is_none())
            .map(|c| c.context)
            .collect();
        let why = if unread.is_empty() {
            "needs two clusters".to_string()
        } else {
            format!("no cacerts read from {}", unread.join(", "))
        };
        r.skip(scope, check, why);
    } else {
        r.pass(scope, check, "");
    }
}

/// The trust state of a gathered `cacerts` (its files and annotations).
pub fn trust_of_secret(s: &k8s_openapi::api::core::v1::Secret) -> Trust {
    let mut files = crate::mesh::rotation::BundleTexts::new();
    for name in [pki::CA_CERT, pki::CA_KEY, pki::ROOT_CERT, pki::CERT_CHAIN] {
        if let Some(b) = s.data.as_ref().and_then(|d| d.get(name)) {
            files.insert(name, String::from_utf8_lossy(&b.0).into_owned());
        }
    }
    let ann = s.metadata.annotations.clone().unwrap_or_default();
    crate::mesh::rotation::trust_of(&files, &ann)
}

#[cfg(test)]
mod tests {
    use super::super::super::report::Status;
    use super::*;

    fn t(roots: &[&[u8]], signing: &[u8], stage: Stage) -> Option<Trust> {
        Some(Trust {
            roots: roots.iter().map(|r| r.to_vec()).collect(),
            signing: Some(signing.to_vec()),
            old_fp: None,
            new_fp: (stage != Stage::Stable).then(|| "n".to_string()),
            stage,
        })
    }

    fn run(cs: Vec<(&str, Option<Trust>)>) -> Report {
        let cs: Vec<ClusterTrust<'_>> = cs
            .into_iter()
            .map(|(context, trust)| ClusterTrust { context, trust })
            .collect();
        let mut r = Report::default();
        rotation_checks(&mut r, &cs, &Default::default());
        r
    }

    fn mesh_status(r: &Report) -> Status {
        r.items.iter().find(|i| i.scope == "mesh").unwrap().status
    }

    const OLD: &[u8] = b"old";
    const NEW: &[u8] = b"new";
    fn activated() -> Stage {
        Stage::Activated {
            activated_at: "2026-12-02T00:00:00Z".into(),
        }
    }

    #[test]
    fn every_consistent_mix_passes() {
        for mix in [
            vec![t(&[OLD], OLD, Stage::Stable), t(&[OLD], OLD, Stage::Stable)],
            // Half-way through prepare: still everyone signs with old, everyone trusts old.
            vec![
                t(&[OLD, NEW], OLD, Stage::Prepared),
                t(&[OLD], OLD, Stage::Stable),
            ],
            vec![
                t(&[OLD, NEW], NEW, activated()),
                t(&[OLD, NEW], OLD, Stage::Prepared),
            ],
            vec![
                t(&[NEW], NEW, Stage::Finished),
                t(&[OLD, NEW], NEW, activated()),
            ],
        ] {
            let r = run(vec![("west", mix[0].clone()), ("east", mix[1].clone())]);
            assert_eq!(r.failed(), 0, "{:?}", r.items);
            assert_eq!(mesh_status(&r), Status::Pass);
        }
    }

    #[test]
    fn a_mix_that_breaks_trust_fails_and_names_the_pair() {
        // west activated while east does not trust the new root.
        let r = run(vec![
            ("west", t(&[OLD, NEW], NEW, activated())),
            ("east", t(&[OLD], OLD, Stage::Stable)),
            ("north", None),
        ]);
        assert_eq!(mesh_status(&r), Status::Fail);
        let item = r.items.iter().find(|i| i.scope == "mesh").unwrap();
        assert!(
            item.detail
                .contains("east does not trust west's signing root"),
            "{item:?}"
        );
        assert!(!item.detail.contains("north"), "{item:?}");
        // west finished while east still signs with the old root.
        let r = run(vec![
            ("west", t(&[NEW], NEW, Stage::Finished)),
            ("east", t(&[OLD, NEW], OLD, Stage::Prepared)),
        ]);
        assert!(
            r.items
                .iter()
                .any(|i| i.detail.contains("west does not trust east's signing root"))
        );
        // Stages are reported per cluster; an inconsistent one fails.
        let r = run(vec![(
            "west",
            t(&[OLD, NEW], OLD, Stage::Inconsistent("x".into())),
        )]);
        let i = r
            .items
            .iter()
            .find(|i| i.check == "root rotation stage")
            .unwrap();
        assert_eq!(i.status, Status::Fail);
    }

    #[test]
    fn an_unread_cluster_is_skipped_not_passed() {
        let r = run(vec![
            ("west", t(&[b"a"], b"a", Stage::Stable)),
            ("east", None),
        ]);
        assert_eq!(mesh_status(&r), Status::Skip);
        let i = r.items.iter().find(|i| i.scope == "mesh").unwrap();
        assert!(i.detail.contains("east"), "{}", i.detail);
        let r = run(vec![("west", t(&[b"a"], b"a", Stage::Stable))]);
        assert_eq!(mesh_status(&r), Status::Skip);
        let r = run(vec![("west", None), ("east", None)]);
        assert_eq!(mesh_status(&r), Status::Skip);
    }
}
