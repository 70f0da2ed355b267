//! `meshctl check`: is the mesh really joined? A checklist per cluster, per ordered pair
//! (the secret for cluster A stored in cluster B) and for the mesh as a whole, with a hint
//! per failure and a non-zero exit on any failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use base64::Engine as _;
use clap::Args;
use kube::config::Kubeconfig;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{check_unique, lookup, parse_mapping};
use crate::istio::{
    CLUSTER_NAME_ANNOTATION, GATEWAY_NAME as GATEWAY, MULTICLUSTER_LABEL, NETWORK_LABEL, TLS_PORT,
    remote_secret_name,
};
use crate::kube::{self as kc, Cluster, KubeconfigFile, Output};
use crate::mesh::cacerts::{pem_ders, root_of};
use crate::mesh::remote_secret::{is_loopback, stored_kubeconfig};
use access::{reader_permissions, try_kubeconfig};
use mesh::PairPlan;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// A cluster of the mesh (repeat for each).
    #[arg(long = "context", required = true)]
    contexts: Vec<String>,
    /// CONTEXT=NAME (default: the name `join` recorded on the namespace, else the context).
    #[arg(long = "cluster-name")]
    cluster_names: Vec<String>,
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    /// Accept loopback API server addresses in remote secrets (single-host tests only).
    #[arg(long)]
    allow_loopback_server: bool,
    /// Output: yaml is the human checklist, json is machine-readable.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// Not run: it needs data from a cluster meshctl cannot read (the detail says why).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// `cluster <ctx>`, `secret for <A> in <B>`, or `mesh`.
    pub scope: String,
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

struct Report {
    items: Vec<Item>,
}

impl Report {
    fn add(
        &mut self,
        scope: &str,
        check: &str,
        status: Status,
        detail: impl Into<String>,
        hint: Option<String>,
    ) {
        self.items.push(Item {
            scope: scope.into(),
            check: check.into(),
            status,
            detail: detail.into(),
            hint: if status == Status::Pass { None } else { hint },
        });
    }
    fn pass(&mut self, scope: &str, check: &str, detail: impl Into<String>) {
        self.add(scope, check, Status::Pass, detail, None);
    }
    fn fail(
        &mut self,
        scope: &str,
        check: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.add(scope, check, Status::Fail, detail, Some(hint.into()));
    }
    fn skip(&mut self, scope: &str, check: &str, reason: impl Into<String>) {
        self.add(scope, check, Status::Skip, reason, None);
    }
    fn warn(
        &mut self,
        scope: &str,
        check: &str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.add(scope, check, Status::Warn, detail, Some(hint.into()));
    }
}

mod access;
mod mesh;

/// What check learned about one cluster.
struct Seen {
    context: String,
    /// The cluster ID: `--cluster-name`, else what join recorded, else the context.
    name: String,
    /// False when the cluster could not be read and no `--cluster-name` gave its ID.
    name_known: bool,
    /// The name is the context's, for want of a flag or a recorded ID.
    name_guessed: bool,
    /// Why meshctl could not read the cluster ("unreachable", ...); then the fields below
    /// are empty.
    unread: Option<&'static str>,
    network: Option<String>,
    root: Option<Vec<Vec<u8>>>,
    client: Option<Cluster>,
}

pub fn run(a: CheckArgs) -> Result<ExitCode> {
    check_unique(&a.contexts)?;
    let names = parse_mapping("cluster-name", &a.cluster_names, &a.contexts)?;
    let file = KubeconfigFile::load(a.kubeconfig.as_deref())?;
    file.require_contexts(&a.contexts)?;
    let items = kc::block_on(check(&a, &names, &file))?;
    let failed = items.iter().filter(|i| i.status == Status::Fail).count();
    match a.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"ok": failed == 0, "checks": items}))?
        ),
        Output::Yaml => print!("{}", render_text(&items)),
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The human checklist: ✔ pass, ! warning, ✘ failure (with its hint), - skipped (with why).
pub fn render_text(items: &[Item]) -> String {
    let mut out = String::new();
    let mut scope = "";
    for i in items {
        if i.scope != scope {
            scope = &i.scope;
            out.push_str(&format!("{scope}\n"));
        }
        let mark = match i.status {
            Status::Pass => "✔",
            Status::Warn => "!",
            Status::Fail => "✘",
            Status::Skip => "-",
        };
        if i.detail.is_empty() {
            out.push_str(&format!("  {mark} {}\n", i.check));
        } else {
            out.push_str(&format!("  {mark} {}: {}\n", i.check, i.detail));
        }
        if let Some(h) = &i.hint {
            out.push_str(&format!("      hint: {h}\n"));
        }
    }
    let count = |s| items.iter().filter(|i| i.status == s).count();
    out.push_str(&format!(
        "{} checks: {} passed, {} warnings, {} failed, {} skipped\n",
        items.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip)
    ));
    out
}

async fn check(
    a: &CheckArgs,
    names: &[(String, String)],
    file: &KubeconfigFile,
) -> Result<Vec<Item>> {
    let ns = a.namespace.as_str();
    let mut r = Report { items: Vec::new() };
    let mut seen = Vec::new();
    for ctx in &a.contexts {
        let scope = format!("cluster {ctx}");
        let client = match file.connect(ctx).await {
            Ok(c) => {
                r.pass(&scope, "API server reachable", c.server.clone());
                c
            }
            Err(e) => {
                let unread = match e.downcast_ref::<kc::ConnectError>() {
                    Some(kc::ConnectError::CredentialRefused { server, user, .. }) => {
                        r.pass(&scope, "API server reachable", server.clone());
                        r.fail(
                            &scope,
                            "credential accepted",
                            format!("{e:#}"),
                            format!(
                                "put new credentials for kubeconfig user {user:?} (its token or client certificate was refused)"
                            ),
                        );
                        "refusing meshctl's credential"
                    }
                    _ => {
                        r.fail(
                            &scope,
                            "API server reachable",
                            format!("{e:#}"),
                            "check the kubeconfig context and that the cluster is running",
                        );
                        "unreachable"
                    }
                };
                for check in CLUSTER_CHECKS {
                    r.skip(&scope, check, format!("cluster {ctx} is {unread}"));
                }
                seen.push(Seen {
                    context: ctx.clone(),
                    name: lookup(names, ctx).unwrap_or(ctx).into(),
                    name_known: lookup(names, ctx).is_some(),
                    name_guessed: lookup(names, ctx).is_none(),
                    unread: Some(unread),
                    network: None,
                    root: None,
                    client: None,
                });
                continue;
            }
        };
        seen.push(check_cluster(&mut r, &scope, &client, ns, lookup(names, ctx)).await?);
    }
    mesh::mesh_checks(&mut r, &seen);
    for source in &seen {
        for target in &seen {
            if source.context == target.context {
                continue;
            }
            let scope = pair_scope(source, target);
            match (mesh::pair_plan(source, target), &target.client) {
                (PairPlan::All, Some(tc)) => {
                    check_pair(&mut r, a, source, target, tc, ns, None).await?
                }
                (PairPlan::TargetOnly(why), Some(tc)) => {
                    check_pair(&mut r, a, source, target, tc, ns, Some(why)).await?
                }
                (PairPlan::Skip(why), _) => r.skip(&scope, "remote secret present", why),
                (_, None) => r.skip(
                    &scope,
                    "remote secret present",
                    format!("cluster {} is unreachable", target.context),
                ),
            }
        }
    }
    Ok(r.items)
}

/// The checks `check_cluster` makes on a cluster's own data (skipped when it cannot be read).
const CLUSTER_CHECKS: [&str; 4] = [
    "cacerts present and valid",
    "network label",
    "gateway Service has an external address",
    "gateway pods ready",
];

async fn check_cluster(
    r: &mut Report,
    scope: &str,
    c: &Cluster,
    ns: &str,
    name_flag: Option<&str>,
) -> Result<Seen> {
    let ctx = c.context.as_str();
    let nsobj = kc::get(c, "v1", "Namespace", None, ns).await?;
    let recorded = nsobj
        .as_ref()
        .and_then(|n| n["metadata"]["annotations"][CLUSTER_NAME_ANNOTATION].as_str());
    let name = name_flag.or(recorded).unwrap_or(ctx).to_string();
    let name_guessed = name_flag.is_none() && recorded.is_none();
    // cacerts
    let cacerts = if nsobj.is_some() {
        kc::get(c, "v1", "Secret", Some(ns), "cacerts").await?
    } else {
        None
    };
    let root = match &cacerts {
        None => {
            r.fail(scope, "cacerts present and valid", format!("no Secret {ns}/cacerts"),
                format!("meshctl cacerts apply certs/{name} --context {ctx}, then restart istiod (kubectl -n {ns} rollout restart deploy/istiod)"));
            None
        }
        Some(s) => {
            match verify_cacerts(s) {
                Ok(()) => r.pass(scope, "cacerts present and valid", ""),
                Err(e) => r.fail(scope, "cacerts present and valid", e,
                    format!("regenerate the bundle (meshctl certs intermediate ...) and meshctl cacerts apply certs/{name} --context {ctx} --force")),
            }
            root_of(s).map(|p| pem_ders(&p))
        }
    };
    // network label, on the namespace and on the gateway Service
    let network = nsobj
        .as_ref()
        .and_then(|n| n["metadata"]["labels"][NETWORK_LABEL].as_str())
        .map(str::to_string);
    let svc = kc::get(c, "v1", "Service", Some(ns), GATEWAY).await?;
    let svc_net = svc
        .as_ref()
        .and_then(|s| s["metadata"]["labels"][NETWORK_LABEL].as_str());
    match (&network, svc_net) {
        (None, _) => r.fail(
            scope,
            "network label",
            format!("namespace {ns} has no {NETWORK_LABEL} label"),
            format!("meshctl label-network <network> --context {ctx}"),
        ),
        (Some(n), Some(s)) if n != s => r.fail(
            scope,
            "network label",
            format!("namespace says {n}, gateway Service says {s}"),
            format!(
                "re-run meshctl join (or meshctl gateway install --network {n} --context {ctx})"
            ),
        ),
        (Some(n), _) => r.pass(scope, "network label", n.clone()),
    }
    // gateway address
    let check = "gateway Service has an external address";
    match &svc {
        None => r.fail(scope, check, format!("no Service {ns}/{GATEWAY}"),
            format!("meshctl gateway install --network <network> --context {ctx}")),
        Some(s) => match gateway_address(s) {
            Ok(detail) => r.pass(scope, check, detail),
            Err(detail) => r.fail(scope, check, detail,
                "no load-balancer controller assigned an address: install one (kind: MetalLB or cloud-provider-kind; check its pods and address pool) or use --service-type NodePort"),
        },
    }
    // gateway pods
    let pods = kc::list(c, "v1", "Pod", Some(ns), &format!("app={}", GATEWAY)).await?;
    let ready = pods.iter().filter(|p| pod_ready(p)).count();
    let check = "gateway pods ready";
    let hint = format!(
        "kubectl --context {ctx} -n {ns} describe pods -l app={}; kubectl --context {ctx} -n {ns} logs deploy/{}",
        GATEWAY, GATEWAY
    );
    if pods.is_empty() {
        r.fail(
            scope,
            check,
            "no pods with label app=istio-eastwestgateway",
            hint,
        );
    } else if ready == 0 {
        r.fail(scope, check, format!("0 of {} ready", pods.len()), hint);
    } else if ready < pods.len() {
        r.warn(
            scope,
            check,
            format!("{ready} of {} ready", pods.len()),
            hint,
        );
    } else {
        r.pass(scope, check, format!("{ready} of {} ready", pods.len()));
    }
    Ok(Seen {
        context: ctx.into(),
        name,
        name_known: true,
        name_guessed,
        unread: None,
        network,
        root,
        client: Some(c.clone()),
    })
}

/// Runs the bundle checks on the Secret's files in memory (the CA key never touches the disk).
fn verify_cacerts(s: &Value) -> std::result::Result<(), String> {
    let text = |f: &str| -> std::result::Result<String, String> {
        let Some(b64) = s["data"][f].as_str() else {
            return Err(format!("key {f} missing (istiod needs all four files)"));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{f}: {e}"))?;
        String::from_utf8(bytes).map_err(|_| format!("{f}: not PEM text"))
    };
    let bundle = pki::Bundle {
        source: PathBuf::from("cacerts"),
        ca_cert: text(pki::CA_CERT)?,
        ca_key: text(pki::CA_KEY)?,
        root_cert: text(pki::ROOT_CERT)?,
        cert_chain: text(pki::CERT_CHAIN)?,
    };
    let report = pki::verify(&[bundle], &pki::VerifyOptions::default());
    if report.is_ok() {
        return Ok(());
    }
    let errors: Vec<String> = report
        .errors()
        .map(|f| {
            let file = f
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{file}: {}", f.message)
        })
        .collect();
    Err(errors.join("; "))
}

/// `Ok(description)` when istiod can find an address for the gateway.
pub fn gateway_address(svc: &Value) -> std::result::Result<String, String> {
    let ingress = svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ips: Vec<&str> = ingress.iter().filter_map(|i| i["ip"].as_str()).collect();
    let hosts: Vec<&str> = ingress
        .iter()
        .filter_map(|i| i["hostname"].as_str())
        .collect();
    let external: Vec<&str> = svc["spec"]["externalIPs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !ips.is_empty() {
        return Ok(ips.join(", "));
    }
    if !hosts.is_empty() {
        return Ok(format!(
            "{} (hostname: istiod resolves it with RESOLVE_HOSTNAME_GATEWAYS, the default)",
            hosts.join(", ")
        ));
    }
    if !external.is_empty() {
        return Ok(format!("externalIPs {}", external.join(", ")));
    }
    if svc["spec"]["type"] == "NodePort" {
        let tls = svc["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["port"] == TLS_PORT).cloned());
        return match tls.and_then(|p| p["nodePort"].as_u64()) {
            Some(np) => Ok(format!(
                "NodePort {np} for 15443 (istiod uses the nodes' addresses)"
            )),
            None => Err("NodePort Service without a nodePort for 15443".into()),
        };
    }
    Err("pending: status.loadBalancer.ingress is empty".into())
}

fn pod_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// "secret for A in B": the Secret B's istiod uses to watch A.
fn pair_scope(source: &Seen, target: &Seen) -> String {
    format!("secret for {} in {}", source.name, target.context)
}

/// The checks of one stored remote secret. `skip_live` (the reason) skips those that need
/// to reach the source cluster.
async fn check_pair(
    r: &mut Report,
    a: &CheckArgs,
    source: &Seen,
    target: &Seen,
    tc: &Cluster,
    ns: &str,
    skip_live: Option<String>,
) -> Result<()> {
    let scope = pair_scope(source, target);
    let rejoin = format!(
        "re-run meshctl join (or meshctl create-remote-secret --context {} --name {} --server https://<address>:6443 | kubectl --context {} apply -f -)",
        source.context, source.name, target.context
    );
    let secrets = kc::list(
        tc,
        "v1",
        "Secret",
        Some(ns),
        &format!("{MULTICLUSTER_LABEL}=true"),
    )
    .await?;
    let found: Vec<(String, String)> = secrets
        .iter()
        .filter_map(stored_kubeconfig)
        .filter(|(k, _)| *k == source.name)
        .collect();
    let Some((_, kubeconfig)) = found.first() else {
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
        return Ok(());
    };
    if found.len() > 1 {
        r.warn(
            &scope,
            "remote secret present",
            format!(
                "{} Secrets hold cluster {}; istiod uses one of them",
                found.len(),
                source.name
            ),
            "delete the stale one",
        );
    } else {
        r.pass(
            &scope,
            "remote secret present",
            remote_secret_name(&source.name),
        );
    }
    let kc_parsed = match Kubeconfig::from_yaml(kubeconfig) {
        Ok(k) => k,
        Err(e) => {
            r.fail(
                &scope,
                "kubeconfig works",
                format!("the stored kubeconfig does not parse: {e}"),
                rejoin,
            );
            return Ok(());
        }
    };
    // loopback
    let server = kc_parsed
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_default();
    if is_loopback(&server) {
        if a.allow_loopback_server {
            r.pass(
                &scope,
                "no loopback server address",
                format!("{server} (allowed by --allow-loopback-server)"),
            );
        } else {
            r.fail(&scope, "no loopback server address", format!("{server}: {}'s istiod would connect to itself", target.context),
                format!("re-run meshctl join with --server {}=https://<control-plane-address>:6443 (kind: docker inspect -f '{{{{.NetworkSettings.Networks.kind.IPAddress}}}}' <cluster>-control-plane)", source.context));
        }
    } else {
        r.pass(&scope, "no loopback server address", server.clone());
    }
    // token expiry
    let raw: Value = serde_yaml::from_str(kubeconfig).unwrap_or(Value::Null);
    let token = raw["users"][0]["user"]["token"]
        .as_str()
        .map(str::to_string);
    token_expiry(r, &scope, token.as_deref(), &rejoin);
    // the kubeconfig really works, with every permission istiod needs
    if let Some(why) = skip_live {
        r.skip(&scope, "kubeconfig works", why.clone());
        r.skip(&scope, "reader permissions", why);
        return Ok(());
    }
    match try_kubeconfig(kc_parsed).await {
        Ok((client, detail)) => {
            r.pass(&scope, "kubeconfig works", detail);
            reader_permissions(r, &scope, &client, &rejoin).await;
        }
        Err((failure, detail)) => {
            let hint = if failure == kc::Failure::CredentialRefused {
                format!("issue a new token: {rejoin}")
            } else {
                format!("the token, CA or address is wrong, expired or unreachable: {rejoin}")
            };
            r.fail(&scope, "kubeconfig works", detail, hint);
            r.skip(
                &scope,
                "reader permissions",
                "the stored kubeconfig does not work",
            );
        }
    }
    Ok(())
}

/// The `exp` claim of a JWT (no signature check).
pub fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["exp"].as_u64()
}

fn token_expiry(r: &mut Report, scope: &str, token: Option<&str>, rejoin: &str) {
    let check = "token expiry";
    let Some(token) = token else {
        r.fail(
            scope,
            check,
            "the kubeconfig has no bearer token",
            rejoin.to_string(),
        );
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    match jwt_exp(token) {
        None => r.pass(
            scope,
            check,
            "never expires (service-account-token Secret); --token-ttl gives expiring tokens",
        ),
        Some(exp) if exp <= now => r.fail(
            scope,
            check,
            format!("expired {} ago", human(now - exp)),
            format!("issue a new token: {rejoin}"),
        ),
        Some(exp) if exp - now < 24 * 3600 => r.warn(
            scope,
            check,
            format!("expires in {}", human(exp - now)),
            format!("renew it before then: {rejoin}"),
        ),
        Some(exp) => r.pass(scope, check, format!("expires in {}", human(exp - now))),
    }
}

fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_exp_reads_the_claim() {
        let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let t = format!("{}.{}.sig", b("{}"), b(r#"{"exp":1700000000,"sub":"x"}"#));
        assert_eq!(jwt_exp(&t), Some(1_700_000_000));
        assert_eq!(jwt_exp(&format!("{}.{}.sig", b("{}"), b("{}"))), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
    }

    #[test]
    fn gateway_address_cases() {
        let lb = |status: Value| json!({"spec": {"type": "LoadBalancer"}, "status": status});
        assert!(
            gateway_address(&lb(json!({})))
                .unwrap_err()
                .contains("pending")
        );
        assert_eq!(
            gateway_address(&lb(
                json!({"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})
            ))
            .unwrap(),
            "1.2.3.4"
        );
        let np =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 15443, "nodePort": 31443}]}});
        assert!(gateway_address(&np).unwrap().contains("31443"));
    }
}
