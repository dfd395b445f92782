//! App-only sign-in to Microsoft Entra ID (the client credentials grant): with a client secret,
//! or with a certificate (an RS256-signed client assertion). Tokens are cached, renewed before
//! they expire and renewed at once when Graph rejects one (a 401), so runs that last hours keep
//! going. Secrets never appear in errors or logs.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ferry_core::{Error, Result};
use ferry_http::{pem_blocks, Rs256Key};
use ring::rand::SystemRandom;
use sha1::Digest as _;

/// How the app proves who it is.
pub enum Credential {
    /// A client secret (from `FERRY_M365_CLIENT_SECRET`).
    Secret(String),
    /// A certificate's private key, and the certificate's SHA-1 thumbprint (`x5t`) that tells
    /// Entra ID which of the app's certificates signed the assertion.
    Certificate {
        /// The RSA key.
        key: Rs256Key,
        /// base64url of the SHA-1 of the certificate's DER bytes.
        x5t: String,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret(…)"),
            Credential::Certificate { x5t, .. } => write!(f, "Certificate(x5t={x5t})"),
        }
    }
}

impl Credential {
    /// Reads a PEM file holding the certificate and its private key (the form Azure tools
    /// export: `-----BEGIN CERTIFICATE-----` and `-----BEGIN PRIVATE KEY-----` or
    /// `-----BEGIN RSA PRIVATE KEY-----`, in any order).
    pub fn from_pem(pem: &str) -> std::result::Result<Credential, String> {
        let cert = pem_blocks(pem)?
            .into_iter()
            .find(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| der);
        let key = Rs256Key::from_pem(pem)?;
        let cert = cert.ok_or("no -----BEGIN CERTIFICATE----- block in the file")?;
        let key = key.ok_or("no -----BEGIN PRIVATE KEY----- block in the file")?;
        let x5t = URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&cert));
        Ok(Credential::Certificate { key, x5t })
    }
}

type Token = ferry_http::AccessToken;

/// Gets and caches app-only access tokens for Graph.
pub struct Auth {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    scope: String,
    credential: Credential,
    cached: tokio::sync::Mutex<Option<Token>>,
    issued: std::sync::atomic::AtomicU64,
}

impl Auth {
    /// Tokens for `scope` (`https://graph.microsoft.com/.default`) from
    /// `<login>/<tenant>/oauth2/v2.0/token`.
    pub fn new(
        http: reqwest::Client,
        login_endpoint: &str,
        tenant: &str,
        client_id: &str,
        scope: String,
        credential: Credential,
    ) -> Auth {
        Auth {
            http,
            token_url: format!(
                "{}/{}/oauth2/v2.0/token",
                login_endpoint.trim_end_matches('/'),
                tenant
            ),
            client_id: client_id.to_string(),
            scope,
            credential,
            cached: tokio::sync::Mutex::new(None),
            issued: Default::default(),
        }
    }

    /// How many tokens were fetched (for tests and logs).
    pub fn tokens_fetched(&self) -> u64 {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A valid token, from the cache unless it is within 5 minutes of expiry.
    pub async fn token(&self) -> Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some(t) = cached.as_ref() {
            if Instant::now() < t.renew_after {
                return Ok(t.value.clone());
            }
        }
        let fresh = self.fetch().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Forgets `token` after Graph rejected it, so that the next call fetches a new one (a
    /// token another request already replaced is left alone).
    pub async fn reject(&self, token: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == token) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<Token> {
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match &self.credential {
            Credential::Secret(s) => form.push(("client_secret", s.clone())),
            Credential::Certificate { key, x5t } => {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", self.assertion(key, x5t)?));
            }
        }
        let started = Instant::now();
        let response = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                Error::transient(format!(
                    "cannot reach the sign-in endpoint {}: {}",
                    self.token_url,
                    crate::graph::describe_reqwest(&e)
                ))
            })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| {
            Error::transient(format!(
                "sign-in answer broke off: {}",
                crate::graph::describe_reqwest(&e)
            ))
        })?;
        if status.is_success() {
            let t = ferry_http::token_from_answer(&body, started).ok_or_else(|| {
                Error::fatal(format!(
                    "the sign-in endpoint {} answered without an access token; is --login-endpoint right?",
                    self.token_url
                ))
            })?;
            self.issued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(t);
        }
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(
                Error::transient(format!("the sign-in endpoint answered {status}"))
                    .with_retry_after(crate::graph::retry_after(&headers)),
            );
        }
        let e = ferry_http::OAuthError::from_answer(&body);
        // Entra ID puts the reason first and trace ids after; keep the reason.
        let reason = e
            .error_description
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let hint = if reason.contains("AADSTS7000215") || reason.contains("AADSTS7000222") {
            "check FERRY_M365_CLIENT_SECRET (a secret's Value, not its ID; expired secrets must be renewed)"
        } else if reason.contains("AADSTS700016") {
            "check --client-id: no app with that id in this tenant"
        } else if reason.contains("AADSTS90002") || reason.contains("AADSTS900023") {
            "check the tenant in m365:<tenant> (its domain, like contoso.onmicrosoft.com, or its id)"
        } else if reason.contains("AADSTS700027") || reason.contains("AADSTS700024") {
            "check --certificate: upload this certificate to the app registration, and check the machine's clock"
        } else {
            "check the tenant, --client-id and the secret or certificate"
        };
        Err(Error::fatal(format!(
            "sign-in to Microsoft Entra ID failed ({} {}): {}; {hint}",
            status.as_u16(),
            if e.error.is_empty() {
                "no error code"
            } else {
                e.error.as_str()
            },
            if reason.is_empty() {
                "no reason given"
            } else {
                reason.as_str()
            },
        )))
    }

    /// A client assertion: a JWT signed with the certificate's key (RFC 7523), valid 10 minutes.
    fn assertion(&self, key: &Rs256Key, x5t: &str) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut jti)
            .map_err(|_| Error::fatal("no randomness for the client assertion"))?;
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
        let claims = serde_json::json!({
            "aud": self.token_url,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": hex::encode(jti),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        key.sign(&header, &claims).map_err(|e| {
            Error::fatal(format!(
                "cannot sign the client assertion with the certificate's key: {e}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_key_is_a_clear_error() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let err = Credential::from_pem(pem).unwrap_err();
        assert!(err.contains("PRIVATE KEY"), "{err}");
        assert!(Credential::from_pem("nothing")
            .unwrap_err()
            .contains("CERTIFICATE"));
    }
}
