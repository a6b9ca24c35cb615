//! The object-storage layout of a batch:
//!
//! ```text
//! batches/<batch_id>/segments/<w>-<n>.jsonl  outcomes, many per object (see `segments`)
//! batches/<batch_id>/results/<job_id>.json   one outcome per job (batches from before segments)
//! batches/<batch_id>/output.jsonl            successes
//! batches/<batch_id>/errors.jsonl            failures
//! batches/<batch_id>/manifest.json           counts, spend, tokens, timings, final state
//! ```
//!
//! Job ids are hex digests, so no user-supplied custom id ever becomes part of a key.
//!
//! - `file_writer`: writes and whole-object reads of a `file://` store on threads of their own.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{StoreError, redact};
use crate::keys;

mod file_writer;
use file_writer::FileWriter;

/// The objects of one storage URL, with the batch layout on top.
#[derive(Clone)]
pub struct ResultStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// `file://` stores only: writes go through threads of their own.
    files: Option<FileWriter>,
}

impl std::fmt::Debug for ResultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStore")
            .field("url", &self.url)
            .finish()
    }
}

/// Environment variable prefixes whose values configure cloud stores.
const CLOUD_ENV_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

impl ResultStore {
    /// Opens `url` (`file://DIR`, `s3://bucket/prefix`, `gs://`, `az://`). Credentials and
    /// endpoints come from `env` (the standard `AWS_*`, `GOOGLE_*`, `AZURE_*` variables).
    pub fn open(url: &str, env: &BTreeMap<String, String>) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: redact(url),
            reason,
        };
        if let Some(dir) = url.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(bad(
                    "a file:// url needs a folder, e.g. file://./batchyard-data".into(),
                ));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| bad(format!("cannot create folder {dir}: {e}")))?;
            let fs = Arc::new(
                LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(format!("cannot open folder {dir}: {e}")))?,
            );
            let files = FileWriter::start(Arc::clone(&fs), file_writer::WRITER_THREADS)
                .map_err(|e| bad(format!("cannot start the file writer threads: {e}")))?;
            return Ok(Self {
                store: fs,
                prefix: Path::default(),
                url: url.to_string(),
                files: Some(files),
            });
        }
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        match parsed.scheme() {
            "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "azure" => {}
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}; use file://, s3://, gs:// or az://"
                )));
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("the url names no bucket".into()));
        }
        // The url is stored in batch records and shown: keys in it would be kept in clear.
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad(
                "holds a user name or password; remove them and give the keys in the AWS_* / GOOGLE_* / AZURE_* variables".into(),
            ));
        }
        let options = env
            .iter()
            .filter(|(k, _)| CLOUD_ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()));
        let (store, prefix) = object_store::parse_url_opts(&parsed, options)
            .map_err(|e| bad(redact(&e.to_string())))?;
        Ok(Self {
            store: Arc::from(store),
            prefix,
            url: url.to_string(),
            files: None,
        })
    }

    /// An in-memory store, for tests and the embedded benchmark.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: Path::default(),
            url: "memory://".into(),
            files: None,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn under(&self, rel: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in rel.split('/') {
            path = path.clone().join(part);
        }
        path
    }

    /// The path of `rel` (slash-separated, relative to this store's root), for layouts kept
    /// outside `batches/`, such as the API's uploaded files.
    pub fn path_of(&self, rel: &str) -> Path {
        self.under(rel)
    }

    pub fn batch_dir(&self, batch_id: &str) -> Path {
        self.under(&keys::batch_dir(batch_id))
    }

    pub fn results_dir(&self, batch_id: &str) -> Path {
        self.under(&keys::results_dir(batch_id))
    }

    pub fn result_path(&self, batch_id: &str, job_id: &str) -> Path {
        self.under(&keys::result(batch_id, job_id))
    }

    /// Where the jobs of a batch's input are kept until the batch is final, so a result lost
    /// from storage can be named and run again.
    pub fn input_dir(&self, batch_id: &str) -> Path {
        self.under(&keys::input_dir(batch_id))
    }

    /// One staged chunk of the input: job JSON, one per line.
    pub fn input_chunk_path(&self, batch_id: &str, chunk_no: u64) -> Path {
        self.under(&keys::input_chunk(batch_id, chunk_no))
    }

    pub fn output_path(&self, batch_id: &str) -> Path {
        self.under(&keys::output(batch_id))
    }

    pub fn errors_path(&self, batch_id: &str) -> Path {
        self.under(&keys::errors(batch_id))
    }

    pub fn manifest_path(&self, batch_id: &str) -> Path {
        self.under(&keys::manifest(batch_id))
    }

    /// A human-readable location of `path`, e.g. for the run summary.
    pub fn display_location(&self, path: &Path) -> String {
        // `file://./x` is neither a path nor a URL a browser or `curl` can open.
        if let Some(local) = self.local_path(path)
            && let Ok(url) = url::Url::from_file_path(&local)
        {
            return url.to_string();
        }
        let rel = path
            .as_ref()
            .strip_prefix(self.prefix.as_ref())
            .unwrap_or(path.as_ref())
            .trim_start_matches('/');
        format!("{}/{}", self.url.trim_end_matches('/'), rel)
    }

    /// Where `path` is on this machine's disk, made absolute: `file://` stores only.
    pub fn local_path(&self, path: &Path) -> Option<std::path::PathBuf> {
        self.files.as_ref()?;
        let dir = self.url.strip_prefix("file://")?;
        let root = std::path::absolute(dir).ok()?;
        Some(path.as_ref().split('/').fold(root, |p, part| p.join(part)))
    }

    /// Writes a whole object; an existing one is replaced, so reruns are idempotent.
    pub async fn put(&self, path: &Path, bytes: Bytes) -> Result<(), StoreError> {
        let put = match &self.files {
            Some(files) => files.put(path, bytes).await,
            None => self
                .store
                .put(path, PutPayload::from_bytes(bytes))
                .await
                .map(|_| ()),
        };
        put.map_err(|e| StoreError::from_object_store(path.as_ref(), e))
    }

    pub async fn get(&self, path: &Path) -> Result<Bytes, StoreError> {
        if let Some(files) = &self.files {
            return files
                .get(path)
                .await
                .map_err(|e| StoreError::from_object_store(path.as_ref(), e));
        }
        let result = self
            .store
            .get(path)
            .await
            .map_err(|e| StoreError::from_object_store(path.as_ref(), e))?;
        result
            .bytes()
            .await
            .map_err(|e| StoreError::from_object_store(path.as_ref(), e))
    }

    /// Reads an object as a stream of chunks, so large outputs never sit whole in memory.
    pub async fn get_stream(
        &self,
        path: &Path,
    ) -> Result<BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let result = self
            .store
            .get(path)
            .await
            .map_err(|e| StoreError::from_object_store(path.as_ref(), e))?;
        let name = path.to_string();
        Ok(result
            .into_stream()
            .map_err(move |e| StoreError::from_object_store(&name, e))
            .boxed())
    }

    pub async fn exists(&self, path: &Path) -> Result<bool, StoreError> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError::from_object_store(path.as_ref(), e)),
        }
    }

    /// An object's metadata (size, time), or `None` when it does not exist.
    pub async fn head(&self, path: &Path) -> Result<Option<ObjectMeta>, StoreError> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StoreError::from_object_store(path.as_ref(), e)),
        }
    }

    /// Lists every object under `dir`, streaming.
    pub fn list(&self, dir: &Path) -> BoxStream<'static, Result<ObjectMeta, StoreError>> {
        let name = dir.to_string();
        self.store
            .list(Some(dir))
            .map_err(move |e| StoreError::from_object_store(&name, e))
            .boxed()
    }

    /// Lists objects under a prefix relative to this store's root, with keys relative to it.
    pub fn list_relative(
        &self,
        rel: &str,
    ) -> BoxStream<'static, Result<(String, ObjectMeta), StoreError>> {
        let dir = if rel.is_empty() {
            self.prefix.clone()
        } else {
            self.under(rel.trim_end_matches('/'))
        };
        let root = self.prefix.to_string();
        self.list(&dir)
            .map_ok(move |meta| {
                let full = meta.location.to_string();
                let rel = full
                    .strip_prefix(&root)
                    .unwrap_or(&full)
                    .trim_start_matches('/')
                    .to_string();
                (rel, meta)
            })
            .boxed()
    }

    /// A streaming writer (multipart upload on cloud stores). Call `shutdown` to commit; an
    /// uncommitted writer leaves no object behind.
    pub fn writer(&self, path: &Path) -> BufWriter {
        BufWriter::new(Arc::clone(&self.store), path.clone())
    }

    pub async fn delete(&self, path: &Path) -> Result<(), StoreError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::from_object_store(path.as_ref(), e)),
        }
    }

    pub fn inner(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_named() {
        let env = BTreeMap::new();
        let err = ResultStore::open("ftp://x/y", &env).unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = ResultStore::open("file://", &env).unwrap_err();
        assert!(err.to_string().contains("needs a folder"), "{err}");
        let err = ResultStore::open("s3://user:pw@/x", &env).unwrap_err();
        assert!(!err.to_string().contains("pw@"), "{err}");
    }

    #[tokio::test]
    async fn file_store_round_trips_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("data").display());
        let store = ResultStore::open(&url, &BTreeMap::new()).unwrap();
        let path = store.result_path("b1", "abc");
        store.put(&path, Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(store.get(&path).await.unwrap(), Bytes::from_static(b"{}"));
        let listed: Vec<_> = store
            .list(&store.results_dir("b1"))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert!(dir.path().join("data/batches/b1/results/abc.json").exists());
    }

    fn temp_file_store() -> (tempfile::TempDir, ResultStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = ResultStore::open(&url, &BTreeMap::new()).unwrap();
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_store_writes_from_many_tasks_through_its_threads() {
        let (dir, store) = temp_file_store();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let store = store.clone();
            tasks.spawn(async move {
                let path = store.result_path("b2", &format!("job{i}"));
                // Twice: the second write replaces the first whole.
                store
                    .put(&path, Bytes::from(format!("first {i}")))
                    .await
                    .unwrap();
                store
                    .put(&path, Bytes::from(format!("{{\"n\":{i}}}")))
                    .await
                    .unwrap();
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let listed: Vec<_> = store
            .list(&store.results_dir("b2"))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed.len(), 200);
        for i in [0, 99, 199] {
            let got = store
                .get(&store.result_path("b2", &format!("job{i}")))
                .await
                .unwrap();
            assert_eq!(got, Bytes::from(format!("{{\"n\":{i}}}")));
        }
        // No staging file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("batches/b2/results"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 200, "{names:?}");
        assert!(names.iter().all(|n| !n.contains('#')), "{names:?}");
    }

    #[tokio::test]
    async fn file_store_errors_name_the_object_and_do_not_hang() {
        let (dir, store) = temp_file_store();
        let missing = store.result_path("b3", "nothing");
        let err = store.get(&missing).await.unwrap_err();
        assert!(err.to_string().contains("nothing.json"), "{err}");
        // A file where the batch folder should be: the write fails and says where.
        std::fs::create_dir_all(dir.path().join("batches")).unwrap();
        std::fs::write(dir.path().join("batches/b4"), b"not a folder").unwrap();
        let blocked = store.result_path("b4", "job");
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.put(&blocked, Bytes::from_static(b"{}")),
        )
        .await
        .expect("a failed write must answer")
        .unwrap_err();
        assert!(err.to_string().contains("b4"), "{err}");
    }
}
