//! One Bedrock batch record answered as the real service writes it: `modelOutput` on success,
//! `error` (`errorCode`, `errorMessage`) when the body is not the model family's or the model
//! fails.

use serde_json::{Value, json};

use super::answer::{self, Api};
use crate::AppState;

/// One record answered: its output line, and whether it is an error.
pub async fn answer_record(state: &AppState, model: &str, line: &Value) -> (String, bool) {
    let id = line["recordId"].clone();
    let input = line["modelInput"].clone();
    let mut body = input.clone();
    let api = if model.contains("anthropic.") {
        if body["anthropic_version"] != "bedrock-2023-05-31" {
            return error_line(
                &id,
                &input,
                400,
                "anthropic_version: bedrock-2023-05-31 required",
            );
        }
        body["model"] = json!(model);
        Api::Anthropic
    } else {
        if body["schemaVersion"] != "messages-v1" {
            return error_line(&id, &input, 400, "schemaVersion: messages-v1 required");
        }
        if let Some(n) = body["inferenceConfig"]["max_new_tokens"].as_u64() {
            body["inferenceConfig"]["maxTokens"] = json!(n);
        }
        Api::Bedrock
    };
    let custom = id.as_str().unwrap_or_default();
    if state.options.batch.item_fails(custom) {
        return error_line(
            &id,
            &input,
            500,
            "Internal server error (fake batch record)",
        );
    }
    let done = answer::answer(state, api, body.to_string().as_bytes()).await;
    let output: Value = serde_json::from_str(&done.body).unwrap_or(Value::Null);
    if done.ok() {
        let line = json!({"recordId": id, "modelInput": input, "modelOutput": output});
        return (line.to_string(), false);
    }
    let message = output
        .pointer("/error/message")
        .or_else(|| output.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("the model failed (fake)")
        .to_owned();
    error_line(&id, &input, done.status, &message)
}

fn error_line(id: &Value, input: &Value, code: u16, message: &str) -> (String, bool) {
    let line = json!({"recordId": id, "modelInput": input,
        "error": {"errorCode": code, "errorMessage": message}});
    (line.to_string(), true)
}
