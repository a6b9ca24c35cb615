//! Helpers shared by the workers crate's tests: each test file does `mod support;` and uses what
//! it needs, so items one file leaves unused are not dead code. The services (redis-server, the
//! fake provider process) come from `batchyard-testkit`; here, one module per topic:
//!
//! - `adequacy`: stores to run adequacy scenarios against, a counting store, a simulated router;
//! - `fake_provider`: our OpenAI and Anthropic providers pointed at a fake, request builders;
//! - `pool`: an instrumented in-memory queue, a recording handler, a pool run bounded in time.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod adequacy;
pub mod fake_provider;
pub mod pool;
