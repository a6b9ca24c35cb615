//! Checking an AWS SigV4 signature the way AWS does: recompute it from the request with the
//! secret the fake knows (`--bedrock-secret`) and compare. Written from the SigV4 spec with
//! `sha2` alone, independent of the `aws-sigv4` crate the client signs with, so the two
//! checking each other means something (and `scripts/bedrock_sigv4_check.py` adds botocore).
//!
//! The canonical URI is the path as received, each segment percent-encoded once more (the
//! "double encoding" of every service but S3): `/model/a%3A0/converse` is canonical as
//! `/model/a%253A0/converse`.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// Why a signature is refused, as AWS names it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No usable `Authorization` (`MissingAuthenticationTokenException`).
    Missing,
    /// An unknown access key id (`UnrecognizedClientException`).
    UnknownKey(String),
    /// The signature differs (`InvalidSignatureException`), or the header is malformed.
    Invalid(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().to_vec()
}

/// Each byte of a path segment but the unreserved ones, percent-encoded.
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn canonical_uri(raw_path: &str) -> String {
    raw_path
        .split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// The query's pairs sorted by name then value, each name and value encoded as SigV4 wants
/// (decoded first, so `+`, `%20` and a bare space agree).
fn canonical_query(query: &str) -> String {
    let decode = |s: &str| -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                (b'+', _) => out.push(b' '),
                (b, _) => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode_segment(&decode(k)), encode_segment(&decode(v)))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The parts of `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`.
struct Authorization<'a> {
    key_id: &'a str,
    scope: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=')?;
        match name {
            "Credential" => credential = Some(value),
            "SignedHeaders" => signed_headers = Some(value),
            "Signature" => signature = Some(value),
            _ => return None,
        }
    }
    let (key_id, scope) = credential?.split_once('/')?;
    Some(Authorization {
        key_id,
        scope,
        signed_headers: signed_headers?,
        signature: signature?,
    })
}

/// The parts of a request a signature covers.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The path as received, still percent-encoded.
    pub raw_path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Checks the SigV4 signature of one request for `service`, signed with `key_id` / `secret`.
pub fn verify(
    request: &Signed<'_>,
    service: &str,
    key_id: &str,
    secret: &str,
) -> Result<(), Refusal> {
    let Signed {
        method,
        raw_path,
        query,
        headers,
        body,
    } = *request;
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(Refusal::Missing)?;
    let auth = parse_authorization(value).ok_or(Refusal::Missing)?;
    if auth.key_id != key_id {
        return Err(Refusal::UnknownKey(auth.key_id.to_owned()));
    }
    let invalid = |why: &str| Refusal::Invalid(why.to_owned());
    let scope: Vec<&str> = auth.scope.split('/').collect();
    let [date, region, scope_service, "aws4_request"] = scope.as_slice() else {
        return Err(invalid("the credential scope is malformed"));
    };
    if *scope_service != service {
        return Err(invalid("the credential scope names another service"));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| invalid("x-amz-date is missing"))?;
    if !amz_date.starts_with(date) {
        return Err(invalid("x-amz-date and the credential scope disagree"));
    }
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    for needed in ["host", "x-amz-date"] {
        if !signed.contains(&needed) {
            return Err(invalid("host and x-amz-date must be signed"));
        }
    }
    if headers.contains_key("x-amz-security-token") && !signed.contains(&"x-amz-security-token") {
        return Err(invalid("x-amz-security-token must be signed"));
    }
    let mut canonical_headers = String::new();
    for name in &signed {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{}",
        canonical_uri(raw_path),
        canonical_query(query),
        auth.signed_headers,
        sha256_hex(body)
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
        auth.scope,
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [*region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let expected = hex(&hmac(&key, to_sign.as_bytes()));
    if expected == auth.signature {
        Ok(())
    } else {
        Err(invalid("the signature differs"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        h
    }

    /// The request botocore signs in `scripts/bedrock_sigv4_check.py` (its known answer).
    #[test]
    fn botocores_known_answer_verifies_and_a_wrong_secret_does_not() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=3fe350d41fc5c1d341b5c3da147192aff09282849d822000283fe41f3b79bf02";
        let h = headers(&[
            ("authorization", auth),
            ("content-type", "application/json"),
            ("host", "127.0.0.1:8080"),
            ("x-amz-date", "20231114T221320Z"),
        ]);
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;
        let path = "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse";
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let check = |path: &str, secret: &str, key: &str| {
            let request = Signed {
                method: "POST",
                raw_path: path,
                query: "",
                headers: &h,
                body,
            };
            verify(&request, "bedrock", key, secret)
        };
        assert_eq!(check(path, secret, "AKIDEXAMPLE"), Ok(()));
        assert!(matches!(
            check(path, "wrong", "AKIDEXAMPLE"),
            Err(Refusal::Invalid(_))
        ));
        // The path as the signer saw it matters: a singly encoded canonical path differs.
        assert!(
            check(
                "/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse",
                secret,
                "AKIDEXAMPLE"
            )
            .is_err()
        );
        assert!(matches!(
            check(path, secret, "AKIDOTHER"),
            Err(Refusal::UnknownKey(_))
        ));
        let none = HeaderMap::new();
        let bare = Signed {
            method: "POST",
            raw_path: path,
            query: "",
            headers: &none,
            body,
        };
        assert_eq!(verify(&bare, "bedrock", "a", "b"), Err(Refusal::Missing));
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
