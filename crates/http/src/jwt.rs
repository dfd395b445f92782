//! RS256-signed JSON Web Tokens (RFC 7519/7515) from PEM keys: Entra ID's certificate client
//! assertions and Google's service-account JWT-bearer grants (RFC 7523) are both this.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::Value;

/// The (label, DER bytes) of every PEM block (`-----BEGIN <label>-----`).
pub fn pem_blocks(pem: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut lines = pem.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line
            .trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        for l in lines.by_ref() {
            if l.trim() == end {
                break;
            }
            body.push_str(l.trim());
        }
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| format!("the {label} block is not valid base64"))?;
        out.push((label.to_string(), der));
    }
    Ok(out)
}

/// An RSA private key that signs JWTs with RS256.
pub struct Rs256Key(Box<RsaKeyPair>);

impl std::fmt::Debug for Rs256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rs256Key(…)")
    }
}

impl Rs256Key {
    /// The key of a PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM block; other
    /// blocks (certificates) are ignored. `None` when there is no private key block.
    pub fn from_pem(pem: &str) -> Result<Option<Rs256Key>, String> {
        let mut key = None;
        for (label, der) in pem_blocks(pem)? {
            match label.as_str() {
                "PRIVATE KEY" => {
                    key = Some(RsaKeyPair::from_pkcs8(&der).map_err(|e| {
                        format!("the private key is not an RSA key ferry can use ({e})")
                    })?)
                }
                "RSA PRIVATE KEY" => {
                    key = Some(
                        RsaKeyPair::from_der(&der)
                            .map_err(|e| format!("the RSA private key cannot be read ({e})"))?,
                    )
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err("the private key is encrypted; export it without a password (openssl pkcs8 -in key.pem -nocrypt -topk8)".into())
                }
                _ => {}
            }
        }
        Ok(key.map(|k| Rs256Key(Box::new(k))))
    }

    /// `base64url(header).base64url(claims).base64url(RS256 signature)`.
    pub fn sign(&self, header: &Value, claims: &Value) -> Result<String, String> {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.0.public().modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign with the RSA key".to_string())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_a_key_has_none_and_bad_base64_is_an_error() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(Rs256Key::from_pem(pem).unwrap().is_none());
        let bad = "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n";
        assert!(Rs256Key::from_pem(bad).unwrap_err().contains("base64"));
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(Rs256Key::from_pem(enc).unwrap_err().contains("encrypted"));
    }
}
