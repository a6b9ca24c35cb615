//! Skill mode: a deterministic simulation of whether a model's answer is adequate, for routing
//! benchmarks (`--skills MODEL=SKILL,...`).
//!
//! When the last user message contains `[[difficulty=D]]` (D a number in [0, 1]; the first
//! marker counts; a marker that does not parse, or is out of range, is ignored) and the
//! requested model (the provider-side name in the request's `model`) has a skill, the reply
//! content is `ANSWER: ok` when the model passes the item, else `ANSWER: wrong`:
//!
//! ```text
//! h    = SHA-256(model_name UTF-8 ‖ 0x00 ‖ last_user_message UTF-8)
//! u    = (first 8 bytes of h as a big-endian u64 >> 11) / 2^53        (exact, in [0, 1))
//! q    = 1 / (1 + exp(-12 × (skill − D)))
//! pass = u < q
//! ```
//!
//! So the same request always gets the same answer, and an oracle can be computed offline
//! (Python: `int.from_bytes(hashlib.sha256(m.encode() + b"\0" + t.encode()).digest()[:8],
//! "big") >> 11) / 2**53`). Usage is the fake's usual count: in the OpenAI dialect
//! `prompt_tokens = floor(chars of all message contents / 4) + 4 × messages` (at least 1) and
//! `completion_tokens = ceil(chars of the reply / 4)`: 3 for `ANSWER: ok`, 4 for
//! `ANSWER: wrong`.

use std::error::Error;

use sha2::{Digest as _, Sha256};

/// The steepness of the pass probability around `skill == difficulty`.
pub const K: f64 = 12.0;
pub const PASS: &str = "ANSWER: ok";
pub const FAIL: &str = "ANSWER: wrong";
const MARKER: &str = "[[difficulty=";

/// Parses `MODEL=SKILL,MODEL=SKILL,...` (skills in [0, 1]; a later entry for the same model
/// replaces an earlier one).
pub fn parse(value: &str) -> Result<Vec<(String, f64)>, Box<dyn Error>> {
    let mut skills: Vec<(String, f64)> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((model, skill)) = entry.rsplit_once('=') else {
            return Err(format!("--skills: {entry:?} is not MODEL=SKILL").into());
        };
        let model = model.trim();
        let skill: f64 = match skill.trim().parse() {
            Ok(s) if (0.0..=1.0).contains(&s) => s,
            _ => {
                return Err(format!(
                    "--skills: the skill of {model:?} must be in [0, 1], not {skill:?}"
                )
                .into());
            }
        };
        if model.is_empty() {
            return Err(format!("--skills: {entry:?} names no model").into());
        }
        skills.retain(|(m, _)| m != model);
        skills.push((model.to_owned(), skill));
    }
    if skills.is_empty() {
        return Err("--skills needs at least one MODEL=SKILL".into());
    }
    Ok(skills)
}

/// The difficulty of the first `[[difficulty=D]]` marker in `text`, if it is a number in [0, 1].
pub fn difficulty(text: &str) -> Option<f64> {
    let start = text.find(MARKER)? + MARKER.len();
    let rest = text.get(start..)?;
    let end = rest.find("]]")?;
    let d: f64 = rest.get(..end)?.trim().parse().ok()?;
    (0.0..=1.0).contains(&d).then_some(d)
}

/// A uniform draw in [0, 1) fixed by the model and the text.
pub fn hash01(model: &str, text: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    hasher.update([0u8]);
    hasher.update(text.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits: exactly representable, so Python gets the same number.
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The chance that a model of `skill` passes an item of `difficulty`.
pub fn pass_probability(skill: f64, difficulty: f64) -> f64 {
    1.0 / (1.0 + (-K * (skill - difficulty)).exp())
}

/// `ANSWER: ok` / `ANSWER: wrong` when the text has a difficulty marker and the model a skill;
/// `None` (the usual echo reply) otherwise.
pub fn answer(skills: &[(String, f64)], model: &str, text: &str) -> Option<&'static str> {
    let skill = skills.iter().find(|(m, _)| m == model).map(|(_, s)| *s)?;
    let d = difficulty(text)?;
    Some(if hash01(model, text) < pass_probability(skill, d) {
        PASS
    } else {
        FAIL
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_skills() {
        let skills = parse("tiny=0.25, small=0.5,tiny=0.3").unwrap();
        assert_eq!(skills, vec![("small".into(), 0.5), ("tiny".into(), 0.3)]);
        assert!(parse("tiny").is_err());
        assert!(parse("tiny=1.5").is_err());
        assert!(parse("=0.5").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn finds_the_marker() {
        assert_eq!(difficulty("doc [[difficulty=0.25]] text"), Some(0.25));
        assert_eq!(difficulty("[[difficulty=1]]"), Some(1.0));
        assert_eq!(difficulty("[[difficulty=1.2]]"), None);
        assert_eq!(difficulty("[[difficulty=x]]"), None);
        assert_eq!(difficulty("[[difficulty=0.5"), None);
        assert_eq!(difficulty("no marker"), None);
    }

    /// The same numbers as Python's
    /// `(int.from_bytes(sha256(m.encode() + b"\0" + t.encode()).digest()[:8], "big") >> 11) / 2**53`.
    #[test]
    fn hash01_matches_python() {
        assert_eq!(
            hash01("tiny", "hello"),
            4537324635203489.0 / 9007199254740992.0
        );
        assert_eq!(hash01("tiny", "hello"), 0.5037442280201853);
        assert_eq!(
            hash01("large", "[[difficulty=0.5]] a document"),
            0.05157443355878055
        );
        assert_eq!(hash01("medium", ""), 0.6052664397589334);
    }

    #[test]
    fn answers_only_with_a_marker_and_a_skill() {
        let skills = parse("large=0.99,tiny=0.0").unwrap();
        let text = "[[difficulty=0.5]] a document";
        // u = 0.0516 < q(0.99, 0.5) = 0.997: large passes.
        assert_eq!(answer(&skills, "large", text), Some(PASS));
        assert_eq!(answer(&skills, "tiny", "[[difficulty=1]] hard"), Some(FAIL));
        assert_eq!(answer(&skills, "medium", text), None);
        assert_eq!(answer(&skills, "large", "no marker"), None);
    }

    #[test]
    fn pass_probability_is_a_logistic_around_the_skill() {
        assert!((pass_probability(0.5, 0.5) - 0.5).abs() < 1e-12);
        assert!(pass_probability(1.0, 0.0) > 0.9999);
        assert!(pass_probability(0.0, 1.0) < 0.0001);
    }
}
