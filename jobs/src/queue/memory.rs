//! In-process queue for `batchyard run` with no Redis. (Written by the queue work.)
