//! The `json_schema` check: the output must be JSON (a ```` ```json ```` fence and
//! surrounding whitespace are allowed, as models often fence) and valid against the schema.

use std::path::Path;

use serde_json::Value;

use super::{SchemaSource, ValidateConfigError, clip};

const KEY: &str = "json_schema";
/// How many schema errors a failure reports.
const REPORTED_ERRORS: usize = 3;
/// How long one reported schema error may be, in characters.
const ERROR_CHARS: usize = 200;

pub(super) struct JsonSchema {
    validator: jsonschema::Validator,
}

impl JsonSchema {
    /// Reads (a file path is relative to `base_dir`) and compiles the schema. Remote `$ref`s
    /// are not fetched: this build has no network or file resolver, so they fail here.
    pub(super) fn compile(
        src: &SchemaSource,
        base_dir: &Path,
    ) -> Result<Self, ValidateConfigError> {
        let schema = match src {
            SchemaSource::Inline(value) => value.clone(),
            SchemaSource::File(path) => read_schema(path, base_dir)?,
        };
        let validator = jsonschema::validator_for(&schema).map_err(|e| {
            let message = clip(&e.to_string(), ERROR_CHARS);
            let reason = match e.instance_path().as_str() {
                "" => format!("invalid schema: {message}"),
                at => format!("invalid schema at {at}: {message}"),
            };
            ValidateConfigError::new(KEY, reason)
        })?;
        Ok(Self { validator })
    }

    /// Ok, or a short message: not JSON, or the first few schema errors with their paths.
    pub(super) fn check(&self, content: &str) -> Result<(), String> {
        let instance: Value = serde_json::from_str(strip_fence(content))
            .map_err(|e| format!("output is not JSON: {e}"))?;
        let mut errors = self
            .validator
            .iter_errors(&instance)
            .take(REPORTED_ERRORS + 1);
        let mut reported = Vec::with_capacity(REPORTED_ERRORS);
        for e in errors.by_ref().take(REPORTED_ERRORS) {
            let message = lowercase_first(&clip(&e.to_string(), ERROR_CHARS));
            let path = e.instance_path().as_str();
            reported.push(if path.is_empty() {
                message
            } else {
                format!("{path}: {message}")
            });
        }
        if reported.is_empty() {
            return Ok(());
        }
        if errors.next().is_some() {
            reported.push("and more".to_owned());
        }
        Err(reported.join("; "))
    }
}

fn read_schema(path: &str, base_dir: &Path) -> Result<Value, ValidateConfigError> {
    let full = base_dir.join(path);
    let text = std::fs::read_to_string(&full).map_err(|e| {
        ValidateConfigError::new(
            KEY,
            format!("cannot read schema file {}: {e}", full.display()),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        ValidateConfigError::new(
            KEY,
            format!("schema file {} is not JSON: {e}", full.display()),
        )
    })
}

/// The JSON inside a single ```` ``` ```` / ```` ```json ```` fence, else the trimmed text.
pub(super) fn strip_fence(content: &str) -> &str {
    let trimmed = content.trim();
    let Some(inner) = trimmed
        .strip_prefix("```")
        .and_then(|rest| rest.strip_suffix("```"))
    else {
        return trimmed;
    };
    let Some((info, body)) = inner.split_once('\n') else {
        return trimmed;
    };
    let info = info.trim();
    if info.is_empty() || info.eq_ignore_ascii_case("json") {
        body.trim()
    } else {
        trimmed
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) if first.is_ascii_uppercase() => {
            format!("{}{}", first.to_ascii_lowercase(), chars.as_str())
        }
        _ => s.to_owned(),
    }
}
