//! `--mbox`: besides one `.eml` per message, one mboxrd file per label, in the form Google
//! Takeout writes (a `From ` line per message, `X-GM-THRID` and `X-Gmail-Labels` headers, lines
//! starting with `>*From ` quoted with one more `>`), so mail programs and Takeout tooling can
//! open a mailbox label by label. Messages that carry none of the labels written get
//! `Archived.mbox`, so every message is in some mbox file.
//!
//! An mbox file is built when it is archived, by listing its label and reading each message
//! again (`format=minimal` for its labels and date, then `format=raw`): it costs two more
//! requests per message and label, and nothing is held in memory or spooled to disk, so it
//! works the same for folder, zip and S3 destinations.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::{Error, Item, Opened, Result, SourceRef};
use futures::StreamExt;
use serde_json::Value;

use crate::api::Api;
use crate::directory::User;
use crate::gmail::{label_display, labels_of, number, open_raw, user_url};
use crate::Inner;

/// Labels that are states, not places: no mbox file of their own.
fn is_folder_label(id: &str, include_spam_trash: bool) -> bool {
    !(id == "UNREAD"
        || id.starts_with("CATEGORY_")
        || (!include_spam_trash && (id == "SPAM" || id == "TRASH")))
}

/// The mbox items of a mailbox: one per label, and `Archived` for the rest.
pub(crate) fn items(inner: &Inner, user: &User, labels: &BTreeMap<String, String>) -> Vec<Item> {
    let email = user.email.as_str();
    let mut out = Vec::new();
    let mut entries: Vec<(String, String)> = labels
        .keys()
        .filter(|id| is_folder_label(id, inner.options.include_spam_trash))
        .map(|id| (id.clone(), label_display(id, labels)))
        .collect();
    entries.push((String::new(), "Archived".into()));
    for (id, name) in entries {
        let mut path = vec![
            inner.options.domain.clone(),
            "users".into(),
            email.to_string(),
            "gmail".into(),
            "mbox".into(),
        ];
        // Nested labels ("Projects/2024") become folders, like Gmail shows them.
        let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
        let (last, dirs) = parts.split_last().unwrap_or((&"label", &[]));
        path.extend(dirs.iter().map(|d| d.to_string()));
        path.push(format!("{last}.mbox"));
        let mut item = Item::file(
            SourceRef {
                system: "google".into(),
                account: Some(email.to_string()),
                container: Some("gmail-mbox".into()),
                id: if id.is_empty() {
                    "mbox:archived".into()
                } else {
                    format!("mbox:{id}")
                },
                version: None,
                original_name: Some(name.clone()),
                original_path: Some(format!("{email}/gmail/mbox/{name}")),
            },
            path,
        );
        item.media_type = Some("application/mbox".into());
        item.extra.insert("google_type".into(), "mbox".into());
        item.extra.insert("label_id".into(), id.clone().into());
        item.extra.insert("label".into(), name.into());
        item.extra.insert("mbox_format".into(), "mboxrd".into());
        out.push(item);
    }
    out
}

/// The message ids carrying `label` (or, for `None`, every message), page by page.
fn id_pages<'a>(
    inner: &'a Inner,
    email: &'a str,
    label: Option<&str>,
    what: &'a str,
) -> crate::api::Pages<'a> {
    let spam_trash = inner.options.include_spam_trash || matches!(label, Some("SPAM" | "TRASH"));
    let mut url = format!(
        "{}/messages?maxResults=500&includeSpamTrash={spam_trash}",
        user_url(inner, email)
    );
    if let Some(l) = label {
        url.push_str(&format!("&labelIds={}", ferry_http::query_value(l)));
    }
    inner.google.pages(url, email, Api::Gmail, what)
}

fn page_ids(page: &Value) -> impl Iterator<Item = &str> {
    page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
}

/// Opens an mbox file: a stream built message by message, page by page of the label's listing
/// (memory stays flat however large the label; `Archived` keeps an 8-byte hash per message
/// filed elsewhere).
pub(crate) async fn open(inner: &Arc<Inner>, item: &Item, offset: u64) -> Result<Opened> {
    if offset > 0 {
        return Err(Error::transient(
            "an mbox file cannot be built from part-way; building it again from the start",
        ));
    }
    let email = item
        .source
        .account
        .clone()
        .ok_or_else(|| Error::permanent("an mbox item without its user"))?;
    let label_id = item
        .extra
        .get("label_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(4);
    let inner = inner.clone();
    tokio::spawn(async move {
        if let Err(e) = build(&inner, &email, &label_id, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    let bytes =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .boxed();
    Ok(Opened::bytes(bytes))
}

/// Writes every message of the mbox file into `tx`.
async fn build(
    inner: &Inner,
    email: &str,
    label_id: &str,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    let what = format!("listing {email}'s messages for an mbox file");
    // Archived: the messages no other mbox file holds.
    let mut filed = None;
    if label_id.is_empty() {
        let labels = labels_of(inner, email);
        let mut set = HashSet::new();
        for id in labels
            .keys()
            .filter(|id| is_folder_label(id, inner.options.include_spam_trash))
        {
            let mut pages = id_pages(inner, email, Some(id), &what);
            while let Some(page) = pages.next_page().await? {
                set.extend(page_ids(&page).map(ferry_http::id_hash));
            }
        }
        filed = Some(set);
    }
    let label = (!label_id.is_empty()).then_some(label_id);
    let mut pages = id_pages(inner, email, label, &what);
    let mut written = HashSet::new();
    while let Some(page) = pages.next_page().await? {
        for id in page_ids(&page) {
            let h = ferry_http::id_hash(id);
            if filed.as_ref().is_some_and(|f| f.contains(&h)) || !written.insert(h) {
                continue;
            }
            write_message(inner, email, id, tx).await?;
            if tx.is_closed() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Writes one message in mboxrd form.
async fn write_message(
    inner: &Inner,
    email: &str,
    id: &str,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    let gone = || Error::transient("the mbox file is no longer being written");
    let meta = inner
        .google
        .get_json(
            &format!(
                "{}/messages/{}?format=minimal",
                user_url(inner, email),
                ferry_http::segment(id)
            ),
            email,
            Api::Gmail,
            &format!("reading message {id} of {email}"),
        )
        .await?;
    let labels = labels_of(inner, email);
    let names: Vec<String> = meta["labelIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|l| label_display(l, &labels))
        .collect();
    let date = number(&meta["internalDate"])
        .and_then(|ms| time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let thread = meta["threadId"]
        .as_str()
        .and_then(|t| u64::from_str_radix(t, 16).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut head = format!("From {}@xxx {}\n", message_number(id), asctime(date));
    if !thread.is_empty() {
        head.push_str(&format!("X-GM-THRID: {thread}\n"));
    }
    head.push_str(&format!("X-Gmail-Labels: {}\n", names.join(",")));
    tx.send(Ok(Bytes::from(head))).await.map_err(|_| gone())?;
    let (mut body, _others) = open_raw(inner, email, id).await?;
    let mut quote = MboxrdQuoter::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let out = quote.push(&chunk);
        tx.send(Ok(Bytes::from(out))).await.map_err(|_| gone())?;
    }
    tx.send(Ok(Bytes::from(quote.finish())))
        .await
        .map_err(|_| gone())?;
    Ok(())
}

/// Gmail ids are hex; Takeout's `From ` lines carry them as decimal numbers.
fn message_number(id: &str) -> String {
    u64::from_str_radix(id, 16)
        .map(|n| n.to_string())
        .unwrap_or_else(|_| id.to_string())
}

/// `Mon Jan 02 15:04:05 +0000 2006`, the date form of Takeout's `From ` lines.
fn asctime(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day] [hour]:[minute]:[second] +0000 [year]"
    );
    t.format(&f).unwrap_or_default()
}

/// Quotes a message for mboxrd: every line matching `^>*From ` gets one more `>`; the message
/// ends with a newline and a blank line. Works across chunk boundaries.
#[derive(Debug)]
pub struct MboxrdQuoter {
    /// At the start of a line, or inside a `>*From` prefix still being matched.
    pending: Vec<u8>,
    matching: bool,
    last: Option<u8>,
}

impl Default for MboxrdQuoter {
    fn default() -> Self {
        MboxrdQuoter {
            pending: Vec::new(),
            matching: true,
            last: None,
        }
    }
}

impl MboxrdQuoter {
    /// Quotes the next chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len() + 8);
        for &b in chunk {
            self.last = Some(b);
            if !self.matching {
                out.push(b);
                if b == b'\n' {
                    self.matching = true;
                }
                continue;
            }
            self.pending.push(b);
            let p = &self.pending;
            let gts = p.iter().take_while(|&&c| c == b'>').count();
            let rest = &p[gts..];
            if rest.len() <= 5 && b"From "[..rest.len()] == *rest {
                if rest.len() == 5 {
                    out.push(b'>');
                    out.append(&mut self.pending);
                    self.matching = false;
                }
                continue;
            }
            out.append(&mut self.pending);
            self.matching = b == b'\n';
        }
        out
    }

    /// Ends the message.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.pending);
        let last = out.last().copied().or(self.last);
        if last != Some(b'\n') {
            out.push(b'\n');
        }
        out.push(b'\n');
        self.matching = true;
        self.last = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote(msg: &[u8], chunk: usize) -> Vec<u8> {
        let mut q = MboxrdQuoter::default();
        let mut out = Vec::new();
        for c in msg.chunks(chunk.max(1)) {
            out.extend(q.push(c));
        }
        out.extend(q.finish());
        out
    }

    #[test]
    fn from_lines_are_quoted_in_any_chunking() {
        let msg = b"From: a@b\nSubject: x\n\nFrom here\n>From there\n>>From x\nFro\nFromage\n From no\n>Fr";
        let want = b"From: a@b\nSubject: x\n\n>From here\n>>From there\n>>>From x\nFro\nFromage\n From no\n>Fr\n\n";
        for chunk in [1, 2, 3, 5, 100] {
            assert_eq!(quote(msg, chunk), want.to_vec(), "chunk {chunk}");
        }
        assert_eq!(quote(b"From x\r\n", 1), b">From x\r\n\n".to_vec());
    }

    #[test]
    fn takeout_from_line_parts() {
        assert_eq!(message_number("18c0a"), "101386");
        let t = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(asctime(t), "Tue Nov 14 22:13:20 +0000 2023");
    }
}
