//! What applying the gateway's objects would change in the gateway in place, in the terms of
//! the flags that set it: `gateway install` over the gateway a `join` made applies its own
//! flags, and a flag left out takes its default, so an install meant to change the image
//! would also reset the Service type, the protocols or the replicas the join chose. The
//! install says so, line by line, instead of doing it silently. Sans-IO.

use serde_json::Value;

use crate::istio::GATEWAY_NAME;

/// One line per setting that differs between what is in place (`existing`: the objects as
/// read, any kinds) and what is about to be applied (`planned`), for the gateway's
/// Deployment and Service. Nothing for an object not there yet.
pub fn changes(existing: &[Value], planned: &[Value]) -> Vec<String> {
    let find = |objs: &[Value], kind: &str| {
        objs.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == GATEWAY_NAME)
            .cloned()
    };
    let mut out = Vec::new();
    if let (Some(old), Some(new)) = (find(existing, "Deployment"), find(planned, "Deployment")) {
        let c = "/spec/template/spec/containers/0";
        compare(
            &mut out,
            "image",
            text(&old, &format!("{c}/image")),
            text(&new, &format!("{c}/image")),
        );
        compare(
            &mut out,
            "replicas",
            text(&old, "/spec/replicas"),
            text(&new, "/spec/replicas"),
        );
        let (was, now) = (args(&old, c), args(&new, c));
        let (gone, added) = (missing(&was, &now), missing(&now, &was));
        if !gone.is_empty() {
            out.push(format!("gateway arguments removed: {}", gone.join(" ")));
        }
        if !added.is_empty() {
            out.push(format!("gateway arguments added: {}", added.join(" ")));
        }
    }
    // The replicas are the autoscaler's (--replicas is its minimum, --max-replicas its maximum).
    let hpa = (
        find(existing, "HorizontalPodAutoscaler"),
        find(planned, "HorizontalPodAutoscaler"),
    );
    if let (Some(old), Some(new)) = hpa {
        let (min, max) = ("/spec/minReplicas", "/spec/maxReplicas");
        compare(
            &mut out,
            "replicas (autoscaler minimum)",
            text(&old, min),
            text(&new, min),
        );
        compare(&mut out, "max replicas", text(&old, max), text(&new, max));
    }
    if let (Some(old), Some(new)) = (find(existing, "Service"), find(planned, "Service")) {
        compare(
            &mut out,
            "Service type",
            text(&old, "/spec/type"),
            text(&new, "/spec/type"),
        );
        compare(&mut out, "Service ports", ports(&old), ports(&new));
        let keys = |o: &Value| -> Vec<String> {
            let mut k: Vec<String> = o["metadata"]["annotations"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter(|k| !k.starts_with("meshctl.io/"))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            k.sort();
            k
        };
        let gone = missing(&keys(&old), &keys(&new));
        if !gone.is_empty() {
            out.push(format!("Service annotations removed: {}", gone.join(", ")));
        }
    }
    out
}

/// The items of `from` that `to` lacks, in `from`'s order.
fn missing(from: &[String], to: &[String]) -> Vec<String> {
    from.iter().filter(|x| !to.contains(x)).cloned().collect()
}

fn compare(out: &mut Vec<String>, what: &str, old: String, new: String) {
    if old != new {
        out.push(format!("{what}: {old} -> {new}"));
    }
}

fn text(o: &Value, pointer: &str) -> String {
    match o.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "(unset)".into(),
        Some(v) => v.to_string(),
    }
}

/// The container's arguments as `--flag value` items, so a changed value reads as one item.
fn args(o: &Value, container: &str) -> Vec<String> {
    let list: Vec<&str> = o
        .pointer(&format!("{container}/args"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for a in list {
        match out.last_mut() {
            Some(last)
                if !a.starts_with('-') && last.starts_with('-') && !last.contains([' ', '=']) =>
            {
                last.push(' ');
                last.push_str(a);
            }
            _ => out.push(a.to_string()),
        }
    }
    out
}

fn ports(o: &Value) -> String {
    let list: Vec<String> = o["spec"]["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| format!("{}:{}", p["name"].as_str().unwrap_or("?"), p["port"]))
                .collect()
        })
        .unwrap_or_default();
    list.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(image: &str, args: &[&str]) -> Value {
        json!({"kind": "Deployment", "metadata": {"name": GATEWAY_NAME}, "spec": {"replicas": 2,
            "template": {"spec": {"containers": [{"image": image, "args": args}]}}}})
    }

    fn service(ty: &str, ports: &[(&str, u16)], annotations: Value) -> Value {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(n, p)| json!({"name": n, "port": p}))
            .collect();
        json!({"kind": "Service", "metadata": {"name": GATEWAY_NAME, "annotations": annotations},
            "spec": {"type": ty, "ports": ports}})
    }

    #[test]
    fn each_setting_that_changes_is_named() {
        let old = [
            deployment(
                "gw:1",
                &["--cluster-id", "west", "--hbone-listen", "0.0.0.0:15008"],
            ),
            service(
                "LoadBalancer",
                &[("tls", 15443), ("mesh", 15008)],
                json!({"a/internal": "true"}),
            ),
        ];
        let new = [
            deployment("gw:2", &["--cluster-id", "Kubernetes"]),
            service("NodePort", &[("tls", 15443)], json!({})),
        ];
        assert_eq!(
            changes(&old, &new),
            [
                "image: gw:1 -> gw:2",
                "gateway arguments removed: --cluster-id west --hbone-listen 0.0.0.0:15008",
                "gateway arguments added: --cluster-id Kubernetes",
                "Service type: LoadBalancer -> NodePort",
                "Service ports: tls:15443,mesh:15008 -> tls:15443",
                "Service annotations removed: a/internal",
            ]
        );
        assert!(changes(&old, &old).is_empty());
        let hpa = |min: u32, max: u32| {
            json!({"kind": "HorizontalPodAutoscaler", "metadata": {"name": GATEWAY_NAME},
                "spec": {"minReplicas": min, "maxReplicas": max}})
        };
        assert_eq!(
            changes(&[hpa(4, 8)], &[hpa(2, 5)]),
            [
                "replicas (autoscaler minimum): 4 -> 2",
                "max replicas: 8 -> 5"
            ]
        );
        // Nothing in place yet: nothing to say.
        assert!(changes(&[], &new).is_empty());
    }
}
