//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ferry_core::DigestAlgorithm;

const AFTER_HELP: &str = "\
Exit codes:
  0    success (export complete; bag valid)
  1    finished, but not everything is right: items failed (see ferry/failures.jsonl),
       or the bag is invalid or incomplete
  2    could not run: bad arguments, missing source, wrong credentials, destination in the way,
       disk full, unreadable bag
  130  interrupted (Ctrl-C or SIGTERM); rerun the same export command to resume

Examples:
  ferry export fs:/srv/share --to /backups/share-2026-11-28
  ferry export fs:/srv/share --to /backups/share-2026-11-28.zip --digest sha512
  ferry verify /backups/share-2026-11-28.zip
  ferry ls /backups/share-2026-11-28 --json | jq .source.original_path
  ferry demo";

/// ferry gets an organisation's files, mail and objects out of clouds and servers into BagIt
/// archives it owns and can check without ferry.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, after_long_help = AFTER_HELP, after_help = "Run `ferry help <command>` or `ferry <command> --help` for details; `--help` lists exit codes.")]
pub struct Cli {
    /// Print only errors (and the final summary).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail: -v for each retry and skipped item, -vv for debugging.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Never draw progress bars (they are drawn only when stderr is a terminal anyway).
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export a source into a new BagIt bag (a folder, or a zip when --to ends in .zip).
    ///
    /// Every file is hashed as it streams in, written under a temporary name and moved into
    /// place; the manifests are written last, so an interrupted export never looks complete.
    /// Rerun the same command to resume it: what was stored is kept.
    #[command(after_long_help = AFTER_HELP)]
    Export(Box<ExportArgs>),
    /// Check a bag (folder or zip, made by ferry or any other BagIt tool), or a repository.
    ///
    /// A bag: bagit.txt, every manifest entry against the files (missing, extra, wrong digest,
    /// truncated), Payload-Oxum, the tag manifests and, for ferry bags, items.jsonl against the
    /// manifests. Reads nothing outside the bag and fetches nothing from fetch.txt.
    ///
    /// A repository (it holds ferry-repository.json): every run record and run file against
    /// its digest, the chain of runs per job (a run removed or edited outside `ferry prune` is
    /// named), every content present and hashed again (or a random --sample of them).
    #[command(after_long_help = AFTER_HELP)]
    Verify(VerifyArgs),
    /// List what a ferry bag holds, with where each item came from.
    Ls(LsArgs),
    /// Build a small sample folder (with hostile names), export it, verify it and explain.
    Demo(DemoArgs),
    /// Back a source up into a repository, incrementally: only what changed is read and stored.
    ///
    /// The repository (a folder or s3://BUCKET/PREFIX, made on the first run) stores each
    /// content once by its SHA-256 and records every run's added, changed and removed items
    /// with full provenance; items whose size and time (or ETag, version, …) did not change are
    /// not read again. fs and S3 are listed whole and compared; Microsoft 365 mail folders and
    /// drives are read from their delta links, Gmail from its history ids and Google Drive from
    /// its changes feed, with the cursors kept in the repository. Runs of one repository never
    /// overlap (a lock, taken over when its holder is gone); a killed run leaves no trace but
    /// reusable content, and the next run completes.
    #[command(after_long_help = AFTER_HELP)]
    Backup(Box<BackupArgs>),
    /// List a repository's runs: when, what, how much changed, status.
    Runs(RunsArgs),
    /// Write a run's items (or those a glob selects) from a repository into a folder.
    Restore(RestoreArgs),
    /// Write a run's items from a repository as a self-contained BagIt bag (folder, zip or S3),
    /// with their full provenance — for deposit with an archive.
    Bag(Box<BagArgs>),
    /// Remove old runs from a repository by a retention policy, and the contents no kept run
    /// refers to.
    Prune(PruneArgs),
    /// Serve local stand-ins for the clouds, to try ferry or benchmark it without an account.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

/// `ferry export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// What to export: `fs:/path/to/folder` (a plain path works too), `s3://BUCKET[/PREFIX]`
    /// or `s3://` for every bucket the credentials can list, `m365:TENANT` (a Microsoft 365
    /// tenant's domain or id), `google:DOMAIN` (a Google Workspace domain).
    pub source: String,
    /// The new bag: a folder, a `.zip` file, or `s3://BUCKET/PREFIX` (the bag's files become
    /// objects under the prefix). Must not exist yet, unless it is an interrupted export of the
    /// same source, which is then resumed.
    #[arg(long, value_name = "PATH")]
    pub to: PathBuf,
    /// For --to s3://…: set S3 Object Lock retention of this many days on every object (the
    /// bucket must have Object Lock enabled).
    #[arg(long, value_name = "DAYS")]
    pub object_lock_days: Option<u32>,
    /// For --object-lock-days: `governance` (users with special permission can shorten it) or
    /// `compliance` (nobody can, not even the account's root user).
    #[arg(long, value_name = "MODE", value_parser = ["governance", "compliance"], default_value = "governance", requires = "object_lock_days")]
    pub object_lock_mode: String,
    /// For --to s3://…: the local folder that holds the journal of the export (so a rerun
    /// resumes); default: a folder under ~/.cache/ferry/exports.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Digest algorithm for the manifests; repeat for several (every manifest lists every file).
    #[arg(long = "digest", value_name = "ALG", default_value = "sha256", value_parser = parse_digest)]
    pub digests: Vec<DigestAlgorithm>,
    /// Deflate files in a zip (default: stored, as most payload is already compressed).
    #[arg(long)]
    pub compress: bool,
    /// Seconds between resume checkpoints: a crash or power loss redoes at most this much work
    /// (0 = after every item, slow on many small files).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub checkpoint_interval: u64,
    /// Print a JSON summary on stdout (for scripts and monitoring).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub src: SourceArgs,
    #[command(flatten)]
    pub bag_info: BagInfoArgs,
}

/// How to read a source: what `ferry export` and `ferry backup` share.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Items transferred at once [default: 64 for s3:// sources, 32 for fs:, 8 for the
    /// others], of which at most 8 larger than 1 MiB.
    ///
    /// An object store answers each request after a round trip (tens of milliseconds to S3),
    /// so small objects go as fast as the requests kept in flight: 64 by default. Large items
    /// fill the link with a few (S3 objects also in --parallel-parts ranges each) and hold
    /// buffers while they run, so more of them would only add memory. A small local file
    /// takes microseconds, so a folder keeps 32 in flight to keep every core busy; Microsoft
    /// 365 and Google throttle clients that ask for more than 8.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Attempts per item after the first, for transient errors (throttling, timeouts, changes
    /// while reading, checksum mismatches).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub retries: u32,
    /// What to do when the bytes received do not match a checksum the source states (an S3
    /// ETag or x-amz-checksum-*, a Drive md5/sha256, a OneDrive quickXorHash).
    ///
    /// `fail` (the default): the item is downloaded again, up to --retries times, then listed
    /// as failed; nothing that disagrees with its source is archived. `keep`: for a source
    /// whose checksums are not digests of what it serves (S3-compatible stores whose ETags
    /// are not MD5s: AWS documents that an ETag may or may not be one, and Cloudflare R2's
    /// multipart uploads before June 2023 are not), the item is downloaded again and kept
    /// when the two downloads agree, flagged in items.jsonl (`verified: false` and what the
    /// bytes gave) and counted in the summary; downloads that disagree still fail.
    #[arg(long, value_name = "WHAT", value_parser = ["fail", "keep"], default_value = "fail")]
    pub on_checksum_mismatch: String,
    /// fs: follow symbolic links instead of recording them.
    #[arg(long)]
    pub follow_symlinks: bool,
    /// What to take. s3: only keys matching this glob, relative to the prefix (`*` also
    /// matches `/`; repeatable). m365: which kinds of data, `mail,onedrive,sharepoint`
    /// (default all three). google: `gmail,drive,shared-drives` (default all three).
    #[arg(long, value_name = "GLOB|KINDS")]
    pub include: Vec<String>,
    /// s3: leave out keys matching this glob, relative to the prefix; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub s3: S3Args,
    /// m365 and google: whose data. `all` (m365: every licensed user; google: every user of
    /// the domain, suspended ones included and marked), a comma-separated list of addresses,
    /// or (m365) `group:<group object id>`.
    #[arg(long, value_name = "WHO", default_value = "all")]
    pub users: String,
    #[command(flatten)]
    pub m365: M365Args,
    #[command(flatten)]
    pub google: GoogleArgs,
}

/// `--concurrency`'s default for an S3 source.
pub const S3_CONCURRENCY: u32 = 64;
/// `--concurrency`'s default for a local folder (`fs:`): a small file takes microseconds, so
/// with only a few in flight the threads keep waiting for the next one to be handed out.
pub const FS_CONCURRENCY: u32 = 32;
/// `--concurrency`'s default for the other sources (the cloud APIs throttle).
pub const CONCURRENCY: u32 = 8;
/// Of the items transferred at once, how many may be larger than 1 MiB
/// ([`ferry_core::LARGE_ITEM`]).
pub const LARGE_CONCURRENCY: u32 = 8;

impl SourceArgs {
    /// Items transferred at once from `source`: `--concurrency`, or the default for its kind.
    pub fn concurrency_for(&self, source: &str) -> u32 {
        self.concurrency.unwrap_or(if source.starts_with("s3://") {
            S3_CONCURRENCY
        } else if source.starts_with("fs:") {
            FS_CONCURRENCY
        } else {
            CONCURRENCY
        })
    }
}

/// Where a repository is: a folder or `s3://BUCKET/PREFIX` (reached with the S3 connection
/// options).
#[derive(Debug, Args, Clone)]
pub struct RepoArgs {
    /// The repository: a folder or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "REPO")]
    pub repo: String,
    /// A local folder for downloads and content on its way into an S3 repository (default:
    /// under ~/.cache/ferry/repos).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// `ferry backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// What to back up: the same sources as `ferry export` (or give --config).
    #[arg(required_unless_present = "config")]
    pub source: Option<String>,
    /// Run every job of this configuration file (TOML; see the README), one after the other,
    /// into its repository.
    #[arg(long, value_name = "FILE", conflicts_with = "source")]
    pub config: Option<PathBuf>,
    /// Only this job of --config (repeatable; default all).
    #[arg(long = "only", value_name = "JOB", requires = "config")]
    pub only: Vec<String>,
    /// Write Prometheus textfile metrics (items, bytes, failures, duration, last success) to
    /// this file, for node_exporter's textfile collector.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// The repository: a folder or s3://BUCKET/PREFIX (made on the first run).
    #[arg(long, value_name = "REPO", required_unless_present = "config")]
    pub repo: Option<String>,
    /// A local folder for downloads and content on its way into an S3 repository (default:
    /// under ~/.cache/ferry/repos).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// The job's name: runs of one job form a chain, and each job has its own state (default:
    /// from the source, e.g. `share` for fs:/srv/share).
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Print a JSON summary on stdout (for scripts and monitoring).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub src: SourceArgs,
}

/// `ferry runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub s3: S3ConnectionArgs,
    /// Only this job's runs.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// The run records as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// `ferry bag`.
#[derive(Debug, Args)]
pub struct BagArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Which run: `latest`, a run id, or a date (`2026-11-28`: that day's last run).
    #[arg(long, value_name = "RUN", default_value = "latest")]
    pub run: String,
    /// Of which job (needed with `latest` or a date when the repository holds several).
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Only items whose key matches (as for `ferry restore`); repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    pub paths: Vec<String>,
    /// The new bag: a folder, a `.zip` file, or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "PATH")]
    pub to: PathBuf,
    /// Digest algorithm for the manifests; repeat for several.
    #[arg(long = "digest", value_name = "ALG", default_value = "sha256", value_parser = parse_digest)]
    pub digests: Vec<DigestAlgorithm>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3ConnectionArgs,
    #[command(flatten)]
    pub bag_info: BagInfoArgs,
}

/// `ferry prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Keep the newest run of each of the last N days (per job).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest run of each of the last N weeks (ISO weeks).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest run of each of the last N months.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest run of each of the last N years.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Put a run under legal hold (it and its contents are never pruned); repeatable. Give the
    /// reason with --reason. Lift a hold with --release.
    #[arg(long, value_name = "RUN")]
    pub hold: Vec<String>,
    /// Lift the legal hold of a run; repeatable.
    #[arg(long, value_name = "RUN")]
    pub release: Vec<String>,
    /// Why the runs of --hold are held (recorded in holds.json).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Say what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3ConnectionArgs,
}

/// `ferry restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub s3: S3ConnectionArgs,
    /// Which run: `latest`, a run id, or a date (`2026-11-28`: that day's last run).
    #[arg(long, value_name = "RUN", default_value = "latest")]
    pub run: String,
    /// Of which job (needed with `latest` or a date when the repository holds several).
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Only items whose key (`fs/share/reports/q1.pdf`, `m365/<tenant>/users/<upn>/mail/…`)
    /// matches: `*` within a name, `**` across folders, `?` one character; repeatable.
    #[arg(long = "path", value_name = "GLOB")]
    pub paths: Vec<String>,
    /// The folder to write into (made if missing).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Options of `google:` sources.
#[derive(Debug, Args)]
#[command(next_help_heading = "Google Workspace sources (google:DOMAIN, the primary domain)")]
pub struct GoogleArgs {
    /// The service account's JSON key. The account needs domain-wide delegation (Admin
    /// console → Security → API controls) for the read-only scopes
    /// https://www.googleapis.com/auth/admin.directory.user.readonly,
    /// https://www.googleapis.com/auth/gmail.readonly and
    /// https://www.googleapis.com/auth/drive.readonly.
    #[arg(long, value_name = "FILE", env = "FERRY_GOOGLE_SERVICE_ACCOUNT")]
    pub service_account: Option<PathBuf>,
    /// An administrator of the domain, impersonated to list users and shared drives.
    #[arg(long, value_name = "EMAIL", env = "FERRY_GOOGLE_ADMIN")]
    pub admin: Option<String>,
    /// One root for the Drive (<root>/drive/v3/), Gmail (<root>/gmail/v1/) and Directory
    /// (<root>/admin/directory/v1/) APIs, for restricted or private endpoints (e.g.
    /// https://restricted.googleapis.com); default: Google's public endpoints.
    #[arg(long, value_name = "URL")]
    pub google_endpoint: Option<String>,
    /// Formats for Google Docs, Sheets, Slides and Drawings, comma-separated: `odf`
    /// (odt/ods/odp; Drawings as SVG), `ooxml` (docx/xlsx/pptx; Drawings as PNG), `pdf`.
    #[arg(long, value_name = "LIST", default_value = "odf")]
    pub export_formats: String,
    /// Also export messages in Spam and Trash.
    #[arg(long)]
    pub include_spam_trash: bool,
    /// Also export files in Drive's trash.
    #[arg(long)]
    pub include_trashed: bool,
    /// Also write one mboxrd file per Gmail label (Takeout-style, with X-Gmail-Labels
    /// headers) beside the .eml files; reads each message again per label.
    #[arg(long)]
    pub mbox: bool,
    /// API requests at once per user (Gmail refuses too many concurrent requests per user).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub user_concurrency: u32,
}

/// Options of `m365:` sources.
#[derive(Debug, Args)]
#[command(next_help_heading = "Microsoft 365 sources (m365:TENANT, the tenant's domain or id)")]
pub struct M365Args {
    /// The app registration's Application (client) ID. It signs in app-only with the secret in
    /// FERRY_M365_CLIENT_SECRET (or --client-secret-file), or with --certificate.
    #[arg(long, value_name = "ID", env = "FERRY_M365_CLIENT_ID")]
    pub client_id: Option<String>,
    /// A PEM file with the app's certificate and its private key (instead of a secret).
    #[arg(long, value_name = "FILE", env = "FERRY_M365_CERTIFICATE")]
    pub certificate: Option<PathBuf>,
    /// A file holding the client secret (instead of FERRY_M365_CLIENT_SECRET).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// The Graph root including its version; national clouds: https://graph.microsoft.us/v1.0,
    /// https://dod-graph.microsoft.us/v1.0, https://microsoftgraph.chinacloudapi.cn/v1.0.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://graph.microsoft.com/v1.0"
    )]
    pub graph_endpoint: String,
    /// The sign-in host; national clouds: https://login.microsoftonline.us,
    /// https://login.chinacloudapi.cn. Tokens come from <login>/<tenant>/oauth2/v2.0/token.
    #[arg(
        long,
        value_name = "URL",
        default_value = "https://login.microsoftonline.com"
    )]
    pub login_endpoint: String,
    /// SharePoint sites: `all`, or comma-separated site URLs.
    #[arg(long, value_name = "SITES", default_value = "all")]
    pub sites: String,
    /// Also export each mailbox's Recoverable Items (Deletions): mail deleted from Deleted
    /// Items, kept by Exchange for the retention period.
    #[arg(long)]
    pub include_recoverable: bool,
    /// Graph requests at once per mailbox (Exchange Online allows 4).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub mailbox_concurrency: u32,
}

/// How to reach an S3-compatible store (sources, destinations, bags to verify).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "S3 connection")]
pub struct S3ConnectionArgs {
    /// The S3 endpoint, for anything but AWS (Ceph, MinIO, Garage, …); AWS_ENDPOINT_URL works too.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// The region (else AWS_REGION or the profile's; us-east-1 as a last resort).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// A profile from ~/.aws/config and ~/.aws/credentials (else AWS_PROFILE or "default").
    /// Credentials otherwise come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, web identity,
    /// or container/instance metadata.
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// How buckets are addressed: `path` (https://host/bucket/key; the default with
    /// --endpoint-url) or `virtual` (https://bucket.host/key; the default for AWS).
    #[arg(long, value_name = "STYLE", value_parser = ["path", "virtual"])]
    pub addressing: Option<String>,
    /// Send unsigned requests, for public buckets.
    #[arg(long)]
    pub no_sign_request: bool,
}

/// Options of `s3://` sources.
#[derive(Debug, Args)]
#[command(next_help_heading = "S3 sources (s3://BUCKET[/PREFIX], or s3:// for every bucket)")]
pub struct S3Args {
    #[command(flatten)]
    pub conn: S3ConnectionArgs,
    /// Export every version and delete marker (older versions sit beside the current one,
    /// named `NAME@<time>~<version id>`).
    #[arg(long)]
    pub versions: bool,
    /// Record each object's tags (one more request per object).
    #[arg(long)]
    pub tags: bool,
    /// Objects over twice this size are fetched as parallel ranged GETs of this size (e.g. 8MiB).
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// Ranged GETs in flight at once, over all transfers. Memory grows with this × --part-size
    /// (two to three times that, measured); the defaults keep a run near 50 MiB.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel_parts: usize,
    /// Entries per listing request: S3 keys (the server's default when not given), Microsoft
    /// Graph items (default 100), Gmail message ids (default and most 500), Drive files (most
    /// 1,000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub page_size: Option<i32>,
}

/// bag-info.txt labels.
#[derive(Debug, Args)]
#[command(next_help_heading = "bag-info.txt")]
pub struct BagInfoArgs {
    /// Source-Organization: who the records come from.
    #[arg(long, value_name = "TEXT")]
    pub source_organization: Option<String>,
    /// Contact-Name.
    #[arg(long, value_name = "TEXT")]
    pub contact_name: Option<String>,
    /// Contact-Email.
    #[arg(long, value_name = "TEXT")]
    pub contact_email: Option<String>,
    /// Contact-Phone.
    #[arg(long, value_name = "TEXT")]
    pub contact_phone: Option<String>,
    /// External-Identifier: your reference for this transfer (case or journal number).
    #[arg(long, value_name = "TEXT")]
    pub external_identifier: Option<String>,
    /// External-Description: what this bag is.
    #[arg(long, value_name = "TEXT")]
    pub external_description: Option<String>,
    /// Any other label, as LABEL=VALUE (repeatable), e.g. Internal-Sender-Identifier=2026/114.
    #[arg(long = "bag-info", value_name = "LABEL=VALUE", value_parser = parse_label)]
    pub extra: Vec<(String, String)>,
}

/// `ferry verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bag (a folder, a .zip, or s3://BUCKET/PREFIX) or repository (a folder or
    /// s3://BUCKET/PREFIX).
    pub bag: PathBuf,
    /// Only compare Payload-Oxum (octets and file count) with the payload; no hashing.
    #[arg(long, conflicts_with = "completeness_only")]
    pub fast: bool,
    /// Check that every file is where the manifests say, and nothing else is; no hashing.
    #[arg(long)]
    pub completeness_only: bool,
    /// Hashing threads (default: every core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// For a repository: check only this share of its contents, chosen at random (e.g. `5%`),
    /// besides every run record and the chain — a quick nightly check.
    #[arg(long, value_name = "PERCENT")]
    pub sample: Option<String>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3ConnectionArgs,
}

/// `ferry ls`.
#[derive(Debug, Args, Clone)]
pub struct LsArgs {
    /// The bag: a folder, a .zip, or s3://BUCKET/PREFIX.
    pub bag: PathBuf,
    /// Print items.jsonl records as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// List the failures (ferry/failures.jsonl) instead of the items.
    #[arg(long)]
    pub failures: bool,
    #[command(flatten)]
    pub s3: S3ConnectionArgs,
}

/// `ferry sandbox …`.
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Serve a folder as an S3-compatible store on 127.0.0.1 (each subfolder is a bucket)
    /// until Ctrl-C; prints the endpoint and the credentials it accepts.
    S3(SandboxS3Args),
    /// Serve a seeded Microsoft 365 tenant (Microsoft Graph and its sign-in endpoint) on
    /// 127.0.0.1 until Ctrl-C; prints the endpoints and the app credentials it accepts.
    M365(SandboxM365Args),
    /// Serve a seeded Google Workspace domain (Gmail, Drive, Directory and the OAuth token
    /// endpoint) on 127.0.0.1 until Ctrl-C; writes the service-account key file it accepts and
    /// prints the export command.
    Google(SandboxGoogleArgs),
}

/// `ferry sandbox google`.
#[derive(Debug, Args)]
pub struct SandboxGoogleArgs {
    /// The port (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Seed of the generated domain (same seed, same domain, same bytes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Active users (one suspended user is added).
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    /// Messages per mailbox (plus two in Spam and two in Trash).
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// My Drive items per user (folders, files, Google Docs, a shortcut, hostile names).
    #[arg(long, default_value_t = 10)]
    pub files: usize,
    /// Shared drives (one drive without members is added).
    #[arg(long, default_value_t = 1)]
    pub shared_drives: usize,
    /// The admin's My Drive also holds Large/big-file.bin of this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub large_file_mb: u64,
    /// Answer every Nth API request with a rate-limit error (403 userRateLimitExceeded and
    /// 429 rateLimitExceeded in turn).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub throttle_every: u64,
    /// Added latency of every API request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Concurrent requests served per user; one more is answered 429.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub user_concurrency: usize,
    /// Where to write the service-account key file.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "ferry-sandbox-google-key.json"
    )]
    pub key_file: PathBuf,
}

/// `ferry sandbox m365`.
#[derive(Debug, Args)]
pub struct SandboxM365Args {
    /// The port (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Seed of the generated tenant (same seed, same tenant, same bytes).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Licensed users (each with a mailbox and a OneDrive).
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    /// Messages per mailbox.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// OneDrive files per user.
    #[arg(long, default_value_t = 10)]
    pub files: usize,
    /// SharePoint sites.
    #[arg(long, default_value_t = 1)]
    pub sites: usize,
    /// Answer every Nth Graph request with 429 Too Many Requests (Retry-After: 1).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub throttle_every: u64,
    /// Added latency of every mail request, in milliseconds (a busy Exchange server).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub mail_latency_ms: u64,
    /// The first user's OneDrive also holds Large/big-file.bin of this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub large_file_mb: u64,
    /// Concurrent requests served per mailbox; one more is answered 429 (Outlook's published
    /// limit per app and mailbox is 4).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub mailbox_concurrency: usize,
    /// Requests accepted per mailbox within any sliding 10 minutes; one more is answered 429
    /// with Retry-After (Outlook's published limit per app and mailbox is 10000; 0 = no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub mailbox_requests_per_10min: u64,
}

/// `ferry sandbox s3`.
#[derive(Debug, Args)]
pub struct SandboxS3Args {
    /// The folder to serve (created if missing).
    pub root: PathBuf,
    /// The port (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Answer every Nth object request with 503 SlowDown (Retry-After: 1), to see retries.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub slow_down_every: u64,
    /// Answer reads of objects whose key starts with PREFIX with 403 AccessDenied, as a bucket
    /// policy denying part of a bucket would, to see per-object failures.
    #[arg(long, value_name = "PREFIX")]
    pub deny_read_prefix: Option<String>,
    /// Answer every request no sooner than MS milliseconds after it arrived, as a store across
    /// a network would (S3 within a region: ~10–50 ms to the first byte).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,
}

/// `ferry demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to put the demo bags.
    #[arg(long, default_value = "ferry-demo", value_name = "DIR")]
    pub dir: PathBuf,
}

fn parse_digest(s: &str) -> Result<DigestAlgorithm, String> {
    let alg: DigestAlgorithm = s.parse()?;
    match alg {
        DigestAlgorithm::Md5 | DigestAlgorithm::Sha1 => {
            Err(format!("{alg} is too weak for new bags; use sha256 or sha512 (ferry still verifies {alg} bags made by other tools)"))
        }
        other => Ok(other),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (label, value) = s.split_once('=').ok_or("expected LABEL=VALUE")?;
    let label = label.trim();
    if label.is_empty()
        || label.contains(':')
        || label.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{label:?} is not a usable bag-info label (no spaces, colons or control characters)"
        ));
    }
    Ok((label.to_string(), value.trim().to_string()))
}

/// Parses sizes like `8MiB`, `16M`, `1GiB`, `4096`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (try 8MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    let size = n.checked_mul(mult).ok_or("size too large")?;
    if size < 1 << 20 {
        return Err("parts must be at least 1MiB".into());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export_args(extra: &[&str]) -> ExportArgs {
        let mut argv = vec!["ferry", "export"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Export(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn concurrency_defaults_by_source_and_yields_to_the_flag() {
        let s3 = export_args(&["s3://bucket", "--to", "bag"]);
        assert_eq!(s3.src.concurrency_for(&s3.source), S3_CONCURRENCY);
        let fs = export_args(&["fs:/srv/share", "--to", "bag"]);
        assert_eq!(fs.src.concurrency_for(&fs.source), FS_CONCURRENCY);
        assert_eq!(fs.src.concurrency_for("m365:example.org"), CONCURRENCY);
        let set = export_args(&["s3://bucket", "--to", "bag", "--concurrency", "3"]);
        assert_eq!(set.src.concurrency_for(&set.source), 3);
        assert!(Cli::try_parse_from([
            "ferry",
            "export",
            "s3://b",
            "--to",
            "x",
            "--concurrency",
            "0"
        ])
        .is_err());
    }
}
