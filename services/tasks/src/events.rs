//! Events on tasks.sock: the container events the service makes itself and the task events it
//! relays from its shims, delivered in order to subscribers, each with its own filters.

use std::pin::Pin;

use berth_api::berth::events::v1::envelope::Event;
use berth_api::berth::events::v1::events_server::Events;
use berth_api::berth::events::v1::{Envelope, PublishRequest, PublishResponse, SubscribeRequest};
use berth_api::filters::Filters;
use tokio::sync::broadcast;
use tokio_stream::Stream;

/// How many events a slow subscriber may lag behind before it is cut off.
const BACKLOG: usize = 4096;

/// Fans events out to subscribers; cheap to clone.
#[derive(Clone)]
pub struct Broadcaster {
    tx: broadcast::Sender<Envelope>,
}

impl Default for Broadcaster {
    fn default() -> Self {
        Broadcaster {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

/// The current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

impl Broadcaster {
    /// Publishes `event` in namespace `ns` under `topic`, stamped now.
    pub fn publish(&self, ns: &str, topic: &str, event: Event) {
        self.send(Envelope {
            timestamp: Some(now()),
            namespace: ns.to_owned(),
            topic: topic.to_owned(),
            event: Some(event),
        });
    }

    /// Publishes a complete envelope (a relayed shim event).
    pub fn send(&self, envelope: Envelope) {
        // No subscriber is not an error.
        let _ = self.tx.send(envelope);
    }

    /// A new subscription from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.tx.subscribe()
    }
}

/// The topic an event belongs under.
pub fn topic_of(event: &Event) -> &'static str {
    match event {
        Event::TaskCreate(_) => "/tasks/create",
        Event::TaskStart(_) => "/tasks/start",
        Event::TaskExit(_) => "/tasks/exit",
        Event::TaskOom(_) => "/tasks/oom",
        Event::TaskDelete(_) => "/tasks/delete",
        Event::TaskExecAdded(_) => "/tasks/exec-added",
        Event::TaskExecStarted(_) => "/tasks/exec-started",
        Event::TaskPaused(_) => "/tasks/paused",
        Event::TaskResumed(_) => "/tasks/resumed",
        Event::ContainerCreate(_) => "/containers/create",
        Event::ContainerUpdate(_) => "/containers/update",
        Event::ContainerDelete(_) => "/containers/delete",
        Event::ImageCreate(_) => "/images/create",
        Event::ImageUpdate(_) => "/images/update",
        Event::ImageDelete(_) => "/images/delete",
        Event::SnapshotPrepare(_) => "/snapshots/prepare",
        Event::SnapshotCommit(_) => "/snapshots/commit",
        Event::SnapshotRemove(_) => "/snapshots/remove",
        Event::ContentDelete(_) => "/content/delete",
        Event::NetworkCreate(_) => "/networks/create",
        Event::NetworkDelete(_) => "/networks/delete",
        Event::NetworkConnect(_) => "/networks/connect",
        Event::NetworkDisconnect(_) => "/networks/disconnect",
    }
}

/// The container an event concerns, if any.
pub fn container_of(event: &Event) -> Option<&str> {
    Some(match event {
        Event::TaskCreate(e) => &e.container_id,
        Event::TaskStart(e) => &e.container_id,
        Event::TaskExit(e) => &e.container_id,
        Event::TaskOom(e) => &e.container_id,
        Event::TaskDelete(e) => &e.container_id,
        Event::TaskExecAdded(e) => &e.container_id,
        Event::TaskExecStarted(e) => &e.container_id,
        Event::TaskPaused(e) => &e.container_id,
        Event::TaskResumed(e) => &e.container_id,
        Event::ContainerCreate(e) => &e.container_id,
        Event::ContainerUpdate(e) => &e.container_id,
        Event::ContainerDelete(e) => &e.container_id,
        Event::NetworkConnect(e) => &e.container_id,
        Event::NetworkDisconnect(e) => &e.container_id,
        _ => return None,
    })
}

/// The value of a filter path on an envelope: `topic`, `namespace`, `event.container_id`,
/// `event.exec_id`, `event.name`, `event.image`.
fn field(envelope: &Envelope, path: &[String]) -> Option<String> {
    let event = envelope.event.as_ref();
    match path {
        [f] if f == "topic" => Some(envelope.topic.clone()),
        [f] if f == "namespace" => Some(envelope.namespace.clone()),
        [e, f] if e == "event" => {
            let event = event?;
            match f.as_str() {
                "container_id" => container_of(event).map(str::to_owned),
                "exec_id" => match event {
                    Event::TaskExit(e) => Some(e.exec_id.clone()),
                    Event::TaskDelete(e) => Some(e.exec_id.clone()),
                    Event::TaskExecAdded(e) => Some(e.exec_id.clone()),
                    Event::TaskExecStarted(e) => Some(e.exec_id.clone()),
                    _ => None,
                },
                "name" => match event {
                    Event::ContainerCreate(e) => Some(e.name.clone()),
                    Event::ContainerUpdate(e) => Some(e.name.clone()),
                    _ => None,
                },
                "image" => match event {
                    Event::ContainerCreate(e) => Some(e.image.clone()),
                    Event::ContainerUpdate(e) => Some(e.image.clone()),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// The Events gRPC service of tasks.sock.
pub struct EventsService {
    broadcaster: Broadcaster,
}

impl EventsService {
    /// Serves the events of `broadcaster`.
    pub fn new(broadcaster: Broadcaster) -> Self {
        EventsService { broadcaster }
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<Envelope, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(
        &self,
        request: tonic::Request<PublishRequest>,
    ) -> Result<tonic::Response<PublishResponse>, tonic::Status> {
        let ns = berth_api::namespace::of(request.metadata())?;
        let req = request.into_inner();
        let mut envelope = req
            .envelope
            .ok_or_else(|| tonic::Status::invalid_argument("envelope: required"))?;
        let event = envelope
            .event
            .as_ref()
            .ok_or_else(|| tonic::Status::invalid_argument("envelope.event: required"))?;
        let topic = topic_of(event);
        if req.topic != topic {
            return Err(tonic::Status::invalid_argument(format!(
                "topic {:?} does not match the event: its topic is {topic:?}",
                req.topic
            )));
        }
        envelope.namespace = ns;
        envelope.topic = req.topic;
        if envelope.timestamp.is_none() {
            envelope.timestamp = Some(now());
        }
        self.broadcaster.send(envelope);
        Ok(tonic::Response::new(PublishResponse {}))
    }

    type SubscribeStream = EnvelopeStream;

    async fn subscribe(
        &self,
        request: tonic::Request<SubscribeRequest>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        let filters = Filters::parse(&request.into_inner().filters)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let mut rx = self.broadcaster.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                match rx.recv().await {
                    Ok(envelope) => {
                        if filters.matches_with(|p| field(&envelope, p))
                            && tx.send(Ok(envelope)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(tonic::Status::data_loss(format!(
                                "subscriber too slow: {n} events dropped"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(tonic::Response::new(stream))
    }
}

/// A stream fed by a task given its sending end; the task ends when the receiver is dropped.
pub fn async_stream<T, F, Fut>(
    produce: F,
) -> Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
