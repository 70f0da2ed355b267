//! `meshctl certs renew`: a new intermediate for one cluster from the same root (same
//! subject, new key), written in place like every `certs` file and, with `--apply`, applied
//! as `cacerts` the way `cacerts apply` does. `--dry-run` writes and applies nothing. With
//! `-o yaml|json` (and `--apply`), stdout is the applied Secret, its key redacted unless
//! `--show-secrets`, and the progress lines go to stderr. With `--apply`, a `cacerts` (or
//! namespace) being deleted is waited for (`--deletion-wait`) before the bundle on disk is
//! replaced, or the command stops with nothing written or applied.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};

use super::{RenewArgs, Signer, warn_clamped, write_saying};
use crate::cmd::progress::Progress;
use crate::kube::{self as kc, KubeconfigFile, Secrets};
use crate::mesh::cacerts::{apply_secret, pem_ders};
use crate::mesh::rotation::{BundleTexts, cacerts_secret};
use crate::mesh::terminating::{self, DeletionWait};

pub fn run(a: RenewArgs) -> Result<ExitCode> {
    if a.mutate.output_asked().is_some() && !a.apply {
        return Err(crate::cli::usage(
            "-o prints the cacerts Secret that --apply applies: add --apply --context CTX, or \
             drop -o (without --apply, renew writes files only)",
        ));
    }
    let to = Progress::for_output(a.mutate.output_asked());
    super::check_bundle_dir(&a.ca, "--ca", true)?;
    // Certificate files only (a key block in them would be written back and applied).
    let read = |f: &str| {
        let path = a.ca.join(f);
        pki::files::read_cert_pem(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (old_ca, old_roots) = (read(pki::CA_CERT)?, read(pki::ROOT_CERT)?);
    let signer = Signer::load(&a.signer)?;
    signer.check_not_expired(&a.signer, true)?;
    let trusted = pem_ders(old_roots.as_bytes());
    if signer.signing_root().is_none_or(|r| !trusted.contains(&r)) {
        bail!(
            "the signing CA does not chain to a root of {}: renew keeps the root (to change the \
             root of every cluster, use meshctl rotate prepare|activate|finish)",
            a.ca.join(pki::ROOT_CERT).display()
        );
    }
    let mut opts = pki::IntermediateOptions::renewing(&old_ca)
        .with_context(|| format!("reading {}", a.ca.join(pki::CA_CERT).display()))?;
    opts.key_type = a.key_type;
    if let Some(days) = a.days {
        opts.days = days;
    }
    // `of <cluster>`, or `in <dir>` for a CA whose subject names no cluster (no L).
    let which = if opts.cluster.is_empty() {
        format!("in {}", a.ca.display())
    } else {
        format!("of {}", opts.cluster)
    };
    let ca = signer
        .issue(&opts)
        .with_context(|| format!("renewing the intermediate CA {which}"))?;
    warn_clamped(&which, &ca);
    if !pki::same_subject(ca.cert_pem(), &old_ca)? {
        bail!(
            "{} has a subject meshctl cannot reproduce byte for byte (attributes other than O, \
             CN and L); nothing was written",
            a.ca.join(pki::CA_CERT).display()
        );
    }
    // root-cert.pem stays as it is (it may hold two roots during a rotation).
    let mut files = ca.files(&a.ca);
    let mut texts = BundleTexts::new();
    for f in &mut files {
        let name = [pki::CA_CERT, pki::CA_KEY, pki::CERT_CHAIN, pki::ROOT_CERT]
            .into_iter()
            .find(|n| f.path.ends_with(n))
            .ok_or_else(|| anyhow!("unexpected bundle file {}", f.path.display()))?;
        if name == pki::ROOT_CERT {
            f.contents = old_roots.clone();
        }
        texts.insert(name, f.contents.clone());
    }
    let ns = a.ns.namespace.as_str();
    // Verified in memory before anything is written or applied.
    let secret = cacerts_secret(&texts, ns, &BTreeMap::new())?;
    // The checks of the write itself (a symlinked or shared --ca is refused), dry run or not.
    pki::files::check_writable(&files, true).map_err(super::output_error)?;
    if !a.apply {
        if a.mutate.dry_run {
            print_dry_run(&files, to);
            return Ok(ExitCode::SUCCESS);
        }
        write_saying(&files, true, to)?;
        to.say(format_args!(
            "renewed the intermediate CA {which} (new key, same subject and root)"
        ));
        to.say(format_args!(
            "Next: meshctl certs renew ... --apply --context CTX, or meshctl cacerts apply {} --context CTX",
            a.ca.display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    // --apply: the context must exist and answer, and its cacerts must accept the renewed
    // bundle (same root), before the bundle on disk is replaced (its old CA key is gone then).
    let (file, ctx) = context(&a)?;
    kc::block_on(async {
        let c = file.connect(&ctx).await.map_err(|e| {
            anyhow!(
                "{e:#}\nnothing was written or applied: --apply needs context {ctx:?} reachable"
            )
        })?;
        // cacerts or its namespace being deleted: waited for before the bundle on disk is
        // replaced or anything applied (an apply to it would be lost with it); after a wait,
        // the check below runs on what is left.
        let unchanged = || format!("the bundle in {} is unchanged", a.ca.display());
        let mut deletion = DeletionWait::new(a.deletion.deletion_wait);
        let mut settled = false;
        for _ in 0..terminating::ROUNDS {
            let found = terminating::find(&c, ns, std::slice::from_ref(&secret))
                .await
                .map_err(|e| anyhow!("{e:#}\nnothing was written or applied ({})", unchanged()))?;
            let waited = deletion
                .wait_gone(&c, &found, a.mutate.dry_run)
                .await
                .map_err(|e| anyhow!("{e:#} ({})", unchanged()))?;
            if !waited {
                settled = true;
                break;
            }
        }
        if !settled {
            bail!(
                "{} ({})",
                terminating::deleted_again(&ctx, "certs renew --apply"),
                unchanged()
            );
        }
        apply_secret(&c, &secret, false, true)
            .await
            .map_err(|e| anyhow!("{e:#}\nnothing was written or applied ({})", unchanged()))?;
        if a.mutate.dry_run {
            print!(
                "{}",
                kc::render_plan_with(
                    &[(ctx.clone(), vec![secret.clone()])],
                    a.mutate.output(),
                    Secrets::from_flag(a.show_secrets)
                )?
            );
            print_dry_run(&files, to);
            return Ok(ExitCode::SUCCESS);
        }
        write_saying(&files, true, to)?;
        to.say(format_args!(
            "renewed the intermediate CA {which} (new key, same subject and root)"
        ));
        let changed = apply_secret(&c, &secret, false, false).await.map_err(|e| {
            anyhow!(
                "{e:#}\nthe renewed bundle is written to {dir} (the old CA key is replaced) but \
                 cacerts in context {ctx:?} was not updated; apply it with: meshctl cacerts apply \
                 {dir} --context {ctx} -n {ns}",
                dir = a.ca.display()
            )
        })?;
        crate::cmd::cacerts::report_applied(changed, &ctx, ns, to);
        if let Some(output) = a.mutate.output_asked() {
            crate::cmd::cacerts::print_applied(
                &secret,
                output,
                Secrets::from_flag(a.show_secrets),
            )?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The files a dry run would write, as comments after the plan (on stderr with `-o`, so
/// that stdout stays the one document).
fn print_dry_run(files: &[pki::OutFile], to: Progress) {
    for f in files {
        let note = if f.secret { " (private key, 0600)" } else { "" };
        to.say(format_args!(
            "# dry run: would write {}{note}",
            f.path.display()
        ));
    }
}

fn context(a: &RenewArgs) -> Result<(KubeconfigFile, String)> {
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    Ok((file, ctx))
}
