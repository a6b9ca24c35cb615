//! Input formats, read as streams and validated item by item.
//!
//! - OpenAI batch JSONL: `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`
//! - document JSONL: `{"id", "text", ...}`, rendered through a task's template later
//! - a folder, or an object-store prefix: every `*.txt` / `*.md` below it is a document
//!
//! Every error names its place (`file:line`, or the object) and the reason.
//!
//! - `jsonl`: OpenAI batch request lines and document lines, read line by line.
//! - `listing`: folders and object-store prefixes, one document per `*.txt` / `*.md`.
//! - `walk`: the one folder walk submission and pipelines share.
//! - `ids`: what an id may hold (by Unicode general category).

mod ids;
mod jsonl;
mod listing;
mod walk;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::PathBuf;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::job::Route;
use crate::storage::ResultStore;

pub use ids::{MAX_ID_BYTES, check_id, escape_name};
pub use jsonl::JsonlReader;
pub use listing::DocumentLister;
pub use walk::{FolderEntry, FolderWalk, WalkOptions};

/// The default cap on one input line: 8 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// One valid input item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A chat completions request, routed as `route` says.
    Request {
        custom_id: String,
        body: Map<String, Value>,
        route: Route,
        line: u64,
        /// `file:line`.
        location: String,
    },
    /// A document to render through a task's template. `fields` includes `text`.
    Document {
        id: String,
        fields: Map<String, Value>,
        /// The line of a document JSONL file; `None` for a file of a folder or an object.
        line: Option<u64>,
        /// `file:line`, or the document's path or object URL.
        location: String,
    },
}

impl Item {
    pub fn custom_id(&self) -> &str {
        match self {
            Self::Request { custom_id, .. } => custom_id,
            Self::Document { id, .. } => id,
        }
    }

    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Request { line, .. } => Some(*line),
            Self::Document { line, .. } => *line,
        }
    }

    /// Where the item came from, as errors name it: `file:line`, a path or an object URL.
    pub fn location(&self) -> &str {
        match self {
            Self::Request { location, .. } | Self::Document { location, .. } => location,
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
    /// Of a folder or prefix, the entry's path below it, escaped ([`escape_name`]) when the
    /// name can't be an id: `--skip-invalid` records a refused file under it.
    pub entry: Option<String>,
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
            entry: None,
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
    /// Of a folder, follow symbolic links whose targets stay inside it; else links are
    /// skipped and counted.
    pub follow_symlinks: bool,
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
            let shown = crate::error::redact(input);
            let parsed = url::Url::parse(input)
                .map_err(|e| InputError::fatal(&shown, format!("not a valid url: {e}")))?;
            if !parsed.username().is_empty() || parsed.password().is_some() {
                return Err(InputError::fatal(
                    shown,
                    "holds a user name or password; remove them and give the keys in the AWS_* / GOOGLE_* / AZURE_* variables",
                ));
            }
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
        } else if meta.is_file() {
            Ok(Self::JsonlFile(path))
        } else {
            // A device or pipe may never end (/dev/zero) or block forever: refused from its
            // metadata, before anything is read.
            Err(InputError::fatal(
                input,
                "is not a regular file or folder (a pipe, socket or device); save the input to a file and give its path",
            ))
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

    /// Non-document files (and symbolic links) a folder or prefix held, skipped.
    pub fn skipped_files(&self) -> u64 {
        match self {
            Self::Jsonl(_) => 0,
            Self::Documents(r) => r.skipped(),
        }
    }

    /// What was skipped, e.g. `2 file(s) that are not .txt or .md, 1 symbolic link(s); ...`;
    /// empty when nothing was.
    pub fn skipped_summary(&self) -> String {
        match self {
            Self::Jsonl(_) => String::new(),
            Self::Documents(r) => r.skipped_summary(),
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
