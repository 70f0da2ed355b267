//! `meshctl create-remote-secret`: prints the Secret another cluster's istiod uses to watch
//! this cluster, in istioctl's shape, with three differences: the reader role grants exactly
//! what istiod reads in a remote cluster and no Secrets (`mesh::reader_rules`), one role and
//! binding per service account (so a secret made for one never changes another's access), a
//! loopback API server address is refused, and `--token-ttl` gives an expiring TokenRequest
//! token. Wrong flags are usage errors (exit 2), found before the cluster is read. stdout is
//! one JSON document (`-o json`) or one YAML stream, dry run or not.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::cli::{KubeArgs, MutateArgs, NamespaceArg, SecretFlags};
use crate::kube::{self as kc, KubeconfigFile, Output, Secrets};
use crate::mesh::reader::{SecretOptions, build, validate};
use crate::mesh::remote_secret::{istioctl_yaml, printable};

#[derive(Debug, Args)]
pub struct CreateRemoteSecretArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Cluster ID (a DNS-1123 label): names the Secret, its data key and the kubeconfig entries.
    #[arg(long)]
    name: String,
    #[command(flatten)]
    ns: NamespaceArg,
    /// API server address as the other clusters reach it (default: the kubeconfig's).
    /// kind: https://<control-plane-container-ip>:6443, never 127.0.0.1.
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    opts: SecretFlags,
    #[command(flatten)]
    mutate: MutateArgs,
}

pub fn run(a: CreateRemoteSecretArgs) -> Result<ExitCode> {
    let opts = SecretOptions {
        name: a.name.clone(),
        namespace: a.ns.namespace.clone(),
        server: a.server.clone(),
        flags: a.opts.clone(),
    };
    validate(&opts)?;
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    let dry_run = a.mutate.dry_run;
    let built = kc::block_on(async {
        let c = file.connect(&ctx).await?;
        build(&c, &opts, dry_run).await
    })?;
    let output = a.mutate.output();
    // stdout is one JSON document, or a YAML stream: a dry run's plan of this cluster's
    // objects carries the Secret for the other clusters in its JSON (`remoteSecret`), or
    // after it as the stream's last document.
    let secret = printable(&built.secret);
    let plan = [(ctx, built.source_objects)];
    match (dry_run, output) {
        (true, Output::Json) => {
            let mut doc = kc::plan_json(&plan, Secrets::Redact);
            doc["remoteSecret"] = secret;
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        (true, Output::Yaml) => {
            print!("{}", kc::render_plan(&plan, output)?);
            print!(
                "# the remote secret, for the other clusters' istiod (dry run: its token is a \
                 placeholder)\n---\n{}",
                istioctl_yaml(&built.secret)?
            );
        }
        (false, Output::Yaml) => print!("{}", istioctl_yaml(&built.secret)?),
        (false, Output::Json) => println!("{}", serde_json::to_string_pretty(&secret)?),
    }
    Ok(ExitCode::SUCCESS)
}
