//! The token check istiod makes: a TokenReview for audience `istio-ca` on the cluster's API
//! server (istio `pkg/kube/tokenreview` `ValidateK8sJwt`): authenticated, and the user a
//! service account `system:serviceaccount:<ns>:<sa>`.

use super::{ISTIO_CA_AUDIENCE, ReviewFuture, Reviewed, TokenReviewer};

/// Reviews tokens through a kube client (e.g. to the Kubernetes API test server).
pub struct KubeTokenReview {
    pub client: kube::Client,
}

impl TokenReviewer for KubeTokenReview {
    fn review(&self, token: String) -> ReviewFuture {
        let client = self.client.clone();
        Box::pin(async move {
            let body = serde_json::json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": [ISTIO_CA_AUDIENCE]},
            });
            let req = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
                .header("content-type", "application/json")
                .body(body.to_string().into_bytes())
                .map_err(|e| e.to_string())?;
            let out: serde_json::Value = client
                .request(req)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let status = &out["status"];
            if status["authenticated"] != serde_json::Value::Bool(true) {
                return Err(format!(
                    "the token is not authenticated: {}",
                    status["error"].as_str().unwrap_or("no error given")
                ));
            }
            let user = status["user"]["username"].as_str().unwrap_or("");
            let parts: Vec<&str> = user.split(':').collect();
            match parts.as_slice() {
                ["system", "serviceaccount", ns, sa] if !ns.is_empty() && !sa.is_empty() => {
                    Ok(Reviewed {
                        namespace: ns.to_string(),
                        service_account: sa.to_string(),
                    })
                }
                _ => Err(format!("{user:?} is not a service account")),
            }
        })
    }
}
