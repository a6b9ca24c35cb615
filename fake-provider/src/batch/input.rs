//! Validation of an OpenAI batch input file, as OpenAI does it while the batch is
//! `validating`: each line a JSON object with a unique `custom_id`, `method` `POST`, `url` the
//! batch's endpoint and a `body`; one model; at most 50,000 lines. What fails becomes the
//! batch's `errors.data[]` (`code`, `message`, `param`, `line`, 1-based).

use std::collections::HashSet;

use serde_json::{Value, json};

/// OpenAI's limit on the requests of one batch.
pub const MAX_LINES: usize = 50_000;

/// The most validation errors a batch reports.
const MAX_ERRORS: usize = 100;

/// One valid line.
#[derive(Debug, Clone)]
pub struct Line {
    pub custom_id: String,
    pub body: Vec<u8>,
}

fn error(code: &str, message: &str, param: Option<&str>, line: Option<usize>) -> Value {
    json!({"code": code, "message": message, "param": param, "line": line})
}

/// The lines, or the errors that fail the batch.
pub fn validate(content: &[u8], endpoint: &str) -> Result<Vec<Line>, Vec<Value>> {
    let text = String::from_utf8_lossy(content);
    let raw: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    if raw.is_empty() {
        return Err(vec![error(
            "empty_file",
            "The batch input file is empty.",
            None,
            None,
        )]);
    }
    if raw.len() > MAX_LINES {
        return Err(vec![error(
            "too_many_requests",
            &format!(
                "The batch input file has {} requests, more than the maximum of {MAX_LINES}.",
                raw.len()
            ),
            None,
            None,
        )]);
    }
    let (mut lines, mut errors) = (Vec::with_capacity(raw.len()), Vec::new());
    let (mut seen, mut models) = (HashSet::new(), HashSet::new());
    for (number, text) in raw {
        match check(text, endpoint) {
            Ok((line, model)) => {
                if !seen.insert(line.custom_id.clone()) {
                    errors.push(error(
                        "duplicate_custom_id",
                        &format!(
                            "The custom_id {:?} is used by more than one request.",
                            line.custom_id
                        ),
                        Some("custom_id"),
                        Some(number),
                    ));
                }
                models.extend(model);
                lines.push(line);
            }
            Err((code, message, param)) => {
                errors.push(error(code, &message, param, Some(number)));
            }
        }
        if errors.len() >= MAX_ERRORS {
            break;
        }
    }
    if errors.is_empty() && models.len() > 1 {
        errors.push(error(
            "mismatched_model",
            "All requests in a batch must use the same model.",
            Some("body.model"),
            None,
        ));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

type LineError = (&'static str, String, Option<&'static str>);

fn check(text: &str, endpoint: &str) -> Result<(Line, Option<String>), LineError> {
    let Ok(Value::Object(line)) = serde_json::from_str::<Value>(text) else {
        return Err((
            "invalid_json_line",
            "This line is not a valid JSON object.".into(),
            None,
        ));
    };
    let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
        return Err((
            "missing_required_parameter",
            "Missing required parameter: custom_id.".into(),
            Some("custom_id"),
        ));
    };
    if line.get("method").and_then(Value::as_str) != Some("POST") {
        return Err((
            "invalid_method",
            "The method of a batch request must be POST.".into(),
            Some("method"),
        ));
    }
    let url = line.get("url").and_then(Value::as_str).unwrap_or("");
    if url != endpoint {
        return Err((
            "invalid_url",
            format!("The url {url:?} does not match the batch's endpoint {endpoint:?}."),
            Some("url"),
        ));
    }
    let Some(body @ Value::Object(_)) = line.get("body") else {
        return Err((
            "missing_required_parameter",
            "Missing required parameter: body.".into(),
            Some("body"),
        ));
    };
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    Ok((
        Line {
            custom_id: custom_id.to_owned(),
            body: body.to_string().into_bytes(),
        },
        model,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const URL: &str = "/v1/chat/completions";

    fn line(id: &str, url: &str, model: &str) -> String {
        json!({"custom_id": id, "method": "POST", "url": url,
            "body": {"model": model, "messages": []}})
        .to_string()
    }

    #[test]
    fn good_lines_pass() {
        let file = [line("a", URL, "m"), String::new(), line("b", URL, "m")].join("\n");
        let lines = validate(file.as_bytes(), URL).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].custom_id, "b");
    }

    #[test]
    fn each_fault_is_reported_with_its_line() {
        let file = [
            line("a", URL, "m"),
            "not json".into(),
            line("a", URL, "m"),
            line("c", "/v1/embeddings", "m"),
        ]
        .join("\n");
        let errors = validate(file.as_bytes(), URL).unwrap_err();
        let codes: Vec<(&str, u64)> = errors
            .iter()
            .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("invalid_json_line", 2),
                ("duplicate_custom_id", 3),
                ("invalid_url", 4)
            ]
        );
    }

    #[test]
    fn one_model_per_batch_and_at_most_50000_lines() {
        let file = [line("a", URL, "m"), line("b", URL, "n")].join("\n");
        let errors = validate(file.as_bytes(), URL).unwrap_err();
        assert_eq!(errors[0]["code"], "mismatched_model");
        let many: Vec<String> = (0..=MAX_LINES)
            .map(|i| line(&i.to_string(), URL, "m"))
            .collect();
        let errors = validate(many.join("\n").as_bytes(), URL).unwrap_err();
        assert_eq!(errors[0]["code"], "too_many_requests");
        assert_eq!(validate(b"\n\n", URL).unwrap_err()[0]["code"], "empty_file");
    }
}
