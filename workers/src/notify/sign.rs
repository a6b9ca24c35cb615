//! The Standard Webhooks signature: `v1,` and the base64 of HMAC-SHA256 over
//! `<webhook-id>.<webhook-timestamp>.<body>`, keyed by the secret (`whsec_` and base64, as
//! the spec's libraries take it), so any of them verifies what batchyard sends.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

/// A webhook secret, read once; never printed.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    /// From the secret's text: `whsec_<base64>` (or the base64 alone).
    pub fn from_secret(text: &str) -> Result<Self, String> {
        let encoded = text.trim().strip_prefix("whsec_").unwrap_or(text.trim());
        let key = STANDARD.decode(encoded).map_err(|_| {
            "is not a Standard Webhooks secret: expected whsec_ and base64 (e.g. from `openssl rand -base64 32`)"
                .to_string()
        })?;
        if key.len() < 16 {
            return Err("is too short: use at least 16 random bytes (24 base64 characters)".into());
        }
        Ok(Self { key })
    }

    /// The `webhook-signature` header's value for one delivery.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = match hmac::Hmac::<sha2_hmac::Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC takes a key of any length.
            Err(_) => return String::new(),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        // The spec's own example (standard-webhooks, "Signature scheme").
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signer.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_secret_that_is_not_base64_or_too_short_is_refused() {
        assert!(Signer::from_secret("not base64 !!").is_err());
        assert!(Signer::from_secret("whsec_c2hvcnQ=").is_err());
        assert!(
            format!(
                "{:?}",
                Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ) == "Signer(***)"
        );
    }
}
