//! The DestinationRule CRD's life: found at start or by polling every `--crd-recheck`
//! interval, watched while served, and let go when it is deleted (its watch gets 404): the
//! subset routes go, staleness is not affected, and polling starts again.
//!
//! Each time the rules are (re)started they get a new generation, so messages from the
//! watches of a deleted CRD can never touch the rules of its successor.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::client::{REACH_TIMEOUT, error_chain};
use super::project;
use super::watch::{Ended, Kind, Msg, Probe, dyn_apis, probe, pump};

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
    pub tx: mpsc::Sender<Msg>,
    pub wake: Arc<Notify>,
    pub stop: CancellationToken,
}

impl Rules {
    fn probes(&self, ar: &ApiResource) -> Vec<Probe> {
        dyn_apis(&self.client, &self.namespaces, ar)
            .into_iter()
            .enumerate()
            .map(|(i, api)| probe(Kind::DestinationRule, i, api))
            .collect()
    }

    /// Starts generation `generation` of the DestinationRule watches; returns their probes.
    pub fn start(&self, ar: &ApiResource, generation: u64) -> Vec<Probe> {
        tracing::info!(version = %ar.version, "watching DestinationRules for subsets");
        // Ends every watch of this generation when one finds the CRD gone.
        let generation_stop = self.stop.child_token();
        for (i, api) in dyn_apis(&self.client, &self.namespaces, ar)
            .into_iter()
            .enumerate()
        {
            let domain = self.domain.clone();
            let (tx, wake, stop) = (self.tx.clone(), self.wake.clone(), generation_stop.clone());
            tokio::spawn(async move {
                let ended = pump(
                    watcher::watcher(api, watcher::Config::default().any_semantic()),
                    Kind::DestinationRule,
                    i,
                    move |dr: &DynamicObject| project::project_destination_rule(dr, &domain),
                    move |stream, update| Msg::Rule(generation, stream, update),
                    tx.clone(),
                    wake,
                    stop.clone(),
                )
                .await;
                if ended == Ended::NotServed {
                    stop.cancel();
                    let _ = tx.send(Msg::RulesGone(generation)).await;
                }
            });
        }
        self.probes(ar)
    }

    /// Looks for the CRD every `recheck` until it is served (Istio installed, or the CRD
    /// restored, after the gateway started), then starts generation `generation`.
    pub async fn poll(self, generation: u64) {
        let every = self.recheck.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Some(ar) = destination_rule_resource(&self.client).await {
                // The model learns about the rules before their first event arrives.
                let probes = self.probes(&ar);
                if self
                    .tx
                    .send(Msg::RulesStarted(generation, probes))
                    .await
                    .is_err()
                {
                    return;
                }
                self.start(&ar, generation);
                return;
            }
        }
    }
}
