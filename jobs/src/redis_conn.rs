//! One way to open a Redis connection: auto-reconnecting, with timeouts that treat a slow
//! Redis as weather (retry) rather than death.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{QueueError, redact};

/// Opens a connection manager that reconnects by itself after drops and restarts.
pub async fn connect(url: &str) -> Result<ConnectionManager, QueueError> {
    let client = redis::Client::open(url).map_err(|e| {
        QueueError::Unavailable(format!("bad redis url: {}", redact(&e.to_string())))
    })?;
    let config = ConnectionManagerConfig::new()
        // A big enqueue on another queue can stall Redis for a while; that is not an error.
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(2));
    let manager = ConnectionManager::new_with_config(client, config).await?;
    Ok(manager)
}
