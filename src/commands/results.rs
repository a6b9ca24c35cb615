//! `batchyard results BATCH_ID [--errors]`: stream the batch's JSONL to stdout.

use std::collections::BTreeMap;
use std::path::Path;

use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use crate::app::App;
use crate::cli::ResultsArgs;
use crate::error::UsageError;

pub async fn results(
    config: Option<&Path>,
    args: &ResultsArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "results").await?;
    let id = &args.batch_id;
    match app.ledger.get(id).await? {
        None => {
            return Err(UsageError(format!(
                "batch {id} was not found; check the id with `batchyard status`"
            ))
            .into());
        }
        Some(r) if !r.state.is_terminal() => {
            anyhow::bail!(
                "batch {id} is {}; results are written when it completes ({} of {} items settled)",
                r.state.as_str(),
                r.settled(),
                r.counts.total
            );
        }
        Some(_) => {}
    }
    let path = if args.errors {
        app.store.errors_path(id)
    } else {
        app.store.output_path(id)
    };
    let mut stream = app.store.get_stream(&path).await?;
    let mut stdout = tokio::io::stdout();
    while let Some(chunk) = stream.try_next().await? {
        stdout.write_all(&chunk).await?;
    }
    stdout.flush().await?;
    Ok(())
}
