//! `batchyard watch BATCH_ID` (STUB: being built).

use std::collections::BTreeMap;
use std::path::Path;

use crate::cli::WatchArgs;
use crate::exit::UsageError;

pub async fn watch(
    config: Option<&Path>,
    args: &WatchArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let _ = (config, args, env);
    Err(UsageError("`batchyard watch` is not available in this build yet".into()).into())
}
