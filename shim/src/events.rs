//! The shim's task events: numbered from 1, kept until a client acknowledges them (by asking
//! for the events after a later sequence number), and pushed to every connected subscriber.
//!
//! Exit events are never dropped; other events are dropped oldest first beyond [`KEEP`].

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use berth_api::berth::events::v1::{Envelope, envelope::Event};
use berth_api::berth::shim::v1::EventsResponse;
use tokio::sync::mpsc;

/// How many unacknowledged non-exit events are kept.
const KEEP: usize = 1024;

#[derive(Default)]
struct State {
    next: u64,
    kept: VecDeque<EventsResponse>,
    subscribers: Vec<mpsc::UnboundedSender<EventsResponse>>,
    closed: bool,
}

/// The event log of one shim.
pub struct Events {
    namespace: String,
    state: Mutex<State>,
}

fn is_exit(e: &EventsResponse) -> bool {
    matches!(
        e.envelope.as_ref().and_then(|e| e.event.as_ref()),
        Some(Event::TaskExit(_))
    )
}

impl Events {
    /// An empty log for events of `namespace`.
    pub fn new(namespace: &str) -> Events {
        Events {
            namespace: namespace.to_owned(),
            state: Mutex::new(State {
                next: 1,
                ..State::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `event` under `topic` and sends it to every subscriber.
    pub fn publish(&self, topic: &str, event: Event) {
        let mut state = self.state();
        let response = EventsResponse {
            sequence: state.next,
            envelope: Some(Envelope {
                timestamp: Some(SystemTime::now().into()),
                namespace: self.namespace.clone(),
                topic: topic.to_owned(),
                event: Some(event),
            }),
        };
        state.next += 1;
        state
            .subscribers
            .retain(|s| s.send(response.clone()).is_ok());
        state.kept.push_back(response);
        let others = state.kept.iter().filter(|e| !is_exit(e)).count();
        if others > KEEP
            && let Some(i) = state.kept.iter().position(|e| !is_exit(e))
        {
            state.kept.remove(i);
        }
    }

    /// Forgets the events up to `after` and returns a receiver of the later kept ones
    /// followed by every new one.
    pub fn subscribe(&self, after: u64) -> mpsc::UnboundedReceiver<EventsResponse> {
        let mut state = self.state();
        state.kept.retain(|e| e.sequence > after);
        let (tx, rx) = mpsc::unbounded_channel();
        for e in &state.kept {
            let _ = tx.send(e.clone());
        }
        if !state.closed {
            state.subscribers.push(tx);
        }
        rx
    }

    /// Ends every subscription (the shim is exiting).
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.subscribers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::berth::events::v1::{TaskExit, TaskStart};

    #[test]
    fn replay_after_acknowledged_sequence() {
        let events = Events::new("default");
        events.publish(
            "/tasks/start",
            Event::TaskStart(TaskStart {
                container_id: "c".into(),
                pid: 1,
            }),
        );
        events.publish(
            "/tasks/exit",
            Event::TaskExit(TaskExit {
                container_id: "c".into(),
                ..TaskExit::default()
            }),
        );
        let mut rx = events.subscribe(1);
        let first = rx.try_recv().expect("kept exit");
        assert_eq!(first.sequence, 2);
        assert!(rx.try_recv().is_err());
        events.publish("/tasks/start", Event::TaskStart(TaskStart::default()));
        assert_eq!(rx.try_recv().expect("live event").sequence, 3);
    }
}
