//! `ferry restore`: a run's state, or the part of it globs select, written to a folder byte
//! for byte, each file checked against its digest as it is written, with the names the source
//! gave where the filesystem allows them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ferry_core::writeback::{Offloaded, WritebackFile};
use ferry_core::{Error, Result};
use futures::StreamExt;
use sha2::Digest as _;

use crate::format::{blob_key, key_components, Entry};
use crate::repository::Repository;

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Entries without content (links, shortcuts, …) not written.
    pub without_content: u64,
    /// Files written under another name than the source's (with the reason).
    pub renamed: Vec<(String, String)>,
}

/// A glob over keys: `*` matches within one path component, `**` any number of components,
/// `?` one character.
#[derive(Debug, Clone)]
pub struct Glob(Vec<String>);

impl Glob {
    /// Parses a glob.
    pub fn new(pattern: &str) -> Glob {
        Glob(
            pattern
                .trim_matches('/')
                .split('/')
                .map(str::to_string)
                .collect(),
        )
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &str) -> bool {
        let parts: Vec<&str> = key.split('/').collect();
        match_parts(&self.0, &parts)
    }
}

fn match_parts(pat: &[String], parts: &[&str]) -> bool {
    match pat.first() {
        None => parts.is_empty(),
        Some(p) if p == "**" => (0..=parts.len()).any(|i| match_parts(&pat[1..], &parts[i..])),
        Some(p) => {
            !parts.is_empty()
                && match_component(p.as_bytes(), parts[0].as_bytes())
                && match_parts(&pat[1..], &parts[1..])
        }
    }
}

fn match_component(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| match_component(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && match_component(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && match_component(&p[1..], &s[1..]),
    }
}

/// A name the filesystem takes as it is, or a safe stand-in (and why).
fn local_name(original: &str) -> (String, Option<&'static str>) {
    if original.is_empty() || original == "." || original == ".." {
        return (
            format!("_{}", original.replace('.', "_")),
            Some("not a usable file name"),
        );
    }
    let mut s = original.to_string();
    let mut why = None;
    if s.contains('\0') || s.contains('/') {
        s = s.replace(['\0', '/'], "_");
        why = Some("holds a character file names cannot");
    }
    if s.len() > 255 {
        let mut cut = 240;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let h = &hex::encode(sha2::Sha256::digest(original.as_bytes()))[..8];
        s = format!("{}~{h}", &s[..cut]);
        why = Some("longer than 255 bytes");
    }
    (s, why)
}

/// Restores the entries of `run`'s state whose keys match any of `globs` (all when empty)
/// into `to`.
pub async fn restore(
    repo: &Repository,
    run: &str,
    globs: &[Glob],
    to: &Path,
) -> Result<RestoreSummary> {
    let mut state = repo.state(run).await?;
    let mut summary = RestoreSummary::default();
    let mut taken: HashSet<PathBuf> = HashSet::new();
    for e in state.entries.by_ref() {
        let e = e?;
        if !globs.is_empty() && !globs.iter().any(|g| g.matches(&e.key)) {
            continue;
        }
        let Some(blob) = e.blob.clone() else {
            summary.without_content += 1;
            continue;
        };
        let mut path = to.to_path_buf();
        let mut renamed = None;
        for c in key_components(&e.key) {
            let (name, why) = local_name(&c);
            if why.is_some() {
                renamed = why;
            }
            path.push(name);
        }
        // Two keys can meet on one name (a file and a folder of the same name in S3, names
        // made safe): the later gets a distinct one.
        if taken.contains(&path) || path.parent().is_some_and(|p| taken.contains(p)) {
            let h = &hex::encode(sha2::Sha256::digest(e.key.as_bytes()))[..8];
            let name = format!(
                "{}~{h}",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            path.set_file_name(name);
            renamed = Some("another item has the same name");
        }
        if let Some(why) = renamed {
            summary
                .renamed
                .push((e.key.clone(), format!("{} ({why})", path.display())));
        }
        write_file(repo, &e, &blob, &path).await?;
        summary.files += 1;
        summary.bytes += e.size.unwrap_or(0);
        taken.insert(path);
    }
    Ok(summary)
}

async fn write_file(repo: &Repository, e: &Entry, blob: &str, path: &Path) -> Result<()> {
    let io = |what: &str, err: std::io::Error| {
        if err.raw_os_error() == Some(libc::ENOSPC) {
            Error::fatal(format!("{what} {}: the disk is full", path.display()))
        } else {
            Error::fatal(format!("{what} {}: {err}", path.display()))
        }
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|err| io("creating the folder of", err))?;
    }
    // Named by a digest of the name: a name near the 255-byte limit leaves no room to add to.
    let tmp = path.with_file_name(format!(
        ".ferry-restore-{}",
        &hex::encode(sha2::Sha256::digest(
            path.file_name().unwrap_or_default().as_encoded_bytes()
        ))[..16]
    ));
    let file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|err| io("creating", err))?
        .into_std()
        .await;
    // Written on the blocking pool one chunk behind the hashing, in the small pieces and with
    // the early write-back every file ferry writes gets (see `ferry_core::writeback`).
    let copied = async {
        let mut f = Offloaded::Idle(WritebackFile::new(file));
        let mut stream = repo.store().read(&blob_key(blob), 0).await?;
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            f.write_all(chunk).await.map_err(|err| io("writing", err))?;
        }
        drop(
            f.into_inner()
                .await
                .map_err(|err| io("writing", err))?
                .finish(),
        );
        Ok::<_, Error>(hasher)
    }
    .await;
    // A half-written file is not left behind under its temporary name.
    let hasher = match copied {
        Ok(hasher) => hasher,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let got = hex::encode(hasher.finalize());
    if got != blob {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(Error::fatal(format!(
            "the content of {} in the repository is damaged (its SHA-256 is {got}, not {blob}); nothing was written for it — run ferry verify",
            e.key
        )));
    }
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|err| io("renaming into", err))?;
    // The source's modification time, where it gave one.
    if let Some(modified) = e
        .item
        .as_ref()
        .and_then(|i| i["modified"].as_str())
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    {
        let t = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_nanos(modified.unix_timestamp_nanos().max(0) as u64);
        if let Ok(f) = std::fs::File::options().write(true).open(path) {
            let _ = f.set_modified(t);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_within_and_across_components() {
        let g = Glob::new("m365/*/users/ola@*/mail/Inbox/**");
        assert!(g.matches("m365/contoso/users/ola@contoso.no/mail/Inbox/a.eml"));
        assert!(g.matches("m365/contoso/users/ola@contoso.no/mail/Inbox/Sub/b.eml"));
        assert!(!g.matches("m365/contoso/users/kari@contoso.no/mail/Inbox/a.eml"));
        assert!(!g.matches("m365/contoso/users/ola@contoso.no/mail/Sent/a.eml"));
        assert!(Glob::new("fs/share/**").matches("fs/share/x"));
        assert!(Glob::new("fs/*/a?.txt").matches("fs/share/ab.txt"));
        assert!(!Glob::new("fs/*").matches("fs/share/x"));
    }

    #[test]
    fn names_the_filesystem_cannot_take_get_stand_ins() {
        assert_eq!(local_name("ok.txt"), ("ok.txt".to_string(), None));
        assert!(local_name("..").1.is_some());
        assert!(local_name(&"x".repeat(300)).0.len() <= 255);
        assert!(local_name("a/b").1.is_some());
    }
}
