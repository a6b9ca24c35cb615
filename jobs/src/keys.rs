//! Every Redis key and object-store path, built in one place. No other file writes a `by:`
//! key or a `batches/…`, `files/…`, `api/…` or `cache/…` path by hand.
//!
//! The names are a storage format: live batches must survive an upgrade, so each one stays
//! exactly as it is (the test below pins them all). Keys of one thing share a Redis Cluster
//! hash tag (`{…}`) so a script can touch them together. Object paths are slash-separated and
//! relative to the store's root (`ResultStore::path_of` puts them under its prefix).
//!
//! Redis:
//! - queue `<q>`: `by:{<q>}:stream|enq|delayed|dead|lost`, `by:{<q>}:staged:<batch>`,
//!   `by:{<q>}:parked:<batch>`; the claim order (fair share): `by:{<q>}:fair:b|w|n|prios|vt`,
//!   `by:{<q>}:fair:p:<prio>`, `by:{<q>}:fair:pt:<prio>:<tenant>`, `by:{<q>}:fair:s:<10 s slot>`
//! - ledger: `by:batches` (index; written on its own, never in one command with a batch's
//!   keys), `by:batch:{<id>}` and its `:settled`, `:final`, `:resv`,
//!   `:offload`; a tenant's own index `by:tenant:{<tenant>}:batches` (written on its own too)
//!   and how far its one-time backfill got, `by:tenants:backfill`
//! - uploads being read by a batch's creation: `by:upload:{<file id>}:readers`
//! - real-time throughput: `by:realtime_rate`
//! - adequacy: `by:adequacy:{<task>}`; health: `by:health:{<model>}` and `:probe`, `:budget`
//! - limiter: `{by:lim}:model:<key>`, `{by:lim}:provider:<key>`
//! - API queue history: `by:api:queue_history:{<queue>}`
//! - pipelines: `by:pipeline:{<name>}:seen|runs|lock|last_tick|last_success|tick:<s>|manual:<id>`
//! - retention: `by:gc:lease` (one collector at a time across the fleet)
//!
//! Objects: `batches/<id>/…` (result segments, legacy per-item results, input chunks, output, errors, manifest, submit probe),
//! `files/<id>.jsonl|.json` (API uploads), `api/batches/<id>.json`, `api/readyz`, `check/<id>.probe`,
//! `cache/v1/<shard>/<sha256>.json`, `pipelines/<name>/batches/<id>.json` (origin records),
//! `pipelines/<name>/seen-snapshot.json` (origin records compacted before retention removes them).

/// The namespace of every Redis key.
pub const PREFIX: &str = "by";

// ---- queue ----

fn queue_key(queue: &str, part: &str) -> String {
    format!("{PREFIX}:{{{queue}}}:{part}")
}

pub fn queue_stream(queue: &str) -> String {
    queue_key(queue, "stream")
}

/// Per-batch high-water mark of applied chunks.
pub fn queue_enq(queue: &str) -> String {
    queue_key(queue, "enq")
}

pub fn queue_delayed(queue: &str) -> String {
    queue_key(queue, "delayed")
}

pub fn queue_dead(queue: &str) -> String {
    queue_key(queue, "dead")
}

pub fn queue_lost(queue: &str) -> String {
    queue_key(queue, "lost")
}

/// A batch's jobs, staged until its whole input is in.
pub fn queue_staged(queue: &str, batch_id: &str) -> String {
    queue_key(queue, &format!("staged:{batch_id}"))
}

/// The prefix the refill script builds the claim order's per-level keys from
/// ([`queue_fair_level`], [`queue_fair_tenant`], [`queue_fair_served`]): they are chosen as it
/// runs, so they are not passed one by one. The hash tag keeps them in the queue's slot.
pub fn queue_fair_base(queue: &str) -> String {
    queue_key(queue, "fair:")
}

/// Published backlogs (hash, staging id -> `<priority>|<tenant>`): a `staged:<id>` list
/// named here is in the claim order, so workers draw from it.
pub fn queue_fair_batches(queue: &str) -> String {
    queue_key(queue, "fair:b")
}

/// Tenant weights (hash, tenant -> weight), as the last submit's config set them.
pub fn queue_fair_weights(queue: &str) -> String {
    queue_key(queue, "fair:w")
}

/// Jobs waiting in published backlogs (a counter), so depth stays exact without a scan.
pub fn queue_fair_waiting(queue: &str) -> String {
    queue_key(queue, "fair:n")
}

/// Priorities with work (zset, score = priority).
pub fn queue_fair_prios(queue: &str) -> String {
    queue_key(queue, "fair:prios")
}

/// Virtual times kept while a level or tenant has no work (hash `p:<prio>`,
/// `t:<prio>:<tenant>` -> virtual time), so coming back gains no credit.
pub fn queue_fair_clock(queue: &str) -> String {
    queue_key(queue, "fair:vt")
}

/// Tenants with work at a priority (zset, score = the tenant's virtual time).
pub fn queue_fair_level(queue: &str, priority: i32) -> String {
    queue_key(queue, &format!("fair:p:{priority}"))
}

/// One tenant's backlogs at a priority (zset, score = the backlog's virtual time).
pub fn queue_fair_tenant(queue: &str, priority: i32, tenant: &str) -> String {
    queue_key(queue, &format!("fair:pt:{priority}:{tenant}"))
}

/// Jobs dispatched in one 10-second slot (hash `b:<staging id>` / `t:<tenant>` -> count;
/// expires after two minutes): the share each batch and tenant is getting.
pub fn queue_fair_served(queue: &str, slot: u64) -> String {
    queue_key(queue, &format!("fair:s:{slot}"))
}

/// A batch's jobs parked for the offload lane (a hash, job id -> job JSON): out of the
/// stream while a provider batch API answers them.
pub fn queue_parked(queue: &str, batch_id: &str) -> String {
    queue_key(queue, &format!("parked:{batch_id}"))
}

// ---- ledger ----

/// The index of every batch.
pub const BATCH_INDEX: &str = "by:batches";

/// One tenant's batches (zset, score = creation time, as `by:batches`): a tenant's listing
/// reads only its own.
pub fn tenant_batches(tenant: &str) -> String {
    format!("{PREFIX}:tenant:{{{tenant}}}:batches")
}

/// The one-time backfill of the tenant indexes from `by:batches` (batches created before
/// them): the `ZSCAN` cursor it reached, or `done`.
pub const TENANT_BACKFILL: &str = "by:tenants:backfill";

pub fn batch_record(id: &str) -> String {
    format!("{PREFIX}:batch:{{{id}}}")
}

pub fn batch_settled(id: &str) -> String {
    format!("{}:settled", batch_record(id))
}

/// The finalizer's lease.
pub fn batch_final(id: &str) -> String {
    format!("{}:final", batch_record(id))
}

/// The offload lane's lease: who submits, polls and ingests the batch's provider batches.
pub fn batch_offload_lease(id: &str) -> String {
    format!("{}:offload", batch_record(id))
}

/// The offload lane's account of a model's enqueued tokens (a hash: `<batch>/<provider batch
/// key>` -> estimated prompt tokens, plus `held_until`): the provider's quota on tokens in
/// provider batches not yet ended is shared by every batch sending to that model.
pub fn offload_enqueued(model: &str) -> String {
    format!("by:offload:{{{model}}}:enqueued")
}

/// Where a batch's end notification stands (a hash: `attempts`, `next_at`, `done`).
pub fn batch_notify(id: &str) -> String {
    format!("{}:notify", batch_record(id))
}

pub fn batch_resv(id: &str) -> String {
    format!("{}:resv", batch_record(id))
}

// ---- routing and health ----

/// The real-time throughput measured across the fleet (a hash of per-minute fields): what
/// the offload lane's deadline is judged on where a model declares no limits.
pub const REALTIME_RATE: &str = "by:realtime_rate";

pub fn adequacy(task: &str) -> String {
    format!("{PREFIX}:adequacy:{{{task}}}")
}

/// Every adequacy key, for `SCAN MATCH`.
pub const ADEQUACY_PATTERN: &str = "by:adequacy:*";

pub fn health(model: &str) -> String {
    format!("{PREFIX}:health:{{{model}}}")
}

pub fn health_probe(model: &str) -> String {
    format!("{}:probe", health(model))
}

pub fn health_budget(model: &str) -> String {
    format!("{}:budget", health(model))
}

// ---- limiter ----

/// One limiter scope's key: `{<prefix>:lim}:<scope>` (the prefix is [`PREFIX`] in production;
/// the common hash tag puts every limiter key in one slot).
pub fn limiter(prefix: &str, scope: &str) -> String {
    format!("{{{prefix}:lim}}:{scope}")
}

pub fn limiter_model_scope(model_key: &str) -> String {
    format!("model:{model_key}")
}

pub fn limiter_provider_scope(provider_key: &str) -> String {
    format!("provider:{provider_key}")
}

// ---- API and pipelines ----

pub fn api_queue_history(queue: &str) -> String {
    format!("{PREFIX}:api:queue_history:{{{queue}}}")
}

fn pipeline(name: &str, part: &str) -> String {
    format!("{PREFIX}:pipeline:{{{name}}}:{part}")
}

/// Document id -> fingerprint already submitted.
pub fn pipeline_seen(name: &str) -> String {
    pipeline(name, "seen")
}

pub fn pipeline_runs(name: &str) -> String {
    pipeline(name, "runs")
}

pub fn pipeline_lock(name: &str) -> String {
    pipeline(name, "lock")
}

pub fn pipeline_last_tick(name: &str) -> String {
    pipeline(name, "last_tick")
}

pub fn pipeline_last_success(name: &str) -> String {
    pipeline(name, "last_success")
}

/// The claim of one trigger; `trigger` is [`pipeline_tick`] or [`pipeline_manual`].
pub fn pipeline_trigger(name: &str, trigger: &str) -> String {
    pipeline(name, trigger)
}

/// A scheduled tick's trigger (unix seconds).
pub fn pipeline_tick(unix_secs: i64) -> String {
    format!("tick:{unix_secs}")
}

/// A manual run's trigger.
pub fn pipeline_manual(id: &str) -> String {
    format!("manual:{id}")
}

// ---- retention ----

/// The batch creations reading an uploaded file (zset, batch id -> when it started): retention
/// keeps a file someone is reading, and a creation re-checks the file after registering here.
pub fn upload_readers(file_id: &str) -> String {
    format!("{PREFIX}:upload:{{{file_id}}}:readers")
}

/// The retention collector's lease: one worker of a fleet collects at a time.
pub const GC_LEASE: &str = "by:gc:lease";

// ---- object store ----

pub fn batch_dir(batch_id: &str) -> String {
    format!("batches/{batch_id}")
}

pub fn results_dir(batch_id: &str) -> String {
    format!("batches/{batch_id}/results")
}

pub fn result(batch_id: &str, job_id: &str) -> String {
    format!("batches/{batch_id}/results/{job_id}.json")
}

/// Where a batch's result segments are: JSONL objects of many outcomes each.
pub fn segments_dir(batch_id: &str) -> String {
    format!("batches/{batch_id}/segments")
}

/// One result segment: `writer` names the process (or step) that wrote it, `seq` counts its
/// segments, so no two writers ever pick the same name.
pub fn segment(batch_id: &str, writer: &str, seq: u64) -> String {
    format!("batches/{batch_id}/segments/{writer}-{seq:08}.jsonl")
}

pub fn input_dir(batch_id: &str) -> String {
    format!("batches/{batch_id}/input")
}

pub fn input_chunk(batch_id: &str, chunk_no: u64) -> String {
    format!("batches/{batch_id}/input/{chunk_no:08}.jsonl")
}

pub fn output(batch_id: &str) -> String {
    format!("batches/{batch_id}/output.jsonl")
}

pub fn errors(batch_id: &str) -> String {
    format!("batches/{batch_id}/errors.jsonl")
}

pub fn manifest(batch_id: &str) -> String {
    format!("batches/{batch_id}/manifest.json")
}

/// What `submit` writes to prove the store takes writes before it enqueues anything.
pub fn submit_probe(batch_id: &str) -> String {
    format!("batches/{batch_id}/.submit-probe")
}

/// An uploaded file's content (API).
pub fn upload_content(file_id: &str) -> String {
    format!("files/{file_id}.jsonl")
}

/// An uploaded file's metadata (API).
pub fn upload_meta(file_id: &str) -> String {
    format!("files/{file_id}.json")
}

/// Where the API's views of batches are (retention lists it for records no batch has).
pub fn api_batches_dir() -> &'static str {
    "api/batches"
}

/// The API's view of a batch.
pub fn api_batch(batch_id: &str) -> String {
    format!("api/batches/{batch_id}.json")
}

/// The offload lane's state of a batch: its provider batches.
pub fn offload_state(batch_id: &str) -> String {
    format!("batches/{batch_id}/offload/state.json")
}

/// The job ids one provider batch of the offload lane holds, one a line.
pub fn offload_jobs(batch_id: &str, provider_batch_key: &str) -> String {
    format!("batches/{batch_id}/offload/{provider_batch_key}.jobs")
}

/// A pipeline's origin records, one per batch it submitted.
pub fn pipeline_records_dir(pipeline: &str) -> String {
    format!("pipelines/{pipeline}/batches")
}

/// One origin record of a pipeline (the copy beside the batch is `batches/<id>/pipeline.json`).
pub fn pipeline_record(pipeline: &str, batch_id: &str) -> String {
    format!("pipelines/{pipeline}/batches/{batch_id}.json")
}

/// The origin record written beside its batch.
pub fn batch_pipeline_origin(batch_id: &str) -> String {
    format!("batches/{batch_id}/pipeline.json")
}

/// Origin records folded into one object before retention removes them, so a pipeline's
/// seen-state can be rebuilt without them.
pub fn pipeline_snapshot(pipeline: &str) -> String {
    format!("pipelines/{pipeline}/seen-snapshot.json")
}

/// What `batchyard check` writes, reads back and deletes to see that the store works.
pub fn check_probe(probe_id: &str) -> String {
    format!("check/{probe_id}.probe")
}

/// What `/readyz` reads to see that the store answers.
pub const API_READYZ: &str = "api/readyz";

/// The result cache's layout version; also hashed into every cache key.
pub const CACHE_VERSION: &str = "v1";

/// A cached completion, sharded by the first two hex digits of its key, as path parts: each
/// is one part (a `/` inside is escaped, not a separator), so no key can leave `cache/`.
pub fn cache_entry(key_hex: &str) -> [String; 4] {
    let shard = key_hex.get(..2).filter(|s| s.len() == 2).unwrap_or("__");
    [
        "cache".to_owned(),
        CACHE_VERSION.to_owned(),
        shard.to_owned(),
        format!("{key_hex}.json"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name as it is today: changing one strands live batches and state.
    #[test]
    fn every_key_and_path_is_pinned() {
        let pinned: &[(String, &str)] = &[
            (queue_stream("q"), "by:{q}:stream"),
            (queue_enq("q"), "by:{q}:enq"),
            (queue_delayed("q"), "by:{q}:delayed"),
            (queue_parked("q", "b"), "by:{q}:parked:b"),
            (queue_dead("q"), "by:{q}:dead"),
            (queue_lost("q"), "by:{q}:lost"),
            (queue_staged("q", "b1"), "by:{q}:staged:b1"),
            (queue_fair_base("q"), "by:{q}:fair:"),
            (queue_fair_batches("q"), "by:{q}:fair:b"),
            (queue_fair_weights("q"), "by:{q}:fair:w"),
            (queue_fair_waiting("q"), "by:{q}:fair:n"),
            (queue_fair_prios("q"), "by:{q}:fair:prios"),
            (queue_fair_clock("q"), "by:{q}:fair:vt"),
            (queue_fair_level("q", -10), "by:{q}:fair:p:-10"),
            (queue_fair_tenant("q", 0, "t"), "by:{q}:fair:pt:0:t"),
            (queue_fair_served("q", 7), "by:{q}:fair:s:7"),
            (BATCH_INDEX.to_owned(), "by:batches"),
            (tenant_batches("acme"), "by:tenant:{acme}:batches"),
            (TENANT_BACKFILL.to_owned(), "by:tenants:backfill"),
            (upload_readers("file-1"), "by:upload:{file-1}:readers"),
            (batch_record("b1"), "by:batch:{b1}"),
            (batch_settled("b1"), "by:batch:{b1}:settled"),
            (batch_final("b1"), "by:batch:{b1}:final"),
            (batch_offload_lease("b1"), "by:batch:{b1}:offload"),
            (offload_enqueued("small"), "by:offload:{small}:enqueued"),
            (batch_notify("b1"), "by:batch:{b1}:notify"),
            (batch_resv("b1"), "by:batch:{b1}:resv"),
            (REALTIME_RATE.to_owned(), "by:realtime_rate"),
            (adequacy("summarise"), "by:adequacy:{summarise}"),
            (ADEQUACY_PATTERN.to_owned(), "by:adequacy:*"),
            (health("m"), "by:health:{m}"),
            (health_probe("m"), "by:health:{m}:probe"),
            (health_budget("m"), "by:health:{m}:budget"),
            (PREFIX.to_owned(), "by"),
            (
                limiter(PREFIX, &limiter_model_scope("small")),
                "{by:lim}:model:small",
            ),
            (
                limiter(PREFIX, &limiter_provider_scope("p")),
                "{by:lim}:provider:p",
            ),
            (api_queue_history("q"), "by:api:queue_history:{q}"),
            (pipeline_seen("p"), "by:pipeline:{p}:seen"),
            (pipeline_runs("p"), "by:pipeline:{p}:runs"),
            (pipeline_lock("p"), "by:pipeline:{p}:lock"),
            (pipeline_last_tick("p"), "by:pipeline:{p}:last_tick"),
            (pipeline_last_success("p"), "by:pipeline:{p}:last_success"),
            (
                pipeline_trigger("p", &pipeline_tick(1_700_000_000)),
                "by:pipeline:{p}:tick:1700000000",
            ),
            (
                pipeline_trigger("p", &pipeline_manual("01J")),
                "by:pipeline:{p}:manual:01J",
            ),
            (batch_dir("b1"), "batches/b1"),
            (results_dir("b1"), "batches/b1/results"),
            (result("b1", "j1"), "batches/b1/results/j1.json"),
            (segments_dir("b1"), "batches/b1/segments"),
            (
                segment("b1", "w7", 3),
                "batches/b1/segments/w7-00000003.jsonl",
            ),
            (input_dir("b1"), "batches/b1/input"),
            (input_chunk("b1", 7), "batches/b1/input/00000007.jsonl"),
            (output("b1"), "batches/b1/output.jsonl"),
            (errors("b1"), "batches/b1/errors.jsonl"),
            (manifest("b1"), "batches/b1/manifest.json"),
            (submit_probe("b1"), "batches/b1/.submit-probe"),
            (upload_content("file-1"), "files/file-1.jsonl"),
            (upload_meta("file-1"), "files/file-1.json"),
            (api_batch("batch_1"), "api/batches/batch_1.json"),
            (api_batches_dir().to_owned(), "api/batches"),
            (API_READYZ.to_owned(), "api/readyz"),
            (check_probe("p"), "check/p.probe"),
            (offload_state("b"), "batches/b/offload/state.json"),
            (offload_jobs("b", "w1-m-0"), "batches/b/offload/w1-m-0.jobs"),
            (CACHE_VERSION.to_owned(), "v1"),
            (cache_entry("abcdef").join("/"), "cache/v1/ab/abcdef.json"),
            (cache_entry("a").join("/"), "cache/v1/__/a.json"),
            (GC_LEASE.to_owned(), "by:gc:lease"),
            (pipeline_records_dir("p"), "pipelines/p/batches"),
            (pipeline_record("p", "b1"), "pipelines/p/batches/b1.json"),
            (batch_pipeline_origin("b1"), "batches/b1/pipeline.json"),
            (pipeline_snapshot("p"), "pipelines/p/seen-snapshot.json"),
        ];
        for (built, today) in pinned {
            assert_eq!(built, today);
        }
    }
}
