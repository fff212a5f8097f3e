//! The worker's side of the heartbeat (see [`crate::heartbeat`] for the timing argument): renew
//! the Lease, and say whether this worker may run tasks right now.

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::{
    sync::watch,
    time::{Instant, sleep_until, timeout},
};

use crate::{heartbeat, telemetry::Metrics};

/// Which heartbeat: the Lease of `pod` in `namespace`, of `duration`.
pub struct Params {
    pub namespace: String,
    pub pod: String,
    /// The Pod's UID, to make it the Lease's owner (garbage-collected with it).
    pub pod_uid: Option<String>,
    pub duration: Duration,
}

/// What holds renewals back: the view of the assignments not known fresh, or a release seen and
/// left unconfirmed for too long.
pub struct Holds {
    /// The send time of the LIST that last proved the view of the assignments complete.
    pub fresh: watch::Receiver<Option<Instant>>,
    /// The assignment watch's cycle: the view is not known fresh past its `stale_after`.
    pub cycle: crate::watch::Cycle,
    /// Since when the oldest release seen is unconfirmed (see [`super::release`]).
    pub unconfirmed: watch::Receiver<Option<Instant>>,
}

/// Renews the heartbeat Lease of `pod` until `stop` turns true, publishing on `alive` whether the
/// worker may run tasks (and on `send_deadline` until when, for the crawl engines' check before
/// each request): true only while a renewal sent less than `stop_after(duration)` ago
/// succeeded, and, after a lapse (or when an earlier process left the Lease behind), not before a
/// renewal sent `resume_after(duration)` after the first successful one. On stop it releases the
/// Lease (holder cleared) so the controller reassigns at once.
///
/// A renewal is sent only while the worker's view of its assignments is known fresh (`fresh`:
/// the send time of the LIST that last proved it complete; see [`crate::watch`]): a worker that
/// cannot see its assignments lets its heartbeat lapse, so the controller stops counting on it.
/// Nor is one sent while a release this worker has seen stays unconfirmed past
/// [`super::release::CONFIRM_BOUND`]: the lapse then completes the controller's handoff.
pub async fn run(
    client: Client,
    Params {
        namespace,
        pod,
        pod_uid,
        duration,
    }: Params,
    alive: watch::Sender<bool>,
    send_deadline: watch::Sender<Option<Instant>>,
    Holds {
        fresh,
        cycle,
        unconfirmed,
    }: Holds,
    mut stop: watch::Receiver<bool>,
    metrics: Metrics,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let name = heartbeat::lease_name(&pod);
    let owners = heartbeat::owner_references(&pod, pod_uid.as_deref());
    if pod_uid.is_none() {
        tracing::info!(lease = %name, "POD_UID is not set: the heartbeat Lease has no owner and outlives its Pod");
    }
    let interval = heartbeat::renew_interval(duration);
    let grace = heartbeat::stop_after(duration);
    let alive = Arc::new(alive);
    let mut valid_until: Option<Instant> = None;
    // A Lease left by an earlier process of this Pod (a container restart) is a lapse too: the
    // controller may be moving that process's tasks right now.
    let mut lapsed = left_behind(&api, &name, interval).await;
    let mut hold_until: Option<Instant> = None;
    let mut withheld: Option<&'static str> = None;
    let mut next = Instant::now();
    loop {
        // Wake at the next renewal, at the deadline, or on stop, whichever is first.
        let wake = valid_until.map_or(next, |v| v.min(next));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = sleep_until(wake) => {}
        }
        let now = Instant::now();
        if let Some(v) = valid_until {
            metrics.set_heartbeat_age((now + grace).saturating_duration_since(v));
        }
        if valid_until.is_some_and(|v| now >= v) {
            valid_until = None;
            lapsed = true;
            hold_until = None;
            send_deadline.send_replace(None);
            if alive.send_replace(false) {
                tracing::warn!(lease = %name, "heartbeat not renewed in time: stopping every task until it is");
            }
        }
        if now < next {
            continue;
        }
        next = now + interval;
        let view = *fresh.borrow();
        if view.is_none() {
            // Not listed yet (starting): nothing to renew for, nothing failed.
            next = now + interval / 4;
            continue;
        }
        let reason = withheld_because(cycle, view, *unconfirmed.borrow(), now);
        if let Some(why) = reason {
            metrics.heartbeat_renew_failed();
            if withheld != Some(why) {
                tracing::warn!(lease = %name, "not renewing the heartbeat: {why}");
            }
            withheld = reason;
            continue;
        }
        withheld = None;
        let sent = Instant::now();
        match timeout(interval, write(&api, &name, Some(&pod), duration, &owners)).await {
            Ok(Ok(())) => {
                valid_until = Some(sent + grace);
                if lapsed {
                    lapsed = false;
                    let hold = heartbeat::resume_after(duration);
                    hold_until = Some(sent + hold);
                    tracing::info!(lease = %name, "heartbeat renewed after a lapse: tasks stay stopped for {hold:?} so that a move the controller decided meanwhile lands first");
                }
                if hold_until.is_none_or(|h| sent >= h) {
                    hold_until = None;
                    // The crawl engines check this before each request: after a pause, none
                    // goes out before this loop has noticed the lapse.
                    send_deadline.send_replace(valid_until);
                    if !alive.send_replace(true) {
                        tracing::info!(lease = %name, "heartbeat renewed: tasks may run");
                    }
                }
            }
            Ok(Err(e)) => {
                metrics.heartbeat_renew_failed();
                tracing::warn!(lease = %name, error = %e, "cannot renew the heartbeat");
            }
            Err(_) => {
                metrics.heartbeat_renew_failed();
                tracing::warn!(lease = %name, "renewing the heartbeat timed out after {interval:?}");
            }
        }
    }
    send_deadline.send_replace(None);
    alive.send_replace(false);
    match timeout(
        Duration::from_secs(2),
        write(&api, &name, None, duration, &owners),
    )
    .await
    {
        Ok(Ok(())) => tracing::info!(lease = %name, "heartbeat released"),
        Ok(Err(e)) => {
            tracing::warn!(lease = %name, error = %e, "cannot release the heartbeat; the controller will notice when it expires");
        }
        Err(_) => tracing::warn!(lease = %name, "releasing the heartbeat timed out"),
    }
}

/// Why a renewal must not be sent now (`None`: it may): the view of the assignments is not
/// known fresh, or a release seen stayed unconfirmed past its bound.
fn withheld_because(
    cycle: crate::watch::Cycle,
    view: Option<Instant>,
    unconfirmed_since: Option<Instant>,
    now: Instant,
) -> Option<&'static str> {
    if !cycle.is_fresh(view, now) {
        Some("the view of this worker's assignments is not known fresh")
    } else if super::release::withhold_heartbeat(unconfirmed_since, now) {
        Some(
            "a release stayed unconfirmed past its bound; the controller completes the handoff \
             when the heartbeat lapses",
        )
    } else {
        None
    }
}

/// Whether this Pod's heartbeat Lease already exists (left by an earlier process of the Pod). When
/// that cannot be told, it answers yes: waiting is the safe side.
async fn left_behind(api: &Api<Lease>, name: &str, within: Duration) -> bool {
    match timeout(within, api.get_opt(name)).await {
        Ok(Ok(lease)) => lease.is_some(),
        Ok(Err(e)) => {
            tracing::warn!(lease = %name, error = %e, "cannot read the heartbeat Lease; treating it as left by an earlier process");
            true
        }
        Err(_) => true,
    }
}

/// Server-side apply of the heartbeat. Without a holder it is a release: the field is removed
/// because this manager owned it (so every write carries the owner references, or they would be
/// removed the same way).
async fn write(
    api: &Api<Lease>,
    name: &str,
    holder: Option<&str>,
    duration: Duration,
    owners: &serde_json::Value,
) -> Result<(), kube::Error> {
    let mut spec = json!({
        "leaseDurationSeconds": heartbeat::lease_duration_seconds(duration),
        "renewTime": MicroTime(Timestamp::now()),
    });
    if let Some(holder) = holder {
        spec["holderIdentity"] = json!(holder);
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": { heartbeat::LABEL: heartbeat::LABEL_VALUE },
            "ownerReferences": owners,
        },
        "spec": spec,
    });
    api.patch(
        name,
        &PatchParams::apply(heartbeat::FIELD_MANAGER).force(),
        &Patch::Apply(&lease),
    )
    .await?;
    Ok(())
}
