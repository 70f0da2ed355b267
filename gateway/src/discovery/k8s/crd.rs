//! The DestinationRule CRD's life: found at start or by polling every `--crd-recheck`
//! interval, watched while served, and let go when it is deleted (its watch gets 404): the
//! subset routes go, staleness is not affected, and polling starts again.
//!
//! Each time the rules are (re)started they get a new generation, so messages from the
//! watches of a deleted CRD can never touch the rules of its successor.

use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};

use super::client::{REACH_TIMEOUT, error_chain};
use super::probe::{Probe, probes};
use super::project;
use super::watch::{self, Msg, Watches, dyn_apis, spawn_watches};

/// The served DestinationRule resource (preferred version), or `None` without the CRD.
pub(super) async fn destination_rule_resource(client: &Client) -> Option<ApiResource> {
    let group = match tokio::time::timeout(
        REACH_TIMEOUT,
        kube::discovery::group(client, "networking.istio.io"),
    )
    .await
    {
        Ok(Ok(g)) => g,
        Ok(Err(kube::Error::Discovery(_))) => return None,
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => return None,
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "checking for the DestinationRule CRD failed; will retry");
            return None;
        }
        Err(_) => return None,
    };
    group.recommended_kind("DestinationRule").map(|(ar, _)| ar)
}

/// What starting and polling for the rules needs.
#[derive(Clone)]
pub(super) struct Rules {
    pub client: Client,
    pub namespaces: Vec<String>,
    pub domain: String,
    pub recheck: Duration,
    pub watches: Watches,
}

impl Rules {
    /// Starts generation `generation` of the DestinationRule watches; returns their probes.
    pub fn start(&self, ar: &ApiResource, generation: u64) -> Vec<Probe> {
        let apis = dyn_apis(&self.client, &self.namespaces, ar);
        let probes = probes(&apis);
        self.spawn(ar, apis, generation);
        probes
    }

    fn spawn(&self, ar: &ApiResource, apis: Vec<Api<DynamicObject>>, generation: u64) {
        tracing::info!(version = %ar.version, "watching DestinationRules for subsets");
        let domain = self.domain.clone();
        spawn_watches(
            &self.watches,
            watch::every(&apis),
            move |dr: &DynamicObject| project::project_destination_rule(dr, &domain),
            move |stream, update| Msg::Rule(generation, stream, update),
            Some(Msg::RulesGone(generation)),
        );
    }

    /// Looks for the CRD every `recheck` until it is served (Istio installed, or the CRD
    /// restored, after the gateway started), then starts generation `generation`.
    pub async fn poll(self, generation: u64) {
        let every = self.recheck.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = self.watches.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Some(ar) = destination_rule_resource(&self.client).await {
                // The model learns about the rules before their first event arrives.
                let apis = dyn_apis(&self.client, &self.namespaces, &ar);
                let started = Msg::RulesStarted(generation, probes(&apis));
                if self.watches.tx.send(started).await.is_err() {
                    return;
                }
                self.spawn(&ar, apis, generation);
                return;
            }
        }
    }
}
