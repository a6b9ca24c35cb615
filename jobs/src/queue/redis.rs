//! Redis Streams queue. (Written by the queue work.)
