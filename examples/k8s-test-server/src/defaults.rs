//! Admission defaulting the real API server does on every create and update (Secret data and
//! type, Service addresses and ports, Namespace phase, Pod phase, CRD status), with the checks
//! defaulting itself needs (Secret base64, CRD names). Field validation follows it
//! (`validation.rs`).

use crate::error::ApiError;
use crate::ip_families;
use crate::resources::{self, ResourceType};
use crate::store::{State, Store, meta_mut, meta_str};
use crate::util;
use serde_json::{Value, json};

/// Per-type defaulting that the real API server does synchronously (validation follows).
pub(crate) fn default_object(
    store: &Store,
    st: &mut State,
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or("").to_string();
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "secrets") => {
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                if !obj.get("data").is_some_and(Value::is_object) {
                    obj["data"] = json!({});
                }
                for (k, v) in sd {
                    obj["data"][k] = json!(util::b64(v.as_str().unwrap_or("").as_bytes()));
                }
            }
            if let Some(Value::Object(d)) = obj.get("data") {
                for (k, v) in d {
                    if v.as_str().and_then(util::b64_decode).is_none() {
                        return Err(ApiError::bad_request(format!(
                            "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at key {k:?}"
                        )));
                    }
                }
            }
            if obj
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                obj["type"] = json!("Opaque");
            }
        }
        ("", "namespaces") => {
            if old.is_none() {
                obj["status"] = json!({"phase": "Active"});
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
        ("", "pods") if old.is_none() && obj.get("status").is_none() => {
            obj["status"] = json!({"phase": "Pending"});
        }
        ("", "services") => default_service(st, obj, old, store.config().ip_families, &name)?,
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let Some(crt) = resources::from_crd(obj) else {
                return Err(ApiError::invalid(
                    rt.group.as_str(),
                    "CustomResourceDefinition",
                    &name,
                    "spec",
                    "FieldValueInvalid",
                    "Invalid value: group, names and at least one served version are required",
                ));
            };
            if name != format!("{}.{}", crt.plural, crt.group) {
                return Err(ApiError::invalid(
                    rt.group.as_str(),
                    "CustomResourceDefinition",
                    &name,
                    "metadata.name",
                    "FieldValueInvalid",
                    "Invalid value: must be spec.names.plural+\".\"+spec.group",
                ));
            }
            let now = store.now();
            obj["status"] = json!({
                "acceptedNames": obj["spec"]["names"].clone(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                ],
                "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
            });
        }
        _ => {}
    }
    Ok(())
}

fn default_service(
    st: &mut State,
    obj: &mut Value,
    old: Option<&Value>,
    families: &[&str],
    name: &str,
) -> Result<(), ApiError> {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    if spec.get("type").is_none() {
        spec["type"] = json!("ClusterIP");
    }
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if spec.get("sessionAffinity").is_none() {
        spec["sessionAffinity"] = json!("None");
    }
    if ty != "ExternalName" {
        ip_families::default_families(families, spec, old, name, &mut st.next_ip)?;
        spec["internalTrafficPolicy"] = spec
            .get("internalTrafficPolicy")
            .cloned()
            .unwrap_or(json!("Cluster"));
    }
    let node_ports = ty == "NodePort" || ty == "LoadBalancer";
    if node_ports && spec.get("externalTrafficPolicy").is_none() {
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    let old_ports = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
            // An absent, zero or empty targetPort is the port (`SetDefaults_Service`).
            if matches!(p.get("targetPort"), None | Some(Value::Null))
                || p["targetPort"] == 0
                || p["targetPort"] == ""
            {
                p["targetPort"] = p["port"].clone();
            }
            if node_ports && p.get("nodePort").is_none() {
                let prev = old_ports
                    .iter()
                    .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                    .and_then(|o| o.get("nodePort"))
                    .cloned();
                p["nodePort"] = prev.unwrap_or_else(|| {
                    st.next_node_port += 1;
                    json!(st.next_node_port)
                });
            }
        }
    }
    if ty == "LoadBalancer" && old.is_none() && obj.get("status").is_none() {
        obj["status"] = json!({"loadBalancer": {}});
    }
    Ok(())
}
