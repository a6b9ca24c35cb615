//! `batchyard models catalog [--provider KIND] [--json]`: the shipped model catalog, and how old
//! its prices are.

use anyhow::Context as _;
use batchyard_workers::catalog::shipped::ShippedCatalog;
use serde_json::json;

/// Prices older than this are worth a second look before a big batch.
pub const STALE_AFTER_DAYS: i64 = 90;

/// Days since the catalog's prices were taken (`None` when the date does not read).
pub fn age_days(catalog: &ShippedCatalog) -> Option<i64> {
    let checked = chrono::NaiveDate::parse_from_str(&catalog.checked, "%Y-%m-%d").ok()?;
    Some((chrono::Utc::now().date_naive() - checked).num_days())
}

/// One line saying where the prices come from, how old they are, and whether to refresh.
pub fn provenance(catalog: &ShippedCatalog) -> String {
    let age = age_days(catalog);
    let stale = match age {
        Some(days) if days > STALE_AFTER_DAYS => format!(
            "; older than {STALE_AFTER_DAYS} days: check the providers' price pages, and write \
             current prices in [models.X] (they win over the catalog)"
        ),
        _ => String::new(),
    };
    format!(
        "prices from {}, checked {}{}{stale}",
        catalog.source,
        catalog.checked,
        age.map(|d| format!(" ({d} days ago)")).unwrap_or_default()
    )
}

pub fn list(kind: Option<&str>, as_json: bool) -> anyhow::Result<()> {
    let catalog = ShippedCatalog::get().context("the shipped catalog")?;
    let entries: Vec<_> = catalog
        .entries()
        .filter(|(_, m)| kind.is_none_or(|k| m.kind == k))
        .collect();
    if as_json {
        let models: Vec<_> = entries
            .iter()
            .map(|(name, m)| json!({ "catalog": name, "model": m }))
            .collect();
        let doc = json!({
            "checked": catalog.checked, "source": catalog.source,
            "age_days": age_days(catalog), "models": models,
        });
        println!("{}", crate::batch_view::json_line(&doc));
        return Ok(());
    }
    println!(
        "{:<30} {:<42} {:>4} {:>8} {:>8} {:>8} {:>9}  CAPABILITIES",
        "CATALOG", "NAME", "TIER", "IN/MTOK", "OUT/MTOK", "CACHED", "CONTEXT"
    );
    for (name, m) in &entries {
        let cached = m
            .cached_input_usd_per_mtok
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.3}"));
        println!(
            "{:<30} {:<42} {:>4} {:>8.3} {:>8.3} {:>8} {:>9}  {}",
            name,
            m.name,
            m.tier,
            m.input_usd_per_mtok,
            m.output_usd_per_mtok,
            cached,
            m.context_window,
            m.capabilities.join(",")
        );
    }
    if entries.is_empty() {
        println!("(no entries for that provider kind; kinds: openai, anthropic, gemini, bedrock)");
    }
    println!("{}", provenance(catalog));
    Ok(())
}
