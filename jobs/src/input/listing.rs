//! Folders and object-store prefixes: every `*.txt` / `*.md` below them is one document.

use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use serde_json::{Map, Value};
use tokio::io::AsyncRead;

use super::{InputError, InputOptions, Item};
use crate::error::StoreError;
use crate::storage::ResultStore;

fn is_document(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".txt") || lower.ends_with(".md")
}

/// Reads one object as a byte stream.
pub(super) async fn object_reader(
    store: &ResultStore,
    key: &str,
) -> Result<Box<dyn AsyncRead + Unpin + Send>, StoreError> {
    let path = object_store::path::Path::from(key);
    let stream = store
        .get_stream(&path)
        .await?
        .map_err(|e| std::io::Error::other(e.to_string()));
    Ok(Box::new(tokio_util::io::StreamReader::new(stream)))
}

enum Walk {
    Folder {
        root: PathBuf,
        /// Folders still to read, deepest last; files of the current folder, sorted.
        dirs: Vec<PathBuf>,
        files: std::vec::IntoIter<PathBuf>,
    },
    Objects {
        store: ResultStore,
        name: String,
        listing: BoxStream<'static, Result<(String, ObjectMeta), StoreError>>,
        prefix: String,
    },
}

/// Yields documents from a folder (walked depth first, sorted) or an object-store prefix.
pub struct DocumentLister {
    walk: Walk,
    options: InputOptions,
    skipped: u64,
    produced: u64,
    done: bool,
}

impl DocumentLister {
    pub fn folder(root: &Path, options: InputOptions) -> Result<Self, InputError> {
        Self::require_task(&root.display().to_string(), &options)?;
        Ok(Self {
            walk: Walk::Folder {
                root: root.to_path_buf(),
                dirs: vec![root.to_path_buf()],
                files: Vec::new().into_iter(),
            },
            options,
            skipped: 0,
            produced: 0,
            done: false,
        })
    }

    pub fn objects(
        store: ResultStore,
        prefix: String,
        name: String,
        options: InputOptions,
    ) -> Self {
        let listing = store.list_relative(&prefix);
        Self {
            walk: Walk::Objects {
                store,
                name,
                listing,
                prefix,
            },
            options,
            skipped: 0,
            produced: 0,
            done: false,
        }
    }

    fn require_task(name: &str, options: &InputOptions) -> Result<(), InputError> {
        match &options.task {
            None => Err(InputError::fatal(
                name,
                "a folder of documents needs a task; pass --task NAME",
            )),
            Some(t) if !options.names.tasks.contains(t) => {
                let known: Vec<&str> = options.names.tasks.iter().map(String::as_str).collect();
                Err(InputError::fatal(
                    name,
                    format!("unknown task {t:?}; configured tasks: {}", known.join(", ")),
                ))
            }
            Some(_) => Ok(()),
        }
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn document(&mut self, id: String, bytes: Vec<u8>, location: &str) -> Result<Item, InputError> {
        let bad = |reason: String| InputError {
            location: location.to_string(),
            line: None,
            custom_id: Some(id.clone()),
            reason,
            fatal: false,
        };
        if bytes.len() > self.options.max_line_bytes {
            return Err(bad(format!(
                "document is larger than the limit of {} bytes; raise input.max_line_bytes",
                self.options.max_line_bytes
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            bad(format!(
                "not valid UTF-8 at byte {}; re-encode the file as UTF-8",
                e.utf8_error().valid_up_to()
            ))
        })?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
        self.produced += 1;
        let mut fields = Map::new();
        fields.insert("id".into(), Value::String(id.clone()));
        fields.insert("text".into(), Value::String(text));
        fields.insert("path".into(), Value::String(id.clone()));
        Ok(Item::Document {
            id,
            fields,
            line: self.produced,
        })
    }

    pub async fn next(&mut self) -> Option<Result<Item, InputError>> {
        if self.done {
            return None;
        }
        let result = match &mut self.walk {
            Walk::Folder { .. } => self.next_file().await,
            Walk::Objects { .. } => self.next_object().await,
        };
        if result.is_none() {
            self.done = true;
            if self.produced == 0 {
                let name = match &self.walk {
                    Walk::Folder { root, .. } => root.display().to_string(),
                    Walk::Objects { name, .. } => name.clone(),
                };
                return Some(Err(InputError::fatal(
                    name,
                    "the input holds no .txt or .md documents",
                )));
            }
        }
        result
    }

    async fn next_file(&mut self) -> Option<Result<Item, InputError>> {
        loop {
            let Walk::Folder { root, dirs, files } = &mut self.walk else {
                return None;
            };
            if let Some(file) = files.next() {
                let id = file
                    .strip_prefix(&*root)
                    .unwrap_or(&file)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let location = file.display().to_string();
                let bytes = match tokio::fs::read(&file).await {
                    Ok(b) => b,
                    Err(e) => {
                        return Some(Err(InputError::fatal(
                            location,
                            format!("cannot read: {e}"),
                        )));
                    }
                };
                return Some(self.document(id, bytes, &location));
            }
            let dir = dirs.pop()?;
            let mut entries = match std::fs::read_dir(&dir) {
                Ok(rd) => rd.filter_map(Result::ok).collect::<Vec<_>>(),
                Err(e) => {
                    return Some(Err(InputError::fatal(
                        dir.display().to_string(),
                        format!("cannot list folder: {e}"),
                    )));
                }
            };
            entries.sort_by_key(|e| e.file_name());
            let mut found = Vec::new();
            let mut subdirs = Vec::new();
            for entry in entries {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    subdirs.push(path);
                } else if is_document(&entry.file_name().to_string_lossy()) {
                    found.push(path);
                } else {
                    self.skipped += 1;
                }
            }
            subdirs.reverse();
            dirs.extend(subdirs);
            *files = found.into_iter();
        }
    }

    async fn next_object(&mut self) -> Option<Result<Item, InputError>> {
        loop {
            let Walk::Objects {
                store,
                name,
                listing,
                prefix,
            } = &mut self.walk
            else {
                return None;
            };
            let (key, meta) = match listing.next().await? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(InputError::fatal(name.clone(), e.to_string()))),
            };
            if !is_document(&key) {
                self.skipped += 1;
                continue;
            }
            let store = store.clone();
            let id = key
                .strip_prefix(prefix.trim_end_matches('/'))
                .unwrap_or(&key)
                .trim_start_matches('/')
                .to_string();
            let location = format!("{}/{}", name.trim_end_matches('/'), id);
            let bytes = match store.get(&meta.location).await {
                Ok(b) => b.to_vec(),
                Err(e) => return Some(Err(InputError::fatal(location, e.to_string()))),
            };
            return Some(self.document(id, bytes, &location));
        }
    }
}
