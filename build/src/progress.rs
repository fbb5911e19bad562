//! What a build reports while it runs, for the client to show (plain lines or progress bars).

use std::time::Duration;

/// One thing that happened in a build.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step starts: `[stage 2/7] RUN make`.
    Step {
        /// Unique id of the step in this build.
        id: usize,
        /// The stage's name or number, when the build has several stages.
        stage: Option<String>,
        /// 1-based position in its stage.
        index: usize,
        /// Steps in the stage.
        total: usize,
        /// The instruction as written.
        text: String,
    },
    /// The step was found in the cache.
    Cached {
        /// Step id.
        id: usize,
    },
    /// Output of a RUN step.
    Output {
        /// Step id.
        id: usize,
        /// The bytes, as the process wrote them.
        data: Vec<u8>,
    },
    /// The step finished.
    Done {
        /// Step id.
        id: usize,
        /// How long it took.
        elapsed: Duration,
    },
    /// A remark (a pull, an ignored directive, a warning).
    Note(String),
}

/// Receives a build's events.
pub trait Progress: Send + Sync {
    /// Called for each event, in order per step.
    fn event(&self, event: Event);
}
