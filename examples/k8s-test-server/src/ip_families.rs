//! A Service's IP families and cluster IPs, defaulted and checked as kube-apiserver's service
//! storage does (`pkg/registry/core/service/storage/alloc.go`, `initIPFamilyFields`) for the
//! families the simulated cluster has (`StoreConfig::ip_families`: IPv4 single-stack by
//! default, as kind; IPv6 or dual-stack when a test asks).
//!
//! - `ipFamilyPolicy` unset is `SingleStack`, or `RequireDualStack` when two families are given;
//!   `RequireDualStack` on a single-stack cluster, a family the cluster lacks, or two families
//!   with `SingleStack` are 422s.
//! - `ipFamilies` unset is the cluster's primary family (the given `clusterIP`'s family if
//!   there is one), plus the other for a dual-stack policy on a dual-stack cluster.
//! - `clusterIPs` holds one address per family (`None` for a headless Service), kept across
//!   updates.
//! - An update may add the secondary family (a dual-stack policy on a dual-stack cluster) or
//!   release it (`SingleStack` with both families as they were); a dual-stack policy with a
//!   family or cluster IP dropped is a 422.

use crate::error::ApiError;
use serde_json::{Value, json};

const V4: &str = "IPv4";
const V6: &str = "IPv6";

fn invalid(name: &str, field: &str, value: &str, why: &str) -> ApiError {
    ApiError::invalid(
        "",
        "Service",
        name,
        field,
        "FieldValueInvalid",
        &format!("Invalid value: \"{value}\": {why}"),
    )
}

fn family_of(ip: &str) -> Option<&'static str> {
    match ip.parse::<std::net::IpAddr>().ok()? {
        std::net::IpAddr::V4(_) => Some(V4),
        std::net::IpAddr::V6(_) => Some(V6),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `spec.ipFamilyPolicy`, `spec.ipFamilies`, `spec.clusterIP` and `spec.clusterIPs` of a
/// Service that is not `ExternalName`; `next_ip` numbers the addresses it allocates.
pub(crate) fn default_families(
    cluster: &[&str],
    spec: &mut Value,
    old: Option<&Value>,
    name: &str,
    next_ip: &mut u32,
) -> Result<(), ApiError> {
    let old_spec = old.and_then(|o| o.get("spec"));
    let old_families = strings(old_spec.and_then(|s| s.get("ipFamilies")));
    let given_families = strings(spec.get("ipFamilies"));
    let mut families = given_families.clone();
    if families.is_empty() {
        families = old_families.clone();
    }
    let mut policy = spec["ipFamilyPolicy"]
        .as_str()
        .or_else(|| old_spec.and_then(|s| s["ipFamilyPolicy"].as_str()))
        .map(str::to_string);
    for (i, f) in families.iter().enumerate() {
        if f != V4 && f != V6 {
            return Err(invalid(
                name,
                &format!("spec.ipFamilies[{i}]"),
                f,
                "supported values: \"IPv4\", \"IPv6\"",
            ));
        }
        if !cluster.contains(&f.as_str()) {
            return Err(invalid(
                name,
                &format!("spec.ipFamilies[{i}]"),
                f,
                "not configured on this cluster",
            ));
        }
    }
    if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        return Err(invalid(
            name,
            "spec.ipFamilies",
            &families.join(","),
            "must be one family, or two different ones",
        ));
    }
    // An update that keeps both families while asking for SingleStack releases the secondary
    // one; a dual-stack policy may not drop it (`initIPFamilyFields`, "Update-only prep").
    if old_spec.is_some() && old_families.len() == 2 {
        let single = policy.as_deref() == Some("SingleStack");
        if single && families == old_families {
            families.truncate(1);
        }
        let given_ips = strings(spec.get("clusterIPs"));
        let old_ips = strings(old_spec.and_then(|s| s.get("clusterIPs")));
        let what = if !given_families.is_empty() && given_families.len() < 2 {
            Some("IP family")
        } else if !given_ips.is_empty() && given_ips.len() < old_ips.len() {
            Some("cluster IP")
        } else {
            None
        };
        if let (false, Some(what), Some(p)) = (single, what, policy.as_deref()) {
            return Err(invalid(
                name,
                "spec.ipFamilyPolicy",
                p,
                &format!("must be 'SingleStack' to release the secondary {what}"),
            ));
        }
    }
    let dual = |p: &Option<String>| {
        matches!(
            p.as_deref(),
            Some("PreferDualStack") | Some("RequireDualStack")
        )
    };
    match policy.as_deref() {
        None if families.len() == 2 => policy = Some("RequireDualStack".into()),
        None => policy = Some("SingleStack".into()),
        Some("SingleStack") if families.len() == 2 => {
            return Err(invalid(
                name,
                "spec.ipFamilyPolicy",
                "SingleStack",
                "must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified",
            ));
        }
        Some("RequireDualStack") if cluster.len() < 2 => {
            return Err(invalid(
                name,
                "spec.ipFamilyPolicy",
                "RequireDualStack",
                "this cluster is not configured for dual-stack services",
            ));
        }
        Some("SingleStack" | "PreferDualStack" | "RequireDualStack") => {}
        Some(other) => {
            return Err(invalid(
                name,
                "spec.ipFamilyPolicy",
                other,
                "supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\"",
            ));
        }
    }
    if families.is_empty() {
        let given = spec["clusterIP"].as_str().and_then(family_of);
        families.push(given.unwrap_or(cluster[0]).to_string());
    }
    if families.len() == 1 && dual(&policy) && cluster.len() == 2 {
        let other = if families[0] == V4 { V6 } else { V4 };
        families.push(other.to_string());
    }

    let old_ips = strings(old_spec.and_then(|s| s.get("clusterIPs")));
    let mut allocate = |family: &str| {
        *next_ip += 1;
        let n = *next_ip;
        if family == V6 {
            format!("fd00:10:96::{n:x}")
        } else {
            format!("10.96.{}.{}", (n >> 8) & 255, n & 255)
        }
    };
    let given = spec["clusterIP"].as_str().filter(|s| !s.is_empty());
    let ips: Vec<String> = if given == Some("None") {
        vec!["None".into()]
    } else {
        families
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let kept = if i == 0 { given } else { None }
                    .map(str::to_string)
                    .or_else(|| old_ips.get(i).cloned())
                    .filter(|ip| family_of(ip) == Some(f.as_str()));
                kept.unwrap_or_else(|| allocate(f))
            })
            .collect()
    };
    spec["clusterIP"] = json!(ips[0]);
    spec["clusterIPs"] = json!(ips);
    spec["ipFamilies"] = json!(families);
    spec["ipFamilyPolicy"] = json!(policy);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cluster: &[&str], spec: Value) -> Result<Value, String> {
        let mut spec = spec;
        let mut n = 0;
        default_families(cluster, &mut spec, None, "s", &mut n)
            .map(|_| spec)
            .map_err(|e| e.message)
    }

    #[test]
    fn single_stack_cluster_defaults_and_refusals() {
        let v4 = &[V4];
        let s = run(v4, json!({})).unwrap();
        assert_eq!(s["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["ipFamilyPolicy"], "SingleStack");
        assert_eq!(s["clusterIPs"], json!(["10.96.0.1"]));
        let s = run(v4, json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap();
        assert_eq!(s["ipFamilies"], json!(["IPv4"]));
        assert_eq!(s["ipFamilyPolicy"], "PreferDualStack");
        let e = run(v4, json!({"ipFamilies": ["IPv6"]})).unwrap_err();
        assert!(
            e.contains(
                "spec.ipFamilies[0]: Invalid value: \"IPv6\": not configured on this cluster"
            ),
            "{e}"
        );
        let e = run(v4, json!({"ipFamilyPolicy": "RequireDualStack"})).unwrap_err();
        assert!(e.contains("not configured for dual-stack"), "{e}");
        let s = run(v4, json!({"clusterIP": "None"})).unwrap();
        assert_eq!(s["clusterIPs"], json!(["None"]));
    }

    fn update(cluster: &[&str], old: &Value, spec: Value) -> Result<Value, String> {
        let mut spec = spec;
        let mut n = 10;
        let old = json!({"spec": old});
        default_families(cluster, &mut spec, Some(&old), "s", &mut n)
            .map(|_| spec)
            .map_err(|e| e.message)
    }

    #[test]
    fn updates_add_or_release_the_secondary_family() {
        let dual = &[V4, V6];
        let single = run(dual, json!({})).unwrap();
        // Upgrade: the policy alone adds IPv6 and keeps the IPv4 address.
        let up = update(dual, &single, json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap();
        assert_eq!(up["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(up["clusterIPs"][0], single["clusterIPs"][0]);
        assert_eq!(up["clusterIPs"].as_array().unwrap().len(), 2);
        // Downgrade: SingleStack with both families and addresses as they were.
        let mut body = up.clone();
        body["ipFamilyPolicy"] = json!("SingleStack");
        let down = update(dual, &up, body).unwrap();
        assert_eq!(down["ipFamilies"], json!(["IPv4"]));
        assert_eq!(down["clusterIPs"], json!([up["clusterIPs"][0]]));
        assert_eq!(down["ipFamilyPolicy"], "SingleStack");
        // A dual-stack policy may not drop a family or an address.
        let e = update(dual, &up, json!({"ipFamilies": ["IPv4"]})).unwrap_err();
        assert!(
            e.contains("spec.ipFamilyPolicy: Invalid value: \"PreferDualStack\": must be 'SingleStack' to release the secondary IP family"),
            "{e}"
        );
        let e = update(dual, &up, json!({"clusterIPs": [up["clusterIPs"][0]]})).unwrap_err();
        assert!(e.contains("release the secondary cluster IP"), "{e}");
        // SingleStack with two families that differ from the old ones is still refused.
        let e = update(
            dual,
            &single,
            json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}),
        )
        .unwrap_err();
        assert!(
            e.contains("when multiple 'ipFamilies' are specified"),
            "{e}"
        );
    }

    #[test]
    fn dual_stack_cluster_gives_an_address_per_family() {
        let dual = &[V4, V6];
        let s = run(dual, json!({})).unwrap();
        assert_eq!(s["ipFamilies"], json!(["IPv4"]));
        let s = run(dual, json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap();
        assert_eq!(s["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(s["clusterIPs"], json!(["10.96.0.1", "fd00:10:96::2"]));
        let s = run(dual, json!({"ipFamilies": ["IPv6", "IPv4"]})).unwrap();
        assert_eq!(s["ipFamilyPolicy"], "RequireDualStack");
        assert_eq!(s["clusterIP"], "fd00:10:96::1");
        let s = run(dual, json!({"ipFamilies": ["IPv6"]})).unwrap();
        assert_eq!(s["ipFamilies"], json!(["IPv6"]));
        let e = run(
            dual,
            json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
        )
        .unwrap_err();
        assert!(e.contains("spec.ipFamilyPolicy"), "{e}");
    }
}
