//! What an id may hold, decided by Unicode general category rather than by a list of code
//! points, so characters added to a category later are refused as well.

use std::ffi::OsStr;

use unicode_general_category::{GeneralCategory as Gc, get_general_category};

/// The longest custom id (or document id) accepted, in bytes. Ids are repeated in every
/// output line, in logs and in Redis, so an id the size of a document is refused.
pub const MAX_ID_BYTES: usize = 1024;

/// Letters and symbols that render as nothing at all. They are not format characters, so no
/// category names them; this is the one list, of fillers that exist to be blank.
const BLANK_GLYPHS: [char; 5] = [
    '\u{115F}', // HANGUL CHOSEONG FILLER
    '\u{1160}', // HANGUL JUNGSEONG FILLER
    '\u{2800}', // BRAILLE PATTERN BLANK
    '\u{3164}', // HANGUL FILLER
    '\u{FFA0}', // HALFWIDTH HANGUL FILLER
];

const ZWJ: char = '\u{200D}';
const BLACK_FLAG: char = '\u{1F3F4}';
const CANCEL_TAG: char = '\u{E007F}';
const KEYCAP: char = '\u{20E3}';

/// Why an id (`field` names it in the message) can't be used, or `None` when it can.
///
/// Ids are shown in terminals, logs and files downstream, so ids that hide what they are
/// are refused: controls (Cc), format characters (Cf: zero-width, direction overrides, tags),
/// line and paragraph separators (Zl, Zp: a reader splitting on Unicode line breaks would see
/// two records), blank-glyph fillers, and marks with nothing to combine with. The format
/// characters and selectors of ordinary emoji are kept: a variation selector after a symbol,
/// a ZWJ between two emoji, the tags of a flag sequence. Path-like ids (`../x`) are
/// accepted, as OpenAI accepts them: results are stored under a hash of the id, so they can't
/// climb out of the batch (tests/embedded.rs). The message never repeats the id itself: it
/// may be huge or hostile.
pub fn check_id(field: &str, id: &str) -> Option<String> {
    if id.trim().is_empty() {
        return Some(format!("{field:?} is empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!(
            "{field:?} is {} bytes long; at most {MAX_ID_BYTES} are allowed",
            id.len()
        ));
    }
    let chars: Vec<char> = id.chars().collect();
    let (i, problem) = first_problem(&chars)?;
    let code = u32::from(chars[i]);
    Some(match problem {
        Problem::Control => format!(
            "{field:?} contains the control character U+{code:04X}; use printable characters only"
        ),
        Problem::Hidden => format!(
            "{field:?} contains the invisible or direction-changing character U+{code:04X}, so it would not read as what it is; remove it"
        ),
        Problem::Separator => format!(
            "{field:?} contains the line or paragraph separator U+{code:04X}, which some readers take for a line break; remove it"
        ),
        Problem::Blank => format!(
            "{field:?} contains the blank filler character U+{code:04X}, which shows as nothing; remove it"
        ),
        Problem::LoneMark => format!(
            "{field:?} contains the combining mark U+{code:04X} with no character to combine with; remove it"
        ),
    })
}

enum Problem {
    Control,
    Hidden,
    Separator,
    Blank,
    LoneMark,
}

fn first_problem(chars: &[char]) -> Option<(usize, Problem)> {
    let mut in_flag = false;
    for (i, &c) in chars.iter().enumerate() {
        let category = get_general_category(c);
        let prev = i.checked_sub(1).map(|j| chars[j]);
        if c == BLACK_FLAG {
            in_flag = true;
        }
        let problem = match category {
            Gc::Control => Some(Problem::Control),
            Gc::LineSeparator | Gc::ParagraphSeparator => Some(Problem::Separator),
            _ if BLANK_GLYPHS.contains(&c) => Some(Problem::Blank),
            Gc::Format if is_tag(c) && in_flag => {
                if c == CANCEL_TAG {
                    in_flag = false;
                }
                None
            }
            Gc::Format if c == ZWJ && joins_emoji(chars, i) => None,
            Gc::Format => Some(Problem::Hidden),
            _ if is_variation_selector(c) => (!selects(chars, i)).then_some(Problem::Hidden),
            Gc::NonspacingMark | Gc::SpacingMark | Gc::EnclosingMark => {
                let lone = match prev {
                    None => true,
                    // Marks stack (diacritics on a letter, a keycap after its selector).
                    Some(p) => !is_base(p) && !is_mark(p),
                };
                lone.then_some(Problem::LoneMark)
            }
            _ => None,
        };
        if !is_tag(c) && c != BLACK_FLAG {
            in_flag = false;
        }
        if let Some(p) = problem {
            return Some((i, p));
        }
    }
    None
}

fn is_tag(c: char) -> bool {
    ('\u{E0020}'..='\u{E007F}').contains(&c)
}

fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
}

fn is_mark(c: char) -> bool {
    matches!(
        get_general_category(c),
        Gc::NonspacingMark | Gc::SpacingMark | Gc::EnclosingMark
    )
}

/// What a mark can sit on: letters, digits, punctuation and symbols, not spaces or controls.
fn is_base(c: char) -> bool {
    !matches!(
        get_general_category(c),
        Gc::SpaceSeparator
            | Gc::LineSeparator
            | Gc::ParagraphSeparator
            | Gc::Control
            | Gc::Format
            | Gc::Unassigned
            | Gc::Surrogate
    ) && !BLANK_GLYPHS.contains(&c)
        && !is_variation_selector(c)
}

/// Emoji are symbols (So, Sm, and Sk for the skin-tone modifiers).
fn is_symbol(c: char) -> bool {
    matches!(
        get_general_category(c),
        Gc::OtherSymbol | Gc::MathSymbol | Gc::ModifierSymbol
    )
}

/// A variation selector picks a presentation of the character before it: emoji or text for
/// a symbol (also the few emoji that are punctuation or letters, from U+2000 on: `‼`, `ℹ`,
/// `〽`), a glyph variant for an ideograph, and a keycap base (`1`, `#`, `*`) before U+20E3.
/// After an ASCII or Latin letter it selects nothing and only hides in the id.
fn selects(chars: &[char], i: usize) -> bool {
    let Some(&prev) = i.checked_sub(1).and_then(|j| chars.get(j)) else {
        return false;
    };
    let keycap =
        (prev.is_ascii_digit() || prev == '#' || prev == '*') && chars.get(i + 1) == Some(&KEYCAP);
    keycap || is_symbol(prev) || (u32::from(prev) >= 0x2000 && is_base(prev) && !is_mark(prev))
}

/// A ZWJ between two emoji (the one before may carry a selector or a skin-tone modifier).
fn joins_emoji(chars: &[char], i: usize) -> bool {
    let before = chars[..i]
        .iter()
        .rev()
        .find(|c| !is_variation_selector(**c))
        .is_some_and(|c| is_symbol(*c));
    let after = chars.get(i + 1).is_some_and(|c| is_symbol(*c));
    before && after
}

/// A file name or object path as it can be shown and stored: printable characters as they
/// are, every byte that is not UTF-8 as `\xNN`, and any character [`check_id`] would refuse
/// (and the backslash) as `\u{...}` / `\\`. Two different names never give the same text.
pub fn escape_name(name: &OsStr) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        let valid: Vec<char> = chunk.valid().chars().collect();
        let mut bad = vec![false; valid.len()];
        let mut rest: &[char] = &valid;
        let mut offset = 0;
        // Flag every refused character, not just the first.
        while let Some((i, _)) = first_problem(rest) {
            bad[offset + i] = true;
            offset += i + 1;
            rest = &valid[offset..];
        }
        for (c, bad) in valid.iter().zip(bad) {
            match c {
                '\\' => out.push_str("\\\\"),
                c if bad => {
                    let _ = write!(out, "\\u{{{:04X}}}", u32::from(*c));
                }
                c => out.push(*c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        for id in [
            "doc-17",
            "a/b/c.txt",
            "a..b",
            "...",
            "../../etc/passwd",
            "/abs",
            "文档-1",
            "café ☕",
            "cafe\u{301}", // e + combining acute
            "नमस्ते",        // Devanagari with vowel signs and a virama
            "x".repeat(1024).as_str(),
            "love-❤\u{FE0F}.txt",      // emoji presentation selector
            "1\u{FE0F}\u{20E3}-first", // keycap one
            "team-👨\u{200D}👩\u{200D}👧.md",
            "coder-🧑\u{1F3FD}\u{200D}💻",
            "pride-🏳\u{FE0F}\u{200D}🌈",
            "fire-heart-❤\u{FE0F}\u{200D}🔥",
            "wales-🏴\u{E0067}\u{E0062}\u{E0077}\u{E006C}\u{E0073}\u{E007F}.txt",
            "flag-🇫🇷",
            "葛\u{E0100}城",         // an ideographic variation sequence
            "wow-\u{203C}\u{FE0F}",  // a double exclamation emoji is punctuation
            "info-\u{2139}\u{FE0F}", // the information emoji is a letter
            "eye-\u{1F441}\u{FE0F}\u{200D}\u{1F5E8}\u{FE0F}",
            "thumbs-\u{1F44D}\u{1F3FD}",
        ] {
            assert_eq!(check_id("custom_id", id), None, "{id:?}");
        }
    }

    #[test]
    fn hostile_ids_are_refused_without_being_repeated() {
        let long = "y".repeat(MAX_ID_BYTES + 1);
        for (id, reason) in [
            ("", "is empty"),
            (" \t", "is empty"),
            ("a\u{0}b", "control character U+0000"),
            ("a\nb", "U+000A"),
            ("a\u{7f}", "U+007F"),
            ("a\u{85}b", "control character U+0085"),
            ("abc\u{202E}gpj.exe", "direction-changing character U+202E"),
            ("doc\u{200B}1", "U+200B"),
            ("\u{FEFF}doc", "U+FEFF"),
            ("doc\u{00AD}1", "U+00AD"),
            ("doc\u{2061}1", "U+2061"),
            (
                "doc\u{E0041}\u{E0042}",
                "invisible or direction-changing character U+E0041",
            ),
            ("doc\u{E007F}", "U+E007F"),
            (
                "doc\u{FE0F}1",
                "invisible or direction-changing character U+FE0F",
            ),
            ("\u{FE0F}", "U+FE0F"),
            ("a\u{E0100}", "U+E0100"),
            ("caf\u{E9}\u{FE0F}", "U+FE0F"),
            ("a \u{FE0F}", "U+FE0F"),
            ("doc\u{200D}1", "U+200D"),
            ("☕\u{200D}", "U+200D"),
            ("doc-\u{3164}", "blank filler character U+3164"),
            ("\u{2800}\u{2800}", "blank filler character U+2800"),
            ("doc\u{115F}", "U+115F"),
            ("doc\u{FFA0}", "U+FFA0"),
            ("a\u{2028}b", "line or paragraph separator U+2028"),
            ("a\u{2029}b", "separator U+2029"),
            ("\u{301}doc", "combining mark U+0301 with no character"),
            ("doc \u{301}", "combining mark U+0301"),
            ("\u{20E3}", "combining mark U+20E3"),
            (long.as_str(), "at most 1024"),
        ] {
            let message = check_id("custom_id", id).unwrap_or_default();
            assert!(message.contains(reason), "{id:?}: {message}");
            assert!(message.starts_with("\"custom_id\""), "{message}");
            if id.len() > 2 {
                assert!(!message.contains(id), "{message}");
            }
        }
    }

    #[test]
    fn escaped_names_are_distinct_and_usable() {
        use std::os::unix::ffi::OsStrExt;
        let names: [&[u8]; 5] = [
            b"n\xfe.txt",
            b"n\xff.txt",
            "n\u{FFFD}.txt".as_bytes(),
            br"n\xFE.txt",
            "r\u{202E}txt.md".as_bytes(),
        ];
        let escaped: Vec<String> = names
            .iter()
            .map(|n| escape_name(OsStr::from_bytes(n)))
            .collect();
        assert_eq!(
            escaped,
            [
                r"n\xFE.txt",
                r"n\xFF.txt",
                "n\u{FFFD}.txt",
                r"n\\xFE.txt",
                r"r\u{202E}txt.md",
            ]
        );
        for e in &escaped {
            assert_eq!(check_id("path", e), None, "{e}");
        }
        // A valid name is its own escape.
        assert_eq!(escape_name(OsStr::new("a/b ☕.md")), "a/b ☕.md");
    }
}
