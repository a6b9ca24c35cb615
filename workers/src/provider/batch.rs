//! The providers' batch APIs (the offload lane): many requests sent at once, answered within
//! a window at the batch price, read back as one results file.
//!
//! [`BatchApi`] dispatches to the kinds that have one: OpenAI's `/v1/files` + `/v1/batches`
//! (`openai::batch`), Anthropic's Message Batches (`anthropic::batch`), Gemini's batch mode
//! with inline requests (`gemini::batch`) and Bedrock's batch inference jobs over S3
//! (`bedrock::batch`).
//! Every item goes in with the job id as its `custom_id`, so a result finds its job without a
//! table. Results are read line by line ([`ResultLines`]), never held whole.

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Provider, ProviderError, ProviderErrorKind};

/// One request of a provider batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// The job id: unique in the batch, and the way back to the job.
    pub custom_id: String,
    /// An OpenAI chat completions body, `model` set to the provider's model name.
    pub body: Map<String, Value>,
}

impl BatchItem {
    /// The item as a call to its model, for the kinds' request mappings.
    pub fn call(&self) -> super::ChatCall<'_> {
        super::ChatCall {
            model_name: self
                .body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            body: &self.body,
            default_max_tokens: None,
        }
    }
}

/// Where a provider batch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteState {
    /// Still being validated or answered.
    Running,
    /// Cancel asked; answers may still come.
    Cancelling,
    /// Done: every answer there will be is in the results.
    Ended(EndedAs),
}

/// How a provider batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndedAs {
    Completed,
    /// The window passed first: what was answered is in the results, the rest is not.
    Expired,
    Cancelled,
    /// Refused as a whole (validation, a quota): no item was answered.
    Failed {
        code: String,
        message: String,
    },
}

/// A provider batch's state and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    pub state: RemoteState,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// What the provider gave for one item.
#[derive(Debug)]
pub enum ItemResult {
    /// An OpenAI chat completion body.
    Answer(Value),
    /// The provider's error for this item, classified as a call's would be.
    Error(ProviderError),
}

/// What [`BatchApi::find`] saw of a provider batch whose id was never recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No such batch: the create never reached the provider.
    None,
    /// This one, for sure (the provider kept batchyard's tag on it).
    Sure(String),
    /// Batches that could be it (the provider keeps no tag): which one, if any, shows only in
    /// their results, whose custom ids are the job ids, once they have ended.
    Maybe(Vec<String>),
}

/// A provider batch's API, for the kinds that have one.
#[derive(Debug, Clone, Copy)]
pub enum BatchApi<'a> {
    OpenAi(&'a super::OpenAiProvider),
    Bedrock(&'a super::BedrockProvider),
    Anthropic(&'a super::AnthropicProvider),
    Gemini(&'a super::GeminiProvider),
}

impl<'a> BatchApi<'a> {
    /// The batch API of `provider`, if its kind has one batchyard speaks.
    pub fn of(provider: &'a Provider) -> Option<Self> {
        match provider {
            Provider::OpenAi(p) => Some(Self::OpenAi(p)),
            Provider::Bedrock(p) if p.batches() => Some(Self::Bedrock(p)),
            Provider::Anthropic(p) => Some(Self::Anthropic(p)),
            Provider::Gemini(p) => Some(Self::Gemini(p)),
            _ => None,
        }
    }

    /// The largest input file the provider takes for one batch, in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        match self {
            // OpenAI: 200 MB.
            Self::OpenAi(_) => 200_000_000,
            // Bedrock: 1 GB per input file (the default quota).
            Self::Bedrock(_) => 1_000_000_000,
            // Anthropic: 256 MB per batch, with room for the mapping's own fields.
            Self::Anthropic(_) => 250_000_000,
            // Gemini: inline requests, 20 MB per create call.
            Self::Gemini(_) => 18_000_000,
        }
    }

    /// Whether one item can go into this API's batches at all: one whose body the kind can't
    /// map runs real-time instead (where it gets its own error), not failing its whole wave.
    pub fn check(&self, item: &BatchItem) -> Result<(), ProviderError> {
        match self {
            Self::Anthropic(_) => super::AnthropicProvider::batch_check(item),
            Self::Gemini(_) => super::GeminiProvider::batch_check(item),
            // OpenAI takes the body as it is; Bedrock's family is checked at config time.
            Self::OpenAi(_) | Self::Bedrock(_) => Ok(()),
        }
    }

    /// Sends `items` as one provider batch tagged `tag` (found again by [`Self::find`]);
    /// returns its id.
    pub async fn submit(&self, tag: &str, items: &[BatchItem]) -> Result<String, ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_submit(tag, items).await,
            Self::Bedrock(p) => p.batch_submit(tag, items).await,
            Self::Anthropic(p) => p.batch_submit(items).await,
            Self::Gemini(p) => p.batch_submit(tag, items).await,
        }
    }

    /// The provider batch of `items` requests submitted with `tag` at about `since_unix` (a
    /// submit whose id was never recorded), as far as the provider can tell.
    pub async fn find(
        &self,
        tag: &str,
        since_unix: u64,
        items: u64,
    ) -> Result<Found, ProviderError> {
        match self {
            Self::OpenAi(p) => Ok(sure(p.batch_find(tag, since_unix).await?)),
            Self::Bedrock(p) => Ok(sure(p.batch_find(tag, since_unix).await?)),
            Self::Anthropic(p) => p.batch_find(since_unix, items).await,
            Self::Gemini(p) => p.batch_find(tag, since_unix).await,
        }
    }

    pub async fn status(&self, id: &str) -> Result<RemoteStatus, ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_status(id).await,
            Self::Bedrock(p) => p.batch_status(id).await,
            Self::Anthropic(p) => p.batch_status(id).await,
            Self::Gemini(p) => p.batch_status(id).await,
        }
    }

    /// The results of an ended batch, both answers and per-item errors, in any order.
    pub async fn results(&self, id: &str) -> Result<ResultLines, ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_results(id).await,
            Self::Bedrock(p) => p.batch_results(id).await,
            Self::Anthropic(p) => p.batch_results(id).await,
            Self::Gemini(p) => p.batch_results(id).await,
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_cancel(id).await,
            Self::Bedrock(p) => p.batch_cancel(id).await,
            Self::Anthropic(p) => p.batch_cancel(id).await,
            Self::Gemini(p) => p.batch_cancel(id).await,
        }
    }

    /// Deletes what the batch left at the provider (OpenAI's input and output files,
    /// Anthropic's batch itself), once ingested.
    pub async fn forget(&self, id: &str) -> Result<(), ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_forget(id).await,
            Self::Bedrock(p) => p.batch_forget(id).await,
            Self::Anthropic(p) => p.batch_forget(id).await,
            Self::Gemini(p) => p.batch_forget(id).await,
        }
    }
}

/// The longest results line read; a longer one is an error for that item, not a reason to
/// hold unbounded memory.
pub const MAX_RESULT_LINE: usize = 16 * 1024 * 1024;

/// Results files read one line at a time, from one or more responses in turn.
pub struct ResultLines {
    /// Results already read whole (Gemini's inline responses), handed out first.
    ready: std::collections::VecDeque<(String, ItemResult)>,
    bodies: std::collections::VecDeque<Body>,
    current: Option<Body>,
    buf: Vec<u8>,
    parse: fn(&[u8]) -> Option<(String, ItemResult)>,
    timeout: Duration,
}

impl std::fmt::Debug for ResultLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultLines").finish_non_exhaustive()
    }
}

impl ResultLines {
    pub(crate) fn new(
        bodies: Vec<reqwest::Response>,
        parse: fn(&[u8]) -> Option<(String, ItemResult)>,
        timeout: Duration,
    ) -> Self {
        Self {
            ready: std::collections::VecDeque::new(),
            bodies: bodies.into_iter().map(Body::Http).collect(),
            current: None,
            buf: Vec::new(),
            parse,
            timeout,
        }
    }

    /// Results read from object storage (Bedrock writes them to the user's bucket).
    pub(crate) fn from_streams(
        streams: Vec<ObjectStream>,
        parse: fn(&[u8]) -> Option<(String, ItemResult)>,
        timeout: Duration,
    ) -> Self {
        Self {
            ready: std::collections::VecDeque::new(),
            bodies: streams.into_iter().map(Body::Stream).collect(),
            current: None,
            buf: Vec::new(),
            parse,
            timeout,
        }
    }

    /// Results that came inside the batch's own answer.
    pub(crate) fn ready(items: Vec<(String, ItemResult)>, timeout: Duration) -> Self {
        let mut lines = Self::new(Vec::new(), |_| None, timeout);
        lines.ready = items.into();
        lines
    }

    /// The next item's result; `None` at the end. A line that does not read is skipped (its
    /// item counts as unanswered, and runs again).
    pub async fn next(&mut self) -> Result<Option<(String, ItemResult)>, ProviderError> {
        if let Some(item) = self.ready.pop_front() {
            return Ok(Some(item));
        }
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if let Some(parsed) = (self.parse)(trim(&line)) {
                    return Ok(Some(parsed));
                }
                continue;
            }
            if self.current.is_none() {
                self.current = self.bodies.pop_front();
            }
            let Some(body) = self.current.as_mut() else {
                // The last line may have no newline.
                let rest = std::mem::take(&mut self.buf);
                return Ok((!trim(&rest).is_empty())
                    .then(|| (self.parse)(trim(&rest)))
                    .flatten());
            };
            let chunk = tokio::time::timeout(self.timeout, body.chunk())
                .await
                .map_err(|_| transient("reading a batch's results timed out"))?
                .map_err(|e| transient(&format!("reading a batch's results failed: {e}")))?;
            match chunk {
                Some(bytes) => {
                    if self.buf.len() + bytes.len() > MAX_RESULT_LINE {
                        return Err(transient("a results line is longer than 16 MiB"));
                    }
                    self.buf.extend_from_slice(&bytes);
                }
                None => {
                    self.current = None;
                    if !self.buf.is_empty() && self.buf.last() != Some(&b'\n') {
                        self.buf.push(b'\n');
                    }
                }
            }
        }
    }
}

/// An object read from storage, chunk by chunk.
pub(crate) type ObjectStream =
    futures::stream::BoxStream<'static, Result<bytes::Bytes, batchyard_jobs::error::StoreError>>;

/// One results file: an HTTP response or an object in storage.
enum Body {
    Http(reqwest::Response),
    Stream(ObjectStream),
}

impl Body {
    async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, String> {
        use futures::StreamExt as _;
        match self {
            Self::Http(r) => r.chunk().await.map_err(|e| e.to_string()),
            Self::Stream(s) => s.next().await.transpose().map_err(|e| e.to_string()),
        }
    }
}

/// One call of a batch API on `endpoint` (its key and headers go with it), its JSON answer;
/// errors classified by `classify` and scrubbed of the endpoint's secrets.
pub(crate) async fn call_json(
    endpoint: &super::http::Endpoint,
    method: reqwest::Method,
    url: reqwest::Url,
    body: Option<Vec<u8>>,
    classify: fn(u16, &reqwest::header::HeaderMap, &[u8]) -> ProviderError,
    api: &str,
) -> Result<Value, ProviderError> {
    let mut request = endpoint.request(method, url.clone());
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let result = match endpoint.execute(request, &url, classify).await {
        Ok((status, _, bytes)) => super::http::json_body(status, &bytes, api),
        Err(e) => Err(e),
    };
    result.map_err(|mut e| {
        endpoint.scrub(&mut e);
        e
    })
}

/// A string field of a batch API's answer (an id), or the error saying it is missing.
pub(crate) fn str_field(value: &Value, field: &str) -> Result<String, ProviderError> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            ProviderError::new(
                ProviderErrorKind::MalformedResponse,
                format!("the batch API's answer has no {field:?}"),
            )
        })
}

/// What a provider that keeps batchyard's tag found: that batch, or none.
fn sure(id: Option<String>) -> Found {
    id.map_or(Found::None, Found::Sure)
}

fn trim(line: &[u8]) -> &[u8] {
    line.trim_ascii()
}

fn transient(message: &str) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Transient, message)
}
