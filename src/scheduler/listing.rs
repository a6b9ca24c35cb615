//! What a pipeline's input holds right now: every document's id (its path below the input, as
//! submission names it) and a fingerprint that changes when its content does.

use std::collections::BTreeMap;
use std::path::Path;

use batchyard_jobs::input::{FolderEntry, FolderWalk, InputSource, WalkOptions};
use batchyard_jobs::storage::ResultStore;
use futures::StreamExt;

/// Document id -> fingerprint: the object's ETag, else its size and modification time.
pub type Listing = BTreeMap<String, String>;

/// Submission reads only these; listing must agree, or a skipped file would look new forever.
fn is_document(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".txt") || lower.ends_with(".md")
}

/// Lists a folder or object-store prefix. `Err` says why it can't be listed.
pub async fn list_input(
    input: &str,
    follow_symlinks: bool,
    env: &BTreeMap<String, String>,
) -> Result<Listing, String> {
    let source = InputSource::resolve(input).map_err(|e| e.to_string())?;
    match source {
        InputSource::Folder(root) => {
            tokio::task::spawn_blocking(move || list_folder(&root, follow_symlinks))
                .await
                .map_err(|e| format!("listing stopped: {e}"))?
        }
        InputSource::ObjectPrefix { store_url, prefix } => {
            let store = ResultStore::open(&store_url, env).map_err(|e| e.to_string())?;
            let mut listing = store.list_relative(&prefix);
            let mut found = Listing::new();
            while let Some(entry) = listing.next().await {
                let (key, meta) = entry.map_err(|e| format!("cannot list {input}: {e}"))?;
                if !is_document(&key) {
                    continue;
                }
                let id = key
                    .strip_prefix(prefix.trim_end_matches('/'))
                    .unwrap_or(&key)
                    .trim_start_matches('/')
                    .to_string();
                let fingerprint = match &meta.e_tag {
                    Some(tag) => format!("etag:{tag}"),
                    None => format!(
                        "size:{}:mtime:{}",
                        meta.size,
                        meta.last_modified.timestamp_nanos_opt().unwrap_or_default()
                    ),
                };
                found.insert(id, fingerprint);
            }
            Ok(found)
        }
        InputSource::JsonlFile(_) | InputSource::JsonlObject { .. } => Err(format!(
            "{input} is a JSONL file; a pipeline reads a folder (file://...) or a prefix (s3://bucket/prefix/) of .txt/.md documents"
        )),
    }
}

fn list_folder(root: &Path, follow_symlinks: bool) -> Result<Listing, String> {
    let mut found = Listing::new();
    let mut walk =
        FolderWalk::new(root, WalkOptions { follow_symlinks }).map_err(|e| e.to_string())?;
    // Refused entries (a name that is not UTF-8, a link leaving the folder) are left out:
    // submission would refuse them too, and they would look new on every run.
    while let Some(entry) = walk.next_entry() {
        let FolderEntry::Document { id, meta, .. } = entry.map_err(|e| e.to_string())? else {
            continue;
        };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        found.insert(id, format!("size:{}:mtime:{mtime}", meta.len()));
    }
    Ok(found)
}
