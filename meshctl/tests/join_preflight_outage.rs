//! join's checks before its first change meet a persistent API outage once: the
//! server-side dry run of its writes stops join when the API server does not take it up
//! (503 past meshctl's retries), with nothing changed in any cluster, instead of leaving it to
//! the real write, which waited out the same retries again after other clusters were
//! changed; the permission reviews stop asking after the first one that is not taken up.
//! Through the real binary, against two TEST API servers with injected faults.

mod common;

use std::time::Duration;

use common::runs::{meshctl_within, outage, says};
use common::*;
use k8s_test_server::Fault;

/// east's gateway Deployment cannot be written (every PATCH of deployments answers 503):
/// join fails after one try and 4 retries (the dry run's), bounded, naming the outage and
/// saying nothing was changed; neither cluster changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_outage_stops_join_at_its_dry_run_with_nothing_changed() {
    let m = mesh().await;
    let before = m.settled_snapshots().await;
    outage(&m.east, Fault::Unavailable, "patch", "deployments");
    let (out, took) = meshctl_within(Duration::from_secs(60), &m.join_args(&[])).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(
        m.east.faults().injected(),
        5,
        "the dry run's one try and 4 retries, and no write after it:\n{all}"
    );
    assert!(
        took < Duration::from_secs(15),
        "one retry budget: {took:?}\n{all}"
    );
    says(
        &all,
        &[
            "context \"east\" did not take up the server-side dry run of Deployment \
             istio-system/istio-eastwestgateway",
            "503 ServiceUnavailable",
            "Nothing was changed; run join again once the API server answers",
        ],
    );
    assert!(!all.contains("interrupted"), "{all}");
    assert!(
        !all.to_lowercase()
            .contains("re-run the same command to resume"),
        "{all}"
    );
    assert_eq!(m.settled_snapshots().await, before, "nothing changed");
    // Once the server answers, join completes.
    m.east.faults().clear();
    m.join(&[]).await;
}

/// east answers 503 to every SelfSubjectAccessReview (the permission check is best effort):
/// join asks one, waits out its retries once, counts the rest as allowed without asking,
/// and completes. (Each of the few dozen reviews waited out its own retries before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_reviews_stop_asking_once_one_is_not_taken_up() {
    let m = mesh().await;
    outage(
        &m.east,
        Fault::Unavailable,
        "create",
        "selfsubjectaccessreviews",
    );
    let (out, took) = meshctl_within(Duration::from_secs(60), &m.join_args(&[])).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(m.east.faults().injected(), 5, "one review:\n{all}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}
