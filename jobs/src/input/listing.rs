//! Folders and object-store prefixes: every `*.txt` / `*.md` below them is one document.

use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use serde_json::{Map, Value};
use tokio::io::AsyncRead;

use super::walk::{FolderEntry, FolderWalk, WalkOptions};
use super::{InputError, InputOptions, Item, check_id, escape_name};
use crate::error::StoreError;
use crate::storage::ResultStore;

fn is_document(name: &str) -> bool {
    super::walk::is_document(name.as_ref())
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
        walk: Box<FolderWalk>,
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
        let walk = FolderWalk::new(
            root,
            WalkOptions {
                follow_symlinks: options.follow_symlinks,
            },
        )?;
        Ok(Self {
            walk: Walk::Folder {
                root: root.to_path_buf(),
                walk: Box::new(walk),
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

    /// Entries skipped as not documents (and, of a folder, symbolic links).
    pub fn skipped(&self) -> u64 {
        match &self.walk {
            Walk::Folder { walk, .. } => walk.skipped_other() + walk.skipped_links(),
            Walk::Objects { .. } => self.skipped,
        }
    }

    /// What was skipped, for the skip message: empty when nothing was.
    pub fn skipped_summary(&self) -> String {
        match &self.walk {
            Walk::Folder { walk, .. } => walk.skipped_summary(),
            Walk::Objects { .. } if self.skipped > 0 => {
                format!("{} file(s) that are not .txt or .md", self.skipped)
            }
            Walk::Objects { .. } => String::new(),
        }
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
            location: shown(location, id_ok),
            line: None,
            custom_id: id_ok.then(|| id.to_string()),
            entry: Some(escape_name(id.as_ref())),
            reason,
            fatal: false,
        }
    }

    fn document(&mut self, id: String, bytes: Vec<u8>, location: &str) -> Result<Item, InputError> {
        // A file name can hold what an id may not (a newline, a direction override): then
        // the error names the file by its escaped location only.
        let id_problem = check_id("document path", &id);
        self.seen += 1;
        let location = shown(location, id_problem.is_none());
        let bad = |reason: String| InputError {
            location: location.clone(),
            line: None,
            custom_id: id_problem.is_none().then(|| id.clone()),
            entry: Some(escape_name(id.as_ref())),
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
            line: None,
            location,
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
                let skipped = match self.skipped_summary() {
                    s if s.is_empty() => s,
                    s => format!(" (skipped: {s})"),
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
            let Walk::Folder { walk, .. } = &mut self.walk else {
                return None;
            };
            let (id, file, location, meta) = match walk.next_entry()? {
                Err(e) => return Some(Err(e)),
                Ok(FolderEntry::Refused {
                    location,
                    entry,
                    reason,
                }) => {
                    self.seen += 1;
                    return Some(Err(InputError {
                        location,
                        line: None,
                        custom_id: None,
                        entry: Some(entry),
                        reason,
                        fatal: false,
                    }));
                }
                Ok(FolderEntry::Document {
                    id,
                    path,
                    location,
                    meta,
                }) => (id, path, location, meta),
            };
            if !wanted(&self.options, &id) {
                continue;
            }
            // Looked at before reading: a pipe named `x.txt` would block the read forever,
            // and a huge file would be read whole into memory.
            if !meta.is_file() {
                let reason = "is not a regular file (a pipe, socket or device); only regular files are read as documents";
                return Some(Err(self.refuse(&id, &location, reason.into())));
            }
            if meta.len() > self.limit() {
                let reason = self.too_large();
                return Some(Err(self.refuse(&id, &location, reason)));
            }
            let bytes = match read_regular(&file, self.limit()).await {
                Ok(b) => b,
                Err(e) => {
                    return Some(Err(InputError::fatal(
                        shown(&location, check_id("document path", &id).is_none()),
                        format!("cannot read: {e}"),
                    )));
                }
            };
            return Some(self.document(id, bytes, &location));
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

/// `location` as it can be shown: escaped and quoted when its name is not a usable id.
fn shown(location: &str, id_ok: bool) -> String {
    if id_ok {
        location.to_string()
    } else {
        format!("\"{}\"", escape_name(location.as_ref()))
    }
}

/// Reads a file checked to be regular, never following a link in its last component (one
/// swapped in after the walk looked), and never holding more than `limit` + 1 bytes.
async fn read_regular(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .await?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
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
            follow_symlinks: false,
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
