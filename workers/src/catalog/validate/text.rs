//! The text checks' compiled forms: the `regex` check and the refusal patterns.

use regex::{Regex, RegexBuilder};

use super::ValidateConfigError;

/// A regex's compile error on one line: the `error: ...` part of the crate's report.
fn regex_reason(pattern: &str, err: &regex::Error) -> String {
    let why = match err {
        regex::Error::Syntax(report) => report
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .unwrap_or(report.as_str())
            .to_owned(),
        other => other.to_string(),
    };
    format!("invalid regex {pattern:?}: {why}")
}

pub(super) fn compile_regex(pattern: &str) -> Result<Regex, ValidateConfigError> {
    Regex::new(pattern).map_err(|e| ValidateConfigError::new("regex", regex_reason(pattern, &e)))
}

/// One refusal pattern: matched case-insensitively, both as a literal substring and (when it
/// is a valid regex) as a regex, so `"I can't help"` and `"i (can't|won't) help"` both work.
pub(super) struct Refusal {
    pattern: String,
    re: Regex,
}

impl Refusal {
    pub(super) fn is_match(&self, content: &str) -> bool {
        self.re.is_match(content)
    }

    pub(super) fn pattern(&self) -> &str {
        &self.pattern
    }
}

pub(super) fn compile_refusals(patterns: &[String]) -> Result<Vec<Refusal>, ValidateConfigError> {
    patterns
        .iter()
        .enumerate()
        .map(|(i, pattern)| {
            let key = || format!("refusal_patterns[{i}]");
            if pattern.trim().is_empty() {
                return Err(ValidateConfigError::new(
                    &key(),
                    "empty pattern would reject every output",
                ));
            }
            let literal = regex::escape(pattern);
            let build = |src: &str| RegexBuilder::new(src).case_insensitive(true).build();
            let re = build(&format!("(?:{literal})|(?:{pattern})"))
                .or_else(|_| build(&literal))
                .map_err(|e| ValidateConfigError::new(&key(), regex_reason(pattern, &e)))?;
            if re.is_match("") {
                return Err(ValidateConfigError::new(
                    &key(),
                    format!("{pattern:?} matches the empty string and would reject every output"),
                ));
            }
            Ok(Refusal {
                pattern: pattern.clone(),
                re,
            })
        })
        .collect()
}
