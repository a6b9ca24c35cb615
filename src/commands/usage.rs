//! `batchyard usage`: batches, items and spend per tenant (and per task within it) of the
//! batches created in a period, for chargeback. Exit 2 for a bad period.

use std::collections::BTreeMap;
use std::path::Path;

use crate::app::App;
use crate::cli::UsageArgs;
use crate::error::UsageError;
use crate::usage::{MAX_RECORDS, Period, summarize};

pub async fn usage(
    config: Option<&Path>,
    args: &UsageArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let now = batchyard_jobs::batch::now_secs();
    let period = Period::parse(args.since.as_deref(), args.until.as_deref(), now, "--")
        .map_err(UsageError)?;
    if let Some(name) = &args.tenant
        && settings.tenants.get(name).is_none()
    {
        // A tenant taken out of the config still has its batches on record.
        eprintln!(
            "note: tenant {name:?} is not in [tenants]; showing the batches on record for it"
        );
    }
    let app = App::connect(settings, None, false, "usage").await?;
    // One tenant's: read from its own index, whatever the other tenants have.
    let records = match &args.tenant {
        Some(name) => app.ledger.list_tenant(name, MAX_RECORDS).await?,
        None => app.ledger.list(MAX_RECORDS).await?,
    };
    let truncated = records.len() >= MAX_RECORDS;
    let report = summarize(
        &records,
        period,
        |t| args.tenant.as_deref().is_none_or(|want| want == t),
        truncated,
    );
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
