//! Prometheus textfile metrics of backup jobs, for node_exporter's textfile collector
//! (`--metrics-file /var/lib/node_exporter/textfile/ferry.prom`).
//!
//! After each job the file is rewritten whole — a temporary file renamed over it, so the
//! collector never reads half a file — with this job's numbers and every other job's lines
//! kept from the previous file (a run of one job, `--only`, does not make the others vanish).
//! The numbers come from the run's record in the repository, so they are what `ferry runs`
//! shows.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use ferry_repo::format::{job_of, safe_job, RunCounts};
use time::OffsetDateTime;

use crate::cli::{BackupArgs, RepoArgs};
use crate::commands::exit;

/// The metrics, in the order written: name, help, and whether samples have a `kind` label.
const METRICS: &[(&str, &str)] = &[
    (
        "ferry_backup_items",
        "Items of the job's last run: listed by the source, added, changed, removed, unchanged (not read again), failed.",
    ),
    (
        "ferry_backup_bytes",
        "Bytes the job's last run read from the source and wrote into the repository.",
    ),
    (
        "ferry_backup_failures",
        "Items or parts of the source the job's last run could not back up (listed in its run record).",
    ),
    (
        "ferry_backup_duration_seconds",
        "Wall-clock seconds of the job's last run.",
    ),
    (
        "ferry_backup_last_success_timestamp_seconds",
        "When the job's last recorded run finished (exit code 0 or 1), in Unix seconds; kept while later runs fail.",
    ),
    (
        "ferry_backup_exit_code",
        "Exit code of the job's last run: 0 ok, 1 finished with failures, 2 could not run, 130 interrupted.",
    ),
];

/// What one job's run gave.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    /// The job's name (the `job` label).
    pub job: String,
    /// Its exit code.
    pub exit_code: i32,
    /// How long it took.
    pub duration: Duration,
    /// The recorded run's counts; `None` when no run was recorded (error, interruption).
    pub counts: Option<RunCounts>,
    /// When the recorded run finished.
    pub finished: Option<OffsetDateTime>,
}

impl JobMetrics {
    /// The samples of this job, by metric name (without the metric name and `job` label).
    fn samples(&self, previous_success: Option<&str>) -> BTreeMap<&'static str, Vec<String>> {
        let c = self.counts.clone().unwrap_or_default();
        let job = escape(&self.job);
        let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let items = [
            ("listed", c.listed),
            ("added", c.added),
            ("changed", c.changed),
            ("removed", c.removed),
            ("unchanged", c.unchanged),
            ("failed", c.failed),
        ];
        out.insert(
            "ferry_backup_items",
            items
                .iter()
                .map(|(k, v)| format!("ferry_backup_items{{job=\"{job}\",kind=\"{k}\"}} {v}"))
                .collect(),
        );
        out.insert(
            "ferry_backup_bytes",
            [("read", c.bytes_read), ("written", c.bytes_written)]
                .iter()
                .map(|(k, v)| format!("ferry_backup_bytes{{job=\"{job}\",kind=\"{k}\"}} {v}"))
                .collect(),
        );
        out.insert(
            "ferry_backup_failures",
            vec![format!(
                "ferry_backup_failures{{job=\"{job}\"}} {}",
                c.failed
            )],
        );
        out.insert(
            "ferry_backup_duration_seconds",
            vec![format!(
                "ferry_backup_duration_seconds{{job=\"{job}\"}} {:.3}",
                self.duration.as_secs_f64()
            )],
        );
        let success = match (self.exit_code, self.finished) {
            (exit::OK | exit::PROBLEMS, Some(t)) => Some(format!(
                "ferry_backup_last_success_timestamp_seconds{{job=\"{job}\"}} {}",
                t.unix_timestamp()
            )),
            _ => previous_success.map(str::to_string),
        };
        out.insert(
            "ferry_backup_last_success_timestamp_seconds",
            success.into_iter().collect(),
        );
        out.insert(
            "ferry_backup_exit_code",
            vec![format!(
                "ferry_backup_exit_code{{job=\"{job}\"}} {}",
                self.exit_code
            )],
        );
        out
    }
}

/// A label value as the text format wants it.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metric name and `job` label of a sample line, as written by [`escape`].
fn parse_sample(line: &str) -> Option<(&str, String)> {
    let (name, rest) = line.split_once('{')?;
    let rest = rest.split_once("job=\"")?.1;
    let mut job = String::new();
    let mut chars = rest.chars();
    loop {
        match chars.next()? {
            '"' => break,
            '\\' => match chars.next()? {
                'n' => job.push('\n'),
                c => job.push(c),
            },
            c => job.push(c),
        }
    }
    Some((name, job))
}

/// Writes `path` with `update`'s samples and every other job's samples from the file as it
/// was; atomically (a temporary file in the same folder, renamed over it).
pub fn write(path: &Path, update: &JobMetrics) -> std::io::Result<()> {
    // metric → job → lines, from the previous file.
    let mut samples: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((name, job)) = parse_sample(line) {
                samples
                    .entry(name.to_string())
                    .or_default()
                    .entry(job)
                    .or_default()
                    .push(line.to_string());
            }
        }
    }
    let previous_success = samples
        .get("ferry_backup_last_success_timestamp_seconds")
        .and_then(|jobs| jobs.get(&update.job))
        .and_then(|lines| lines.first())
        .cloned();
    for (name, lines) in update.samples(previous_success.as_deref()) {
        samples
            .entry(name.to_string())
            .or_default()
            .insert(update.job.clone(), lines);
    }
    let mut out = String::new();
    for (name, help) in METRICS {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        if let Some(jobs) = samples.get(*name) {
            for line in jobs.values().flatten() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    // Not ending in .prom: the collector skips it while it is being written.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        // Readable by the collector, which usually runs as another user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Records the metrics of a job that ran into `repo_uri` since `started` with outcome
/// `result`, if `args` asks for a metrics file; returns `result` unchanged. A metrics file that
/// cannot be written is logged, not fatal: the backup itself went as `result` says.
pub async fn after_job(
    args: &BackupArgs,
    repo_uri: &str,
    job: &str,
    started: OffsetDateTime,
    result: Result<i32>,
) -> Result<i32> {
    let Some(path) = &args.metrics_file else {
        return result;
    };
    let exit_code = match &result {
        Ok(code) => *code,
        Err(_) => exit::ERROR,
    };
    let elapsed = OffsetDateTime::now_utc() - started;
    let mut metrics = JobMetrics {
        job: job.to_string(),
        exit_code,
        duration: elapsed.try_into().unwrap_or_default(),
        counts: None,
        finished: None,
    };
    if let Some(run) = this_run(args, repo_uri, job, started).await {
        metrics.counts = Some(run.counts);
        metrics.finished = Some(run.finished);
    }
    if let Err(e) = write(path, &metrics) {
        tracing::error!(
            "cannot write the metrics file {}: {e}; monitoring will see the previous run's numbers",
            path.display()
        );
    }
    result
}

/// The run of `job` recorded since `started`, if there is one.
async fn this_run(
    args: &BackupArgs,
    repo_uri: &str,
    job: &str,
    started: OffsetDateTime,
) -> Option<ferry_repo::format::RunRecord> {
    let repo_args = RepoArgs {
        repo: repo_uri.to_string(),
        work_dir: args.work_dir.clone(),
    };
    let repo = crate::commands::backup::open_repo(&repo_args, &args.src.s3.conn, false)
        .await
        .ok()?;
    let job = safe_job(job);
    let id = repo
        .run_ids()
        .await
        .ok()?
        .into_iter()
        .rfind(|id| job_of(id) == job)?;
    let run = repo.run(&id).await.ok()?.record;
    (run.started >= started).then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, exit_code: i32, listed: u64) -> JobMetrics {
        JobMetrics {
            job: name.into(),
            exit_code,
            duration: Duration::from_millis(1500),
            counts: (exit_code < 2).then(|| RunCounts {
                listed,
                added: 2,
                failed: u64::from(exit_code == 1),
                bytes_read: 10,
                ..RunCounts::default()
            }),
            finished: (exit_code < 2)
                .then(|| OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()),
        }
    }

    #[test]
    fn jobs_are_kept_and_the_last_success_survives_a_failure() {
        let dir = std::env::temp_dir().join(format!("ferry-metrics-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ferry.prom");
        write(&path, &job("share", 0, 5)).unwrap();
        write(&path, &job("we\"ird", 1, 7)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# TYPE ferry_backup_items gauge\n"));
        assert!(text.contains("ferry_backup_items{job=\"share\",kind=\"listed\"} 5\n"));
        assert!(text.contains("ferry_backup_items{job=\"we\\\"ird\",kind=\"listed\"} 7\n"));
        assert!(text.contains("ferry_backup_failures{job=\"we\\\"ird\"} 1\n"));
        assert!(text.contains("ferry_backup_duration_seconds{job=\"share\"} 1.500\n"));
        // share fails: its last success stays, the other job is untouched.
        write(&path, &job("share", 2, 0)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("ferry_backup_exit_code{job=\"share\"} 2\n"),
            "{text}"
        );
        assert!(text
            .contains("ferry_backup_last_success_timestamp_seconds{job=\"share\"} 1800000000\n"));
        assert!(text.contains("ferry_backup_items{job=\"share\",kind=\"listed\"} 0\n"));
        assert!(text.contains("ferry_backup_items{job=\"we\\\"ird\",kind=\"listed\"} 7\n"));
        assert_eq!(text.matches("# HELP ferry_backup_items ").count(), 1);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
