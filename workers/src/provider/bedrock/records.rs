//! A Bedrock batch job's records both ways, and its state: each record's `modelInput` (the
//! model's own InvokeModel body: Anthropic Messages with `anthropic_version:
//! bedrock-2023-05-31` for Claude, `messages-v1` for Amazon Nova), each output line back as
//! an OpenAI chat completion with usage or a classified error, and the job's status.

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::{classify, request, response};
use crate::provider::batch::{EndedAs, ItemResult, RemoteState, RemoteStatus};
use crate::provider::{ChatCall, ProviderError};

/// What Claude's InvokeModel body on Bedrock names as its version.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// The body a model family takes in a Bedrock batch record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Anthropic Messages, as Claude's InvokeModel takes it.
    Anthropic,
    /// Amazon Nova's `messages-v1`.
    Nova,
}

/// The family of a model id or inference profile (`us.anthropic.claude-...`, an ARN ending
/// in one), or `None` when batchyard has no batch body for it.
pub fn family(model_id: &str) -> Option<Family> {
    let id = model_id.trim().rsplit('/').next().unwrap_or_default();
    let mut parts = id.split('.');
    let first = parts.next().unwrap_or_default();
    let second = parts.next().unwrap_or_default();
    let is = |vendor: &str, rest: &str| {
        (first == vendor && second.starts_with(rest))
            || id
                .split_once('.')
                .is_some_and(|(_, tail)| tail.starts_with(&format!("{vendor}.{rest}")))
    };
    if is("anthropic", "") {
        Some(Family::Anthropic)
    } else if is("amazon", "nova") {
        Some(Family::Nova)
    } else {
        None
    }
}

/// One record's `modelInput`.
pub(super) fn model_input(
    family: Family,
    model: &str,
    body: &Map<String, Value>,
) -> Result<Value, ProviderError> {
    let call = ChatCall {
        model_name: model,
        body,
        default_max_tokens: None,
    };
    match family {
        Family::Anthropic => {
            let mut input = crate::provider::anthropic::messages_body(call)?;
            // The model is the job's; Bedrock's Claude body has no `metadata`.
            input.remove("model");
            input.remove("metadata");
            input.insert("anthropic_version".into(), json!(ANTHROPIC_VERSION));
            Ok(Value::Object(input))
        }
        Family::Nova => {
            let mut input = request::converse_body(call)?;
            if let Some(Value::Object(config)) = input.get_mut("inferenceConfig") {
                for (from, to) in [("maxTokens", "max_new_tokens"), ("topP", "top_p")] {
                    if let Some(v) = config.remove(from) {
                        config.insert(to.into(), v);
                    }
                }
            }
            input.insert("schemaVersion".into(), json!("messages-v1"));
            Ok(Value::Object(input))
        }
    }
}

pub(super) fn status_of(job: &Value) -> RemoteStatus {
    let n = |f: &str| job[f].as_u64().unwrap_or(0);
    let state = match job["status"].as_str().unwrap_or("") {
        // Some records errored: their errors are in the output with the answers.
        "Completed" | "PartiallyCompleted" => RemoteState::Ended(EndedAs::Completed),
        "Expired" => RemoteState::Ended(EndedAs::Expired),
        "Stopped" => RemoteState::Ended(EndedAs::Cancelled),
        "Failed" => RemoteState::Ended(EndedAs::Failed {
            code: "failed".to_owned(),
            message: job["message"]
                .as_str()
                .unwrap_or("bedrock failed the batch job")
                .to_owned(),
        }),
        "Stopping" => RemoteState::Cancelling,
        _ => RemoteState::Running,
    };
    RemoteStatus {
        state,
        total: n("totalRecordCount"),
        completed: n("successRecordCount"),
        failed: n("errorRecordCount"),
    }
}

/// One output record: an answer, a classified error, or nothing (a record that does not
/// read: its item runs again).
pub(super) fn parse_line(line: &[u8]) -> Option<(String, ItemResult)> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let id = value["recordId"].as_str()?.to_owned();
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        let code = error["errorCode"]
            .as_u64()
            .or_else(|| error["errorCode"].as_str().and_then(|s| s.parse().ok()))
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500);
        let message = error["errorMessage"].as_str().unwrap_or("no message");
        // A record's error carries no AWS name; a 400 is the runtime's ValidationException.
        let body = if code == 400 {
            json!({"__type": "ValidationException", "message": message})
        } else {
            json!({"message": message})
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        return Some((
            id,
            ItemResult::Error(classify(code, &HeaderMap::new(), &body)),
        ));
    }
    let output = value.get("modelOutput")?;
    let bytes = serde_json::to_vec(output).ok()?;
    let parsed = if output.get("content").is_some() {
        let input = value["modelInput"].as_object().cloned().unwrap_or_default();
        crate::provider::anthropic::parse_messages_reply(200, &HeaderMap::new(), &bytes, &input)
    } else {
        let model = value["modelInput"]["model"].as_str().unwrap_or("bedrock");
        response::parse_success(200, &HeaderMap::new(), &nova_usage(output, &bytes), model)
    };
    Some(match parsed {
        Ok(done) => (id, ItemResult::Answer(done.body)),
        Err(e) => (id, ItemResult::Error(e)),
    })
}

/// Nova's InvokeModel names its cache counts `...TokenCount`; Converse's reader wants
/// `...Tokens`.
fn nova_usage(output: &Value, bytes: &[u8]) -> Vec<u8> {
    let usage = &output["usage"];
    if usage.get("cacheReadInputTokenCount").is_none()
        && usage.get("cacheWriteInputTokenCount").is_none()
    {
        return bytes.to_vec();
    }
    let mut output = output.clone();
    if let Some(Value::Object(u)) = output.get_mut("usage") {
        for (from, to) in [
            ("cacheReadInputTokenCount", "cacheReadInputTokens"),
            ("cacheWriteInputTokenCount", "cacheWriteInputTokens"),
        ] {
            if let Some(v) = u.remove(from) {
                u.insert(to.into(), v);
            }
        }
    }
    serde_json::to_vec(&output).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::provider::ProviderErrorKind;

    #[test]
    fn families_come_from_the_model_id() {
        for id in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            "arn:aws:bedrock:us-east-1:1:inference-profile/eu.anthropic.claude-x",
        ] {
            assert_eq!(family(id), Some(Family::Anthropic), "{id}");
        }
        assert_eq!(family("amazon.nova-lite-v1:0"), Some(Family::Nova));
        assert_eq!(family("us.amazon.nova-pro-v1:0"), Some(Family::Nova));
        for id in [
            "meta.llama3-8b-instruct-v1:0",
            "amazon.titan-text-v1",
            "",
            "anthropicx",
        ] {
            assert_eq!(family(id), None, "{id}");
        }
    }

    #[test]
    fn claude_and_nova_records_are_their_native_bodies() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "x", "max_tokens": 50, "top_p": 0.5, "user": "u",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        }))
        .unwrap();
        let claude = model_input(Family::Anthropic, "us.anthropic.claude", &body).unwrap();
        assert_eq!(claude["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(claude["max_tokens"], 50);
        assert!(claude.get("model").is_none() && claude.get("metadata").is_none());
        let nova = model_input(Family::Nova, "amazon.nova-lite-v1:0", &body).unwrap();
        assert_eq!(nova["schemaVersion"], "messages-v1");
        assert_eq!(nova["inferenceConfig"]["max_new_tokens"], 50);
        assert_eq!(nova["inferenceConfig"]["top_p"], 0.5);
        assert_eq!(nova["system"][0]["text"], "be brief");
    }

    #[test]
    fn output_records_become_answers_or_classified_errors() {
        let claude = br#"{"recordId":"a","modelInput":{"max_tokens":5},"modelOutput":{"id":"m","type":"message","role":"assistant","model":"c","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","usage":{"input_tokens":7,"output_tokens":2}}}"#;
        let (id, ItemResult::Answer(body)) = parse_line(claude).unwrap() else {
            panic!("an answer")
        };
        assert_eq!(id, "a");
        assert_eq!(body["choices"][0]["message"]["content"], "hello");
        assert_eq!(body["usage"]["prompt_tokens"], 7);
        assert_eq!(body["usage"]["completion_tokens"], 2);
        let nova = br#"{"recordId":"b","modelInput":{},"modelOutput":{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"max_tokens","usage":{"inputTokens":3,"outputTokens":1,"cacheReadInputTokenCount":4}}}"#;
        let (_, ItemResult::Answer(body)) = parse_line(nova).unwrap() else {
            panic!("an answer")
        };
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["prompt_tokens"], 7);
        let error = br#"{"recordId":"c","modelInput":{},"error":{"errorCode":400,"errorMessage":"Input is too long for requested model."}}"#;
        let (_, ItemResult::Error(e)) = parse_line(error).unwrap() else {
            panic!("an error")
        };
        assert_eq!(e.kind, ProviderErrorKind::ContextOverflow);
        assert!(parse_line(br#"{"recordId":"d","modelInput":{}}"#).is_none());
        assert!(parse_line(b"not json").is_none());
    }

    #[test]
    fn statuses_map_partial_and_stopped_jobs_to_ingestable_ends() {
        let s = |status: &str| status_of(&json!({"status": status})).state;
        assert_eq!(
            s("PartiallyCompleted"),
            RemoteState::Ended(EndedAs::Completed)
        );
        assert_eq!(s("Stopped"), RemoteState::Ended(EndedAs::Cancelled));
        assert_eq!(s("Expired"), RemoteState::Ended(EndedAs::Expired));
        assert_eq!(s("Stopping"), RemoteState::Cancelling);
        for running in ["Submitted", "Validating", "Scheduled", "InProgress"] {
            assert_eq!(s(running), RemoteState::Running);
        }
        assert!(matches!(
            s("Failed"),
            RemoteState::Ended(EndedAs::Failed { .. })
        ));
    }
}
