//! `meshctl label-network NETWORK`: labels istiod's namespace
//! `topology.istio.io/network=<network>` (istiod's fallback network for workloads),
//! creating the namespace if it is missing. It says so on stderr; with `-o yaml|json` stdout
//! is the Namespace as applied, one document.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Args;

use crate::cli::{KubeArgs, MutateArgs, NamespaceArg, as_usage, usage};
use crate::istio::NETWORK_LABEL;
use crate::kube::{self as kc, KubeconfigFile};
use crate::mesh::namespace::{label, validate_label_value};

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
        if a.mutate.dry_run {
            return label(&c, ns, &a.network, None, true).await;
        }
        // Whether a failure below may have left a new, unlabelled namespace behind.
        let existed = kc::get(&c, "v1", "Namespace", None, ns).await?.is_some();
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
