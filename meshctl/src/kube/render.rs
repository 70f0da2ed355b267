//! Printing objects: YAML streams and JSON lists for `-o yaml|json`, the per-cluster plan a
//! `--dry-run` prints, and `Kind ns/name` for messages. Private keys are redacted here
//! (`redact.rs`) unless the user passed `--show-secrets`.

use anyhow::Result;
use clap::ValueEnum;
use serde_json::{Value, json};

use super::redact::{Secrets, redact};

/// Output format of rendered objects and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Yaml,
    Json,
}

pub(super) fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `Kind ns/name` for messages.
pub fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    match meta(obj, "namespace") {
        Some(ns) => format!("{kind} {ns}/{}", meta(obj, "name").unwrap_or("?")),
        None => format!("{kind} {}", meta(obj, "name").unwrap_or("?")),
    }
}

/// Renders objects as a YAML stream (`---` separated) or a JSON `List`, private keys
/// redacted.
pub fn render(objs: &[Value], out: Output) -> Result<String> {
    render_objects(&redact(objs, Secrets::Redact), out)
}

fn render_objects(objs: &[Value], out: Output) -> Result<String> {
    match out {
        Output::Yaml => {
            let mut s = String::new();
            for o in objs {
                s.push_str("---\n");
                s.push_str(&serde_yaml::to_string(o)?);
            }
            Ok(s)
        }
        Output::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": objs});
            Ok(format!("{}\n", serde_json::to_string_pretty(&list)?))
        }
    }
}

/// What `--dry-run` prints: each cluster's objects under a header comment (YAML), or one
/// JSON document `{"clusters": [{"context", "objects"}]}` ([`plan_json`]). Private keys are
/// redacted.
pub fn render_plan(plan: &[(String, Vec<Value>)], out: Output) -> Result<String> {
    render_plan_with(plan, out, Secrets::Redact)
}

/// [`render_plan`], printing private keys only with [`Secrets::Show`] (`--show-secrets`).
pub fn render_plan_with(
    plan: &[(String, Vec<Value>)],
    out: Output,
    secrets: Secrets,
) -> Result<String> {
    match out {
        Output::Yaml => {
            let mut s = String::new();
            for (context, objs) in plan {
                s.push_str(&format!(
                    "# context {context}: {} object(s) (dry run: nothing applied)\n",
                    objs.len()
                ));
                s.push_str(&render_objects(&redact(objs, secrets), Output::Yaml)?);
            }
            Ok(s)
        }
        Output::Json => Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&plan_json(plan, secrets))?
        )),
    }
}

/// The JSON document of a dry run: `{"clusters": [{"context", "objects"}]}`, private keys
/// redacted unless [`Secrets::Show`]. A command that prints more (`create-remote-secret`)
/// adds fields to it, so that stdout stays one document.
pub fn plan_json(plan: &[(String, Vec<Value>)], secrets: Secrets) -> Value {
    let clusters: Vec<Value> = plan
        .iter()
        .map(|(c, objs)| json!({"context": c, "objects": redact(objs, secrets)}))
        .collect();
    json!({"clusters": clusters})
}

/// One object as one document (no `List` around it, as kubectl prints a single object),
/// private keys redacted.
pub fn render_one(obj: &Value, out: Output) -> Result<String> {
    let obj = redact(std::slice::from_ref(obj), Secrets::Redact)
        .pop()
        .unwrap_or_default();
    Ok(match out {
        Output::Yaml => serde_yaml::to_string(&obj)?,
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&obj)?),
    })
}
