//! Folders and object-store prefixes: every `*.txt` / `*.md` below them is one document.

use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use serde_json::{Map, Value};
use tokio::io::AsyncRead;

use super::{InputError, InputOptions, Item, check_id};
use crate::error::StoreError;
use crate::storage::ResultStore;

fn is_document(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".txt") || lower.ends_with(".md")
}

/// False for a document outside [`InputOptions::only`]: not read, not counted.
fn wanted(options: &InputOptions, id: &str) -> bool {
    options.only.as_ref().is_none_or(|only| only.contains(id))
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
    /// Documents found, valid or not: a folder of only bad documents is not an empty one.
    seen: u64,
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
            seen: 0,
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
            seen: 0,
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

    fn limit(&self) -> u64 {
        u64::try_from(self.options.max_line_bytes).unwrap_or(u64::MAX)
    }

    fn too_large(&self) -> String {
        format!(
            "document is larger than the limit of {} bytes; raise input.max_line_bytes",
            self.options.max_line_bytes
        )
    }

    /// A document found but not read, and why.
    fn refuse(&mut self, id: &str, location: &str, reason: String) -> InputError {
        self.seen += 1;
        let id_ok = check_id("document path", id).is_none();
        InputError {
            // Debug formatting escapes the characters that made the name unusable.
            location: if id_ok {
                location.to_string()
            } else {
                format!("{location:?}")
            },
            line: None,
            custom_id: id_ok.then(|| id.to_string()),
            reason,
            fatal: false,
        }
    }

    fn document(&mut self, id: String, bytes: Vec<u8>, location: &str) -> Result<Item, InputError> {
        // A file name can hold what an id may not (a newline, a direction override): then
        // the error names the file by its location only.
        let id_problem = check_id("document path", &id);
        self.seen += 1;
        let location = match &id_problem {
            // Debug formatting escapes the characters that made the name unusable.
            Some(_) => format!("{location:?}"),
            None => location.to_string(),
        };
        let bad = |reason: String| InputError {
            location: location.clone(),
            line: None,
            custom_id: id_problem.is_none().then(|| id.clone()),
            reason,
            fatal: false,
        };
        if let Some(reason) = id_problem.clone() {
            return Err(bad(reason));
        }
        if bytes.len() > self.options.max_line_bytes {
            return Err(bad(self.too_large()));
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
            if self.seen == 0 {
                let name = match &self.walk {
                    Walk::Folder { root, .. } => root.display().to_string(),
                    Walk::Objects { name, .. } => name.clone(),
                };
                let skipped = match self.skipped {
                    0 => String::new(),
                    n => format!(" ({n} other file(s) skipped)"),
                };
                return Some(Err(InputError::fatal(
                    name,
                    format!("the input holds no .txt or .md documents{skipped}"),
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
                if !wanted(&self.options, &id) {
                    continue;
                }
                let location = file.display().to_string();
                // Looked at before reading: a pipe named `x.txt` would block the read forever,
                // and a huge file would be read whole into memory.
                match tokio::fs::metadata(&file).await {
                    Ok(m) if !m.is_file() => {
                        let reason = "is not a regular file (a pipe, socket or device); only regular files are read as documents";
                        return Some(Err(self.refuse(&id, &location, reason.into())));
                    }
                    Ok(m) if m.len() > self.limit() => {
                        let reason = self.too_large();
                        return Some(Err(self.refuse(&id, &location, reason)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Some(Err(InputError::fatal(
                            location,
                            format!("cannot read: {e}"),
                        )));
                    }
                }
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
            if !wanted(&self.options, &id) {
                continue;
            }
            let location = format!("{}/{}", name.trim_end_matches('/'), id);
            if meta.size > self.limit() {
                let reason = self.too_large();
                return Some(Err(self.refuse(&id, &location, reason)));
            }
            let bytes = match store.get(&meta.location).await {
                Ok(b) => b.to_vec(),
                Err(e) => return Some(Err(InputError::fatal(location, e.to_string()))),
            };
            return Some(self.document(id, bytes, &location));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::input::KnownNames;

    fn options(only: Option<&[&str]>) -> InputOptions {
        InputOptions {
            max_line_bytes: 1 << 20,
            task: Some("t".into()),
            names: KnownNames {
                models: BTreeSet::new(),
                tasks: BTreeSet::from(["t".to_string()]),
            },
            only: only.map(|ids| Arc::new(ids.iter().map(|s| s.to_string()).collect())),
        }
    }

    async fn ids(lister: &mut DocumentLister) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        while let Some(item) = lister.next().await {
            out.push(
                item.map(|i| i.custom_id().to_string())
                    .map_err(|e| e.to_string()),
            );
        }
        out
    }

    #[tokio::test]
    async fn documents_outside_the_selection_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "first").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.md"), "second").unwrap();
        // Unreadable as a document: reading it (or even refusing it) would show in the items.
        std::fs::write(dir.path().join("big.txt"), vec![b'x'; 2 << 20]).unwrap();

        let mut all = DocumentLister::folder(dir.path(), options(None)).unwrap();
        let every = ids(&mut all).await;
        assert_eq!(every.len(), 3, "{every:?}");
        assert!(every.iter().any(|r| r.is_err()), "{every:?}");

        let mut some = DocumentLister::folder(dir.path(), options(Some(&["sub/b.md"]))).unwrap();
        assert_eq!(ids(&mut some).await, vec![Ok("sub/b.md".to_string())]);
    }
}
