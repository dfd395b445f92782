//! One writer at a time: `locks/repository.lock`, created only if absent, refreshed every minute
//! while a run or prune works, deleted at the end. A lock whose heartbeat is older than ten
//! minutes, or whose process is gone from this host, is stale and taken over with a warning —
//! so a run killed with `kill -9` never blocks the next night's run.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_core::{Error, ObjectStore, Result};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The lock's key.
pub const LOCK_KEY: &str = "locks/repository.lock";
/// A heartbeat older than this makes a lock stale.
pub const STALE_AFTER: Duration = Duration::from_secs(600);
const HEARTBEAT: Duration = Duration::from_secs(60);

/// What a lock file says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    /// Host name of the writer.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// What it is doing (a run id, `prune`).
    pub run: String,
    /// When it took the lock.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// Last sign of life.
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat: OffsetDateTime,
}

/// This machine's host name.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl LockInfo {
    /// Why the lock is stale, if it is.
    pub fn stale(&self, now: OffsetDateTime) -> Option<String> {
        let age = now - self.heartbeat;
        if age > STALE_AFTER {
            return Some(format!(
                "its last heartbeat was {} minutes ago",
                age.whole_minutes()
            ));
        }
        if self.host == host_name() && self.pid != std::process::id() && !process_alive(self.pid) {
            return Some(format!(
                "process {} no longer runs on {}",
                self.pid, self.host
            ));
        }
        None
    }
}

/// A held lock; [`RepoLock::release`] lets it go (dropping it leaves the file, which then goes
/// stale — as after a crash).
pub struct RepoLock {
    store: Arc<dyn ObjectStore>,
    beat: tokio::task::JoinHandle<()>,
}

impl RepoLock {
    /// Takes the lock for `what` (a run id, `prune`), taking over a stale one.
    pub async fn acquire(store: Arc<dyn ObjectStore>, what: &str) -> Result<RepoLock> {
        let now = OffsetDateTime::now_utc();
        let info = LockInfo {
            host: host_name(),
            pid: std::process::id(),
            run: what.to_string(),
            started: now,
            heartbeat: now,
        };
        let body = Bytes::from(serde_json::to_vec_pretty(&info).expect("JSON"));
        for _ in 0..2 {
            if store.put_new(LOCK_KEY, body.clone()).await? {
                let beat = tokio::spawn(heartbeat(store.clone(), info.clone()));
                return Ok(RepoLock { store, beat });
            }
            let held = store.get_bytes(LOCK_KEY, 64 * 1024).await;
            let held: Option<LockInfo> = held.ok().and_then(|b| serde_json::from_slice(&b).ok());
            match held {
                Some(h) => match h.stale(OffsetDateTime::now_utc()) {
                    Some(why) => {
                        tracing::warn!(
                            "taking over the stale lock of {} (host {}, pid {}): {why}",
                            h.run,
                            h.host,
                            h.pid
                        );
                        store.delete(LOCK_KEY).await?;
                    }
                    None => {
                        return Err(Error::fatal(format!(
                            "the repository {} is in use: {} on {} (pid {}) since {} (last heartbeat {}); wait for it to end, or if it is gone delete {LOCK_KEY}",
                            store.uri(),
                            h.run,
                            h.host,
                            h.pid,
                            h.started,
                            h.heartbeat
                        )))
                    }
                },
                None => {
                    tracing::warn!("replacing an unreadable lock file {LOCK_KEY}");
                    store.delete(LOCK_KEY).await?;
                }
            }
        }
        Err(Error::fatal(format!(
            "cannot take the lock of {}: another writer took it at the same moment",
            store.uri()
        )))
    }

    /// Lets the lock go.
    pub async fn release(self) -> Result<()> {
        self.beat.abort();
        self.store.delete(LOCK_KEY).await
    }
}

async fn heartbeat(store: Arc<dyn ObjectStore>, mut info: LockInfo) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        info.heartbeat = OffsetDateTime::now_utc();
        let body = Bytes::from(serde_json::to_vec_pretty(&info).expect("JSON"));
        if let Err(e) = store.put_bytes(LOCK_KEY, body).await {
            tracing::warn!("cannot refresh the repository lock: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::FolderStore;

    #[tokio::test]
    async fn one_writer_at_a_time_and_dead_writers_lose_their_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FolderStore::new(dir.path()));
        let lock = RepoLock::acquire(store.clone(), "run-1").await.unwrap();
        let err = RepoLock::acquire(store.clone(), "run-2")
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("in use: run-1"), "{err}");
        lock.release().await.unwrap();
        // A lock left by a process that is gone is taken over.
        let dead = LockInfo {
            host: host_name(),
            pid: 999_999_999,
            run: "killed".into(),
            started: OffsetDateTime::now_utc(),
            heartbeat: OffsetDateTime::now_utc(),
        };
        store
            .put_bytes(LOCK_KEY, Bytes::from(serde_json::to_vec(&dead).unwrap()))
            .await
            .unwrap();
        let lock = RepoLock::acquire(store.clone(), "run-3").await.unwrap();
        lock.release().await.unwrap();
        // And one whose heartbeat stopped long ago, from another host.
        let old = LockInfo {
            host: "elsewhere".into(),
            heartbeat: OffsetDateTime::now_utc() - time::Duration::hours(1),
            ..dead
        };
        store
            .put_bytes(LOCK_KEY, Bytes::from(serde_json::to_vec(&old).unwrap()))
            .await
            .unwrap();
        RepoLock::acquire(store, "run-4").await.unwrap();
    }
}
