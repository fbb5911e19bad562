//! GetContainerEvents: created, started and deleted events sent by this service's own
//! lifecycle calls (as containerd's CRI plugin does), and stopped events from the exits the tasks
//! service publishes; each carries the container's status and its pod's status.

use berth_api::berth::events::v1 as events;
use berth_api::berth::events::v1::events_client::EventsClient;
use berth_api::runtime::v1 as cri;
use futures::StreamExt;
use tokio::sync::broadcast;
use tonic::Status;

use super::lifecycle::now_ns;
use super::status::joined;
use super::{find, remote};
use crate::Cri;
use crate::runtime::BoxStream;

/// Events kept for a slow subscriber before it misses some.
const BACKLOG: usize = 256;

/// The channel of events the lifecycle calls send.
pub struct Events(broadcast::Sender<cri::ContainerEventResponse>);

impl Default for Events {
    fn default() -> Events {
        Events(broadcast::channel(BACKLOG).0)
    }
}

/// The pod status attached to events.
fn pod_status(cri: &Cri, pod: &str) -> Option<cri::PodSandboxStatus> {
    crate::sandbox::status::status(cri, pod, false)
        .ok()
        .and_then(|r| r.status)
}

/// Sends an event about container `id` to the current subscribers (none: nothing is done).
pub async fn emit(cri: &Cri, id: &str, kind: cri::ContainerEventType) {
    let sender = &cri.containers.events.0;
    if sender.receiver_count() == 0 {
        return;
    }
    if let Some(event) = event(cri, id, kind).await {
        let _ = sender.send(event);
    }
}

/// Sends a deleted event for a container whose record is gone (its status as last seen).
pub fn emit_deleted(cri: &Cri, status: cri::ContainerStatus, pod: &str) {
    let sender = &cri.containers.events.0;
    if sender.receiver_count() == 0 {
        return;
    }
    let _ = sender.send(cri::ContainerEventResponse {
        container_id: status.id.clone(),
        container_event_type: cri::ContainerEventType::ContainerDeletedEvent as i32,
        created_at: now_ns(),
        pod_sandbox_status: pod_status(cri, pod),
        containers_statuses: vec![status],
    });
}

async fn event(
    cri: &Cri,
    id: &str,
    kind: cri::ContainerEventType,
) -> Option<cri::ContainerEventResponse> {
    let j = joined(cri, id).await.ok()?;
    Some(cri::ContainerEventResponse {
        container_id: j.record.id.clone(),
        container_event_type: kind as i32,
        created_at: now_ns(),
        pod_sandbox_status: pod_status(cri, &j.record.sandbox_id),
        containers_statuses: vec![j.status()],
    })
}

/// GetContainerEvents: the stream, until the client goes away.
pub async fn subscribe(
    cri: std::sync::Arc<Cri>,
) -> Result<BoxStream<cri::ContainerEventResponse>, Status> {
    let own = cri.containers.events.0.subscribe();
    let exits = EventsClient::new(
        cri.containers
            .channel(&cri, berth_api::Service::Tasks)
            .await?,
    )
    .subscribe(events::SubscribeRequest {
        filters: vec![format!(
            "namespace=={},topic==/tasks/exit",
            crate::NAMESPACE
        )],
    })
    .await
    .map_err(|s| remote("tasks", s))?
    .into_inner();
    let own = futures::stream::unfold(own, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((Ok(e), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let stopped = exits.filter_map(move |envelope| {
        let cri = cri.clone();
        async move {
            let envelope = envelope.ok()?;
            let Some(events::envelope::Event::TaskExit(exit)) = envelope.event else {
                return None;
            };
            if !exit.exec_id.is_empty() || find(&cri, &exit.container_id).await.is_err() {
                return None;
            }
            event(
                &cri,
                &exit.container_id,
                cri::ContainerEventType::ContainerStoppedEvent,
            )
            .await
            .map(Ok)
        }
    });
    Ok(Box::pin(futures::stream::select(own, stopped)))
}
