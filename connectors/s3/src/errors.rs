//! Turns AWS SDK errors into ferry errors: the right kind (retry, fail the object, stop the run)
//! and one sentence saying what to check. No credentials ever appear in these messages.

use std::time::SystemTime;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use ferry_core::retry::parse_retry_after;
use ferry_core::{Error, ErrorKind, RetryPolicy};

/// Whether an error concerns the whole bucket (then access problems stop the run) or one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Listing, checking a bucket.
    Bucket,
    /// Reading one object.
    Object,
}

/// Where the error happened, for the message.
pub(crate) struct Context<'a> {
    pub endpoint: &'a str,
    pub what: &'a str,
    pub scope: Scope,
}

fn retry_after(raw: Option<&HttpResponse>) -> Option<std::time::Duration> {
    let value = raw?.headers().get("retry-after")?;
    parse_retry_after(value, SystemTime::now())
}

/// Sends a request through the shared retry policy, classifying SDK errors on the way: every
/// S3 call of ferry's retries the same way, in one place.
pub(crate) async fn send_with_retry<T, E, Fut>(
    policy: &RetryPolicy,
    ctx: &Context<'_>,
    op: &str,
    mut request: impl FnMut() -> Fut,
) -> Result<T, Error>
where
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    policy
        .run(
            |_| {
                let sent = request();
                async move { sent.await.map_err(|e| classify(e, ctx)) }
            },
            |e, d| tracing::debug!("retrying {op} in {d:?}: {e}"),
        )
        .await
}

/// Classifies an SDK error.
pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>, ctx: &Context<'_>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let what = ctx.what;
    let endpoint = ctx.endpoint;
    let full = DisplayErrorContext(&err).to_string();
    let lower = full.to_ascii_lowercase();
    match &err {
        SdkError::TimeoutError(_) => {
            Error::transient(format!("{what}: timed out talking to {endpoint}"))
        }
        SdkError::DispatchFailure(d) => {
            if lower.contains("credential") {
                tracing::debug!("credential lookup failed: {full}");
                return Error::fatal(format!(
                    "{what}: no AWS credentials found (environment, shared config and credentials files, web identity, instance metadata); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a --profile, or use --no-sign-request for a public bucket"
                ));
            }
            if lower.contains("certificate")
                || lower.contains("tls")
                || lower.contains("handshake")
                || lower.contains("invalidcertificate")
            {
                return Error::fatal(format!(
                    "{what}: the TLS connection to {endpoint} failed ({}); check the certificate (AWS_CA_BUNDLE) or whether the endpoint speaks http:// rather than https://",
                    first_line(&full)
                ));
            }
            if d.is_timeout() || d.is_io() {
                Error::transient(format!(
                    "{what}: cannot reach {endpoint} ({}); check --endpoint-url and the network",
                    first_line(&full)
                ))
            } else {
                Error::transient(format!(
                    "{what}: request to {endpoint} failed: {}",
                    first_line(&full)
                ))
            }
        }
        SdkError::ResponseError(_) => Error::transient(format!(
            "{what}: broken response from {endpoint}: {}",
            first_line(&full)
        )),
        SdkError::ConstructionFailure(_) => Error::fatal(format!(
            "{what}: could not build the request: {}",
            first_line(&full)
        )),
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let status = raw.status().as_u16();
            let code = err.code().unwrap_or("").to_string();
            let message = err.message().unwrap_or("").to_string();
            let region = raw.headers().get("x-amz-bucket-region").map(str::to_string);
            from_code(&code, &message, status, region, retry_after(Some(raw)), ctx)
        }
        _ => Error::transient(format!("{what}: {}", first_line(&full))),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).chars().take(300).collect()
}

fn from_code(
    code: &str,
    message: &str,
    status: u16,
    region: Option<String>,
    after: Option<std::time::Duration>,
    ctx: &Context<'_>,
) -> Error {
    let what = ctx.what;
    let endpoint = ctx.endpoint;
    let detail = if message.is_empty() {
        code.to_string()
    } else {
        format!("{code}: {message}")
    };
    let bucket_level = ctx.scope == Scope::Bucket;
    let stop_or_skip = |msg: String| {
        if bucket_level {
            Error::fatal(msg)
        } else {
            Error::permanent(msg)
        }
    };
    match code {
        "NoSuchBucket" => Error::fatal(format!("{what}: the bucket does not exist at {endpoint}; check its name, --endpoint-url and --region")),
        "InvalidAccessKeyId" => Error::fatal(format!("{what}: the server does not know this access key; check AWS_ACCESS_KEY_ID or the --profile")),
        "SignatureDoesNotMatch" => Error::fatal(format!("{what}: the secret key does not match the access key; check AWS_SECRET_ACCESS_KEY or the --profile")),
        "ExpiredToken" | "TokenRefreshRequired" | "InvalidToken" => {
            Error::fatal(format!("{what}: the session token has expired or is invalid; refresh the credentials and rerun"))
        }
        "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException" => Error::fatal(match region {
            Some(r) => format!("{what}: the bucket is in region {r}; add --region {r}"),
            None => format!("{what}: the bucket is in another region ({detail}); set --region"),
        }),
        "AccessDenied" | "AllAccessDisabled" | "AccountProblem" => stop_or_skip(format!(
            "{what}: access denied ({detail}); the credentials need {} on it",
            if bucket_level { "s3:ListBucket" } else { "s3:GetObject" }
        )),
        "NoSuchKey" | "NoSuchVersion" => Error::permanent(format!("{what}: it was deleted at the source after it was listed")),
        "InvalidObjectState" => Error::permanent(format!(
            "{what}: needs restore: it is in a cold storage class; restore it (e.g. aws s3api restore-object) and rerun"
        )),
        "PreconditionFailed" => Error::permanent(format!("{what}: it changed at the source while it was being read; rerun to export its new version")),
        "InvalidRange" => Error::permanent(format!("{what}: the server refused the byte range ({detail})")),
        "SlowDown" | "ServiceUnavailable" | "InternalError" | "RequestTimeout" | "RequestTimeTooSkewed" | "Throttling" | "ThrottlingException" => {
            Error::transient(format!("{what}: {endpoint} asks to slow down or failed ({detail})")).with_retry_after(after)
        }
        _ if status == 429 || status >= 500 => Error::transient(format!("{what}: {endpoint} answered {status} ({detail})")).with_retry_after(after),
        _ if status == 404 && bucket_level => Error::fatal(format!("{what}: not found at {endpoint} ({detail}); check the bucket name and --endpoint-url")),
        _ if status == 404 => Error::permanent(format!("{what}: not found ({detail})")),
        _ if status == 403 => stop_or_skip(format!("{what}: forbidden ({detail})")),
        _ if status == 412 => Error::permanent(format!("{what}: it changed at the source while it was being read; rerun to export its new version")),
        _ => Error::new(
            if bucket_level { ErrorKind::Fatal } else { ErrorKind::Permanent },
            format!("{what}: {endpoint} answered {status} ({detail})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(scope: Scope) -> Context<'static> {
        Context {
            endpoint: "http://127.0.0.1:9",
            what: "s3://b/k",
            scope,
        }
    }

    #[test]
    fn codes_map_to_kinds_and_sentences() {
        let e = from_code("NoSuchBucket", "", 404, None, None, &ctx(Scope::Bucket));
        assert!(e.is_fatal() && e.to_string().contains("does not exist"));
        let e = from_code(
            "AccessDenied",
            "Access Denied",
            403,
            None,
            None,
            &ctx(Scope::Object),
        );
        assert_eq!(e.kind(), ErrorKind::Permanent);
        assert!(e.to_string().contains("s3:GetObject"));
        assert!(from_code("AccessDenied", "", 403, None, None, &ctx(Scope::Bucket)).is_fatal());
        let e = from_code(
            "SlowDown",
            "",
            503,
            None,
            Some(std::time::Duration::from_secs(3)),
            &ctx(Scope::Object),
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(3)));
        assert!(from_code("", "", 502, None, None, &ctx(Scope::Object)).is_transient());
        let e = from_code(
            "InvalidObjectState",
            "",
            403,
            None,
            None,
            &ctx(Scope::Object),
        );
        assert!(e.to_string().contains("needs restore") && !e.is_fatal());
        let e = from_code(
            "PermanentRedirect",
            "",
            301,
            Some("eu-north-1".into()),
            None,
            &ctx(Scope::Bucket),
        );
        assert!(e.to_string().contains("--region eu-north-1"));
    }
}
