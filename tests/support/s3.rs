//! S3 fixtures: the in-process sandbox server (s3s-fs) and, when installed, moto's server as an
//! independent implementation in its own process; a client to seed them; the environment that
//! points the ferry binary at them.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use ferry_sandbox::{Faults, S3Server, S3_ACCESS_KEY, S3_SECRET_KEY};

/// An S3 endpoint with a client to seed it.
pub struct S3Fixture {
    /// Where it listens.
    pub endpoint: String,
    /// The access key it accepts.
    pub access_key: String,
    /// The secret key it accepts.
    pub secret_key: String,
    /// A client for seeding.
    pub client: Client,
    /// The sandbox server, if this is one (its files can be changed behind its back).
    pub sandbox: Option<S3Server>,
    moto: Option<Child>,
    /// Runs the in-process server and the client.
    pub runtime: tokio::runtime::Runtime,
    _root: Option<tempfile::TempDir>,
}

fn client(endpoint: &str, ak: &str, sk: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ak, sk, None, None, "ferry-e2e"))
        .http_client(http)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    Client::from_conf(config)
}

impl S3Fixture {
    /// The in-process sandbox (s3s-fs over a temporary folder).
    pub fn sandbox() -> S3Fixture {
        Self::sandbox_with(Faults::default())
    }

    /// The in-process sandbox, injecting `faults`.
    pub fn sandbox_with(faults: Faults) -> S3Fixture {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let server = runtime
            .block_on(S3Server::start_with(root.path(), 0, faults))
            .unwrap();
        let endpoint = server.endpoint();
        let client = client(&endpoint, S3_ACCESS_KEY, S3_SECRET_KEY);
        S3Fixture {
            endpoint,
            access_key: S3_ACCESS_KEY.into(),
            secret_key: S3_SECRET_KEY.into(),
            client,
            sandbox: Some(server),
            moto: None,
            runtime,
            _root: Some(root),
        }
    }

    /// moto's S3 server in its own process, if `moto_server` is installed; `None` (with a notice)
    /// otherwise, unless `FERRY_REQUIRE_MOTO` is set (CI), which makes its absence a failure.
    pub fn moto() -> Option<S3Fixture> {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("moto_server"))
                .find(|p| p.exists())
        });
        let Some(bin) = found else {
            assert!(
                std::env::var_os("FERRY_REQUIRE_MOTO").is_none(),
                "moto_server is required (FERRY_REQUIRE_MOTO) but not on PATH"
            );
            eprintln!("NOTICE: moto_server not found; skipping (pip install 'moto[server]')");
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (ak, sk) = ("AKIAFERRYMOTO", "moto-secret-key");
        Some(S3Fixture {
            client: client(&endpoint, ak, sk),
            endpoint,
            access_key: ak.into(),
            secret_key: sk.into(),
            sandbox: None,
            moto: Some(child),
            runtime,
            _root: None,
        })
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        self.runtime
            .block_on(self.client.create_bucket().bucket(name).send())
            .unwrap();
    }

    /// Uploads an object in one PUT.
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        self.put_with(bucket, key, data, |r| r);
    }

    /// Uploads an object in one PUT, letting the caller set headers.
    pub fn put_with(
        &self,
        bucket: &str,
        key: &str,
        data: &[u8],
        f: impl FnOnce(
            aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
        ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    ) {
        let req = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data.to_vec()));
        self.runtime
            .block_on(f(req).send())
            .unwrap_or_else(|e| panic!("put {key:?}: {e:?}"));
    }

    /// Uploads a file in one PUT, streaming it.
    pub fn put_file(&self, bucket: &str, key: &str, path: &Path) {
        self.runtime.block_on(async {
            let body = ByteStream::from_path(path).await.unwrap();
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body)
                .send()
                .await
                .unwrap();
        });
    }

    /// Uploads an object as a multipart upload with parts of `part_size` bytes.
    pub fn put_multipart(&self, bucket: &str, key: &str, data: &[u8], part_size: usize) {
        self.runtime.block_on(async {
            let up = self
                .client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            let id = up.upload_id().unwrap().to_string();
            let mut parts = Vec::new();
            for (i, chunk) in data.chunks(part_size).enumerate() {
                let n = i as i32 + 1;
                let out = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(n)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .unwrap();
                parts.push(
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                );
            }
            let done = self
                .client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            if let Err(e) = done {
                // moto answers with <CompleteMultipartUploadResponse> instead of
                // <CompleteMultipartUploadResult>; the upload is complete (200) all the same.
                let completed = matches!(&e, aws_sdk_s3::error::SdkError::ServiceError(se) if se.raw().status().as_u16() == 200);
                assert!(completed, "complete multipart upload of {key}: {e:?}");
            }
        });
    }

    /// The environment that points ferry at this endpoint and nowhere else (no shared config
    /// files, no instance metadata).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            (
                "AWS_CONFIG_FILE".into(),
                "/nonexistent/ferry-e2e-config".into(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                "/nonexistent/ferry-e2e-credentials".into(),
            ),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

impl Drop for S3Fixture {
    fn drop(&mut self) {
        if let Some(mut child) = self.moto.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
