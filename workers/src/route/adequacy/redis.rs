//! Adequacy evidence shared by every worker through Redis.
//!
//! One hash per task, `by:adequacy:{<task>}` (the task is the hash tag, so one slot), with
//! fields `<level>|<model>|p` and `<level>|<model>|f` holding float counts of passes and
//! fails, where `<level>` is `all` (the task level) or a bucket number. Neither a level nor
//! the `p`/`f` suffix contains `|`, so a field splits unambiguously at its first and last
//! `|` even when a model key contains one. The hash stays small: two fields per model and
//! level, and decay caps the counts, not the number of fields.

use std::collections::HashMap;

use ::redis::{RedisError, Script};
use async_trait::async_trait;
use batchyard_jobs::redis_conn::RedisConn;

use super::{AdequacyError, AdequacyStore, Evidence, Observed};

/// KEYS: the task's hash. ARGV: model, bucket, `p` or `f`, max evidence.
const RECORD_LUA: &str = include_str!("record.lua");

/// The task level's name in field names.
const ALL: &str = "all";

/// What `reset(None)` deletes.
const KEY_PATTERN: &str = batchyard_jobs::keys::ADEQUACY_PATTERN;

/// Keys asked for per SCAN round.
const SCAN_COUNT: usize = 500;

/// SCAN rounds `reset(None)` may take: with [`SCAN_COUNT`], millions of keys, far more than
/// any catalog of tasks; beyond it something is wrong and the caller hears so.
const MAX_SCAN_ROUNDS: usize = 10_000;

fn adequacy_key(task: &str) -> String {
    batchyard_jobs::keys::adequacy(task)
}

fn store_error(e: RedisError) -> AdequacyError {
    AdequacyError::Redis(e.to_string())
}

/// Splits `<level>|<model>|<p or f>`.
fn parse_field(field: &str) -> Option<(&str, &str, &str)> {
    let (level, rest) = field.split_once('|')?;
    let (model, kind) = rest.rsplit_once('|')?;
    Some((level, model, kind))
}

#[derive(Clone)]
pub struct RedisAdequacy {
    conn: RedisConn,
    max_evidence: f64,
    record: Script,
}

impl RedisAdequacy {
    pub fn new(conn: RedisConn, max_evidence: f64) -> Self {
        Self {
            conn,
            max_evidence,
            record: Script::new(RECORD_LUA),
        }
    }

    /// The cap as the script can parse it: an infinite or NaN cap means none.
    fn cap(&self) -> f64 {
        if self.max_evidence.is_finite() {
            self.max_evidence
        } else {
            f64::MAX
        }
    }
}

#[async_trait]
impl AdequacyStore for RedisAdequacy {
    async fn observed(&self, task: &str, bucket: u32) -> Result<Observed, AdequacyError> {
        let mut conn = self.conn.clone();
        // The whole hash: it is small, and one round trip serves both levels.
        let fields: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(adequacy_key(task))
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        let bucket = bucket.to_string();
        let mut observed = Observed::default();
        for (field, value) in &fields {
            let Some((level, model, kind)) = parse_field(field) else {
                continue;
            };
            let level = if level == ALL {
                &mut observed.task
            } else if level == bucket {
                &mut observed.bucket
            } else {
                continue;
            };
            let Ok(count) = value.parse::<f64>() else {
                continue;
            };
            let evidence: &mut Evidence = level.entry(model.to_owned()).or_default();
            match kind {
                "p" => evidence.passes = count,
                "f" => evidence.fails = count,
                _ => {}
            }
        }
        Ok(observed)
    }

    async fn record(
        &self,
        task: &str,
        bucket: u32,
        model: &str,
        passed: bool,
    ) -> Result<(), AdequacyError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .record
            .key(adequacy_key(task))
            .arg(model)
            .arg(bucket)
            .arg(if passed { "p" } else { "f" })
            .arg(self.cap())
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn reset(&self, task: Option<&str>) -> Result<(), AdequacyError> {
        let mut conn = self.conn.clone();
        if let Some(task) = task {
            let _: i64 = ::redis::cmd("DEL")
                .arg(adequacy_key(task))
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            return Ok(());
        }
        // SCAN sees one node's keys: a cluster is scanned master by master.
        let targets = self.conn.scan_targets().await.map_err(store_error)?;
        let mut rounds = 0;
        for target in targets {
            let mut cursor: u64 = 0;
            loop {
                if rounds == MAX_SCAN_ROUNDS {
                    return Err(AdequacyError::Redis(format!(
                        "scanning {KEY_PATTERN} did not finish in {MAX_SCAN_ROUNDS} rounds; delete the keys by hand or retry"
                    )));
                }
                rounds += 1;
                let (next, keys) = self
                    .conn
                    .scan_page(target, cursor, KEY_PATTERN, SCAN_COUNT)
                    .await
                    .map_err(store_error)?;
                // One key per DEL: each task's hash lives in its own slot.
                for key in keys {
                    let _: i64 = ::redis::cmd("DEL")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .map_err(store_error)?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_at_the_first_and_last_bar() {
        assert_eq!(parse_field("all|m|p"), Some(("all", "m", "p")));
        assert_eq!(parse_field("12|a|b|f"), Some(("12", "a|b", "f")));
        assert_eq!(parse_field("all|p"), None);
        assert_eq!(parse_field("junk"), None);
    }

    #[test]
    fn keys_are_tagged_by_task() {
        assert_eq!(adequacy_key("summarise"), "by:adequacy:{summarise}");
    }
}
