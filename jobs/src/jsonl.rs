//! Writing JSON lines that every reader splits the same way.
//!
//! JSON allows U+2028 (LINE SEPARATOR) and U+2029 (PARAGRAPH SEPARATOR) raw inside strings,
//! and serde_json writes them raw, but readers that split on Unicode line breaks (Python's
//! `str.splitlines`, JavaScript before ES2019) would cut such a line in two. Every JSONL line
//! batchyard writes goes through [`to_line`], which writes them as `\u2028` / `\u2029`.

use serde::Serialize;

/// `value` as one JSON line, without the trailing newline.
pub fn to_line<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(value).map(escape_line_separators)
}

/// `value` as one JSON line, as a `String`, without the trailing newline.
pub fn to_line_string<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    to_line(value).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

/// Replaces the UTF-8 bytes of U+2028 and U+2029 with their JSON escapes. In serialized JSON
/// they can only stand inside strings, where the escape means the same character.
pub fn escape_line_separators(bytes: Vec<u8>) -> Vec<u8> {
    const LS: &[u8] = "\u{2028}".as_bytes();
    const PS: &[u8] = "\u{2029}".as_bytes();
    if !bytes.windows(3).any(|w| w == LS || w == PS) {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i..i + 3) {
            Some(w) if w == LS => {
                out.extend_from_slice(br"\u2028");
                i += 3;
            }
            Some(w) if w == PS => {
                out.extend_from_slice(br"\u2029");
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn line_separators_are_escaped_and_read_back_the_same() {
        let value =
            serde_json::json!({"id": "a\u{2028}b", "text": "p\u{2029}q ☕ \u{2027}\u{202A}"});
        let line = to_line(&value).unwrap();
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            !text.contains('\u{2028}') && !text.contains('\u{2029}'),
            "{text}"
        );
        assert!(
            text.contains(r"a\u2028b") && text.contains(r"p\u2029q"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
        // What a reader splitting on every Unicode line break sees: still one record.
        assert_eq!(
            text.split([
                '\n', '\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{0B}', '\u{0C}'
            ])
            .count(),
            1
        );
        let back: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, value);
        // Nothing else changes.
        let plain = serde_json::json!({"id": "x", "text": "☕ \u{2027}"});
        assert_eq!(
            to_line(&plain).unwrap(),
            serde_json::to_vec(&plain).unwrap()
        );
    }
}
