//! The configuration file of `ferry backup --config` (TOML): a repository, the S3 connection,
//! and jobs, each a source with the options of `ferry export`.
//!
//! A job's keys are turned into command-line flags (`users = "all"` → `--users=all`, `mbox =
//! true` → `--mbox`, `include = ["mail", "drive"]` → `--include=mail --include=drive`) and
//! parsed by the same clap definitions as the command line, so every option, default and check
//! is exactly the CLI's, and a new CLI option is a configuration key without more code. Every
//! error names the file and line. Secrets are never written in the file: a key that looks like
//! one is refused, and the options that take secrets take a file path (or the FERRY_…
//! environment variable the CLI reads).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use clap::{CommandFactory, Parser};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::cli::{BackupArgs, Cli, Command};

/// Keys of a job that are not options of its own: set elsewhere in the file, or meaningless
/// per job.
const NOT_JOB_OPTIONS: &[&str] = &[
    "config",
    "only",
    "metrics-file",
    "repo",
    "work-dir",
    "job",
    "json",
    "help",
    "version",
    "quiet",
    "verbose",
    "no-progress",
];

/// The S3 connection options: set once, in `[s3]`, for the repository and every S3 source (a
/// run has one connection).
const S3_CONNECTION: &[&str] = &[
    "endpoint-url",
    "region",
    "profile",
    "addressing",
    "no-sign-request",
];

/// Keys at the top of the file.
const TOP_KEYS: &[&str] = &["repository", "work_dir", "s3", "job"];

/// A command-line flag made from a key of the file.
#[derive(Debug, Clone)]
pub struct Flag {
    /// The key as written.
    pub key: String,
    /// `--long=value` or `--long`.
    pub arg: String,
    /// Where it was written.
    pub line: usize,
}

/// One job: a source backed up into the repository under its own name.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its name (runs of a job form a chain).
    pub name: String,
    /// The line of its `[[job]]` header.
    pub line: usize,
    /// The source, as for `ferry export`.
    pub source: String,
    /// Its options as flags.
    pub flags: Vec<Flag>,
}

/// A configuration file, read and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (named in every message).
    pub path: PathBuf,
    /// The repository: a folder or `s3://BUCKET/PREFIX`.
    pub repository: String,
    /// A local work folder for downloads and content on its way into an S3 repository.
    pub work_dir: Option<PathBuf>,
    /// The `[s3]` connection as flags, given to every job.
    pub s3: Vec<Flag>,
    /// The jobs, in the file's order.
    pub jobs: Vec<Job>,
}

/// A configuration error at a line.
fn at(path: &Path, line: usize, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{} line {line}: {message}", path.display())
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// What to write instead of a secret named `key`.
fn secret_advice(key: &str) -> &'static str {
    if key.starts_with("aws") || key.contains("access_key") || key == "secret_key" {
        "give the S3 credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or profile = NAME in [s3]"
    } else if key.contains("client_secret") {
        "use client_secret_file = PATH (readable only by ferry) or the FERRY_M365_CLIENT_SECRET environment variable"
    } else {
        "give a file path in the option made for it (client_secret_file, certificate, service_account) or the FERRY_… environment variable the README names"
    }
}

/// Whether `key` names a secret value (`client_secret`, `password`, `aws_secret_access_key`, …);
/// keys for a file holding one (`client_secret_file`) do not.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    if k.ends_with("_file") || k.ends_with("_path") {
        return false;
    }
    [
        "secret",
        "password",
        "passwd",
        "token",
        "private_key",
        "api_key",
        "apikey",
        "access_key",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Checks for a secret or an environment variable name written as a key.
fn check_key(path: &Path, line: usize, key: &str) -> Result<()> {
    if is_secret_key(key) {
        return Err(at(
            path,
            line,
            format!(
                "`{key}`: secrets are not written in the configuration; {}",
                secret_advice(key)
            ),
        ));
    }
    if key.ends_with("_env") {
        return Err(at(
            path,
            line,
            format!(
                "`{key}`: ferry reads its secrets from fixed environment variables (FERRY_M365_CLIENT_SECRET, AWS_SECRET_ACCESS_KEY, …) set in its service's environment, or from a file given with a *_file option; environment variable names are not configured"
            ),
        ));
    }
    Ok(())
}

/// The options of `ferry backup`, by key (`client_id`): long name, whether it takes a value,
/// whether it may be repeated, whether its value is a path.
struct BackupOption {
    long: String,
    takes_value: bool,
    repeatable: bool,
    path: bool,
}

fn backup_options() -> Vec<(String, BackupOption)> {
    let cmd = Cli::command();
    let backup = cmd
        .find_subcommand("backup")
        .expect("ferry has a backup command");
    backup
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let action = a.get_action();
            let path = a
                .get_value_names()
                .is_some_and(|names| names.iter().any(|n| n == "FILE" || n == "DIR"));
            Some((
                long.replace('-', "_"),
                BackupOption {
                    takes_value: action.takes_values(),
                    repeatable: matches!(action, clap::ArgAction::Append),
                    long,
                    path,
                },
            ))
        })
        .collect()
}

/// A path written in the file: relative ones are relative to the file's folder (a service
/// runs in `/`, not where the file is).
fn resolve(base: &Path, p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() || p.is_empty() {
        p.to_string()
    } else {
        base.join(path).display().to_string()
    }
}

/// A job's source with a relative folder made relative to the file's folder.
fn resolve_source(base: &Path, source: &str) -> String {
    if let Some(p) = source.strip_prefix("fs:") {
        return format!("fs:{}", resolve(base, p));
    }
    if source.contains(':') {
        return source.to_string();
    }
    resolve(base, source)
}

/// A scalar as a flag's value; `None` for a table or datetime.
fn scalar(v: &DeValue<'_>) -> Option<String> {
    match v {
        DeValue::String(s) => Some(s.to_string()),
        DeValue::Integer(i) => Some(
            i64::from_str_radix(i.as_str(), i.radix())
                .map(|n| n.to_string())
                .unwrap_or_else(|_| i.as_str().to_string()),
        ),
        DeValue::Float(f) => Some(f.as_str().to_string()),
        DeValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The flags for `key = value`, checked against the option's shape.
fn flags_for(
    path: &Path,
    line: usize,
    key: &str,
    option: &BackupOption,
    value: &DeValue<'_>,
    base: &Path,
) -> Result<Vec<Flag>> {
    let flag = |arg: String| Flag {
        key: key.to_string(),
        arg,
        line,
    };
    if !option.takes_value {
        return match value {
            DeValue::Boolean(true) => Ok(vec![flag(format!("--{}", option.long))]),
            DeValue::Boolean(false) => Ok(Vec::new()),
            _ => Err(at(
                path,
                line,
                format!("`{key}` is a switch: write {key} = true or leave it out"),
            )),
        };
    }
    let one = |v: &DeValue<'_>| -> Result<String> {
        match (v, scalar(v)) {
            (DeValue::Boolean(_), _) | (_, None) => Err(at(
                path,
                line,
                format!(
                    "`{key}` takes a value (a string or a number), not {}",
                    kind(v)
                ),
            )),
            (_, Some(s)) if option.path => Ok(resolve(base, &s)),
            (_, Some(s)) => Ok(s),
        }
    };
    match value {
        DeValue::Array(items) => {
            let values = items
                .iter()
                .map(|i| one(i.get_ref()))
                .collect::<Result<Vec<_>>>()?;
            if option.repeatable {
                Ok(values
                    .into_iter()
                    .map(|v| flag(format!("--{}={v}", option.long)))
                    .collect())
            } else {
                // `users = ["a@x.no", "b@x.no"]`: the options that take one value take lists
                // with commas.
                Ok(vec![flag(format!(
                    "--{}={}",
                    option.long,
                    values.join(",")
                ))])
            }
        }
        v => Ok(vec![flag(format!("--{}={}", option.long, one(v)?))]),
    }
}

fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) | DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "true or false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

fn string_value(
    path: &Path,
    text: &str,
    key: &str,
    value: &Spanned<DeValue<'_>>,
) -> Result<String> {
    match value.get_ref() {
        DeValue::String(s) if !s.trim().is_empty() => Ok(s.to_string()),
        v => Err(at(
            path,
            line_of(text, value.span().start),
            format!("`{key}` must be a non-empty string, not {}", kind(v)),
        )),
    }
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read the configuration file {}: {e}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Checks `text`, the content of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let doc = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            at(path, line, e.message().trim_end())
        })?;
        let options = backup_options();
        let line = |span: std::ops::Range<usize>| line_of(text, span.start);
        let mut repository = None;
        let mut work_dir = None;
        let mut s3 = Vec::new();
        let mut jobs: Vec<Job> = Vec::new();
        for (key, value) in doc.get_ref().iter() {
            let k = key.get_ref().as_ref();
            let kline = line(key.span());
            check_key(path, kline, k)?;
            match k {
                "repository" => {
                    let r = string_value(path, text, k, value)?;
                    repository = Some(if r.starts_with("s3://") {
                        r
                    } else {
                        resolve(&base, &r)
                    });
                }
                "work_dir" => {
                    work_dir = Some(PathBuf::from(resolve(
                        &base,
                        &string_value(path, text, k, value)?,
                    )))
                }
                "s3" => {
                    let DeValue::Table(table) = value.get_ref() else {
                        return Err(at(path, kline, "`s3` must be a table: [s3]"));
                    };
                    for (key, value) in table.iter() {
                        let k = key.get_ref().as_ref();
                        let kline = line(key.span());
                        check_key(path, kline, k)?;
                        let known = options.iter().find(|(name, o)| {
                            name == k && S3_CONNECTION.contains(&o.long.as_str())
                        });
                        let Some((_, option)) = known else {
                            return Err(at(
                                path,
                                kline,
                                format!(
                                    "unknown key `{k}` in [s3] (known: {})",
                                    S3_CONNECTION
                                        .iter()
                                        .map(|l| l.replace('-', "_"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        };
                        s3.extend(flags_for(path, kline, k, option, value.get_ref(), &base)?);
                    }
                }
                "job" => {
                    let DeValue::Array(list) = value.get_ref() else {
                        return Err(at(path, kline, "jobs are written as [[job]] tables"));
                    };
                    for entry in list.iter() {
                        let DeValue::Table(table) = entry.get_ref() else {
                            return Err(at(
                                path,
                                line(entry.span()),
                                "jobs are written as [[job]] tables",
                            ));
                        };
                        jobs.push(Self::job(
                            path,
                            text,
                            &base,
                            &options,
                            line(entry.span()),
                            table,
                        )?);
                    }
                }
                other => {
                    return Err(at(
                        path,
                        kline,
                        format!("unknown key `{other}` (known: {})", TOP_KEYS.join(", ")),
                    ))
                }
            }
        }
        let Some(repository) = repository else {
            bail!(
                "{}: no repository; write repository = \"/backups/ferry\" (or \"s3://BUCKET/PREFIX\") at the top",
                path.display()
            );
        };
        if jobs.is_empty() {
            bail!(
                "{}: no jobs; add a [[job]] with a name and a source",
                path.display()
            );
        }
        let mut names = HashSet::new();
        for j in &jobs {
            if !names.insert(ferry_repo::format::safe_job(&j.name)) {
                return Err(at(
                    path,
                    j.line,
                    format!(
                        "a second job named `{}`; every job needs its own name (its runs form one chain)",
                        j.name
                    ),
                ));
            }
        }
        let config = Config {
            path: path.to_path_buf(),
            repository,
            work_dir,
            s3,
            jobs,
        };
        // Every job's options are checked now, before any job runs.
        for j in &config.jobs {
            config.job_cli(j, &[])?;
        }
        Ok(config)
    }

    fn job(
        path: &Path,
        text: &str,
        base: &Path,
        options: &[(String, BackupOption)],
        header: usize,
        table: &DeTable<'_>,
    ) -> Result<Job> {
        let mut name = None;
        let mut source = None;
        let mut flags = Vec::new();
        // Names are checked at the end: an unknown key is reported with the job's name.
        let mut pending = Vec::new();
        for (key, value) in table.iter() {
            let k = key.get_ref().as_ref();
            let kline = line_of(text, key.span().start);
            match k {
                "name" => name = Some(string_value(path, text, k, value)?),
                "source" => source = Some(string_value(path, text, k, value)?),
                _ => pending.push((k, kline, value)),
            }
        }
        let Some(name) = name else {
            return Err(at(
                path,
                header,
                "this [[job]] has no name; write name = \"…\" (runs are named after it)",
            ));
        };
        for (k, kline, value) in pending {
            check_key(path, kline, k)?;
            let known = options.iter().find(|(key, o)| {
                key == k
                    && !NOT_JOB_OPTIONS.contains(&o.long.as_str())
                    && !S3_CONNECTION.contains(&o.long.as_str())
            });
            let Some((_, option)) = known else {
                let hint = if S3_CONNECTION.contains(&k.replace('_', "-").as_str()) {
                    format!("`{k}` is part of the S3 connection: set it once, in [s3]")
                } else if k == "work_dir" || k == "repository" || k == "repo" {
                    format!("`{k}` is set once, at the top of the file")
                } else {
                    let mut known: Vec<&str> = options
                        .iter()
                        .filter(|(_, o)| {
                            !NOT_JOB_OPTIONS.contains(&o.long.as_str())
                                && !S3_CONNECTION.contains(&o.long.as_str())
                        })
                        .map(|(key, _)| key.as_str())
                        .collect();
                    known.sort_unstable();
                    format!(
                        "unknown key `{k}` in job `{name}` (known: name, source, {})",
                        known.join(", ")
                    )
                };
                return Err(at(path, kline, hint));
            };
            flags.extend(flags_for(path, kline, k, option, value.get_ref(), base)?);
        }
        let Some(source) = source else {
            return Err(at(
                path,
                header,
                format!("job `{name}` has no source; write source = \"fs:/srv/share\" (or s3://…, m365:…, google:…)"),
            ));
        };
        Ok(Job {
            name,
            line: header,
            source: resolve_source(base, &source),
            flags,
        })
    }

    /// The arguments `ferry backup` is parsed from for `job`, before its own flags; `global`
    /// are the global flags of this invocation (`-q`, `-v`, `--no-progress`).
    fn base_argv(&self, job: &Job, global: &[String]) -> Vec<String> {
        let mut argv = vec!["ferry".to_string()];
        argv.extend(global.iter().cloned());
        argv.push("backup".into());
        argv.push(job.source.clone());
        argv.push(format!("--repo={}", self.repository));
        argv.push(format!("--job={}", job.name));
        if let Some(w) = &self.work_dir {
            argv.push(format!("--work-dir={}", w.display()));
        }
        argv
    }

    /// The command line of `job`, parsed as `ferry backup` would parse it; a bad value is an
    /// error naming the line it was written on.
    pub fn job_cli(&self, job: &Job, global: &[String]) -> Result<Cli> {
        let base = self.base_argv(job, global);
        let flags: Vec<&Flag> = self.s3.iter().chain(&job.flags).collect();
        let all: Vec<String> = base
            .iter()
            .cloned()
            .chain(flags.iter().map(|f| f.arg.clone()))
            .collect();
        let error = match Cli::try_parse_from(&all) {
            Ok(cli) => return Ok(cli),
            Err(e) => e,
        };
        // Which key made it fail: add the flags one by one (a job has a handful).
        let mut argv = base.clone();
        if let Err(e) = Cli::try_parse_from(&argv) {
            return Err(at(
                &self.path,
                job.line,
                format!("job `{}`: {}", job.name, clap_message(&e)),
            ));
        }
        for f in &flags {
            argv.push(f.arg.clone());
            if let Err(e) = Cli::try_parse_from(&argv) {
                return Err(at(
                    &self.path,
                    f.line,
                    format!("`{}` in job `{}`: {}", f.key, job.name, clap_message(&e)),
                ));
            }
        }
        Err(at(
            &self.path,
            job.line,
            format!("job `{}`: {}", job.name, clap_message(&error)),
        ))
    }
}

/// The backup arguments of a parsed job command line.
pub fn backup_args(cli: &Cli) -> &BackupArgs {
    match &cli.command {
        Command::Backup(args) => args,
        _ => unreachable!("job command lines are `ferry backup …`"),
    }
}

/// clap's message without its `error:` prefix and usage lines.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix("error: ")
        .unwrap_or(first)
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/ferry/ferry.toml"))
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    const GOOD: &str = r#"
repository = "/backups/ferry"
work_dir = "cache"

[s3]
endpoint_url = "http://ceph:7480"

[[job]]
name = "share"
source = "fs:/srv/share"
concurrency = 4
follow_symlinks = true

[[job]]
name = "m365"
source = "m365:contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
client_secret_file = "m365.secret"
include = ["mail", "onedrive"]
users = ["ola@contoso.no", "kari@contoso.no"]
"#;

    #[test]
    fn jobs_become_backup_command_lines() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.repository, "/backups/ferry");
        assert_eq!(c.work_dir, Some(PathBuf::from("/etc/ferry/cache")));
        assert_eq!(c.jobs.len(), 2);
        let cli = c.job_cli(&c.jobs[0], &[]).unwrap();
        let a = backup_args(&cli);
        assert_eq!(a.source.as_deref(), Some("fs:/srv/share"));
        assert_eq!(a.repo.as_deref(), Some("/backups/ferry"));
        assert_eq!(a.job.as_deref(), Some("share"));
        assert_eq!(a.src.concurrency, Some(4));
        assert!(a.src.follow_symlinks);
        assert_eq!(
            a.src.s3.conn.endpoint_url.as_deref(),
            Some("http://ceph:7480")
        );
        let cli = c.job_cli(&c.jobs[1], &["-q".into()]).unwrap();
        assert!(cli.quiet);
        let a = backup_args(&cli);
        assert_eq!(a.src.include, vec!["mail", "onedrive"]);
        assert_eq!(a.src.users, "ola@contoso.no,kari@contoso.no");
        assert_eq!(
            a.src.m365.client_secret_file,
            Some(PathBuf::from("/etc/ferry/m365.secret"))
        );
        // Defaults are the CLI's.
        assert_eq!(a.src.retries, 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_line() {
        let e =
            err("repository = \"/r\"\n[[job]]\nname = \"a\"\nsource = \"fs:/x\"\nconcurency = 3\n");
        assert!(
            e.contains(
                "ferry.toml line 5: unknown key `concurency` in job `a` (known: name, source, "
            ),
            "{e}"
        );
        assert!(e.contains("concurrency"), "{e}");
        let e = err("repository = \"/r\"\n[[job]]\nname = \"a\"\nsource = \"fs:/x\"\nconcurrency = \"lots\"\n");
        assert!(
            e.contains("line 5: `concurrency` in job `a`: invalid value 'lots'"),
            "{e}"
        );
        let e = err(
            "repository = \"/r\"\n[[job]]\nname = \"a\"\nsource = \"fs:/x\"\n\nconcurrency = 0\n",
        );
        assert!(e.contains("line 6:"), "{e}");
        let e =
            err("repository = \"/r\"\n[[job]]\nname = \"a\"\nsource = \"fs:/x\"\nmbox = \"yes\"\n");
        assert!(e.contains("line 5: `mbox` is a switch"), "{e}");
        let e = err("repository = \"/r\"\nrepositry = \"/q\"\n");
        assert!(e.contains("line 2: unknown key `repositry`"), "{e}");
        let e = err("repository = \"/r\"\n[[job]]\nname = \"a\"\nsource = \"fs:/x\"\nendpoint_url = \"http://x\"\n");
        assert!(
            e.contains("line 5: `endpoint_url` is part of the S3 connection"),
            "{e}"
        );
        let e = err("repository = \"/r\"\n[[job]]\nsource = \"fs:/x\"\n");
        assert!(e.contains("line 2: this [[job]] has no name"), "{e}");
        let e = err("repository = \"/r\"\n[[job]]\nname = \"a\"\nsource = \"fs:/x\"\n[[job]]\nname = \"a\"\nsource = \"fs:/y\"\n");
        assert!(e.contains("line 5: a second job named `a`"), "{e}");
        let e = err("repository = \"/r\"\n[[job]]\nname = \"a\"\nsource = \"fs:/x\"\nusers = \n");
        assert!(e.contains("ferry.toml line 5:"), "{e}");
    }

    #[test]
    fn secrets_are_refused_without_being_repeated() {
        let e = err("repository = \"/r\"\n[[job]]\nname = \"m\"\nsource = \"m365:c.no\"\nclient_secret = \"hunter2\"\n");
        assert!(e.contains("line 5: `client_secret`: secrets are not written in the configuration; use client_secret_file = PATH"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("repository = \"s3://b/p\"\n[s3]\naws_secret_access_key = \"x\"\n");
        assert!(
            e.contains("line 3: `aws_secret_access_key`: secrets are not written"),
            "{e}"
        );
        let e = err("repository = \"/r\"\npassword = \"x\"\n");
        assert!(e.contains("line 2: `password`"), "{e}");
        let e = err("repository = \"/r\"\n[[job]]\nname = \"m\"\nsource = \"m365:c.no\"\nclient_secret_env = \"X\"\n");
        assert!(e.contains("line 5: `client_secret_env`"), "{e}");
    }
}
