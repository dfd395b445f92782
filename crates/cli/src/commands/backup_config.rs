//! `ferry backup --config FILE`: every job of a configuration file, one after the other.
//!
//! The whole file is checked before the first job runs, so a typo found at 02:00 stops
//! nothing halfway. A job that cannot run does not stop the next; an interruption does.

use std::path::Path;

use anyhow::{bail, Result};
use time::OffsetDateTime;

use super::exit;
use crate::cli::{BackupArgs, Cli, Command};
use crate::config::{backup_args, Config};

/// Runs the jobs of `config`; returns the exit code (the worst of the jobs').
pub async fn run(cli: &Cli, args: &BackupArgs, config: &Path) -> Result<i32> {
    if args.repo.is_some() || args.job.is_some() || args.work_dir.is_some() {
        bail!(
            "with --config, the repository, work folder and job names come from {}; leave out --repo, --work-dir and --job",
            config.display()
        );
    }
    let config = Config::load(config)?;
    let jobs: Vec<_> = if args.only.is_empty() {
        config.jobs.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for name in &args.only {
            let Some(job) = config.jobs.iter().find(|j| {
                j.name == *name
                    || ferry_repo::format::safe_job(&j.name) == ferry_repo::format::safe_job(name)
            }) else {
                bail!(
                    "no job {name:?} in {} (its jobs: {})",
                    config.path.display(),
                    config
                        .jobs
                        .iter()
                        .map(|j| j.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            if !chosen
                .iter()
                .any(|c: &&crate::config::Job| c.name == job.name)
            {
                chosen.push(job);
            }
        }
        chosen
    };
    // This invocation's global flags apply to every job.
    let mut global = Vec::new();
    if cli.quiet {
        global.push("--quiet".to_string());
    }
    for _ in 0..cli.verbose {
        global.push("--verbose".to_string());
    }
    if cli.no_progress {
        global.push("--no-progress".to_string());
    }
    let mut command_lines = Vec::new();
    for job in &jobs {
        let mut job_cli = config.job_cli(job, &global)?;
        if let Command::Backup(a) = &mut job_cli.command {
            a.json = args.json;
            a.metrics_file = args.metrics_file.clone();
        }
        command_lines.push(job_cli);
    }
    // One JSON summary per job, as one array: `run_one` prints each job's object.
    if args.json {
        println!("[");
    }
    let mut worst = exit::OK;
    let mut outcomes = Vec::new();
    for (i, (job, job_cli)) in jobs.iter().zip(&command_lines).enumerate() {
        let job_args = backup_args(job_cli);
        if args.json && i > 0 {
            println!(",");
        }
        if !cli.quiet {
            tracing::info!(
                "job {} ({}/{}): {} → {}",
                job.name,
                i + 1,
                jobs.len(),
                job.source,
                config.repository
            );
        }
        let started = OffsetDateTime::now_utc();
        let result =
            super::backup::run_one(job_cli, job_args, &job.source, &config.repository).await;
        let result = match result {
            Ok(code) => Ok(code),
            Err(e) => {
                // The job could not start (wrong credentials, a missing folder, …): say so and
                // go on with the next job.
                tracing::error!("job {}: {e:#}", job.name);
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "status": "error",
                            "exit_code": exit::ERROR,
                            "job": job.name,
                            "source": job.source,
                            "repository": config.repository,
                            "run": null,
                            "counts": null,
                            "elapsed_seconds": ((OffsetDateTime::now_utc() - started).as_seconds_f64() * 1000.0).round() / 1000.0,
                            "failures": [],
                            "error": format!("{e:#}"),
                        }))?
                    );
                }
                Err(e)
            }
        };
        let code =
            crate::metrics::after_job(job_args, &config.repository, &job.name, started, result)
                .await
                .unwrap_or(exit::ERROR);
        worst = worst.max(code);
        outcomes.push((job.name.clone(), code));
        if code == exit::INTERRUPTED {
            tracing::warn!("interrupted; the jobs after {} were not run", job.name);
            break;
        }
    }
    if args.json {
        println!("]");
    } else if !cli.quiet && jobs.len() > 1 {
        println!("Jobs of {}:", config.path.display());
        for (name, code) in &outcomes {
            let what = match *code {
                exit::OK => "completed",
                exit::PROBLEMS => "finished WITH FAILURES",
                exit::INTERRUPTED => "interrupted",
                _ => "could not run",
            };
            println!("  {name}: {what} (exit {code})");
        }
        for job in jobs.iter().skip(outcomes.len()) {
            println!("  {}: not run", job.name);
        }
    }
    Ok(worst)
}
