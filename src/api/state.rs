//! What every handler of the API shares: the app, the limits, the tokens and the samplers'
//! state. A module of its own so that the handlers, children of `api`, import it from a
//! sibling rather than from their parent.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::auth::Tokens;
use super::native::history::QueueHistory;
use crate::app::App;

#[derive(Clone)]
pub struct ApiState {
    pub app: Arc<App>,
    /// Submissions run as tasks of their own; shutdown waits for them.
    pub tasks: TaskTracker,
    pub max_file_bytes: u64,
    /// How long a request body may stall between two chunks.
    pub body_timeout: Duration,
    pub tokens: Tokens,
    /// How long `completion_window: "24h"` really lasts (24 h unless [`super::WINDOW_SECS_ENV`]).
    pub completion_window: Duration,
    /// Queue depth samples of the last hour, filled by [`super::native::history::sample`].
    pub history: QueueHistory,
    /// Pipeline state in Redis; `None` when no pipeline is configured or there is no Redis.
    pub pipelines: Option<crate::scheduler::state::PipelineState>,
}
