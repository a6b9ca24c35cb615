//! # batchyard-jobs: what a job is and where it lives
//!
//! Nothing here knows about LLMs beyond the shape of a chat request.
//!
//! - [`job`]: [`job::Job`] and [`job::Route`], the unit that travels through the queue, and
//!   the stable job id derived from batch id and custom id.
//! - [`batch`]: the batch record, its OpenAI-style states and request counts.
//! - [`priority`]: a batch's strict priority (`high`, `normal`, `low` or a number).
//! - [`input`]: streaming readers for the input formats (OpenAI batch JSONL, document JSONL,
//!   folders, object-store prefixes) with line-numbered validation errors.
//! - [`queue`]: the [`queue::Queue`] trait, an in-process queue and the Redis Streams queue.
//! - [`ledger`]: the [`ledger::Ledger`] trait: counts, spend and state of each batch, with an
//!   exactly-once settlement per job and exactly one finalizer per batch.
//! - [`staging`]: a submission's jobs kept apart until the whole input is in, then published;
//!   what a sweep does with a submit that went silent.
//! - [`storage`]: the object store of results, at the paths [`keys`] names.
//! - [`segments`]: result segments (many outcomes to an object), written by workers and read
//!   back one outcome per job.
//! - [`keys`]: every Redis key and object-store path, built in one place.
//! - [`outcome`]: the output line format (OpenAI batch output plus a `batchyard` object).
//! - [`codes`]: every user-visible error code, defined once.
//! - [`jsonl`]: writing JSON lines with U+2028/U+2029 escaped, so every reader splits alike.
//! - [`redis_conn`]: opening a self-healing Redis connection.
//! - [`error`]: boundary errors with a kind; [`retry::Retryable`] says which are worth retrying.
//! - [`retry`]: the one retry module: full-jitter backoff, bounded attempts and time, server
//!   hints honoured, and the [`retry::Retryable`] trait.

pub mod batch;
pub mod codes;
pub mod error;
pub mod input;
pub mod job;
pub mod jsonl;
pub mod keys;
pub mod ledger;
pub mod outcome;
pub mod priority;
pub mod queue;
pub mod redis_conn;
pub mod retry;
pub mod segments;
pub mod staging;
pub mod storage;
