//! TEST CONTROLS (off by default): the answers a real API server gives when it is overloaded
//! or failing, injected per verb and resource so that clients' handling of them can be tested.
//! Nothing here happens unless a test asks for it. Shapes follow kube-apiserver:
//! - 429 from API Priority and Fairness / max-in-flight (`server/filters/maxinflight.go`,
//!   `priority-and-fairness.go`): `Retry-After: 1` and a plain-text body, not a `Status`;
//!   `system:masters` is exempt there, and here too.
//! - 429 while shutting down (`server/filters/with_retry_after.go`): `Retry-After: 5`,
//!   `Connection: close`, plain text; nobody is exempt.
//! - 503 `ServiceUnavailable`, 500 `InternalError` and 504 `Timeout` as `Status` bodies
//!   (`apimachinery/pkg/api/errors`).
//! - 409 `Conflict` as a write whose object changed since it was read gets it
//!   (`NewConflict`: "the object has been modified"), naming the requested object.
//!
//! Besides answers, a test can interleave a write ([`Faults::interleave`]): another client's
//! change landing between a client's read and its write, which the request then meets as it
//! would on a real cluster (a precondition that no longer holds, a name now held by another
//! object).

use crate::auth::Identity;
use crate::error::ApiError;
use crate::rbac::Attributes;
use serde_json::json;
use std::sync::{Arc, Mutex};

/// One injected failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// API Priority and Fairness rejected the request (429, `Retry-After: <secs>`).
    TooManyRequests { retry_after: u64 },
    /// The server is shutting down (429, `Retry-After: 5`, `Connection: close`).
    ShuttingDown,
    /// 503 ServiceUnavailable.
    Unavailable,
    /// 500 InternalError (e.g. storage unavailable).
    Internal,
    /// 504 Timeout (the request did not finish in time; a write may still have happened).
    Timeout,
    /// 409 Conflict: the object changed since the client read it (a stale resourceVersion).
    /// Inject it as `Fault::conflict()`; the object is named from the request it answers.
    Conflict {
        group: String,
        resource: String,
        name: String,
    },
}

/// Which requests a fault answers, and how many times.
#[derive(Clone, Debug)]
pub struct FaultRule {
    pub fault: Fault,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ... (all when `None`).
    pub verb: Option<String>,
    /// Resource plural (`secrets`), or the path of a non-resource request (`/version`).
    pub resource: Option<String>,
    /// How many requests it answers before it is spent (`None`: until cleared).
    pub times: Option<u32>,
}

impl FaultRule {
    pub fn new(fault: Fault) -> Self {
        FaultRule {
            fault,
            verb: None,
            resource: None,
            times: None,
        }
    }

    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.into());
        self
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.into());
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, stage: Stage, attrs: &Attributes, id: &Identity) -> bool {
        let target = attrs.path.as_deref().unwrap_or(&attrs.resource);
        let exempt = matches!(self.fault, Fault::TooManyRequests { .. })
            && id.groups.iter().any(|g| g == "system:masters");
        !exempt
            && self.fault.stage() == stage
            && self.verb.as_deref().is_none_or(|v| v == attrs.verb)
            && self.resource.as_deref().is_none_or(|r| r == target)
            && self.times != Some(0)
    }
}

/// A write run once before the first request it matches is handled.
struct Interleaved {
    verb: String,
    resource: String,
    write: Box<dyn FnOnce() + Send>,
}

#[derive(Default)]
struct State {
    rules: Vec<FaultRule>,
    injected: u64,
    interleaved: Vec<Interleaved>,
}

/// The injected faults of one server (shared; kept across stop and restart).
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<State>>);

impl Faults {
    /// Adds a rule; the first matching rule answers a request.
    pub fn inject(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Removes every rule: the server answers normally again.
    pub fn clear(&self) {
        self.lock().rules.clear();
    }

    /// TEST CONTROL: runs `write` (typically on the server's store) once, just before the
    /// first request with this verb and resource is handled (after authentication and
    /// authorization, where kube-apiserver's handler would read the stored object): another
    /// client's write landing between a client's read and its write.
    pub fn interleave(&self, verb: &str, resource: &str, write: impl FnOnce() + Send + 'static) {
        self.lock().interleaved.push(Interleaved {
            verb: verb.into(),
            resource: resource.into(),
            write: Box::new(write),
        });
    }

    /// How many interleaved writes are still waiting for their request.
    pub fn interleaved_pending(&self) -> usize {
        self.lock().interleaved.len()
    }

    /// Runs (and spends) the interleaved write this request meets, outside the lock.
    pub(crate) fn run_interleaved(&self, attrs: &Attributes) {
        let write = {
            let mut st = self.lock();
            let Some(i) = st
                .interleaved
                .iter()
                .position(|w| w.verb == attrs.verb && w.resource == attrs.resource)
            else {
                return;
            };
            st.interleaved.remove(i).write
        };
        write();
    }

    /// How many requests were answered with an injected fault.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// The fault that answers this request at `stage`, if any (spending one of its `times`).
    pub(crate) fn take(&self, stage: Stage, attrs: &Attributes, id: &Identity) -> Option<Fault> {
        let mut st = self.lock();
        let rule = st.rules.iter_mut().find(|r| r.matches(stage, attrs, id))?;
        if let Some(n) = rule.times.as_mut() {
            *n -= 1;
        }
        let mut fault = rule.fault.clone();
        if let Fault::Conflict {
            group,
            resource,
            name,
        } = &mut fault
        {
            (*group, *resource, *name) = (
                attrs.group.clone(),
                attrs.resource.clone(),
                attrs.name.clone(),
            );
        }
        st.injected += 1;
        Some(fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("faults lock poisoned")
    }
}

/// Where in the request path a fault answers, as in kube-apiserver's filter chain: the
/// shutdown 429 before authentication, APF after it and before authorization, the rest in
/// the handler after authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    BeforeAuthentication,
    BeforeAuthorization,
    Handler,
}

/// How a fault is answered: a `Status` or plain text, with its extra headers.
pub(crate) enum Answer {
    Status(ApiError),
    Text {
        code: u16,
        text: &'static str,
        headers: Vec<(&'static str, String)>,
    },
}

impl Fault {
    /// A 409 Conflict for whatever object the matching request writes.
    pub fn conflict() -> Self {
        Fault::Conflict {
            group: String::new(),
            resource: String::new(),
            name: String::new(),
        }
    }

    fn stage(&self) -> Stage {
        match self {
            Fault::ShuttingDown => Stage::BeforeAuthentication,
            Fault::TooManyRequests { .. } => Stage::BeforeAuthorization,
            Fault::Unavailable | Fault::Internal | Fault::Timeout | Fault::Conflict { .. } => {
                Stage::Handler
            }
        }
    }

    pub(crate) fn answer(&self) -> Answer {
        match self {
            Fault::TooManyRequests { retry_after } => Answer::Text {
                code: 429,
                text: "Too many requests, please try again later.\n",
                headers: vec![("Retry-After", retry_after.to_string())],
            },
            Fault::ShuttingDown => Answer::Text {
                code: 429,
                text: "The apiserver is shutting down, please try again later.\n",
                headers: vec![("Retry-After", "5".into()), ("Connection", "close".into())],
            },
            Fault::Unavailable => Answer::Status(ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
            )),
            Fault::Internal => Answer::Status(ApiError::internal(
                "Internal error occurred: etcdserver: request timed out",
            )),
            Fault::Timeout => Answer::Status(ApiError {
                details: Some(json!({"retryAfterSeconds": 1})),
                ..ApiError::new(
                    504,
                    "Timeout",
                    "Timeout: request did not complete within requested timeout - context deadline exceeded",
                )
            }),
            Fault::Conflict {
                group,
                resource,
                name,
            } => Answer::Status(ApiError::conflict(group, resource, name)),
        }
    }
}
