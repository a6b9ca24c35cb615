//! Writes (and whole-object reads) of a `file://` store on a few threads of their own.
//!
//! `LocalFileSystem::put` hands every write to tokio's blocking pool: one thread handoff and
//! wakeup each way per job, and with 64 jobs in flight up to 64 threads creating files in the
//! same folder, which the kernel serialises on the folder's lock anyway (measured on 2 cores:
//! a fifth of the worker's CPU went to spinning on that lock, another fifth to futex wakeups).
//! Here a fixed set of threads takes writes from one queue and runs the very same
//! `LocalFileSystem::put` inline (outside a runtime it does not spawn), so the files on disk,
//! the staging-and-rename and the errors are exactly object_store's.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::executor::block_on;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::oneshot;

/// Threads per store: file creation in one folder is serialised by the kernel, so more threads
/// only add contention; two keep one creating while the other writes or renames.
pub const WRITER_THREADS: usize = 2;

enum Op {
    Put {
        path: Path,
        bytes: Bytes,
        done: oneshot::Sender<object_store::Result<()>>,
    },
    Get {
        path: Path,
        done: oneshot::Sender<object_store::Result<Bytes>>,
    },
}

/// The sending side; the threads end once every clone of it is dropped and the queue is empty.
#[derive(Clone)]
pub(crate) struct FileWriter {
    queue: Sender<Op>,
}

impl FileWriter {
    pub(crate) fn start(fs: Arc<LocalFileSystem>, threads: usize) -> std::io::Result<Self> {
        let (queue, rx) = mpsc::channel::<Op>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let (fs, rx) = (Arc::clone(&fs), Arc::clone(&rx));
            // Not tracked by the shutdown token on purpose: a thread outlives nothing but its
            // queue, and it finishes every write it was handed (each has a caller waiting for
            // it) before it sees the queue closed.
            std::thread::Builder::new()
                .name(format!("batchyard-file-writer-{i}"))
                .spawn(move || write_until_closed(&fs, &rx))?;
        }
        Ok(Self { queue })
    }

    pub(crate) async fn put(&self, path: &Path, bytes: Bytes) -> object_store::Result<()> {
        let (done, written) = oneshot::channel();
        let put = Op::Put {
            path: path.clone(),
            bytes,
            done,
        };
        self.queue.send(put).map_err(|_| stopped())?;
        written.await.map_err(|_| stopped())?
    }

    /// A whole small object (a job's result), read on the same threads.
    pub(crate) async fn get(&self, path: &Path) -> object_store::Result<Bytes> {
        let (done, read) = oneshot::channel();
        let get = Op::Get {
            path: path.clone(),
            done,
        };
        self.queue.send(get).map_err(|_| stopped())?;
        read.await.map_err(|_| stopped())?
    }
}

fn write_until_closed(fs: &LocalFileSystem, rx: &Mutex<Receiver<Op>>) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(op) = next else { return };
        // A caller may have given up (its task was aborted): the answer is dropped, the file is
        // written either way.
        match op {
            Op::Put { path, bytes, done } => {
                let payload = PutPayload::from_bytes(bytes);
                let _ = done.send(block_on(fs.put(&path, payload)).map(|_| ()));
            }
            Op::Get { path, done } => {
                let _ = done.send(block_on(async { fs.get(&path).await?.bytes().await }));
            }
        }
    }
}

fn stopped() -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: "the file writer threads stopped; restart the process".into(),
    }
}
