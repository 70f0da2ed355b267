//! Announcing each network's east-west gateway to the other clusters' ztunnels (ambient).
//!
//! ztunnels learn network gateways only from Gateway API objects, never from the
//! network-labelled Service that sidecars use. For a gateway Istio did not deploy, istiod
//! reads a local `Gateway` of class `istio-remote` labelled `topology.istio.io/network`:
//! every address of it with an `HBONE` listener becomes that network's gateway, dialled on
//! the listener's port, with the identity of `gateway.istio.io/service-account` in the
//! Gateway's namespace (istio/istio `pilot/pkg/serviceregistry/kube/controller/ambient/
//! networks.go` `localK8sGatewayToNetworkGateways`; `pilot/pkg/serviceregistry/kube/
//! conversion.go` `GatewaySA`). Recent istiod reads the addresses from `status.addresses`,
//! older ones from `spec.addresses`, so meshctl writes both; `status` is a subresource, so
//! it is applied separately (a real API server drops `status` from a create or apply of
//! the object itself).

use std::net::IpAddr;

use anyhow::{Result, anyhow, bail};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::istio::{
    GATEWAY_API_CRD, GATEWAY_API_V1, GATEWAY_NAME, GATEWAY_SA_ANNOTATION, HBONE_PORT, MANAGER,
    NETWORK_LABEL, REMOTE_GATEWAY_CLASS, announce_gateway_name, managed_labels,
};
use crate::kube::{self as kc, Cluster};

/// A gateway address as the Gateway API types it.
pub fn address_type(addr: &str) -> Result<&'static str> {
    if let Ok(ip) = addr.parse::<IpAddr>() {
        if unroutable(ip.to_canonical()) {
            bail!(
                "gateway address {addr:?} is loopback, unspecified, link-local or multicast: \
                 no ztunnel of another network can dial it; give the address other networks \
                 reach the gateway at (its Service's load-balancer address)"
            );
        }
        return Ok("IPAddress");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if addr.len() <= 253 && addr.split('.').all(label_ok) && addr.contains('.') {
        return Ok("Hostname");
    }
    bail!("gateway address {addr:?}: expected an IP address or a DNS name (e.g. gw.example.com)")
}

/// An address no peer on another network can dial.
fn unroutable(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || link_local
}

/// The address a peer dials: the gateway Service's first load-balancer ingress (IP, else
/// hostname), if the cloud has assigned one. A dual-stack Service (a user's
/// `ipFamilyPolicy: PreferDualStack`) may get an ingress IP per family, in whatever order the
/// load balancer lists them: the first of the Service's primary family (`spec.ipFamilies[0]`)
/// is taken then, the family a single-stack gateway had, so opting in never moves the
/// announced address to the other family.
pub fn service_address(svc: &Value) -> Option<String> {
    fn address(i: &Value) -> Option<&str> {
        i["ip"]
            .as_str()
            .or_else(|| i["hostname"].as_str())
            .filter(|s| !s.is_empty())
    }
    let ingress = svc["status"]["loadBalancer"]["ingress"].as_array()?;
    let primary = svc["spec"]["ipFamilies"][0].as_str();
    let other_family = |a: &str| {
        matches!(
            (a.parse::<IpAddr>(), primary),
            (Ok(IpAddr::V4(_)), Some("IPv6")) | (Ok(IpAddr::V6(_)), Some("IPv4"))
        )
    };
    let mut all = ingress.iter().filter_map(address);
    let first = all.clone().next();
    all.find(|a| !other_family(a)).or(first).map(str::to_string)
}

/// The `istio-remote` Gateway (in the gateway's namespace `ns`) that makes one cluster's
/// ztunnels reach network `peer_network` through `addr`:15008, expecting the identity
/// `spiffe://<td>/ns/<ns>/sa/istio-eastwestgateway`.
pub fn announce_object(ns: &str, peer_network: &str, addr: &str) -> Result<Value> {
    let ty = address_type(addr)?;
    let mut labels = managed_labels();
    labels.insert(NETWORK_LABEL.into(), json!(peer_network));
    let addresses = json!([{"type": ty, "value": addr}]);
    Ok(json!({
        "apiVersion": GATEWAY_API_V1, "kind": "Gateway",
        "metadata": {"name": announce_gateway_name(peer_network), "namespace": ns,
            "labels": labels, "annotations": {GATEWAY_SA_ANNOTATION: GATEWAY_NAME}},
        "spec": {
            "gatewayClassName": REMOTE_GATEWAY_CLASS,
            "addresses": addresses,
            "listeners": [{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE",
                "tls": {"mode": "Terminate",
                    "options": {"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"}}}],
        },
        "status": {"addresses": addresses},
    }))
}

/// Is the Gateway API's `Gateway` served at v1?
pub async fn gateway_api_served(c: &Cluster) -> Result<bool> {
    let crd = kc::get(
        c,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        GATEWAY_API_CRD,
    )
    .await?;
    Ok(crd.is_some_and(|crd| {
        crd["spec"]["versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["name"] == "v1" && v["served"] == true))
    }))
}

/// Applies an announcing Gateway: the object, then its `status` through the subresource.
pub async fn apply_announce(c: &Cluster, obj: &Value) -> Result<()> {
    let mut spec_only = obj.clone();
    if let Some(m) = spec_only.as_object_mut() {
        m.remove("status");
    }
    kc::apply(c, &spec_only).await?;
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let (group, version) = GATEWAY_API_V1
        .split_once('/')
        .ok_or_else(|| anyhow!("bad apiVersion"))?;
    let gvk = GroupVersionKind::gvk(group, version, "Gateway");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "gateways");
    let api: Api<DynamicObject> = Api::namespaced_with(c.client.clone(), ns, &ar);
    let status = json!({"apiVersion": GATEWAY_API_V1, "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns}, "status": obj["status"]});
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .map_err(|e| {
        anyhow!(
            "writing status.addresses of Gateway {ns}/{name} in context {:?}: {}",
            c.context,
            kc::error_text(&e)
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_types() {
        assert_eq!(address_type("172.18.0.20").unwrap(), "IPAddress");
        assert_eq!(address_type("fd00::1").unwrap(), "IPAddress");
        assert_eq!(address_type("gw.example.com").unwrap(), "Hostname");
        for bad in [
            "",
            "gw",
            "a..b",
            "-a.b",
            "1.2.3.4:15008",
            "gw.example.com/x",
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.1.1",
            "fe80::1",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:127.0.0.1",
        ] {
            assert!(address_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn service_address_takes_the_primary_familys_ingress_of_a_dual_stack_service() {
        let svc = |families: Value, ingress: Value| json!({"spec": {"ipFamilies": families}, "status": {"loadBalancer": {"ingress": ingress}}});
        let both = json!([{"ip": "2001:db8::20"}, {"ip": "172.18.0.20"}]);
        let v4_first = json!(["IPv4", "IPv6"]);
        let v6_first = json!(["IPv6", "IPv4"]);
        assert_eq!(
            service_address(&svc(v4_first.clone(), both.clone())).as_deref(),
            Some("172.18.0.20")
        );
        assert_eq!(
            service_address(&svc(v6_first.clone(), both)).as_deref(),
            Some("2001:db8::20")
        );
        // Only the other family's address, or no families known: the first one.
        let v6_only = json!([{"ip": "2001:db8::20"}]);
        assert_eq!(
            service_address(&svc(v4_first, v6_only)).as_deref(),
            Some("2001:db8::20")
        );
        let no_spec = json!({"status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::20"}, {"ip": "172.18.0.20"}]}}});
        assert_eq!(service_address(&no_spec).as_deref(), Some("2001:db8::20"));
        // A hostname is not of a family: it stays where the load balancer put it.
        let named = json!([{"hostname": "lb.example.com"}, {"ip": "172.18.0.20"}]);
        assert_eq!(
            service_address(&svc(v6_first, named)).as_deref(),
            Some("lb.example.com")
        );
    }

    #[test]
    fn service_address_prefers_the_first_ingress() {
        let svc = json!({"status": {"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}, {"ip": "1.2.3.4"}]}}});
        assert_eq!(service_address(&svc).as_deref(), Some("lb.example.com"));
        assert_eq!(
            service_address(&json!({"status": {"loadBalancer": {}}})),
            None
        );
    }

    #[test]
    fn announce_object_is_what_istiod_reads() {
        let o = announce_object("istio-system", "east-network", "172.18.0.20").unwrap();
        assert_eq!(o["spec"]["gatewayClassName"], "istio-remote");
        assert_eq!(o["metadata"]["labels"][NETWORK_LABEL], "east-network");
        assert_eq!(
            o["metadata"]["annotations"][GATEWAY_SA_ANNOTATION],
            GATEWAY_NAME
        );
        assert_eq!(o["spec"]["listeners"][0]["protocol"], "HBONE");
        assert_eq!(o["spec"]["listeners"][0]["port"], 15008);
        assert_eq!(o["status"]["addresses"][0]["value"], "172.18.0.20");
        assert_eq!(o["spec"]["addresses"], o["status"]["addresses"]);
    }
}
