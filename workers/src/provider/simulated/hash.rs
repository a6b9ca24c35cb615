//! Hashing: FNV-1a over a canonical walk of the request body, stable across Rust versions, then
//! a splitmix64 avalanche. Every simulated reply is a pure function of this hash.

use serde_json::{Map, Value};

struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn tag(&mut self, tag: u8) {
        self.bytes(&[tag]);
    }

    fn str(&mut self, s: &str) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Null => self.tag(0),
            Value::Bool(b) => self.bytes(&[1, u8::from(*b)]),
            Value::Number(n) => {
                self.tag(2);
                if let Some(i) = n.as_i64() {
                    self.bytes(&i.to_le_bytes());
                } else if let Some(u) = n.as_u64() {
                    self.bytes(&u.to_le_bytes());
                } else if let Some(f) = n.as_f64() {
                    self.bytes(&f.to_bits().to_le_bytes());
                }
            }
            Value::String(s) => {
                self.tag(3);
                self.str(s);
            }
            Value::Array(items) => {
                self.tag(4);
                self.bytes(&(items.len() as u64).to_le_bytes());
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => self.map(map),
        }
    }

    /// Keys are hashed in sorted order, so key order in the input does not matter.
    fn map(&mut self, map: &Map<String, Value>) {
        self.tag(5);
        self.bytes(&(map.len() as u64).to_le_bytes());
        if map.keys().is_sorted() {
            // The usual case (serde_json's default map is sorted): no allocation.
            for (key, value) in map {
                self.entry(key, value);
            }
        } else {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, value) in entries {
                self.entry(key, value);
            }
        }
    }

    fn entry(&mut self, key: &str, value: &Value) {
        // The `model` field is replaced by the model name, so it does not count.
        if key == "model" {
            return;
        }
        self.str(key);
        self.value(value);
    }
}

pub(super) fn request_hash(seed: u64, model: &str, body: &Map<String, Value>) -> u64 {
    let mut h = Fnv(Fnv::OFFSET);
    h.bytes(&seed.to_le_bytes());
    h.str(model);
    h.map(body);
    // A final avalanche (splitmix64), so near-identical inputs give unrelated streams.
    splitmix(h.0)
}

pub(super) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
