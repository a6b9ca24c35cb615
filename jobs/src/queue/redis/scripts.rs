//! The Lua scripts of the Redis queue. Each one touches only the keys it is given, all of
//! which share the queue's `{name}` hash tag, so they run on one Redis Cluster slot.

use redis::Script;

/// The scripts, compiled once per queue (hashing only; Redis loads them on first use and
/// again after a restart, through `EVALSHA` falling back on `NOSCRIPT`).
pub(super) struct Scripts {
    pub enqueue: Script,
    pub stage: Script,
    pub publish: Script,
    pub extend: Script,
    pub reclaim: Script,
    pub promote: Script,
    pub ack: Script,
    pub retry: Script,
    pub dead: Script,
    pub depth: Script,
    pub dead_list: Script,
    pub housekeeping: Script,
    pub park: Script,
    pub release: Script,
    pub fair_publish: Script,
    pub refill: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            enqueue: Script::new(include_str!("../scripts/enqueue.lua")),
            stage: Script::new(include_str!("../scripts/stage.lua")),
            publish: Script::new(include_str!("../scripts/publish.lua")),
            extend: Script::new(include_str!("../scripts/extend.lua")),
            reclaim: Script::new(include_str!("../scripts/reclaim.lua")),
            promote: Script::new(include_str!("../scripts/promote.lua")),
            ack: Script::new(include_str!("../scripts/ack.lua")),
            retry: Script::new(include_str!("../scripts/retry.lua")),
            dead: Script::new(include_str!("../scripts/dead.lua")),
            depth: Script::new(include_str!("../scripts/depth.lua")),
            dead_list: Script::new(include_str!("../scripts/dead_list.lua")),
            housekeeping: Script::new(include_str!("../scripts/housekeeping.lua")),
            park: Script::new(include_str!("../scripts/park.lua")),
            release: Script::new(include_str!("../scripts/release.lua")),
            fair_publish: Script::new(include_str!("../scripts/fair_publish.lua")),
            refill: Script::new(include_str!("../scripts/refill.lua")),
        }
    }
}
