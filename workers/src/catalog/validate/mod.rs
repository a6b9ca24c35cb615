//! Checks on a task's outputs, configured under `[tasks.<name>.validate]` and compiled once
//! at config load.
//!
//! A [`Validators`] set judges one output (the first choice's content and `finish_reason`)
//! and returns the first [`Failure`], in this order: `finish_reason`, `refusal_patterns`,
//! `min_chars`, `max_chars`, `regex`, `json_schema`, `command` (cheapest first; the command
//! runs last because it starts a process).
//!
//! Security: every validator, the `command` one above all, is built only from the config
//! file through [`Validators::compile`]. Nothing in a request or a document can add,
//! change or select a validator; request data only ever reaches a validator as the output
//! being judged (the command's stdin).
//!
//! - `schema`: the `json_schema` check (a fenced answer allowed).
//! - `text`: the compiled `regex` check and refusal patterns.
//! - `command`: the config-only `command` check (the output on stdin, bounded in time).

mod command;
mod schema;
mod text;

use std::path::Path;

use serde::Deserialize;

pub use command::{CAPTURE_LIMIT, DEFAULT_COMMAND_TIMEOUT};

/// Where a JSON schema comes from: a string is a file path (relative to the config file's
/// folder), anything else (a TOML table, a JSON object, `true`/`false`) is the schema itself.
///
/// `File` comes first because an untagged `Inline(Value)` would also accept a string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SchemaSource {
    File(String),
    Inline(serde_json::Value),
}

/// As written in config under `[tasks.<name>.validate]`; every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// The output must be JSON (optionally in a ```` ```json ```` fence) valid against this schema.
    pub json_schema: Option<SchemaSource>,
    /// The output must contain a match (anchor with `^...$` to match the whole output).
    pub regex: Option<String>,
    /// Bounds on the output's length in Unicode characters (not bytes).
    pub min_chars: Option<usize>,
    pub max_chars: Option<usize>,
    /// The `finish_reason` an output must end with: `"stop"` when absent, `"any"` for no check.
    pub finish_reason: Option<String>,
    /// Case-insensitive substrings or regexes; an output matching one is a refusal and fails.
    pub refusal_patterns: Option<Vec<String>>,
    /// The argv of an executable that gets the output on stdin and passes it on exit 0.
    /// Only ever read from the config file, never from a request.
    pub command: Option<Vec<String>>,
    /// How long the command may run before it is killed and the output fails (default 10).
    pub command_timeout_secs: Option<u64>,
}

/// A `validate` config that can't be compiled: the key (e.g. `validate.regex`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ValidateConfigError {
    /// The config key, prefixed with `validate.`, e.g. `validate.refusal_patterns[1]`.
    pub key: String,
    pub reason: String,
}

impl ValidateConfigError {
    pub(crate) fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: format!("validate.{key}"),
            reason: reason.into(),
        }
    }
}

impl batchyard_jobs::retry::Retryable for ValidateConfigError {}

/// Why an output was rejected: the check (`"json_schema"`, `"regex"`, ...) and a short,
/// lowercase message saying what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {message}")]
pub struct Failure {
    /// One of the `CHECK_*` names.
    pub check: &'static str,
    pub message: String,
}

impl Failure {
    fn new(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            message: message.into(),
        }
    }
}

/// A rejected output is a judgement, not a transient fault: never retry the same call.
impl batchyard_jobs::retry::Retryable for Failure {}

pub const CHECK_FINISH_REASON: &str = "finish_reason";
pub const CHECK_REFUSAL: &str = "refusal_patterns";
pub const CHECK_MIN_CHARS: &str = "min_chars";
pub const CHECK_MAX_CHARS: &str = "max_chars";
pub const CHECK_REGEX: &str = "regex";
pub const CHECK_JSON_SCHEMA: &str = "json_schema";
pub const CHECK_COMMAND: &str = "command";

/// The `finish_reason` required when the config names none.
pub const DEFAULT_FINISH_REASON: &str = "stop";

/// A task's compiled validators; cheap to share (`Send + Sync`), built once per config load.
pub struct Validators {
    /// `None` when the config says `"any"`.
    finish_reason: Option<String>,
    refusals: Vec<text::Refusal>,
    min_chars: Option<usize>,
    max_chars: Option<usize>,
    regex: Option<regex::Regex>,
    schema: Option<schema::JsonSchema>,
    command: Option<command::CommandCheck>,
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validators")
            .field("finish_reason", &self.finish_reason)
            .field("refusal_patterns", &self.refusals.len())
            .field("min_chars", &self.min_chars)
            .field("max_chars", &self.max_chars)
            .field("regex", &self.regex.as_ref().map(regex::Regex::as_str))
            .field("json_schema", &self.schema.is_some())
            .field("command", &self.command)
            .finish()
    }
}

impl Default for Validators {
    /// Only the default check: `finish_reason` must be `"stop"`.
    fn default() -> Self {
        Self {
            finish_reason: Some(DEFAULT_FINISH_REASON.to_owned()),
            refusals: Vec::new(),
            min_chars: None,
            max_chars: None,
            regex: None,
            schema: None,
            command: None,
        }
    }
}

impl Validators {
    /// Compiles everything once: regexes, the JSON schema (read from `base_dir` when it is a
    /// file path), the command (resolved against `base_dir` or `PATH`). Errors name the key.
    pub fn compile(cfg: &ValidateConfig, base_dir: &Path) -> Result<Self, ValidateConfigError> {
        let finish_reason = match cfg.finish_reason.as_deref().map(str::trim) {
            None => Some(DEFAULT_FINISH_REASON.to_owned()),
            Some("") => {
                return Err(ValidateConfigError::new(
                    "finish_reason",
                    "empty; name a finish reason such as \"stop\", or \"any\" to disable the check",
                ));
            }
            Some(any) if any.eq_ignore_ascii_case("any") => None,
            Some(reason) => Some(reason.to_owned()),
        };
        if let (Some(min), Some(max)) = (cfg.min_chars, cfg.max_chars)
            && min > max
        {
            return Err(ValidateConfigError::new(
                "min_chars",
                format!("{min} is greater than max_chars {max}"),
            ));
        }
        let refusals = match &cfg.refusal_patterns {
            Some(patterns) => text::compile_refusals(patterns)?,
            None => Vec::new(),
        };
        let regex = cfg.regex.as_deref().map(text::compile_regex).transpose()?;
        let schema = cfg
            .json_schema
            .as_ref()
            .map(|src| schema::JsonSchema::compile(src, base_dir))
            .transpose()?;
        let command = match (&cfg.command, cfg.command_timeout_secs) {
            (Some(argv), timeout) => Some(command::CommandCheck::compile(argv, timeout, base_dir)?),
            (None, Some(_)) => {
                return Err(ValidateConfigError::new(
                    "command_timeout_secs",
                    "set without validate.command",
                ));
            }
            (None, None) => None,
        };
        Ok(Self {
            finish_reason,
            refusals,
            min_chars: cfg.min_chars,
            max_chars: cfg.max_chars,
            regex,
            schema,
            command,
        })
    }

    /// Judges one output: the chat completion's first choice content and its `finish_reason`.
    ///
    /// A provider that reports no `finish_reason` is not judged on it. Only the `command`
    /// check awaits anything (a child process, bounded by its timeout).
    pub async fn check(&self, content: &str, finish_reason: Option<&str>) -> Result<(), Failure> {
        if let (Some(want), Some(got)) = (&self.finish_reason, finish_reason)
            && want != got
        {
            return Err(Failure::new(
                CHECK_FINISH_REASON,
                format!("finish_reason is {got:?}, expected {want:?}"),
            ));
        }
        if let Some(hit) = self.refusals.iter().find(|r| r.is_match(content)) {
            return Err(Failure::new(
                CHECK_REFUSAL,
                format!("output looks like a refusal (matches {:?})", hit.pattern()),
            ));
        }
        if self.min_chars.is_some() || self.max_chars.is_some() {
            let chars = content.chars().count();
            if let Some(min) = self.min_chars
                && chars < min
            {
                return Err(Failure::new(
                    CHECK_MIN_CHARS,
                    format!("output has {chars} characters, fewer than the minimum {min}"),
                ));
            }
            if let Some(max) = self.max_chars
                && chars > max
            {
                return Err(Failure::new(
                    CHECK_MAX_CHARS,
                    format!("output has {chars} characters, more than the maximum {max}"),
                ));
            }
        }
        if let Some(re) = &self.regex
            && !re.is_match(content)
        {
            return Err(Failure::new(
                CHECK_REGEX,
                format!("output does not match regex {:?}", re.as_str()),
            ));
        }
        if let Some(schema) = &self.schema {
            schema
                .check(content)
                .map_err(|m| Failure::new(CHECK_JSON_SCHEMA, m))?;
        }
        if let Some(command) = &self.command {
            command
                .check(content)
                .await
                .map_err(|m| Failure::new(CHECK_COMMAND, m))?;
        }
        Ok(())
    }

    /// True when nothing beyond the default `finish_reason = "stop"` check (or no check at
    /// all, with `"any"`) is configured.
    pub fn is_empty(&self) -> bool {
        let default_finish = self
            .finish_reason
            .as_deref()
            .is_none_or(|r| r == DEFAULT_FINISH_REASON);
        default_finish
            && self.refusals.is_empty()
            && self.min_chars.is_none()
            && self.max_chars.is_none()
            && self.regex.is_none()
            && self.schema.is_none()
            && self.command.is_none()
    }
}

/// `s` cut to at most `max` characters, with an ellipsis when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}
