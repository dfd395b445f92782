//! Opening a repository, its runs, and reading a run's state.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::{Error, ObjectStore, Result};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;

use crate::entries::{for_each_head, EntryHead, EntryReader, StateMerge};
use crate::format::{
    run_file, sha256_hex, RepositoryInfo, RunRecord, CHANGES_FILE, REPOSITORY_FILE,
    REPOSITORY_FORMAT, RUN_FILE, STATE_FILE,
};

/// The README written into every repository.
pub const README: &str = include_str!("README.txt");

/// A repository in a folder or an object store.
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    work: PathBuf,
    /// The repository file.
    pub info: RepositoryInfo,
    counter: AtomicU64,
}

/// A run record with the exact bytes it was read from (their digest links the chain).
#[derive(Debug, Clone)]
pub struct StoredRun {
    /// The record.
    pub record: RunRecord,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// A local copy of a repository file; a downloaded copy is deleted when dropped.
pub struct LocalFile {
    /// Where it is.
    pub path: PathBuf,
    temporary: bool,
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A run's state being read: the merge, and the local files it reads.
pub struct StateReader {
    /// The live entries in key order.
    pub entries: StateMerge,
    _files: Vec<LocalFile>,
}

impl Repository {
    /// Opens the repository in `store`; with `create`, makes one if the store holds none.
    /// `work` is a local folder for downloads and spooled content.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        work: &Path,
        create: bool,
    ) -> Result<Repository> {
        let info = match store.get_bytes(REPOSITORY_FILE, 1 << 20).await {
            Ok(bytes) => {
                let info: RepositoryInfo = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::fatal(format!(
                        "{}/{REPOSITORY_FILE} is not a ferry repository file ({e})",
                        store.uri()
                    ))
                })?;
                if info.format != REPOSITORY_FORMAT {
                    return Err(Error::fatal(format!(
                        "{} holds a repository of format {:?}; this ferry reads {REPOSITORY_FORMAT}",
                        store.uri(),
                        info.format
                    )));
                }
                info
            }
            Err(_) if create => {
                if !store.list("").await?.is_empty() {
                    return Err(Error::fatal(format!(
                        "{} is not empty and not a ferry repository; give an empty folder or prefix for a new repository",
                        store.uri()
                    )));
                }
                let mut id = [0u8; 16];
                getrandom(&mut id);
                let info = RepositoryInfo {
                    format: REPOSITORY_FORMAT.into(),
                    id: hex::encode(id),
                    created: OffsetDateTime::now_utc(),
                    digest: "sha256".into(),
                };
                store
                    .put_bytes("README.txt", Bytes::from_static(README.as_bytes()))
                    .await?;
                store
                    .put_bytes(
                        REPOSITORY_FILE,
                        Bytes::from(serde_json::to_vec_pretty(&info).expect("JSON")),
                    )
                    .await?;
                info
            }
            Err(_) => {
                return Err(Error::fatal(format!(
                    "{} is not a ferry repository (no {REPOSITORY_FILE}); `ferry backup` makes one",
                    store.uri()
                )))
            }
        };
        std::fs::create_dir_all(work)
            .map_err(|e| Error::fatal(format!("cannot create {}: {e}", work.display())))?;
        Ok(Repository {
            store,
            work: work.to_path_buf(),
            info,
            counter: AtomicU64::new(0),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The local work folder.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// A fresh path in the work folder.
    pub fn work_file(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.work.join(format!("{}-{n}-{what}", std::process::id()))
    }

    /// The ids of every complete run (those with a `run.json`), oldest first.
    pub async fn run_ids(&self) -> Result<Vec<String>> {
        self.runs_holding(RUN_FILE).await
    }

    /// The ids of the runs whose folder holds a file called `name`, sorted.
    pub async fn runs_holding(&self, name: &str) -> Result<Vec<String>> {
        let suffix = format!("/{name}");
        let mut ids: Vec<String> = self
            .store
            .list("runs/")
            .await?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix("runs/")?
                    .strip_suffix(&suffix)
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The id of `job`'s latest complete run.
    pub async fn latest_of_job(&self, job: &str) -> Result<Option<String>> {
        let job = crate::format::safe_job(job);
        Ok(self
            .run_ids()
            .await?
            .into_iter()
            .rfind(|id| crate::format::job_of(id) == job))
    }

    /// Reads one run's record.
    pub async fn run(&self, id: &str) -> Result<StoredRun> {
        let bytes = self
            .store
            .get_bytes(&run_file(id, RUN_FILE), 64 << 20)
            .await?;
        let record: RunRecord = serde_json::from_slice(&bytes).map_err(|e| {
            Error::permanent(format!("the record of run {id} cannot be read ({e})"))
        })?;
        Ok(StoredRun {
            sha256: sha256_hex(&bytes),
            record,
        })
    }

    /// Every complete run's record, oldest first.
    pub async fn runs(&self) -> Result<Vec<StoredRun>> {
        let mut out = Vec::new();
        for id in self.run_ids().await? {
            out.push(self.run(&id).await?);
        }
        Ok(out)
    }

    /// The run `spec` names: `latest`, a run id, or a date (`2026-11-28`: that day's last run),
    /// of `job` when given.
    pub async fn resolve(&self, spec: &str, job: Option<&str>) -> Result<StoredRun> {
        let ids: Vec<String> = self
            .run_ids()
            .await?
            .into_iter()
            .filter(|id| {
                job.is_none_or(|j| crate::format::job_of(id) == crate::format::safe_job(j))
            })
            .collect();
        let found = match spec {
            "latest" | "last" => ids.last().cloned(),
            s => ids
                .iter()
                .rev()
                .find(|id| id.as_str() == s || id.starts_with(s))
                .cloned(),
        };
        match found {
            Some(id) => self.run(&id).await,
            None => Err(Error::fatal(format!(
                "no run {spec:?}{} in {}; `ferry runs` lists them",
                job.map(|j| format!(" of job {j}")).unwrap_or_default(),
                self.store.uri()
            ))),
        }
    }

    /// A local copy of a repository file (the file itself for a folder repository).
    pub async fn local(&self, key: &str) -> Result<LocalFile> {
        if let Some(path) = self.store.local_path(key) {
            return Ok(LocalFile {
                path,
                temporary: false,
            });
        }
        let path = self.work_file("download");
        let mut stream = self.store.read(key, 0).await?;
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::fatal(format!("cannot write {}: {e}", path.display())))?;
        let local = LocalFile {
            path: path.clone(),
            temporary: true,
        };
        while let Some(chunk) = stream.next().await {
            f.write_all(&chunk?)
                .await
                .map_err(|e| Error::fatal(format!("cannot write {}: {e}", path.display())))?;
        }
        f.flush()
            .await
            .map_err(|e| Error::fatal(format!("cannot write {}: {e}", path.display())))?;
        Ok(local)
    }

    /// The runs whose files make up `run`'s state, oldest first: the nearest run of its job at
    /// or before it that holds a state file, and every later run of the job up to it.
    pub async fn state_runs(&self, run: &str) -> Result<Vec<String>> {
        let job = crate::format::job_of(run).to_string();
        let ids: Vec<String> = self
            .run_ids()
            .await?
            .into_iter()
            .filter(|id| crate::format::job_of(id) == job && id.as_str() <= run)
            .collect();
        let mut chain = Vec::new();
        for id in ids.iter().rev() {
            chain.push(id.clone());
            if self.store.exists(&run_file(id, STATE_FILE)).await? {
                chain.reverse();
                return Ok(chain);
            }
        }
        Err(Error::permanent(format!(
            "no full state of job {job} at or before run {run}: the repository is damaged (ferry verify says more)"
        )))
    }

    /// Local copies of the files of `run`'s state, with their keys: its checkpoint's
    /// `state.jsonl.gz` and the later runs' `changes.jsonl.gz`, oldest first.
    pub async fn state_files(&self, run: &str) -> Result<Vec<(LocalFile, String)>> {
        let chain = self.state_runs(run).await?;
        let mut files = Vec::new();
        for (i, id) in chain.iter().enumerate() {
            let name = if i == 0 { STATE_FILE } else { CHANGES_FILE };
            let key = run_file(id, name);
            if i > 0 && !self.store.exists(&key).await? {
                continue;
            }
            files.push((self.local(&key).await?, key));
        }
        Ok(files)
    }

    /// Reads `run`'s state.
    pub async fn state(&self, run: &str) -> Result<StateReader> {
        let mut files = Vec::new();
        let mut readers = Vec::new();
        for (local, key) in self.state_files(run).await? {
            readers.push(EntryReader::open(&local.path, &key)?);
            files.push(local);
        }
        Ok(StateReader {
            entries: StateMerge::new(readers),
            _files: files,
        })
    }

    /// Reads `run`'s state lightly: `f` gets each live entry's [`EntryHead`], in key order.
    pub async fn for_each_head(
        &self,
        run: &str,
        f: impl FnMut(&EntryHead) -> Result<()>,
    ) -> Result<()> {
        let files = self.state_files(run).await?;
        let sources: Vec<(&Path, &str)> = files
            .iter()
            .map(|(l, k)| (l.path.as_path(), k.as_str()))
            .collect();
        for_each_head(&sources, f)
    }
}

/// Random bytes from the kernel.
pub(crate) fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    // Not random, but unique enough for ids.
    let t = OffsetDateTime::now_utc().unix_timestamp_nanos() as u128 ^ std::process::id() as u128;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (t >> ((i % 16) * 8)) as u8;
    }
}
