//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! `webhook-signature: v1,<base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"))>`.
//! The key comes from `webhook.secret`: `whsec_<base64>` is the Standard Webhooks form (the key
//! is the decoded bytes), anything else is used as raw UTF-8 bytes.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The Standard Webhooks prefix of a base64 secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Secrets are pasted by hand: accept them with or without the trailing `=` padding.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signing key. Its `Debug` never shows the bytes, so a key in a logged struct leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(<{} bytes>)", self.0.len())
    }
}

/// Why a `webhook.secret` cannot be used. Says nothing about the secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("a `whsec_` secret must be valid base64 after the prefix")]
    BadBase64,
    #[error("the secret is empty")]
    Empty,
}

impl SigningKey {
    /// The key a configured secret stands for.
    pub fn from_secret(secret: &str) -> Result<SigningKey, SecretError> {
        let key = match secret.strip_prefix(SECRET_PREFIX) {
            Some(b64) => SECRET_BASE64
                .decode(b64.trim())
                .map_err(|_| SecretError::BadBase64)?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(SigningKey(key))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length (long ones are hashed, short ones padded), so this
        // never fails; the fallback, an all-zero key, could only make verification fail.
        let mut mac = HmacSha256::new_from_slice(&self.0)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = key.mac(id, timestamp, body).finalize().into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// What a receiver does: true when any `v1,` entry of the (space-separated) header is the
/// signature of this id, timestamp and body. The comparison is constant-time. A receiver should
/// also refuse stale timestamps (see [`timestamp_is_fresh`]) so a captured request cannot be
/// replayed later.
pub fn verify(key: &SigningKey, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header.split_whitespace().any(|entry| {
        let Some(b64) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(tag) = STANDARD.decode(b64) else {
            return false;
        };
        key.mac(id, timestamp, body).verify_slice(&tag).is_ok()
    })
}

/// The Standard Webhooks replay window: a timestamp within `tolerance_secs` of `now`.
pub fn timestamp_is_fresh(timestamp: i64, now: i64, tolerance_secs: i64) -> bool {
    (now - timestamp).abs() <= tolerance_secs
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector (also svix's).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn spec_key() -> SigningKey {
        SigningKey::from_secret(SPEC_SECRET).expect("valid secret")
    }

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        assert_eq!(sign(&spec_key(), SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
        assert!(verify(&spec_key(), SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIG));
    }

    #[test]
    fn verification_refuses_any_change() {
        let k = spec_key();
        assert!(!verify(&k, SPEC_ID, SPEC_TS + 1, SPEC_BODY, SPEC_SIG));
        assert!(!verify(&k, "msg_other", SPEC_TS, SPEC_BODY, SPEC_SIG));
        assert!(!verify(
            &k,
            SPEC_ID,
            SPEC_TS,
            br#"{"test": 2432232315}"#,
            SPEC_SIG
        ));
        let other = SigningKey::from_secret("whsec_c2VjcmV0").expect("valid");
        assert!(!verify(&other, SPEC_ID, SPEC_TS, SPEC_BODY, SPEC_SIG));
        for bad in [
            "",
            "v1,",
            "v1,!!!",
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert!(!verify(&k, SPEC_ID, SPEC_TS, SPEC_BODY, bad), "{bad:?}");
        }
    }

    #[test]
    fn any_entry_of_a_multi_signature_header_may_match() {
        let header = format!("v1,AAAA {SPEC_SIG}");
        assert!(verify(&spec_key(), SPEC_ID, SPEC_TS, SPEC_BODY, &header));
    }

    #[test]
    fn a_plain_secret_is_its_utf8_bytes() {
        // Self-consistent vector, checked independently with Python's hmac module:
        // base64(hmac.new(b"top-secret", b"msg_1.1700000000.{}", sha256).digest()).
        let k = SigningKey::from_secret("top-secret").expect("valid");
        let sig = sign(&k, "msg_1", 1_700_000_000, b"{}");
        assert_eq!(sig, "v1,ZN022FhUk5C1weA7UGngXzN1Tz+svjcAjqvvLoLAxfE=");
        assert!(verify(&k, "msg_1", 1_700_000_000, b"{}", &sig));
        // The prefixed form of the same key: base64("top-secret"), padded or not.
        for prefixed in ["whsec_dG9wLXNlY3JldA==", "whsec_dG9wLXNlY3JldA"] {
            assert_eq!(SigningKey::from_secret(prefixed).ok(), Some(k.clone()));
        }
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        assert_eq!(
            SigningKey::from_secret("whsec_not base64!"),
            Err(SecretError::BadBase64)
        );
        assert_eq!(SigningKey::from_secret(""), Err(SecretError::Empty));
        assert_eq!(SigningKey::from_secret("whsec_"), Err(SecretError::Empty));
        let err = SecretError::BadBase64.to_string();
        assert!(!err.contains("not base64!"));
        let k = SigningKey::from_secret("hunter2").expect("valid");
        assert!(!format!("{k:?}").contains("hunter2"));
    }

    #[test]
    fn replay_window() {
        assert!(timestamp_is_fresh(1000, 1000 + 300, 300));
        assert!(timestamp_is_fresh(1000, 1000 - 300, 300));
        assert!(!timestamp_is_fresh(1000, 1301, 300));
    }
}
