//! `ferry prune --repo …`: retention for a repository, and legal holds.

use std::time::Instant;

use anyhow::Result;
use ferry_repo::prune::{prune, Policy, PruneRequest, PruneSummary};
use indicatif::HumanBytes;

use super::exit;
use crate::cli::{Cli, PruneArgs};

/// Prunes (or changes holds); returns the exit code.
pub async fn run(cli: &Cli, args: &PruneArgs) -> Result<i32> {
    let started = Instant::now();
    let policy = Policy {
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
    };
    // Refused before the repository is opened: a prune without a policy would keep only each
    // job's newest run.
    if policy.is_empty() && args.hold.is_empty() && args.release.is_empty() {
        anyhow::bail!(
            "give at least one --keep-… option (--keep-daily, --keep-weekly, --keep-monthly, --keep-yearly), or --hold/--release to change holds only"
        );
    }
    let repo = super::backup::open_repo(&args.repo, &args.s3, false).await?;
    let request = PruneRequest {
        policy,
        hold: args.hold.clone(),
        reason: args.reason.clone(),
        release: args.release.clone(),
        dry_run: args.dry_run,
    };
    let summary = match prune(&repo, &request).await {
        Ok(s) => s,
        Err(e) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"status": "error", "repository": repo.store().uri(), "error": e.to_string()})
                );
            }
            return Err(e.into());
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["status"] = "ok".into();
        v["elapsed_seconds"] = ((elapsed * 1000.0).round() / 1000.0).into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if !cli.quiet {
        print_summary(&summary, elapsed);
    }
    Ok(exit::OK)
}

fn print_summary(s: &PruneSummary, elapsed: f64) {
    for run in &s.held {
        println!("Put run {run} under hold.");
    }
    for run in &s.released {
        println!("Lifted the hold of run {run}.");
    }
    for c in &s.cleared {
        println!("Cleared {c}.");
    }
    let Some(policy) = s.policy else {
        if !s.dry_run {
            println!("{} runs under hold in {}.", s.holds.len(), s.repository);
        }
        return;
    };
    let mut rules = Vec::new();
    for (n, what) in [
        (policy.daily, "daily"),
        (policy.weekly, "weekly"),
        (policy.monthly, "monthly"),
        (policy.yearly, "yearly"),
    ] {
        if n > 0 {
            rules.push(format!("{what} {n}"));
        }
    }
    println!(
        "{} {} (keep {}):",
        if s.dry_run {
            "Prune plan for"
        } else {
            "Pruned"
        },
        s.repository,
        rules.join(", ")
    );
    for d in &s.runs {
        if d.keep {
            println!("  keep    {}  ({})", d.run, d.reasons.join(", "));
        } else if d.reasons.is_empty() {
            println!("  remove  {}", d.run);
        } else {
            println!("  remove  {}  ({})", d.run, d.reasons.join(", "));
        }
    }
    let checkpoints = if s.checkpoints.is_empty() {
        String::new()
    } else {
        format!(
            "; {} kept runs {}get a full state of their own ({})",
            s.checkpoints.len(),
            if s.dry_run { "would " } else { "" },
            s.checkpoints.join(", ")
        )
    };
    if s.dry_run {
        println!(
            "Would remove {} runs and {} contents ({}), keeping {} runs and {} contents{checkpoints}. Nothing was changed (--dry-run).",
            s.removed_runs,
            s.blobs_removed,
            HumanBytes(s.bytes_removed),
            s.kept_runs,
            s.blobs_kept
        );
    } else {
        println!(
            "Removed {} runs and {} contents ({}), kept {} runs and {} contents{checkpoints}, in {elapsed:.1} s.",
            s.removed_runs,
            s.blobs_removed,
            HumanBytes(s.bytes_removed),
            s.kept_runs,
            s.blobs_kept
        );
    }
}
