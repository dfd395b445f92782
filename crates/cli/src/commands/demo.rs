//! `ferry demo`: builds a small sample folder full of names that break other tools, exports it
//! as a folder bag and as a zip, verifies both and shows what happened to the names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_archive::reader::BagReader;
use ferry_archive::verify::{verify, Status, VerifyOptions};
use ferry_archive::writer::{BagOptions, BagTarget, BagWriter};
use ferry_core::{Connector, DigestAlgorithm, NoProgress, Pipeline, PipelineOptions, Sink};
use ferry_fs::{FsConnector, FsOptions};
use ferry_google::{
    Endpoints, ExportFormat, GoogleConnector, GoogleOptions, ServiceAccountKey,
    UserSelection as GoogleUsers,
};
use ferry_m365::{Credential, M365Connector, M365Options};
use ferry_s3::{S3Connector, S3Location, S3Options};
use ferry_sandbox::{
    GoogleConfig, GoogleServer, GraphConfig, GraphServer, S3Server, GRAPH_CLIENT_ID,
    GRAPH_CLIENT_SECRET, S3_ACCESS_KEY, S3_SECRET_KEY,
};
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::cli::{Cli, DemoArgs};

/// The sample tree: (relative path as bytes, content). Each name is something a careless
/// archive would mangle, lose or let collide.
fn sample_files() -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = |s: &str| s.as_bytes().to_vec();
    let mut files = vec![
        (
            text("Rapporter/Årsrapport 2025.txt"),
            text("Årsrapport for 2025.\n"),
        ),
        (
            text("Rapporter/årsrapport 2025.txt"),
            text("A case twin: differs from the one above only in case.\n"),
        ),
        (
            text("Rapporter/Budsjett 100% endelig.txt"),
            text("A percent sign, which BagIt manifests must escape.\n"),
        ),
        (
            text("Kontrakter/café.txt"),
            text("NFC: é is one code point.\n"),
        ),
        (
            text("Kontrakter/cafe\u{301}.txt"),
            text("NFD: e + combining accent, as macOS writes it.\n"),
        ),
        (
            b"Kontrakter/line\nbreak.txt".to_vec(),
            text("A line break inside a file name.\n"),
        ),
        (
            text("Kontrakter/ trailing and leading spaces .txt"),
            text("Spaces at both ends.\n"),
        ),
        (
            text("Kontrakter/what? why: \"quotes\" <and> |pipes|.txt"),
            text("Characters Windows refuses.\n"),
        ),
        (text("Kontrakter/CON.txt"), text("A Windows device name.\n")),
        (text("Kontrakter/..dotdot"), text("Starts with two dots.\n")),
        (text("Tom fil.txt"), Vec::new()),
    ];
    let mut long = "Møtereferat ".repeat(19).into_bytes();
    long.extend_from_slice(b".txt");
    files.push((long, text("A name of more than 250 bytes.\n")));
    let mut pattern = Vec::with_capacity(2 << 20);
    let mut x: u32 = 0x1234_5678;
    while pattern.len() < 2 << 20 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pattern.extend_from_slice(&x.to_le_bytes());
    }
    files.push((text("Bilder/scan-0001.tif"), pattern));
    files
}

fn build_sample(root: &Path) -> Result<usize> {
    let files = sample_files();
    for (rel, content) in &files {
        let path = root.join(OsStr::from_bytes(rel));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::create_dir_all(root.join("Tom mappe"))?;
    std::os::unix::fs::symlink(
        "Rapporter/Årsrapport 2025.txt",
        root.join("snarvei til rapport"),
    )?;
    Ok(files.len())
}

async fn export(src: &Path, to: PathBuf) -> Result<ferry_archive::writer::BagSummary> {
    export_from(Arc::new(FsConnector::new(src, FsOptions::default())), to).await
}

async fn export_from(
    connector: Arc<dyn Connector>,
    to: PathBuf,
) -> Result<ferry_archive::writer::BagSummary> {
    let options = BagOptions {
        digests: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Sha512],
        bag_info: vec![
            ("Source-Organization".into(), "ferry demo".into()),
            (
                "External-Description".into(),
                "Sample folder with hostile file names".into(),
            ),
        ],
        ..BagOptions::default()
    };
    connector.check().await?;
    let (writer, _) = BagWriter::open(BagTarget::from_path(&to), vec![connector.info()], options)?;
    let sink: Arc<dyn Sink> = Arc::new(writer.clone());
    let (report, fatal) = Pipeline::new(PipelineOptions::default())
        .run(
            connector,
            sink,
            Arc::new(NoProgress),
            CancellationToken::new(),
        )
        .await;
    if let Some(e) = fatal {
        return Err(e.into());
    }
    Ok(writer.finish(&report).await?)
}

/// Runs the demo; returns the exit code.
pub async fn run(_cli: &Cli, args: &DemoArgs) -> Result<i32> {
    let stamp = time::OffsetDateTime::now_utc();
    let name = format!(
        "demo-{:04}{:02}{:02}-{:02}{:02}{:02}",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second()
    );
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let sample = tempfile_dir()?;
    let src = sample.join("Fellesområde");
    let count = build_sample(&src)?;
    println!(
        "1. Built a sample folder with {count} files, an empty folder and a link: {}",
        src.display()
    );

    let folder = args.dir.join(&name);
    let zip = args.dir.join(format!("{name}.zip"));
    let bag = export(&src, folder.clone()).await?;
    println!(
        "2. Exported it to a BagIt bag: {} ({} payload files, {} bytes)",
        folder.display(),
        bag.payload_files,
        bag.payload_bytes
    );
    export(&src, zip.clone()).await?;
    println!("   and to a zip holding the same bag: {}", zip.display());

    let mut all_valid = true;
    for path in [&folder, &zip] {
        let report = tokio::task::spawn_blocking({
            let path = path.clone();
            move || verify(&path, &VerifyOptions::default())
        })
        .await??;
        all_valid &= report.status == Status::Valid;
        println!(
            "3. ferry verify: {}",
            report.to_string().lines().last().unwrap_or_default()
        );
    }

    println!(
        "4. Names that had to change in the payload (the originals stay in ferry/items.jsonl):"
    );
    let reader = BagReader::open(&folder)?;
    if let Some(records) = reader.item_records()? {
        for (_, r) in records.flatten() {
            let original = r["source"]["original_path"].as_str().unwrap_or_default();
            match r["path"].as_str() {
                Some(path) if !path.ends_with(original) => {
                    println!(
                        "     {:<46} → {}",
                        format!("{original:?}"),
                        path.trim_start_matches("data/")
                    );
                }
                None => println!(
                    "     {:<46}   recorded only: {}",
                    format!("{original:?}"),
                    r["skipped"].as_str().unwrap_or_default()
                ),
                _ => {}
            }
        }
    }
    // The same from an S3 bucket, served by the sandbox on 127.0.0.1.
    let s3_root = sample.join("s3");
    let objects = seed_bucket(&s3_root.join("arkiv"))?;
    let server = S3Server::start(&s3_root)
        .await
        .context("starting the sandbox S3 server")?;
    let options = S3Options {
        endpoint_url: Some(server.endpoint()),
        region: Some("us-east-1".into()),
        static_credentials: Some((S3_ACCESS_KEY.into(), S3_SECRET_KEY.into())),
        ..S3Options::default()
    };
    let connector = Arc::new(S3Connector::new(S3Location::parse("s3://arkiv")?, options)?);
    let s3_bag = args.dir.join(format!("{name}-s3"));
    let bag = export_from(connector, s3_bag.clone()).await?;
    let report = tokio::task::spawn_blocking({
        let path = s3_bag.clone();
        move || verify(&path, &VerifyOptions::default())
    })
    .await??;
    all_valid &= report.status == Status::Valid;
    println!(
        "5. Exported s3://arkiv ({objects} objects) from an S3 server on {} to {}: {} payload files, every one checked against its ETag; {}",
        server.endpoint(),
        s3_bag.display(),
        bag.payload_files,
        report.status
    );
    drop(server);

    // And a Microsoft 365 tenant, served by the Graph sandbox on 127.0.0.1.
    let graph = GraphServer::start(
        GraphConfig {
            users: 2,
            messages_per_user: 12,
            files_per_user: 6,
            ..GraphConfig::default()
        },
        0,
    )
    .await
    .context("starting the sandbox Graph server")?;
    let tenant = graph.truth().tenant.clone();
    let options = M365Options {
        graph_endpoint: graph.graph_endpoint(),
        login_endpoint: graph.login_endpoint(),
        include_recoverable: true,
        ..M365Options::new(&tenant, GRAPH_CLIENT_ID)
    };
    let connector = Arc::new(M365Connector::new(
        options,
        Credential::Secret(GRAPH_CLIENT_SECRET.into()),
    )?);
    let m365_bag = args.dir.join(format!("{name}-m365"));
    let bag = export_from(connector, m365_bag.clone()).await?;
    let report = tokio::task::spawn_blocking({
        let path = m365_bag.clone();
        move || verify(&path, &VerifyOptions::default())
    })
    .await??;
    all_valid &= report.status == Status::Valid;
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m365_bag.join("ferry/run.json"))?)?;
    let details = &run["sources"][0]["details"];
    println!(
        "6. Exported m365:{tenant} from a Microsoft Graph stand-in on {} to {}: {} payload files (every message as its original .eml, OneDrive and SharePoint files checked against quickXorHash); reconciliation of {} mail folders and drives: {}; {} delta links saved for incremental runs; {}",
        graph.graph_endpoint(),
        m365_bag.display(),
        bag.payload_files,
        details["reconciliation"].as_array().map_or(0, Vec::len),
        details["reconciliation_status"].as_str().unwrap_or("?"),
        details["cursors"].as_array().map_or(0, Vec::len),
        report.status
    );
    drop(graph);

    // And a Google Workspace domain, served by the Google sandbox on 127.0.0.1.
    let google = GoogleServer::start(
        GoogleConfig {
            users: 2,
            messages_per_user: 12,
            files_per_user: 10,
            ..GoogleConfig::default()
        },
        0,
    )
    .await
    .context("starting the sandbox Google server")?;
    let domain = google.truth().domain.clone();
    let active: Vec<String> = google
        .truth()
        .users
        .iter()
        .filter(|u| !u.suspended)
        .map(|u| u.email.clone())
        .collect();
    let key = ServiceAccountKey::from_json(&google.service_account_key_json())
        .map_err(anyhow::Error::msg)?;
    let options = GoogleOptions {
        endpoints: Endpoints::under(&google.endpoint()),
        users: GoogleUsers::List(active.clone()),
        export_formats: vec![ExportFormat::Odf, ExportFormat::Pdf],
        ..GoogleOptions::new(&domain, &google.admin_email())
    };
    let connector = Arc::new(GoogleConnector::new(options, key)?);
    let google_bag = args.dir.join(format!("{name}-google"));
    let bag = export_from(connector, google_bag.clone()).await?;
    let report = tokio::task::spawn_blocking({
        let path = google_bag.clone();
        move || verify(&path, &VerifyOptions::default())
    })
    .await??;
    all_valid &= report.status == Status::Valid;
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(google_bag.join("ferry/run.json"))?)?;
    let details = &run["sources"][0]["details"];
    println!(
        "7. Exported google:{domain} ({} users) from a Google Workspace stand-in on {} to {}: {} payload files (every Gmail message as its original .eml, Drive files checked against sha256/md5, Google Docs, Sheets, Slides and Drawings exported as ODF and PDF, shortcuts and shared files recorded); reconciliation of {} mailboxes and drives: {}; {} history ids and change tokens saved for incremental runs; {}",
        active.len(),
        google.endpoint(),
        google_bag.display(),
        bag.payload_files,
        details["reconciliation"].as_array().map_or(0, Vec::len),
        details["reconciliation_status"].as_str().unwrap_or("?"),
        details["cursors"].as_array().map_or(0, Vec::len),
        report.status
    );
    drop(google);
    let _ = std::fs::remove_dir_all(&sample);
    println!();
    println!("Try next:");
    println!(
        "  ferry ls {}                  # what is inside, with provenance",
        folder.display()
    );
    println!(
        "  ferry verify {}             # check it again",
        zip.display()
    );
    println!(
        "  bagit.py --validate {}     # the reference validator agrees (pip install bagit)",
        folder.display()
    );
    println!("  ferry export fs:/your/folder --to /backups/your-folder.zip");
    println!("  ferry sandbox s3 /tmp/s3-root                 # a local S3 store to try s3:// exports against");
    println!("  ferry sandbox m365                            # a Microsoft 365 stand-in to try m365: exports against");
    println!("  ferry sandbox google                          # a Google Workspace stand-in to try google: exports against");
    Ok(if all_valid { exit::OK } else { exit::PROBLEMS })
}

/// A sample bucket: objects are files under the bucket folder (the sandbox serves them).
fn seed_bucket(bucket: &Path) -> Result<usize> {
    let objects: [(&str, &[u8]); 5] = [
        (
            "Rapporter/2025/Årsrapport.txt",
            "Årsrapport 2025\n".as_bytes(),
        ),
        (
            "Rapporter/2025/årsrapport.txt",
            b"A case twin of the key above.\n",
        ),
        (
            "e-post/2026-11-27 Budsjett.eml",
            b"From: ola@example.no\r\nSubject: Budsjett\r\n\r\nVedlagt.\r\n",
        ),
        ("100% ferdig.txt", b"A key with a percent sign.\n"),
        ("tom", b""),
    ];
    for (key, data) in objects {
        let path = bucket.join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(objects.len())
}

fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    if base.exists() {
        std::fs::remove_dir_all(&base)?;
    }
    std::fs::create_dir_all(&base)?;
    Ok(base)
}
