//! Input formats, read as streams and validated item by item.
//!
//! - OpenAI batch JSONL: `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`
//! - document JSONL: `{"id", "text", ...}`, rendered through a task's template later
//! - a folder, or an object-store prefix: every `*.txt` / `*.md` below it is a document
//!
//! Every error names its place (`file:line`, or the object) and the reason.

mod jsonl;
mod listing;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::job::Route;
use crate::storage::ResultStore;

pub use jsonl::JsonlReader;
pub use listing::DocumentLister;

/// The default cap on one input line: 8 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// The longest custom id (or document id) accepted, in bytes. Ids are repeated in every
/// output line, in logs and in Redis, so an id the size of a document is refused.
pub const MAX_ID_BYTES: usize = 1024;

/// Why an id (`field` names it in the message) can't be used, or `None` when it can.
///
/// Ids are shown in terminals, logs and files downstream, so ids that hide what they are
/// (control, invisible or direction-changing characters) are refused. Path-like ids
/// (`../x`) are accepted, as OpenAI accepts them: results are stored under a hash of the
/// id, so they can't climb out of the batch (tests/embedded.rs). The message never repeats
/// the id itself: it may be huge or hostile.
pub fn check_id(field: &str, id: &str) -> Option<String> {
    if id.trim().is_empty() {
        return Some(format!("{field:?} is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!(
            "{field:?} is {} bytes long; at most {MAX_ID_BYTES} are allowed",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Some(format!(
            "{field:?} contains the control character U+{:04X}; use printable characters only",
            u32::from(c)
        ));
    }
    if let Some(c) = id.chars().find(|c| is_hidden(*c)) {
        return Some(format!(
            "{field:?} contains the invisible or direction-changing character U+{:04X}, so it would not read as what it is; remove it",
            u32::from(c)
        ));
    }
    None
}

/// Zero-width and bidirectional formatting characters.
fn is_hidden(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// One valid input item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A chat completions request, routed as `route` says.
    Request {
        custom_id: String,
        body: Map<String, Value>,
        route: Route,
        line: u64,
    },
    /// A document to render through a task's template. `fields` includes `text`.
    Document {
        id: String,
        fields: Map<String, Value>,
        line: u64,
    },
}

impl Item {
    pub fn custom_id(&self) -> &str {
        match self {
            Self::Request { custom_id, .. } => custom_id,
            Self::Document { id, .. } => id,
        }
    }

    pub fn line(&self) -> u64 {
        match self {
            Self::Request { line, .. } | Self::Document { line, .. } => *line,
        }
    }
}

/// A bad item, or an input that cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub struct InputError {
    /// `file:line`, a file path, or an object key.
    pub location: String,
    /// The line number, when the error is about one line.
    pub line: Option<u64>,
    /// The custom id, when it could be read.
    pub custom_id: Option<String>,
    pub reason: String,
    /// True when the whole input is unusable (unreadable, empty); `--skip-invalid` can't help.
    pub fatal: bool,
}

impl InputError {
    pub fn fatal(location: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            line: None,
            custom_id: None,
            reason: reason.into(),
            fatal: true,
        }
    }
}

/// What the input may name: configured models and tasks.
#[derive(Debug, Clone, Default)]
pub struct KnownNames {
    pub models: BTreeSet<String>,
    pub tasks: BTreeSet<String>,
}

/// How to read an input.
#[derive(Debug, Clone)]
pub struct InputOptions {
    pub max_line_bytes: usize,
    /// The `--task` given on the command line, if any.
    pub task: Option<String>,
    pub names: KnownNames,
    /// Of a folder or prefix, read only the documents with these ids (pipelines take just the
    /// new ones); the others are passed over without being read. `None`: every document.
    pub only: Option<std::sync::Arc<BTreeSet<String>>>,
}

/// Where an input lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    JsonlFile(PathBuf),
    Folder(PathBuf),
    /// A JSONL object in object storage: the store URL and the object's path.
    JsonlObject {
        store_url: String,
        key: String,
    },
    /// A prefix in object storage, listed for documents.
    ObjectPrefix {
        store_url: String,
        prefix: String,
    },
}

impl fmt::Display for InputSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JsonlFile(p) | Self::Folder(p) => write!(f, "{}", p.display()),
            Self::JsonlObject { store_url, key } => write!(f, "{store_url}/{key}"),
            Self::ObjectPrefix { store_url, prefix } => write!(f, "{store_url}/{prefix}"),
        }
    }
}

impl InputSource {
    /// Resolves what the user typed: a local file or folder, or an object-store URL.
    pub fn resolve(input: &str) -> Result<Self, InputError> {
        let is_url = ["s3://", "s3a://", "gs://", "az://", "abfs://", "file://"]
            .iter()
            .any(|s| input.starts_with(s));
        if is_url && !input.starts_with("file://") {
            let parsed = url::Url::parse(input)
                .map_err(|e| InputError::fatal(input, format!("not a valid url: {e}")))?;
            let store_url = format!(
                "{}://{}",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default()
            );
            let key = parsed.path().trim_start_matches('/').to_string();
            if key.ends_with(".jsonl") {
                return Ok(Self::JsonlObject { store_url, key });
            }
            return Ok(Self::ObjectPrefix {
                store_url,
                prefix: key,
            });
        }
        let path = PathBuf::from(input.strip_prefix("file://").unwrap_or(input));
        let meta = std::fs::metadata(&path).map_err(|e| {
            InputError::fatal(input, format!("cannot read the input: {e}; check the path"))
        })?;
        if meta.is_dir() {
            Ok(Self::Folder(path))
        } else {
            Ok(Self::JsonlFile(path))
        }
    }
}

/// A reader over any input source, yielding items one at a time.
pub enum InputReader {
    Jsonl(Box<JsonlReader>),
    Documents(Box<DocumentLister>),
}

impl InputReader {
    /// Opens `source`. `env` configures object stores (credentials, endpoints).
    pub async fn open(
        source: &InputSource,
        options: InputOptions,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, InputError> {
        match source {
            InputSource::JsonlFile(path) => {
                let file = tokio::fs::File::open(path).await.map_err(|e| {
                    InputError::fatal(path.display().to_string(), format!("cannot open: {e}"))
                })?;
                Ok(Self::Jsonl(Box::new(JsonlReader::new(
                    Box::new(file),
                    path.display().to_string(),
                    options,
                ))))
            }
            InputSource::JsonlObject { store_url, key } => {
                let store = ResultStore::open(store_url, env)
                    .map_err(|e| InputError::fatal(source.to_string(), e.to_string()))?;
                let reader = listing::object_reader(&store, key)
                    .await
                    .map_err(|e| InputError::fatal(source.to_string(), e.to_string()))?;
                Ok(Self::Jsonl(Box::new(JsonlReader::new(
                    reader,
                    source.to_string(),
                    options,
                ))))
            }
            InputSource::Folder(path) => Ok(Self::Documents(Box::new(DocumentLister::folder(
                path, options,
            )?))),
            InputSource::ObjectPrefix { store_url, prefix } => {
                let store = ResultStore::open(store_url, env)
                    .map_err(|e| InputError::fatal(source.to_string(), e.to_string()))?;
                Ok(Self::Documents(Box::new(DocumentLister::objects(
                    store,
                    prefix.clone(),
                    source.to_string(),
                    options,
                ))))
            }
        }
    }

    /// The next item or error; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Item, InputError>> {
        match self {
            Self::Jsonl(r) => r.next().await,
            Self::Documents(r) => r.next().await,
        }
    }

    /// Non-document files a folder or prefix held, skipped.
    pub fn skipped_files(&self) -> u64 {
        match self {
            Self::Jsonl(_) => 0,
            Self::Documents(r) => r.skipped(),
        }
    }
}

/// Remembers custom ids seen so far by a 128-bit digest, so a million ids fit in ~32 MB.
#[derive(Default)]
pub struct DuplicateCheck {
    seen: HashSet<u128>,
}

impl DuplicateCheck {
    /// True when `custom_id` was not seen before.
    pub fn insert(&mut self, custom_id: &str) -> bool {
        let digest = Sha256::digest(custom_id.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        self.seen.insert(u128::from_le_bytes(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        for id in [
            "doc-17",
            "a/b/c.txt",
            "a..b",
            "...",
            "../../etc/passwd",
            "/abs",
            "文档-1",
            "café ☕",
            "x".repeat(1024).as_str(),
        ] {
            assert_eq!(check_id("custom_id", id), None, "{id:?}");
        }
    }

    #[test]
    fn hostile_ids_are_refused_without_being_repeated() {
        let long = "y".repeat(MAX_ID_BYTES + 1);
        for (id, reason) in [
            ("", "is empty"),
            (" \t", "is empty"),
            ("a\u{0}b", "U+0000"),
            ("a\nb", "U+000A"),
            ("a\u{7f}", "U+007F"),
            ("abc\u{202E}gpj.exe", "U+202E"),
            ("doc\u{200B}1", "U+200B"),
            ("\u{FEFF}doc", "U+FEFF"),
            (long.as_str(), "at most 1024"),
        ] {
            let message = check_id("custom_id", id).unwrap_or_default();
            assert!(message.contains(reason), "{id:?}: {message}");
            assert!(message.starts_with("\"custom_id\""), "{message}");
            if id.len() > 2 {
                assert!(!message.contains(id), "{message}");
            }
        }
    }
}
