//! Service-account sign-in with domain-wide delegation: the OAuth 2.0 JWT-bearer grant
//! (RFC 7523) as Google documents it for service accounts
//! (developers.google.com/identity/protocols/oauth2/service-account#httprest). One token per
//! impersonated user and API scope, cached, renewed five minutes before it expires and at once
//! when an API rejects it. The key file's `token_uri` is used as given. Keys and tokens never
//! appear in errors or logs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_core::{Error, Result};
use ferry_http::{describe_reqwest, host_of, AccessToken, OAuthError, Rs256Key};
use serde::Deserialize;

use crate::api::Api;

/// A service-account key file (the JSON the Cloud console downloads).
pub struct ServiceAccountKey {
    /// `client_email`: the service account that signs.
    pub client_email: String,
    /// `client_id`: the number the Admin console's domain-wide delegation lists.
    pub client_id: String,
    /// `private_key_id`, sent as the JWT's `kid`.
    pub private_key_id: Option<String>,
    /// `token_uri`, used as given.
    pub token_uri: String,
    key: Rs256Key,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("client_id", &self.client_id)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    client_email: String,
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Reads a key file's text; the error says what is wrong without quoting the key.
    pub fn from_json(text: &str) -> std::result::Result<ServiceAccountKey, String> {
        let f: KeyFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a service-account key file (JSON could not be read at line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if f.kind != "service_account" {
            return Err(format!(
                "the key file's \"type\" is {:?}, not \"service_account\": create a key for a service account (IAM & Admin → Service accounts → Keys → Add key → JSON)",
                f.kind
            ));
        }
        if f.client_email.is_empty() || f.private_key.is_empty() {
            return Err("the key file has no client_email or private_key".into());
        }
        let key = Rs256Key::from_pem(&f.private_key)?
            .ok_or("the key file's private_key holds no -----BEGIN PRIVATE KEY----- block")?;
        Ok(ServiceAccountKey {
            client_email: f.client_email,
            client_id: f.client_id,
            private_key_id: f.private_key_id,
            token_uri: f
                .token_uri
                .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into()),
            key,
        })
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<AccessToken>>>;

/// Gets and caches access tokens, one per (impersonated user, API).
pub struct Auth {
    http: reqwest::Client,
    key: ServiceAccountKey,
    slots: Mutex<HashMap<(String, Api), Slot>>,
    issued: AtomicU64,
}

impl Auth {
    /// Signs in with `key`.
    pub fn new(http: reqwest::Client, key: ServiceAccountKey) -> Auth {
        Auth {
            http,
            key,
            slots: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
        }
    }

    /// The service account's e-mail address.
    pub fn client_email(&self) -> &str {
        &self.key.client_email
    }

    /// Tokens fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    fn slot(&self, user: &str, api: Api) -> Slot {
        self.slots
            .lock()
            .expect("token slots")
            .entry((user.to_ascii_lowercase(), api))
            .or_default()
            .clone()
    }

    /// A valid token for acting as `user` on `api`.
    pub async fn token(&self, user: &str, api: Api) -> Result<String> {
        let slot = self.slot(user, api);
        // One fetch per user and API at a time; the others wait and take its token.
        let mut cached = slot.lock().await;
        if let Some(t) = cached.as_ref() {
            if Instant::now() < t.renew_after {
                return Ok(t.value.clone());
            }
        }
        let t = self.fetch(user, api).await?;
        let value = t.value.clone();
        *cached = Some(t);
        Ok(value)
    }

    /// Forgets `token` after an API rejected it, so the next request fetches a new one.
    pub async fn reject(&self, user: &str, api: Api, token: &str) {
        let slot = self.slot(user, api);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == token) {
            *cached = None;
        }
    }

    async fn fetch(&self, user: &str, api: Api) -> Result<AccessToken> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key.private_key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.key.client_email,
            "sub": user,
            "scope": api.scope(),
            "aud": self.key.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = self
            .key
            .key
            .sign(&header, &claims)
            .map_err(|e| Error::fatal(format!("cannot sign in as the service account: {e}")))?;
        let asked = Instant::now();
        let response = self
            .http
            .post(&self.key.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| {
                Error::transient(format!(
                    "signing in as {user}: cannot reach the token endpoint {}: {}",
                    host_of(&self.key.token_uri),
                    describe_reqwest(&e)
                ))
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            Error::transient(format!(
                "signing in as {user}: the token endpoint's answer broke off: {}",
                describe_reqwest(&e)
            ))
        })?;
        if status.is_success() {
            let t = ferry_http::token_from_answer(&body, asked).ok_or_else(|| {
                Error::transient(format!(
                    "signing in as {user}: the token endpoint answered {status} without an access token"
                ))
            })?;
            self.issued.fetch_add(1, Ordering::Relaxed);
            return Ok(t);
        }
        let e = OAuthError::from_answer(&body);
        Err(self.explain(user, api, status.as_u16(), &e))
    }

    /// One sentence for a refused grant, with what to do.
    fn explain(&self, user: &str, api: Api, status: u16, e: &OAuthError) -> Error {
        let said = if e.error_description.is_empty() {
            format!("{status} {}", e.error)
        } else {
            format!("{status} {}: {}", e.error, e.error_description)
        };
        let desc = e.error_description.to_ascii_lowercase();
        match e.error.as_str() {
            "unauthorized_client" | "access_denied" => Error::fatal(format!(
                "Google refused the scope {} for the service account {} ({said}): in the Admin console (Security → Access and data control → API controls → Domain-wide delegation) add {} to client ID {}",
                api.scope(),
                self.key.client_email,
                api.scope(),
                if self.key.client_id.is_empty() { "of the service account" } else { &self.key.client_id }
            )),
            "invalid_grant" if desc.contains("signature") || desc.contains("account not found") => Error::fatal(format!(
                "Google rejected the service account key of {} ({said}): the key may have been deleted or the account disabled; create a new JSON key in the Cloud console (IAM & Admin → Service accounts → Keys)",
                self.key.client_email
            )),
            "invalid_grant" if desc.contains("email") || desc.contains("user") => Error::permanent(format!(
                "Google does not know {user} ({said}): check the address (--users, --admin) and that the user exists in the domain"
            )),
            "invalid_grant" => Error::fatal(format!(
                "Google refused the sign-in as {user} ({said}): check that this machine's clock is right (the signed assertion is valid for one hour) and that the key is current"
            )),
            "invalid_scope" => Error::fatal(format!(
                "Google does not accept the scope {} ({said}); check --google-endpoint",
                api.scope()
            )),
            _ if status >= 500 || status == 429 => Error::transient(format!(
                "signing in as {user}: the token endpoint is busy or failing ({said})"
            )),
            _ => Error::fatal(format!(
                "signing in as {user} with the service account {}: the token endpoint answered {said}",
                self.key.client_email
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_errors_say_what_is_wrong_without_quoting_the_key() {
        let e = ServiceAccountKey::from_json("{").unwrap_err();
        assert!(e.contains("not a service-account key"), "{e}");
        let e =
            ServiceAccountKey::from_json(r#"{"type":"authorized_user","private_key":"SECRET"}"#)
                .unwrap_err();
        assert!(
            e.contains("service_account") && !e.contains("SECRET"),
            "{e}"
        );
        let e = ServiceAccountKey::from_json(
            r#"{"type":"service_account","client_email":"a@b","private_key":"no pem"}"#,
        )
        .unwrap_err();
        assert!(e.contains("PRIVATE KEY"), "{e}");
    }
}
