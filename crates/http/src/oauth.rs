//! OAuth 2.0 token endpoint answers (RFC 6749 §5), as Entra ID and Google send them.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// An access token and when to fetch the next one.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub value: String,
    /// Renew after this: five minutes before it expires (halfway for short-lived tokens), so
    /// no request goes out with a token about to expire.
    pub renew_after: Instant,
}

#[derive(Deserialize)]
struct Success {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// A successful answer's token (`expires_in` as a number or a decimal string; one hour when
/// absent), or `None` when the body holds no access token. `asked` is when the request went
/// out.
pub fn token_from_answer(body: &[u8], asked: Instant) -> Option<AccessToken> {
    let t: Success = serde_json::from_slice(body).ok()?;
    let lifetime = t
        .expires_in
        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
        .unwrap_or(3600);
    let margin = (lifetime / 2).min(300);
    Some(AccessToken {
        value: t.access_token,
        renew_after: asked + Duration::from_secs(lifetime - margin),
    })
}

/// An error answer: `error` and `error_description` (empty when absent).
#[derive(Debug, Deserialize, Default)]
pub struct OAuthError {
    /// `invalid_grant`, `unauthorized_client`, …
    #[serde(default)]
    pub error: String,
    /// The server's explanation.
    #[serde(default)]
    pub error_description: String,
}

impl OAuthError {
    /// Reads an error body (anything unreadable gives empty fields).
    pub fn from_answer(body: &[u8]) -> OAuthError {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_as_numbers_or_strings_and_margins() {
        let now = Instant::now();
        let t = token_from_answer(br#"{"access_token":"a","expires_in":3600}"#, now).unwrap();
        assert_eq!(t.renew_after - now, Duration::from_secs(3300));
        let t = token_from_answer(br#"{"access_token":"a","expires_in":"60"}"#, now).unwrap();
        assert_eq!(t.renew_after - now, Duration::from_secs(30));
        assert!(token_from_answer(br#"{"error":"x"}"#, now).is_none());
        let e = OAuthError::from_answer(br#"{"error":"invalid_grant","error_description":"d"}"#);
        assert_eq!(
            (e.error.as_str(), e.error_description.as_str()),
            ("invalid_grant", "d")
        );
        assert!(OAuthError::from_answer(b"<html>").error.is_empty());
    }
}
