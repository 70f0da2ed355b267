//! The checks of one stored remote secret ("the secret for A in B"), judged from the Secrets
//! found in B and from what the live calls with its kubeconfig returned: present, parses,
//! no loopback server, the token's account is meshctl's reader, kubeconfig works, reader
//! permissions. The credential's expiry is the expiry rule's (`expiry::stored_credential`,
//! against `--warn-before`). Hints that make the secret again repeat check's `-n` and
//! `--kubeconfig` and the stored token's lifetime and reader account ([`recreate_command`]).

use k8s_openapi::api::core::v1::Secret;
use kube::config::Kubeconfig;

use super::super::facts::{LiveFailure, Seen, StoredRemote};
use super::super::hints::{Invocation, Reissue, shell_word};
use super::super::report::Report;
use crate::istio::{
    DEFAULT_READER_SA, MULTICLUSTER_LABEL, READER_ROLE_PREFIX, reader_role_name, remote_secret_name,
};
use crate::kube::Failure;
use crate::mesh::credentials::{Credential, Method, read_secret};
use crate::mesh::reader_rules::{READER_RULES, permission_name};
use crate::mesh::remote_secret::is_loopback;

/// "secret for A in B": the Secret B's istiod uses to watch A.
pub fn pair_scope(source: &Seen, target: &Seen) -> String {
    format!("secret for {} in {}", source.name, target.context)
}

/// The command that makes the remote secret for `source` again and stores it in `target`,
/// with check's `-n` and `--kubeconfig` and what the stored one was made with (`reissue`:
/// its token lifetime, its reader account).
pub fn recreate_command(
    (source, target): (&Seen, &Seen),
    inv: &Invocation,
    reissue: &Reissue,
) -> String {
    format!(
        "meshctl create-remote-secret{kc} --context {} --name {}{ns}{} --server \
         https://<address>:6443 | kubectl{kc} --context {} apply -f -",
        shell_word(&source.context),
        source.name,
        reissue.flags(),
        shell_word(&target.context),
        kc = inv.kubeconfig(),
        ns = inv.namespace(),
    )
}

/// The fix for a missing or broken remote secret: join again, or [`recreate_command`].
pub fn rejoin_hint(recreate: &str) -> String {
    format!("re-run meshctl join (or {recreate})")
}

/// The credential stored for `cluster` among a target's remote secrets (the first entry
/// for it, as istiod uses one), when it can be read.
pub fn stored_credential(secrets: &[Secret], cluster: &str) -> Option<Credential> {
    secrets
        .iter()
        .flat_map(read_secret)
        .flatten()
        .find(|s| s.cluster == cluster)
        .map(|s| s.credential)
}

/// The service account (namespace, name) a stored credential is a token of, as its claims
/// say (`None` for anything but a service-account token).
pub fn account_of(c: &Credential) -> Option<(String, String)> {
    let split = |s: &str| {
        s.split_once('/')
            .map(|(ns, sa)| (ns.to_string(), sa.to_string()))
    };
    match &c.method {
        Method::TokenRequest {
            service_account,
            namespace,
            ..
        } => Some((namespace.clone(), service_account.clone())),
        Method::LegacySecretToken { service_account }
        | Method::InvalidExpiry {
            service_account, ..
        } => service_account.as_deref().and_then(split),
        _ => None,
    }
}

/// Whether a credential's account is one meshctl makes readers of in `ns`: the default
/// reader of `ns`, or an account of `ns` whose reader binding exists (`binding`: whether the
/// source cluster has ClusterRoleBinding `reader_role_name(ns, sa)` for it; `None` when it
/// could not be looked up). `None` when it cannot be told.
pub fn is_reader(account: &(String, String), ns: &str, binding: Option<bool>) -> Option<bool> {
    let (account_ns, sa) = account;
    if account_ns != ns {
        return Some(false);
    }
    if sa == DEFAULT_READER_SA {
        return Some(true);
    }
    binding
}

/// What a remote secret made again repeats of the stored one: its token's lifetime, and its
/// account when that is one of meshctl's readers (`reader`, from [`is_reader`]).
pub fn reissue_of(c: Option<&Credential>, reader: Option<bool>) -> Reissue {
    Reissue {
        token_ttl: c.and_then(Credential::ttl),
        service_account: c
            .and_then(account_of)
            .filter(|_| reader == Some(true))
            .map(|(_, sa)| sa),
    }
}

/// "reader account": the stored token is one of meshctl's reader accounts for `ns`
/// ([`is_reader`]). Another account (a token pasted by hand, a forged or foreign one) gives
/// the target's istiod whatever that account may do in the source cluster, and `credentials
/// refresh` would not renew it: a warning, with the command that stores a reader's token.
pub fn reader_account(
    r: &mut Report,
    scope: &str,
    ns: &str,
    credential: Option<&Credential>,
    binding: Option<bool>,
    recreate: &str,
) {
    let check = "reader account";
    let Some(c) = credential else {
        return;
    };
    let reader = format!("{ns}/{DEFAULT_READER_SA}");
    let hint = format!(
        "unless this credential was stored on purpose, replace it with a token of meshctl's \
         reader: {recreate}"
    );
    let Some(account) = account_of(c) else {
        if c.method == Method::None {
            r.skip(scope, check, "the stored kubeconfig has no credential");
        } else {
            r.warn(
                scope,
                check,
                format!(
                    "the stored credential ({}) is not a token of meshctl's reader account \
                     ({reader})",
                    c.method.describe()
                ),
                hint,
            );
        }
        return;
    };
    let (account_ns, sa) = (&account.0, &account.1);
    match is_reader(&account, ns, binding) {
        Some(true) if sa == DEFAULT_READER_SA => r.pass(scope, check, reader),
        Some(true) => r.pass(
            scope,
            check,
            format!(
                "{ns}/{sa} (bound to meshctl's reader role {})",
                reader_role_name(ns, sa)
            ),
        ),
        Some(false) => {
            let why = if account_ns != ns {
                format!("an account of namespace {account_ns}, not {ns}")
            } else {
                format!(
                    "it has no reader binding {} (meshctl's readers are {reader} and the \
                     accounts create-remote-secret --service-account binds)",
                    reader_role_name(ns, sa)
                )
            };
            r.warn(
                scope,
                check,
                format!(
                    "the stored token is of service account {account_ns}/{sa}, not meshctl's \
                     reader: {why}"
                ),
                hint,
            );
        }
        None => r.skip(
            scope,
            check,
            format!(
                "the stored token is of {ns}/{sa}: whether it has meshctl's reader binding \
                 {} needs the source cluster",
                reader_role_name(ns, sa)
            ),
        ),
    }
}

/// What can be judged without calling the source cluster: "remote secret present", that
/// its kubeconfig parses and "no loopback server address", from the remote secrets found in
/// the target (kubeconfigs parsed by gather). Returns the stored kubeconfig when the live
/// checks can go on.
pub fn stored_secret<'a>(
    r: &mut Report,
    (source, target): (&Seen, &Seen),
    ns: &str,
    stored: &'a [StoredRemote],
    allow_loopback_server: bool,
    rejoin: &str,
) -> Option<&'a Kubeconfig> {
    let scope = pair_scope(source, target);
    let rejoin = rejoin.to_string();
    let mut found: Vec<&StoredRemote> =
        stored.iter().filter(|s| s.cluster == source.name).collect();
    // join's own name first: the others are the ones to look at.
    let canonical = remote_secret_name(&source.name);
    found.sort_by_key(|s| s.secret != canonical);
    let Some(first) = found.first() else {
        // A guessed ID may be wrong: registering again under it would register the cluster twice.
        let hint = if source.name_guessed {
            format!(
                "{ctx} records no cluster ID (join writes it on the {ns} namespace), so {} is a \
                 guess: if {ctx} is registered under another ID, pass --cluster-name {ctx}=<that ID>; \
                 otherwise {rejoin}",
                source.name,
                ctx = source.context
            )
        } else {
            rejoin
        };
        r.fail(
            &scope,
            "remote secret present",
            format!(
                "no Secret labelled {MULTICLUSTER_LABEL}=true in {ns} holds cluster {}",
                source.name
            ),
            hint,
        );
        return None;
    };
    if found.len() > 1 {
        let names: Vec<String> = found.iter().map(|s| format!("{ns}/{}", s.secret)).collect();
        let others: Vec<&str> = found[1..].iter().map(|s| s.secret.as_str()).collect();
        r.warn(
            &scope,
            "remote secret present",
            format!(
                "{} hold cluster {}: istiod registers it once and ignores the others, and which \
                 one it keeps is not defined; the checks below judge {}",
                names.join(" and "),
                source.name,
                names[0]
            ),
            format!(
                "keep one: delete the others once you know they are stale (kubectl --context {} \
                 -n {ns} delete secret {})",
                super::super::hints::shell_word(&target.context),
                others.join(" ")
            ),
        );
    } else {
        r.pass(
            &scope,
            "remote secret present",
            format!("{ns}/{}", first.secret),
        );
    }
    let parsed = match &first.kubeconfig {
        Ok(k) => k,
        Err(e) => {
            r.fail(
                &scope,
                "kubeconfig works",
                format!("the stored kubeconfig cannot be used: {e}"),
                rejoin,
            );
            return None;
        }
    };
    let server = stored_server(parsed);
    let shown = crate::kube::shown_server(&server);
    let check = "no loopback server address";
    if !is_loopback(&server) {
        r.pass(&scope, check, shown);
    } else if allow_loopback_server {
        r.pass(
            &scope,
            check,
            format!("{shown} (allowed by --allow-loopback-server)"),
        );
    } else {
        r.fail(&scope, check, format!("{shown}: {}'s istiod would connect to itself", target.context),
            format!("re-run meshctl join with --server {}=https://<control-plane-address>:6443 (kind: docker inspect -f '{{{{.NetworkSettings.Networks.kind.IPAddress}}}}' <cluster>-control-plane)", source.context));
    }
    Some(parsed)
}

/// "remote secrets of known clusters" (only when one is not): every key of a remote secret
/// registers a cluster in istiod, so one for a cluster none of the checked contexts is (one
/// that left the mesh, a typo'd ID) is watched too, and a dead one keeps that remote cluster
/// from ever syncing. A key with the cluster's own ID is ignored by istiod.
pub fn unknown_remotes(
    r: &mut Report,
    target: &Seen,
    ns: &str,
    stored: &[StoredRemote],
    known: &[&str],
) {
    let unknown: Vec<&StoredRemote> = stored
        .iter()
        .filter(|s| s.cluster != target.name && !known.contains(&s.cluster.as_str()))
        .collect();
    if unknown.is_empty() {
        return;
    }
    let secrets: Vec<&str> = unknown.iter().map(|s| s.secret.as_str()).collect();
    let unknown: Vec<String> = unknown
        .iter()
        .map(|s| {
            format!(
                "{ns}/{} registers cluster {}",
                s.secret,
                crate::kube::shown(&s.cluster)
            )
        })
        .collect();
    r.warn(
        &format!("cluster {}", target.context),
        "remote secrets of known clusters",
        format!(
            "{}, which none of the checked contexts is: istiod watches it too, and one it cannot \
             reach never syncs",
            unknown.join("; ")
        ),
        format!(
            "if it is in the mesh, add its --context (and --cluster-name CONTEXT=ID); if it left, \
             delete it: kubectl --context {} -n {ns} delete secret {}",
            super::super::hints::shell_word(&target.context),
            secrets.join(" ")
        ),
    );
}

/// The server a stored kubeconfig's current context uses (istiod's clientcmd, and the
/// live check, follow it), else its first cluster's.
pub fn stored_server(k: &Kubeconfig) -> String {
    let current = k
        .current_context
        .as_deref()
        .and_then(|cc| k.contexts.iter().find(|c| c.name == cc))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = match current {
        Some(name) => k.clusters.iter().find(|c| c.name == name),
        None => k.clusters.first(),
    };
    cluster
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_default()
}

/// The live checks are not run (the source cluster cannot be read): both are skipped.
pub fn live_skipped(r: &mut Report, scope: &str, why: &str) {
    r.skip(scope, "kubeconfig works", why);
    r.skip(scope, "reader permissions", why);
    r.skip(scope, REACHES, why);
}

const REACHES: &str = "reaches the cluster it is for";

/// [`REACHES`]: the kube-system UID the stored credential reads (`stored`) against the source
/// context's. A remote secret made from the wrong context (or an old address now serving
/// another cluster) passes every other check while istiod reads the wrong cluster under the
/// source's name and never the source itself (istioctl's multicluster check only compared
/// the stored server with the context's).
pub fn reaches(
    r: &mut Report,
    scope: &str,
    (source, target): (&Seen, &Seen),
    stored: Result<Option<String>, String>,
    recreate: &str,
) {
    let Some(want) = &source.uid else {
        let why = format!(
            "the UID of namespace kube-system in context {} is unknown",
            source.context
        );
        return r.skip(scope, REACHES, why);
    };
    let got = match stored {
        Ok(Some(u)) => u,
        Ok(None) => {
            return r.skip(
                scope,
                REACHES,
                "the stored credential finds no namespace kube-system",
            );
        }
        Err(e) => {
            let why = format!("the stored credential cannot read namespace kube-system: {e}");
            return r.skip(scope, REACHES, why);
        }
    };
    if got == *want {
        return r.pass(
            scope,
            REACHES,
            format!("kube-system UID {got}, as in context {}", source.context),
        );
    }
    let which = if target.uid.as_deref() == Some(got.as_str()) {
        format!(
            "the cluster it is stored in (context {}) itself",
            target.context
        )
    } else {
        "another cluster".to_string()
    };
    r.fail(
        scope,
        REACHES,
        format!(
            "the stored kubeconfig reaches {which} (kube-system UID {got}), not context {}'s \
             cluster ({want}): istiod reads that cluster as {} and never {} itself",
            source.context, source.name, source.context
        ),
        format!("it was made from the wrong context or address: re-create it: {recreate}"),
    );
}

/// "kubeconfig works", from listing Services with it (`Ok(detail)` or the failure), and
/// "reader permissions" from the permissions its account lacks (`None` when the kubeconfig
/// did not work, so there was nothing to ask).
/// A kubeconfig that could not be turned into a client (`LiveFailure::Unusable`) sent no
/// request: its fix is `recreate`, the command that stores a new one.
pub fn live(
    r: &mut Report,
    scope: &str,
    works: Result<&str, (LiveFailure, &str)>,
    missing: Option<Result<Vec<String>, String>>,
    (rejoin, recreate): (&str, &str),
) {
    match works {
        Ok(detail) => r.pass(scope, "kubeconfig works", detail),
        Err((LiveFailure::Unusable, detail)) => r.fail(
            scope,
            "kubeconfig works",
            detail,
            format!(
                "the stored kubeconfig is unusable (meshctl sent no request with it, so this \
                 says nothing about the API server): re-create the remote secret: {recreate}"
            ),
        ),
        Err((LiveFailure::Request(failure), detail)) => {
            // Not an exhaustive match: a kind of failure added later gets the general hint.
            let hint = if failure == Failure::CredentialRefused
                || failure == Failure::CredentialUnusable
            {
                format!("issue a new token: {rejoin}")
            } else if failure == Failure::Answered && forbidden(detail) {
                forbidden_hint(detail, rejoin)
            } else if failure == Failure::Answered {
                format!(
                    "the API server at the stored address answered with an error: check that \
                     the address is this cluster's API server: {rejoin}"
                )
            } else if failure == Failure::Unreachable {
                format!(
                    "the address or CA is wrong, or the API server is unreachable from here: \
                     {rejoin}"
                )
            } else {
                format!("the token, CA or address is wrong, expired or unreachable: {rejoin}")
            };
            r.fail(scope, "kubeconfig works", detail, hint);
        }
    }
    let check = "reader permissions";
    match missing {
        None => r.skip(scope, check, "the stored kubeconfig does not work"),
        Some(Ok(missing)) if missing.is_empty() => {
            let names: Vec<String> = READER_RULES
                .iter()
                .map(|r| permission_name(r.group, r.resource, &r.verbs.join("/")))
                .collect();
            r.pass(scope, check, names.join(", "));
        }
        Some(Ok(missing)) => r.fail(
            scope,
            check,
            format!(
                "the account may not {}: istiod cannot sync this cluster",
                missing.join(", ")
            ),
            format!("restore the reader role: {rejoin}"),
        ),
        Some(Err(e)) => r.fail(scope, check, e, rejoin.to_string()),
    }
}

/// Whether a failed call was refused with 403: the token was accepted (else 401) but its
/// account may not make the call. `kube::error_text` ends an API error with "(<code> <reason>)".
fn forbidden(detail: &str) -> bool {
    detail.contains("(403 ")
}

/// The fix for a reader that authenticates but may not list Services: its ClusterRoleBinding
/// (`reader_role_name`) is gone, binds another account or points at a changed role. The
/// account is read from the API server's message, `User "system:serviceaccount:<ns>:<sa>"
/// cannot list resource ...` (k8s.io/apiserver pkg/endpoints/handlers/responsewriters/
/// errors.go, `forbiddenMessage`); both parts are checked as names before they are printed.
pub fn forbidden_hint(detail: &str, rejoin: &str) -> String {
    let account = detail
        .split_once("User \"system:serviceaccount:")
        .and_then(|(_, rest)| rest.split_once('"'))
        .and_then(|(user, _)| user.split_once(':'))
        .filter(|(ns, sa)| {
            pki::validate_dns_label(ns).is_ok() && crate::kube::names::is_dns_subdomain(sa)
        });
    match account {
        Some((ns, sa)) => {
            let role = reader_role_name(ns, sa);
            let flag = if sa == DEFAULT_READER_SA {
                String::new()
            } else {
                format!(" with --service-account {sa}")
            };
            format!(
                "the API server accepted the token, but service account {ns}/{sa} lacks \
                 permission: its ClusterRoleBinding {role} (to the ClusterRole of the same \
                 name) is missing, binds another account, or its role was changed. Restore it \
                 by making the remote secret again{flag}: {rejoin}"
            )
        }
        None => format!(
            "the API server accepted the token, but its account lacks permission: the \
             reader's ClusterRoleBinding ({READER_ROLE_PREFIX}<namespace> for the default \
             reader, {READER_ROLE_PREFIX}<namespace>.<service-account> for another) is \
             missing, binds another account, or its role was changed. Restore it by making the \
             remote secret again (with the same --service-account): {rejoin}"
        ),
    }
}
