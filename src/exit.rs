//! Exit codes: 0 ok, 2 bad usage or bad input, 1 anything else.

/// An error that is the user's to fix: bad flags, bad config, bad input. Exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn code_for(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<UsageError>().is_some()
        || err.downcast_ref::<crate::config::ConfigError>().is_some()
        || err
            .downcast_ref::<crate::submission::InvalidInput>()
            .is_some()
        || err.downcast_ref::<crate::replay::ReplayBusy>().is_some()
    {
        2
    } else {
        1
    }
}
