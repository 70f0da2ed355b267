//! `meshctl label-network NETWORK`: labels istiod's namespace
//! `topology.istio.io/network=<network>` (istiod's fallback network for workloads),
//! creating the namespace if it is missing. It says so on stderr; with `-o yaml|json` stdout
//! is the Namespace as applied, one document.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Args;

use crate::cli::{DeletionWaitArg, KubeArgs, MutateArgs, NamespaceArg, as_usage, usage};
use crate::istio::NETWORK_LABEL;
use crate::kube::{self as kc, KubeconfigFile};
use crate::mesh::namespace::{label, validate_label_value};
use crate::mesh::terminating::{self, DeletionWait};

#[derive(Debug, Args)]
pub struct LabelNetworkArgs {
    /// Network name, e.g. west-network (a label value).
    network: String,
    #[command(flatten)]
    ns: NamespaceArg,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    mutate: MutateArgs,
    #[command(flatten)]
    deletion: DeletionWaitArg,
}

pub fn run(a: LabelNetworkArgs) -> Result<ExitCode> {
    let ns = &a.ns.namespace;
    validate_label_value(&a.network).map_err(as_usage)?;
    pki::validate_dns_label(ns).map_err(|e| usage(format!("namespace {e}")))?;
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    let obj = kc::block_on(async {
        let c = file.connect(&ctx).await?;
        // Whether a failure below may have left a new, unlabelled namespace behind; a
        // namespace being deleted is waited for first (nothing can be created in it, and a
        // label on it would go with it).
        let existing = kc::get(&c, "v1", "Namespace", None, ns).await?;
        let found: Vec<_> = existing
            .iter()
            .filter_map(|n| terminating::of(&terminating::namespace_stub(ns), n))
            .collect();
        let waited = DeletionWait::new(a.deletion.deletion_wait)
            .wait_gone(&c, &found, a.mutate.dry_run)
            .await?;
        if a.mutate.dry_run {
            return label(&c, ns, &a.network, None, true).await;
        }
        let existed = existing.is_some() && !waited;
        label(&c, ns, &a.network, None, false).await.map_err(|e| {
            anyhow!(
                "{e:#}\nnamespace {ns} in context {ctx:?} is not labelled{}; re-run the same \
                 command to resume",
                if existed {
                    ""
                } else {
                    " (it may have been created without the label)"
                }
            )
        })
    })?;
    if a.mutate.dry_run {
        print!(
            "{}",
            kc::render_plan(&[(ctx, vec![obj])], a.mutate.output())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Progress on stderr; stdout has the applied Namespace when -o asks for it.
    eprintln!(
        "namespace {ns} in context {ctx:?} labelled {NETWORK_LABEL}={}",
        a.network
    );
    if let Some(output) = a.mutate.output_asked() {
        print!("{}", kc::render_one(&obj, output)?);
    }
    Ok(ExitCode::SUCCESS)
}
