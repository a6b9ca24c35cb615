//! The providers' batch APIs (the offload lane): many requests sent at once, answered within
//! a window at the batch price, read back as one results file.
//!
//! [`BatchApi`] dispatches to the kinds that have one (OpenAI's `/v1/files` + `/v1/batches`).
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

/// A provider batch's API, for the kinds that have one.
#[derive(Debug, Clone, Copy)]
pub enum BatchApi<'a> {
    OpenAi(&'a super::OpenAiProvider),
}

impl<'a> BatchApi<'a> {
    /// The batch API of `provider`, if its kind has one batchyard speaks.
    pub fn of(provider: &'a Provider) -> Option<Self> {
        match provider {
            Provider::OpenAi(p) => Some(Self::OpenAi(p)),
            _ => None,
        }
    }

    /// The largest input file the provider takes for one batch, in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        match self {
            // OpenAI: 200 MB.
            Self::OpenAi(_) => 200_000_000,
        }
    }

    /// Sends `items` as one provider batch tagged `tag` (found again by [`Self::find`]);
    /// returns its id.
    pub async fn submit(&self, tag: &str, items: &[BatchItem]) -> Result<String, ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_submit(tag, items).await,
        }
    }

    /// The id of a provider batch submitted with `tag` since `since_unix` (a submit whose id
    /// was never recorded), if there is one.
    pub async fn find(&self, tag: &str, since_unix: u64) -> Result<Option<String>, ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_find(tag, since_unix).await,
        }
    }

    pub async fn status(&self, id: &str) -> Result<RemoteStatus, ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_status(id).await,
        }
    }

    /// The results of an ended batch, both answers and per-item errors, in any order.
    pub async fn results(&self, id: &str) -> Result<ResultLines, ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_results(id).await,
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_cancel(id).await,
        }
    }

    /// Deletes what the batch left at the provider (input and output files), once ingested.
    pub async fn forget(&self, id: &str) -> Result<(), ProviderError> {
        match self {
            Self::OpenAi(p) => p.batch_forget(id).await,
        }
    }
}

/// The longest results line read; a longer one is an error for that item, not a reason to
/// hold unbounded memory.
pub const MAX_RESULT_LINE: usize = 16 * 1024 * 1024;

/// Results files read one line at a time, from one or more responses in turn.
pub struct ResultLines {
    bodies: std::collections::VecDeque<reqwest::Response>,
    current: Option<reqwest::Response>,
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
            bodies: bodies.into(),
            current: None,
            buf: Vec::new(),
            parse,
            timeout,
        }
    }

    /// The next item's result; `None` at the end. A line that does not read is skipped (its
    /// item counts as unanswered, and runs again).
    pub async fn next(&mut self) -> Result<Option<(String, ItemResult)>, ProviderError> {
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

fn trim(line: &[u8]) -> &[u8] {
    line.trim_ascii()
}

fn transient(message: &str) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Transient, message)
}
