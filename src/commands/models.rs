//! `batchyard models [resume|pause NAME]`: the catalog with each model's live health.

use std::collections::BTreeMap;
use std::path::Path;

use batchyard_workers::call::health::ModelState;
use serde_json::json;

use crate::app::App;
use crate::cli::{ModelsAction, ModelsArgs};
use crate::error::UsageError;

fn describe(state: &ModelState) -> String {
    match state {
        ModelState::Healthy => "healthy".into(),
        ModelState::HalfOpen => "half_open (probing)".into(),
        ModelState::CoolingDown { until_ms } => {
            let now = batchyard_jobs::batch::now_millis();
            format!(
                "cooling_down ({}s left)",
                until_ms.saturating_sub(now).div_ceil(1000)
            )
        }
        ModelState::Paused { reason, .. } => format!("paused: {reason}"),
    }
}

pub async fn models(
    config: Option<&Path>,
    args: &ModelsArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if let Some(ModelsAction::Catalog { provider, json }) = &args.action {
        return super::model_catalog::list(provider.as_deref(), *json || args.json);
    }
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, true, "models").await?;
    let catalog = &app.settings.catalog;
    if let Some(action) = &args.action {
        let (ModelsAction::Resume { model } | ModelsAction::Pause { model, .. }) = action else {
            return Ok(());
        };
        if catalog.model(model).is_none() {
            let known: Vec<String> = catalog.model_keys().into_iter().collect();
            return Err(UsageError(format!(
                "unknown model {model:?}; configured models: {}",
                known.join(", ")
            ))
            .into());
        }
        match action {
            ModelsAction::Resume { model } => {
                app.health.resume(model).await?;
                println!("model {model} resumed for every worker");
            }
            ModelsAction::Pause { model, reason } => {
                app.health.pause(model, reason).await?;
                println!(
                    "model {model} paused for every worker until `batchyard models resume {model}`"
                );
            }
            ModelsAction::Catalog { .. } => {}
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    for m in catalog.models() {
        let state = app.health.state(&m.key).await?;
        rows.push((m, state));
    }
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(m, state)| {
                let (provider_rpm, provider_tpm) = provider_limit(catalog, &m.provider);
                json!({
                    "model": m.key, "provider": m.provider, "name": m.name, "tier": m.tier,
                    "input_usd_per_mtok": m.input_usd_per_mtok, "output_usd_per_mtok": m.output_usd_per_mtok,
                    "context_window": m.context_window, "capabilities": m.capabilities,
                    "rpm": m.rpm, "tpm": m.tpm,
                    "provider_rpm": provider_rpm, "provider_tpm": provider_tpm,
                    "state": state.name(), "detail": describe(state),
                    "catalog": app.settings.model_catalog.get(&m.key),
                })
            })
            .collect();
        println!(
            "{}",
            crate::batch_view::json_line(&json!({ "models": list }))
        );
        return Ok(());
    }
    println!(
        "{:<12} {:<10} {:<16} {:>4} {:>9} {:>9} {:>8} {:>8} {:>10}  STATE",
        "MODEL", "PROVIDER", "NAME", "TIER", "IN/MTOK", "OUT/MTOK", "CONTEXT", "RPM", "TPM"
    );
    let mut provider_wide = false;
    for (m, state) in rows {
        let (provider_rpm, provider_tpm) = provider_limit(catalog, &m.provider);
        let rpm = limit(m.rpm.map(u64::from), provider_rpm.map(u64::from));
        let tpm = limit(m.tpm, provider_tpm);
        provider_wide |= rpm.ends_with('*') || tpm.ends_with('*');
        println!(
            "{:<12} {:<10} {:<16} {:>4} {:>9.2} {:>9.2} {:>8} {:>8} {:>10}  {}",
            m.key,
            m.provider,
            m.name,
            m.tier,
            m.input_usd_per_mtok,
            m.output_usd_per_mtok,
            m.context_window,
            rpm,
            tpm,
            describe(&state)
        );
    }
    if provider_wide {
        println!("* the provider's account-wide limit (the model sets none of its own)");
    }
    let from_catalog = &app.settings.model_catalog;
    if !from_catalog.is_empty()
        && let Ok(shipped) = batchyard_workers::catalog::shipped::ShippedCatalog::get()
    {
        let named: Vec<String> = from_catalog
            .iter()
            .map(|(model, entry)| format!("{model} ({entry})"))
            .collect();
        println!(
            "from the shipped catalog where the config sets no price: {}; {}",
            named.join(", "),
            super::model_catalog::provenance(shipped)
        );
    }
    Ok(())
}

fn provider_limit(
    catalog: &batchyard_workers::catalog::Catalog,
    provider: &str,
) -> (Option<u32>, Option<u64>) {
    catalog.provider_limits(provider).unwrap_or_default()
}

/// A model's own limit, else its provider's account-wide one (marked `*`), else `-`.
fn limit(model: Option<u64>, provider: Option<u64>) -> String {
    match (model, provider) {
        (Some(n), _) => n.to_string(),
        (None, Some(n)) => format!("{n}*"),
        (None, None) => "-".into(),
    }
}
