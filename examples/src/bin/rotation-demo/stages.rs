//! The rotation's stages, in the order they run. Each prints its header, runs the real
//! `meshctl` commands, shows what `meshctl check` says per cluster, and makes the mTLS calls
//! that must work or fail at that stage.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use testkit::mesh::{self, CATALOG, WEBAPP};

use crate::calls::{EastGateway, Outcome, Workload};
use crate::clusters::{Clusters, NAMES};
use crate::harness::{Demo, header, private_dir};

pub struct Rotation {
    pub clusters: Clusters,
    pub gateway: Option<EastGateway>,
}

/// `--context west --context east --context north`.
fn contexts() -> Vec<&'static str> {
    NAMES.iter().flat_map(|n| ["--context", *n]).collect()
}

fn step_args<'a>(d: &'a Demo, step: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut a = vec!["rotate".to_string(), step.to_string()];
    if step != "finish" {
        a.extend(["--dir".to_string(), d.path("rotation")]);
    }
    a.extend(contexts().iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn refs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// The label of a workload issued at a stage: which root signed it, which roots it trusts.
fn label(stage: &str) -> &'static str {
    match stage {
        "before" => "old cert, trusts old",
        "prepared" => "old cert, trusts old+new",
        "activated" | "too-early" => "new cert, trusts old+new",
        _ => "new cert, trusts new",
    }
}

impl Rotation {
    fn gw(&self) -> &EastGateway {
        self.gateway
            .as_ref()
            .expect("the gateway starts in scene 1")
    }

    /// `meshctl check -o json` after a step: each cluster's `root rotation stage` and the
    /// mesh's `cross-cluster trust of signing roots`, checked against `want`.
    fn check_stages(&self, d: &mut Demo, want: [&str; 3]) -> Result<()> {
        let mut a = vec!["check", "-o", "json"];
        a.extend(contexts());
        let out = d.meshctl(&a)?;
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("meshctl check -o json printed no JSON:\n{}", out.stderr))?;
        let items = v["checks"].as_array().cloned().unwrap_or_default();
        let find = |scope: &str, check: &str| {
            items
                .iter()
                .find(|i| i["scope"] == scope && i["check"] == check)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let stages: Vec<String> = NAMES
            .iter()
            .map(|n| {
                let i = find(&format!("cluster {n}"), "root rotation stage");
                let detail = i["detail"].as_str().unwrap_or("?");
                detail.split([' ', ':']).next().unwrap_or("?").to_string()
            })
            .collect();
        let trust = find("mesh", "cross-cluster trust of signing roots");
        let trust = trust["status"].as_str().unwrap_or("missing").to_string();
        let shown: Vec<String> = NAMES
            .iter()
            .zip(&stages)
            .map(|(n, s)| format!("{n} {s}"))
            .collect();
        println!(
            "  │ root rotation stage: {}; cross-cluster trust of signing roots: {trust}",
            shown.join(" · ")
        );
        d.check(
            &format!(
                "check: stage {} per cluster, cross-cluster trust holds",
                want.join("/")
            ),
            stages == want && trust == "pass",
        );
        Ok(())
    }

    /// Workload certificates as istiod would issue them at `stage`: webapp from west's
    /// `cacerts`, catalog from east's, each trusting its cluster's `root-cert.pem`.
    fn issue(&self, d: &Demo, stage: &str) -> Result<()> {
        private_dir(&d.work.join("istiod").join(stage))?;
        println!(
            "  workloads issued as istiod would: from each cluster's cacerts (read from its test\n   server into $WORK/istiod/{stage}/<cluster>), trusting its root-cert.pem"
        );
        for (cluster, sa) in [("west", WEBAPP), ("east", CATALOG)] {
            let ca = d.path(&format!("istiod/{stage}/{cluster}"));
            self.clusters
                .istiod_view(cluster, std::path::Path::new(&ca))?;
            let out = d.path(&format!("workloads/{stage}/{sa}"));
            d.meshctl_ok(&[
                "certs",
                "workload",
                "--ca",
                &ca,
                "-n",
                mesh::NAMESPACE,
                "-s",
                sa,
                "--out",
                &out,
            ])?;
        }
        Ok(())
    }

    /// istiod reloads a changed `root-cert.pem` without a restart only when one bundle holds
    /// the other byte for byte (and `ISTIO_MULTIROOT_MESH=true`): istio/istio
    /// `pilot/pkg/bootstrap/istio_ca.go` `handleEvent`. Checks that the two stages' bundles
    /// (as istiod would read them) qualify, in both clusters.
    fn bundle_contains(&self, d: &mut Demo, outer: &str, inner: &str) -> Result<()> {
        let mut ok = true;
        for cluster in ["west", "east"] {
            let read = |stage: &str| {
                std::fs::read_to_string(
                    d.work
                        .join(format!("istiod/{stage}/{cluster}"))
                        .join(pki::ROOT_CERT),
                )
            };
            ok &= read(outer)?.contains(&read(inner)?);
        }
        d.check(
            &format!("the {outer} root-cert.pem holds the {inner} one byte for byte (istiod's hot reload needs it)"),
            ok,
        );
        Ok(())
    }

    fn call(&self, d: &mut Demo, client: &str, server: &str, want: Outcome) -> Result<()> {
        let (c, s) = (
            d.path(&format!("workloads/{client}/{WEBAPP}")),
            d.path(&format!("workloads/{server}/{CATALOG}")),
        );
        self.gw().call(
            d,
            &Workload {
                dir: &c,
                label: label(client),
            },
            &Workload {
                dir: &s,
                label: label(server),
            },
            want,
        )
    }

    /// Scene 1: one root for the three clusters (`certs init`, `cacerts apply`), workloads
    /// from it, east's gateway, and a first call.
    pub fn trust(&mut self, d: &mut Demo) -> Result<()> {
        header(
            1,
            "Before: one root, one intermediate per cluster in cacerts",
        );
        let names = NAMES.join(",");
        d.meshctl_ok(&[
            "certs",
            "init",
            "--clusters",
            &names,
            "--out",
            &d.path("certs"),
        ])?;
        for n in NAMES {
            let dir = d.path(&format!("certs/{n}"));
            d.meshctl_ok(&["cacerts", "apply", &dir, "--context", n])?;
        }
        println!(
            "  (meshctl check's trust lines are shown: the clusters are not joined here, so its\n   remote-secret checks fail and are left out)"
        );
        self.check_stages(d, ["none", "none", "none"])?;
        private_dir(&d.work.join("istiod"))?;
        private_dir(&d.work.join("workloads"))?;
        self.issue(d, "before")?;
        self.gateway = Some(EastGateway::start(d)?);
        self.call(d, "before", "before", Outcome::Called)
    }

    /// Scene 2: `prepare --dry-run` prints the Secrets (keys redacted) and changes nothing.
    pub fn dry_run(&mut self, d: &mut Demo) -> Result<()> {
        header(2, "prepare --dry-run: what would change (nothing does)");
        let before = self.clusters.all_cacerts()?;
        let out = d.meshctl(&refs(&step_args(d, "prepare", &["--dry-run"])))?;
        let notes: String = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        d.show(&notes);
        let headers = NAMES
            .iter()
            .all(|n| out.stdout.contains(&format!("# context {n}")));
        d.check(
            "dry run: a cacerts Secret per cluster, ca-key.pem redacted",
            out.ok && headers && out.stdout.contains("<redacted private key"),
        );
        d.check(
            "dry run changed no cluster and wrote no key",
            self.clusters.all_cacerts()? == before
                && !d.work.join("rotation").join(pki::ROOT_KEY).exists(),
        );
        Ok(())
    }

    /// Scene 3: `prepare` interrupted after west (east through a credential that may read
    /// Secrets but not change them); `activate` is refused; a new-root workload would fail.
    pub fn interrupted(&mut self, d: &mut Demo) -> Result<()> {
        header(3, "prepare, interrupted after west; activate refused");
        let viewer = d.work.join("kube/east-read-only.kubeconfig");
        crate::harness::write_new(&viewer, &self.clusters.read_only_kubeconfig("east")?, true)?;
        println!("  (east through a credential that may read Secrets but not change them)");
        let kubeconfig = d
            .kubeconfig
            .replace("/east.kubeconfig", "/east-read-only.kubeconfig");
        let out = d.meshctl_with(&kubeconfig, &refs(&step_args(d, "prepare", &[])))?;
        d.show(&format!("{}{}", out.stdout, out.stderr));
        d.check(
            "prepare stopped after west and says how to resume",
            !out.ok
                && out
                    .stderr
                    .contains("interrupted: updated 1 of 3 cluster(s) that needed it (west)"),
        );
        self.check_stages(d, ["prepared", "none", "none"])?;
        let before = self.clusters.all_cacerts()?;
        let out = d.meshctl(&refs(&step_args(d, "activate", &[])))?;
        d.show(&out.stderr);
        d.check(
            "activate refused while east and north trust only the old root; nothing changed",
            !out.ok
                && out
                    .stderr
                    .contains("not every cluster trusts both roots yet: east, north")
                && self.clusters.all_cacerts()? == before,
        );
        self.too_early(d)
    }

    /// Why activate waits: a webapp certificate from the new root (an intermediate issued
    /// now, as activate would) is refused by catalog, whose cluster trusts the old root only.
    fn too_early(&mut self, d: &mut Demo) -> Result<()> {
        println!("  what activating west now would do to its calls to east:");
        let ca = d.work.join("istiod/too-early");
        private_dir(&ca)?;
        let (root, key) = (
            d.path(&format!("rotation/{}", pki::ROOT_CERT)),
            d.path(&format!("rotation/{}", pki::ROOT_KEY)),
        );
        d.meshctl_ok(&[
            "certs",
            "intermediate",
            "--root-cert",
            &root,
            "--root-key",
            &key,
            "--cluster",
            "west",
            "--out",
            &d.path("istiod/too-early/west-new-ca"),
        ])?;
        // West's cacerts as activate would make it: the new intermediate, west's bundle.
        let west = ca.join("west");
        private_dir(&west)?;
        for (f, secret) in [
            (pki::CA_CERT, false),
            (pki::CA_KEY, true),
            (pki::CERT_CHAIN, false),
        ] {
            let text = std::fs::read_to_string(ca.join("west-new-ca").join(f))?;
            crate::harness::write_new(&west.join(f), &text, secret)?;
        }
        crate::harness::write_new(
            &west.join(pki::ROOT_CERT),
            &self.clusters.cacerts_file("west", pki::ROOT_CERT)?,
            false,
        )?;
        d.meshctl_ok(&[
            "certs",
            "workload",
            "--ca",
            &d.path("istiod/too-early/west"),
            "-n",
            mesh::NAMESPACE,
            "-s",
            WEBAPP,
            "--out",
            &d.path(&format!("workloads/too-early/{WEBAPP}")),
        ])?;
        self.call(d, "too-early", "before", Outcome::CatalogRefuses)
    }

    /// Scene 4: `prepare` resumed: west is skipped, east and north trust both roots.
    pub fn prepared(&mut self, d: &mut Demo) -> Result<()> {
        header(
            4,
            "prepare, resumed: every cluster trusts old + new, old CAs sign",
        );
        let out = d.meshctl_ok(&refs(&step_args(d, "prepare", &[])))?;
        d.show(&out);
        d.check(
            "resumed: west skipped, east and north updated",
            out.contains("context \"west\" is already prepared")
                && out.contains("cacerts updated in context \"east\"")
                && out.contains("cacerts updated in context \"north\""),
        );
        self.check_stages(d, ["prepared", "prepared", "prepared"])?;
        let roots: Vec<usize> = NAMES
            .iter()
            .map(|n| self.clusters.roots(n))
            .collect::<Result<_>>()?;
        d.check(
            "every cluster's root-cert.pem holds two roots",
            roots == [2, 2, 2],
        );
        self.issue(d, "prepared")?;
        self.bundle_contains(d, "prepared", "before")?;
        self.call(d, "prepared", "prepared", Outcome::Called)?;
        // A workload that has not picked up the two-root bundle yet still talks both ways.
        self.call(d, "before", "prepared", Outcome::Called)
    }

    /// Scene 5: `activate`: new intermediates everywhere, both roots still trusted.
    pub fn activated(&mut self, d: &mut Demo) -> Result<()> {
        header(
            5,
            "activate: every cluster signs with a new intermediate of the new root",
        );
        let out = d.meshctl_ok(&refs(&step_args(d, "activate", &[])))?;
        d.show(&out);
        self.check_stages(d, ["activated", "activated", "activated"])?;
        self.issue(d, "activated")?;
        self.call(d, "activated", "prepared", Outcome::Called)?;
        self.call(d, "prepared", "activated", Outcome::Called)?;
        self.call(d, "activated", "activated", Outcome::Called)?;
        // Against a peer that never got the two-root bundle.
        self.call(d, "activated", "before", Outcome::CatalogRefuses)?;
        self.call(d, "before", "activated", Outcome::WebappRefuses)
    }

    /// Scene 6: `finish`: refused within the workload lifetime, then confirmed.
    pub fn finished(&mut self, d: &mut Demo) -> Result<()> {
        header(6, "finish: the old root leaves every bundle");
        let before = self.clusters.all_cacerts()?;
        let out = d.meshctl(&refs(&step_args(d, "finish", &[])))?;
        d.show(&out.stderr);
        d.check(
            "finish refused while old-root workload certificates may be valid; nothing changed",
            !out.ok
                && out.stderr.contains("may still be valid until")
                && self.clusters.all_cacerts()? == before,
        );
        println!(
            "  (--confirm: every workload here was re-issued at activate; the old-root\n   certificates kept from before show what happens to one that was not)"
        );
        let out = d.meshctl_ok(&refs(&step_args(d, "finish", &["--confirm"])))?;
        d.show(&out);
        self.check_stages(d, ["finished", "finished", "finished"])?;
        let roots: Vec<usize> = NAMES
            .iter()
            .map(|n| self.clusters.roots(n))
            .collect::<Result<_>>()?;
        d.check(
            "every cluster's root-cert.pem holds one root",
            roots == [1, 1, 1],
        );
        self.issue(d, "finished")?;
        self.bundle_contains(d, "prepared", "finished")?;
        self.call(d, "finished", "finished", Outcome::Called)?;
        self.call(d, "prepared", "finished", Outcome::CatalogRefuses)?;
        self.call(d, "finished", "prepared", Outcome::WebappRefuses)
    }
}

/// Fails when a required binary is missing next to this one.
pub fn require_bins(bin: &std::path::Path) -> Result<()> {
    for tool in ["gateway", "meshctl", "mesh-workload"] {
        if !bin.join(tool).exists() {
            bail!(
                "{} not found next to rotation-demo; build with: cargo build --release -p gateway -p meshctl -p examples",
                bin.join(tool).display()
            );
        }
    }
    Ok(())
}
