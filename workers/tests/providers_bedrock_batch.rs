//! Bedrock batch inference over real HTTP and a real S3 server: the client writes its records
//! to SeaweedFS, the fake's control plane (SigV4-checked) reads them from there and writes
//! `.jsonl.out` and `manifest.json.out` back on its sped-up clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use batchyard_jobs::storage::ResultStore;
use batchyard_testkit::{FakeProvider, S3Env, s3_env_or_skip};
use batchyard_workers::provider::batch::{
    BatchApi, BatchItem, EndedAs, Found, ItemResult, RemoteState, RemoteStatus,
};
use batchyard_workers::provider::bedrock::BedrockBatchConfig;
use batchyard_workers::provider::{
    BedrockAuth, BedrockConfig, BedrockProvider, Provider, ProviderErrorKind, Secret,
};
use futures::TryStreamExt as _;
use serde_json::Value;
use support::fake_provider::body_for;

const HAIKU: &str = "us.anthropic.claude-3-5-haiku-20241022-v1:0";
const NOVA: &str = "amazon.nova-lite-v1:0";
const ROLE: &str = "arn:aws:iam::123456789012:role/BedrockBatch";

fn fake(s3: &S3Env, extra: &[&str]) -> FakeProvider {
    let mut args = s3.fake_bedrock_args();
    args.extend(extra.iter().map(|a| a.to_string()));
    FakeProvider::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn store_env(s3: &S3Env) -> BTreeMap<String, String> {
    s3.child_env().into_iter().collect()
}

/// Signed with the S3 server's keys, which the fake checks (`secret`: a wrong one, or not).
fn provider(server: &FakeProvider, s3: &S3Env, store: &ResultStore, secret: &str) -> Provider {
    let mut config = BedrockConfig::new("us-east-1");
    config.base_url = server.url.clone();
    config.auth = BedrockAuth::Keys {
        access_key_id: Secret::new(s3.key_id.clone()),
        secret_access_key: Secret::new(secret.into()),
        session_token: None,
    };
    config.batch = Some(BedrockBatchConfig {
        role_arn: ROLE.into(),
        s3_url: store.url().into(),
        control_url: server.url.clone(),
        store: store.clone(),
    });
    Provider::Bedrock(BedrockProvider::new(config).unwrap())
}

fn items(model: &str, texts: &[&str]) -> Vec<BatchItem> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut body = body_for(text);
            body.insert("model".into(), Value::String(model.into()));
            body.insert("max_tokens".into(), Value::from(64));
            BatchItem {
                custom_id: format!("job{i:04}"),
                body,
            }
        })
        .collect()
}

/// Polls until the job has ended (at most 20 s).
async fn ended(api: &BatchApi<'_>, id: &str) -> RemoteStatus {
    let start = Instant::now();
    for _ in 0..400 {
        let status = api.status(id).await.unwrap();
        if matches!(status.state, RemoteState::Ended(_)) {
            return status;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never ended")
}

async fn results(api: &BatchApi<'_>, id: &str) -> HashMap<String, ItemResult> {
    let mut lines = api.results(id).await.unwrap();
    let mut out = HashMap::new();
    while let Some((id, result)) = lines.next().await.unwrap() {
        assert!(out.insert(id.clone(), result).is_none(), "{id} twice");
    }
    out
}

async fn objects(store: &ResultStore) -> Vec<String> {
    let listed: Vec<(String, _)> = store.list_relative("").try_collect().await.unwrap();
    listed.into_iter().map(|(rel, _)| rel).collect()
}

#[tokio::test]
async fn a_claude_job_runs_once_answers_every_record_and_leaves_nothing_in_the_bucket() {
    let Some(s3) = s3_env_or_skip("bedrock batch claude") else {
        return;
    };
    let server = fake(&s3, &["--batch-turnaround-ms", "400"]);
    let url = s3.storage_url("bedrock-batch-claude");
    let store = ResultStore::open(&url, &store_env(&s3)).unwrap();
    let provider = provider(&server, &s3, &store, &s3.secret);
    let api = BatchApi::of(&provider).expect("a bedrock provider with a bucket batches");
    let batch = items(HAIKU, &["one", "two", "three FAKE:CONTEXT", "four", "five"]);

    let id = api.submit("w1-haiku-0", &batch).await.unwrap();
    assert!(id.contains(":model-invocation-job/"), "{id}");
    // A create sent again (a crash before the id was recorded) is the same job.
    assert_eq!(api.submit("w1-haiku-0", &batch).await.unwrap(), id);
    assert_eq!(
        api.find("w1-haiku-0", 0, 5).await.unwrap(),
        Found::Sure(id.clone())
    );
    assert_eq!(api.find("w2-haiku-0", 0, 5).await.unwrap(), Found::None);
    let input = objects(&store).await;
    assert_eq!(input.len(), 1, "{input:?}");
    let line: Value = serde_json::from_slice(
        store
            .get(&store.path_of(&input[0]))
            .await
            .unwrap()
            .split(|b| *b == b'\n')
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["recordId"], "job0000");
    assert_eq!(
        line["modelInput"]["anthropic_version"],
        "bedrock-2023-05-31"
    );

    let status = ended(&api, &id).await;
    assert_eq!(status.state, RemoteState::Ended(EndedAs::Completed));
    assert_eq!((status.total, status.completed, status.failed), (5, 4, 1));
    let answers = results(&api, &id).await;
    assert_eq!(answers.len(), 5);
    for (job, result) in &answers {
        match result {
            ItemResult::Answer(body) if job != "job0002" => {
                let text = body["choices"][0]["message"]["content"].as_str().unwrap();
                assert!(text.starts_with("fake reply from"), "{text}");
                assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
                assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
            }
            ItemResult::Error(e) if job == "job0002" => {
                assert_eq!(e.kind, ProviderErrorKind::ContextOverflow, "{e:?}");
            }
            other => panic!("{job}: {other:?}"),
        }
    }
    let written = objects(&store).await;
    assert!(
        written.iter().any(|o| o.ends_with("input.jsonl.out"))
            && written.iter().any(|o| o.ends_with("manifest.json.out")),
        "{written:?}"
    );
    api.forget(&id).await.unwrap();
    assert_eq!(objects(&store).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_stopped_job_keeps_what_was_answered_and_nova_records_read_back() {
    let Some(s3) = s3_env_or_skip("bedrock batch stop") else {
        return;
    };
    let server = fake(&s3, &["--batch-turnaround-ms", "3000"]);
    let url = s3.storage_url("bedrock-batch-stop");
    let store = ResultStore::open(&url, &store_env(&s3)).unwrap();
    let provider = provider(&server, &s3, &store, &s3.secret);
    let api = BatchApi::of(&provider).unwrap();
    let texts: Vec<String> = (0..40).map(|i| format!("item {i}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let id = api.submit("w1-nova-0", &items(NOVA, &texts)).await.unwrap();
    // Validation takes 300 ms, the records the next 2.4 s: stop halfway through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.cancel(&id).await.unwrap();
    let state = api.status(&id).await.unwrap().state;
    assert!(
        matches!(state, RemoteState::Cancelling | RemoteState::Ended(_)),
        "{state:?}"
    );
    let status = ended(&api, &id).await;
    assert_eq!(status.state, RemoteState::Ended(EndedAs::Cancelled));
    assert!(status.completed > 0 && status.completed < 40, "{status:?}");
    let answers = results(&api, &id).await;
    assert_eq!(
        answers.len() as u64,
        status.completed,
        "paid answers are kept"
    );
    for result in answers.values() {
        let ItemResult::Answer(body) = result else {
            panic!("{result:?}")
        };
        assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    }
    assert!(
        api.cancel(&id).await.is_err(),
        "an ended job cannot be stopped"
    );
}

#[tokio::test]
async fn too_few_records_fail_validation_and_a_wrong_signature_is_an_auth_error() {
    let Some(s3) = s3_env_or_skip("bedrock batch refusals") else {
        return;
    };
    let server = fake(
        &s3,
        &[
            "--batch-turnaround-ms",
            "200",
            "--bedrock-batch-min-records",
            "3",
        ],
    );
    let url = s3.storage_url("bedrock-batch-refusals");
    let store = ResultStore::open(&url, &store_env(&s3)).unwrap();
    let signed = provider(&server, &s3, &store, &s3.secret);
    let api = BatchApi::of(&signed).unwrap();
    let id = api
        .submit("w1-haiku-0", &items(HAIKU, &["a", "b"]))
        .await
        .unwrap();
    let status = ended(&api, &id).await;
    let RemoteState::Ended(EndedAs::Failed { message, .. }) = status.state else {
        panic!("{status:?}")
    };
    assert!(message.contains("at least 3"), "{message}");

    let wrong = provider(&server, &s3, &store, "Wrong/Secret");
    let api = BatchApi::of(&wrong).unwrap();
    let err = api
        .submit("w1-haiku-1", &items(HAIKU, &["a", "b", "c"]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Auth, "{err:?}");
    assert!(!err.message.contains("Wrong"), "{}", err.message);

    let plain = items("meta.llama3-8b-instruct-v1:0", &["a"]);
    let err = BatchApi::of(&signed)
        .unwrap()
        .submit("w1-llama-0", &plain)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{err:?}");
}

#[tokio::test]
async fn an_expired_job_keeps_the_records_answered_by_the_window() {
    let Some(s3) = s3_env_or_skip("bedrock batch expiry") else {
        return;
    };
    // Jobs never complete: at the 1 s window the first half of their records are done.
    let server = fake(&s3, &["--batch-window-secs", "1", "--batch-expire=0.5"]);
    let url = s3.storage_url("bedrock-batch-expiry");
    let store = ResultStore::open(&url, &store_env(&s3)).unwrap();
    let signed = provider(&server, &s3, &store, &s3.secret);
    let api = BatchApi::of(&signed).unwrap();
    let texts: Vec<String> = (0..10).map(|i| format!("record {i}")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let id = api
        .submit("w1-haiku-0", &items(HAIKU, &texts))
        .await
        .unwrap();
    let status = ended(&api, &id).await;
    assert_eq!(status.state, RemoteState::Ended(EndedAs::Expired));
    let answers = results(&api, &id).await;
    let answered: Vec<&str> = {
        let mut ids: Vec<&str> = answers.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(
        answered,
        ["job0000", "job0001", "job0002", "job0003", "job0004"]
    );
    assert!(answers.values().all(|r| matches!(r, ItemResult::Answer(_))));
    api.forget(&id).await.unwrap();
    assert!(objects(&store).await.is_empty());
}
