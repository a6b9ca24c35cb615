//! The fake provider's skill mode over real HTTP: deterministic `ANSWER: ok` / `ANSWER: wrong`
//! by `hash01(model, text) < 1 / (1 + exp(-12 (skill - D)))`, reproducible offline (the
//! expected answers below were computed once in Python, as `scripts/benchlib/routing.py` does).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use batchyard_testkit::{FakeProvider, fake_provider_bin};
use serde_json::{Value, json};

/// One OpenAI chat call: (content, usage).
async fn ask(fake: &FakeProvider, model: &str, text: &str) -> (String, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    let reply: Value = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", fake.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let content = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    (content, reply["usage"].clone())
}

const SKILLS: &str = "mid=0.5,genius=1.0,dunce=0.0";

#[tokio::test]
async fn skill_mode_is_deterministic_and_follows_the_rule() {
    let fake = FakeProvider::start(&["--skills", SKILLS]);

    // Same request, same answer, every time.
    let text = "Answer about this document.\n\n[[difficulty=0.5]] item 0";
    let (first, usage) = ask(&fake, "mid", text).await;
    for _ in 0..5 {
        assert_eq!(ask(&fake, "mid", text).await.0, first);
    }
    // floor(54 chars / 4) + 4 per message; "ANSWER: wrong" is 13 chars, so 4 tokens.
    assert_eq!(usage["prompt_tokens"], 17);
    assert_eq!(usage["completion_tokens"], 4);

    // At D = skill the pass probability is 1/2: the answer is `u < 0.5`, with u computed in
    // Python as (int.from_bytes(sha256(b"mid\0" + text).digest()[:8], "big") >> 11) / 2**53.
    // u: 0.798, 0.541, 0.045, 0.436, 0.649, 0.067.
    let expected = [false, false, true, true, false, true];
    for (i, pass) in expected.iter().enumerate() {
        let text = format!("Answer about this document.\n\n[[difficulty=0.5]] item {i}");
        let (content, usage) = ask(&fake, "mid", &text).await;
        let want = if *pass { "ANSWER: ok" } else { "ANSWER: wrong" };
        assert_eq!(content, want, "item {i}");
        assert_eq!(usage["completion_tokens"], if *pass { 3 } else { 4 });
    }

    // A skill-1.0 model passes easy items; a skill-0.0 model fails hard ones.
    for i in 0..20 {
        let easy = format!("[[difficulty=0.05]] easy document {i}");
        assert_eq!(ask(&fake, "genius", &easy).await.0, "ANSWER: ok", "{easy}");
        let hard = format!("[[difficulty=0.95]] hard document {i}");
        assert_eq!(
            ask(&fake, "dunce", &hard).await.0,
            "ANSWER: wrong",
            "{hard}"
        );
    }

    // No marker, or a model without a skill: the usual echo reply.
    let (plain, _) = ask(&fake, "mid", "no marker here").await;
    assert!(plain.starts_with("fake reply from mid: "), "{plain}");
    let (other, _) = ask(&fake, "unknown", text).await;
    assert!(other.starts_with("fake reply from unknown: "), "{other}");
}

#[test]
fn bad_skills_are_refused() {
    for bad in ["tiny", "tiny=2", "=0.5"] {
        let out = Command::new(fake_provider_bin())
            .args(["--skills", bad])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--skills {bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--skills"), "{err}");
    }
}

#[test]
fn help_documents_the_rule() {
    let out = Command::new(fake_provider_bin())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--skills MODEL=SKILL"), "{help}");
    assert!(help.contains("[[difficulty=D]]"), "{help}");
    assert!(help.contains("exp(-12 * (skill - D))"), "{help}");
}
