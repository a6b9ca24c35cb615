//! Helpers shared by the integration tests: each test file does `mod support;` and uses what it
//! needs, so items one file leaves unused are not dead code.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fake_provider;
pub mod pool;
