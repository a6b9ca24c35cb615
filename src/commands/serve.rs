//! `batchyard serve`: the HTTP API (STUB: being built).

use std::collections::BTreeMap;
use std::path::Path;

use crate::cli::ServeArgs;
use crate::exit::UsageError;

pub async fn serve(
    config: Option<&Path>,
    args: &ServeArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let _ = (config, args, env);
    Err(UsageError("`batchyard serve` is not available in this build yet".into()).into())
}
