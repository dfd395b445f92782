//! Builds the AWS SDK client from ferry's options: the standard credential chain (environment,
//! shared config and credentials files with `--profile`, web identity, container and instance
//! metadata), custom endpoints with path-style addressing, no SDK retries (the shared
//! [`RetryPolicy`](ferry_core::RetryPolicy) retries instead), and TLS through rustls with ring.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;

use crate::S3Options;

/// The default region when neither the options, the environment nor a profile names one.
const DEFAULT_REGION: &str = "us-east-1";

/// A client, and how to name its endpoint in messages and payload paths.
pub(crate) struct Built {
    pub client: Client,
    /// `http://127.0.0.1:9000` or `https://s3.eu-north-1.amazonaws.com`, for messages.
    pub endpoint: String,
    /// `127.0.0.1:9000` or `s3.eu-north-1.amazonaws.com`: the first folder under `data/s3/`.
    pub host: String,
}

impl Built {
    /// Checks that `bucket` exists and can be listed with these credentials, with one listing
    /// request (a HEAD answers a bare 404/403 without a code to explain); any failure stops the
    /// run, named as `what`.
    pub(crate) async fn check_bucket(
        &self,
        bucket: &str,
        what: &str,
        retry: &ferry_core::RetryPolicy,
    ) -> ferry_core::Result<()> {
        let ctx = crate::errors::Context {
            endpoint: &self.endpoint,
            what,
            scope: crate::errors::Scope::Bucket,
        };
        crate::errors::send_with_retry(retry, &ctx, "the bucket check", || {
            self.client
                .list_objects_v2()
                .bucket(bucket)
                .max_keys(1)
                .send()
        })
        .await
        .map(|_| ())
        .map_err(|e| {
            if e.is_fatal() {
                e
            } else {
                ferry_core::Error::fatal(e.to_string())
            }
        })
    }
}

pub(crate) async fn build(options: &S3Options) -> Built {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        // Retries are ferry's: one policy for every connector, honouring Retry-After.
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(120))
                .build(),
        );
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &options.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &options.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if options.no_sign_request {
        loader = loader.no_credentials();
    } else if let Some((access, secret)) = &options.static_credentials {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            access,
            secret,
            None,
            None,
            "ferry-static",
        ));
    }
    let sdk = loader.load().await;
    let custom_endpoint = sdk.endpoint_url().map(str::to_string);
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| DEFAULT_REGION.to_string());
    let mut config = aws_sdk_s3::config::Builder::from(&sdk)
        .region(Region::new(region.clone()))
        // Path-style by default for custom endpoints: most self-hosted stores (Ceph, MinIO,
        // Garage) are set up without wildcard DNS for bucket subdomains.
        .force_path_style(options.path_style.unwrap_or(custom_endpoint.is_some()))
        // ferry checks every checksum itself; the SDK adding trailing checksums to requests
        // breaks servers that do not speak aws-chunked encoding.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = &custom_endpoint {
        config = config.endpoint_url(endpoint);
    }
    let client = Client::from_conf(config.build());
    let endpoint = custom_endpoint
        .clone()
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let host = endpoint
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(&endpoint)
        .split('/')
        .next()
        .unwrap_or("s3")
        .to_string();
    Built {
        client,
        endpoint,
        host,
    }
}
