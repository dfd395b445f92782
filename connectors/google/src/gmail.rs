//! Gmail: each user's profile (its history id is the cursor, read *before* the listing so
//! nothing that arrives during the run is missed next time; a mailbox with failures keeps the
//! cursor its run started from, so the next run reads what failed again), labels, and every
//! message id (`messages.list`, Spam and Trash only on request); each message is read as
//! `format=raw` and stored once as `<id>.eml`, whatever number of labels it carries — the
//! labels, thread id, internal date and history id go to items.jsonl.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use ferry_core::{Error, Item, ItemUpdate, Listing, Opened, Result, SourceRef};
use serde_json::{json, Value};

use crate::api::Api;
use crate::directory::User;
use crate::{fail_listing, send, Inner, MailboxRecord, Sender};

/// A mailbox's labels: id → name.
pub(crate) type Labels = Arc<BTreeMap<String, String>>;

/// The URL of a user's Gmail resources.
pub(crate) fn user_url(inner: &Inner, email: &str) -> String {
    format!(
        "{}/users/{}",
        inner.google.endpoints.gmail,
        ferry_http::segment(email)
    )
}

/// Lists one mailbox.
pub(crate) async fn list_user(inner: &Arc<Inner>, user: &User, tx: &Sender) -> Result<()> {
    let email = user.email.as_str();
    let base = user_url(inner, email);
    let mut record = MailboxRecord {
        account: email.to_string(),
        messages_total: None,
        spam_trash_total: None,
        listed: 0,
        listing_failed: false,
        incremental: false,
        cursor: None,
        retry_cursor: None,
    };
    let result = list_mailbox(inner, user, &base, tx, &mut record).await;
    if let Err(e) = result {
        if e.is_fatal() {
            return Err(e);
        }
        record.listing_failed = true;
        let hint = if user.suspended {
            " (the user is suspended; Google may refuse to read a suspended user's data)"
        } else {
            ""
        };
        fail_listing(
            tx,
            &format!("google:{email}/gmail"),
            Error::permanent(format!("{}{hint}", e.message())),
        )
        .await?;
    }
    inner.state.lock().expect("state").mailboxes.push(record);
    Ok(())
}

async fn list_mailbox(
    inner: &Arc<Inner>,
    user: &User,
    base: &str,
    tx: &Sender,
    record: &mut MailboxRecord,
) -> Result<()> {
    let email = user.email.as_str();
    let g = &inner.google;
    let profile = g
        .get_json(
            &format!("{base}/profile"),
            email,
            Api::Gmail,
            &format!("reading {email}'s Gmail profile"),
        )
        .await?;
    record.messages_total = number(&profile["messagesTotal"]);
    let cursor = json!({
        "type": "gmail_history",
        "account": email,
        "history_id": profile["historyId"],
    });
    let labels = read_labels(inner, email, base).await?;
    if !inner.options.include_spam_trash {
        let mut excluded = 0;
        for id in ["SPAM", "TRASH"] {
            let l = g
                .get_json(
                    &format!("{base}/labels/{id}"),
                    email,
                    Api::Gmail,
                    &format!("reading {email}'s {id} label"),
                )
                .await?;
            excluded += number(&l["messagesTotal"]).unwrap_or(0);
        }
        record.spam_trash_total = Some(excluded);
    }
    // From the earlier run's history id when there is one; a history id too old for Gmail
    // (404) means the whole mailbox is listed again (messages stored before are not read).
    if let Some(start) = inner.options.history_cursor(email) {
        // Should this run fail, the next one reads the same history again.
        record.retry_cursor = Some(json!({
            "type": "gmail_history",
            "account": email,
            "history_id": start,
        }));
        match read_history(inner, user, base, &start, tx, record).await {
            Ok(true) => {
                record.incremental = true;
                record.cursor = Some(cursor);
                return send_mbox_items(inner, user, &labels, tx).await;
            }
            Ok(false) => {
                tracing::info!(
                    "{email}: the history id {start} has expired; listing the whole mailbox"
                );
            }
            Err(e) => return Err(e),
        }
    }
    // A whole listing with failures is made whole again by the next run.
    record.retry_cursor = None;
    let page_size = inner.options.page_size.clamp(1, 500);
    let url = format!(
        "{base}/messages?maxResults={page_size}&includeSpamTrash={}",
        inner.options.include_spam_trash
    );
    let what = format!("listing {email}'s messages");
    let mut pages = g.pages(url, email, Api::Gmail, &what);
    // Mail arriving during the listing can shift pages so an id shows up twice.
    let mut seen = HashSet::new();
    while let Some(page) = pages.next_page().await? {
        let Some(list) = page["messages"].as_array() else {
            continue;
        };
        for m in list {
            let Some(id) = m["id"].as_str() else { continue };
            if !seen.insert(ferry_http::id_hash(id)) {
                continue;
            }
            record.listed += 1;
            let item = message_item(inner, user, id, m["threadId"].as_str());
            send(tx, Listing::Item(item)).await?;
        }
    }
    // Listed whole: a message an earlier backup run had and this one did not list is gone.
    send(
        tx,
        Listing::Complete {
            system: "google".into(),
            account: Some(email.to_string()),
            container: Some("gmail".into()),
        },
    )
    .await?;
    record.cursor = Some(cursor);
    send_mbox_items(inner, user, &labels, tx).await
}

/// The mbox files of a mailbox (built whole every run), when asked for.
async fn send_mbox_items(
    inner: &Arc<Inner>,
    user: &User,
    labels: &Labels,
    tx: &Sender,
) -> Result<()> {
    if !inner.options.mbox {
        return Ok(());
    }
    for item in crate::mbox::items(inner, user, labels) {
        send(tx, Listing::Item(item)).await?;
    }
    send(
        tx,
        Listing::Complete {
            system: "google".into(),
            account: Some(user.email.clone()),
            container: Some("gmail-mbox".into()),
        },
    )
    .await
}

/// What happened to a message since the earlier run, in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// New (or back from Spam/Trash): read it.
    Present,
    /// Deleted, or moved to Spam/Trash when those are not exported.
    Gone,
}

/// Reads a mailbox's history since `start`: new messages are listed, deleted ones (and ones
/// moved to Spam or Trash, unless those are exported) removed. Memory grows with the number of
/// changes, not the mailbox. `false` when Gmail no longer has history that old.
async fn read_history(
    inner: &Arc<Inner>,
    user: &User,
    base: &str,
    start: &str,
    tx: &Sender,
    record: &mut MailboxRecord,
) -> Result<bool> {
    let email = user.email.as_str();
    let url = format!(
        "{base}/history?startHistoryId={}&maxResults=500&historyTypes=messageAdded&historyTypes=messageDeleted&historyTypes=labelAdded&historyTypes=labelRemoved",
        ferry_http::query_value(start)
    );
    let what = format!("reading {email}'s history");
    let hidden = |labels: &Value| {
        !inner.options.include_spam_trash
            && labels
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l == "SPAM" || l == "TRASH")
    };
    // The final fate of each message, in the order first met.
    let mut fate: Vec<(String, Option<String>, Fate)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut set = |id: &str, thread: Option<&str>, f: Fate| match index.get(id) {
        Some(&i) => fate[i].2 = f,
        None => {
            index.insert(id.to_string(), fate.len());
            fate.push((id.to_string(), thread.map(str::to_string), f));
        }
    };
    let mut pages = inner.google.pages(url, email, Api::Gmail, &what);
    let mut first = true;
    loop {
        let page = match pages.next_page().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) if first && e.status == Some(404) => return Ok(false),
            Err(e) => return Err(e.error),
        };
        first = false;
        for h in page["history"].as_array().into_iter().flatten() {
            for a in h["messagesAdded"].as_array().into_iter().flatten() {
                let m = &a["message"];
                if let Some(id) = m["id"].as_str() {
                    let f = if hidden(&m["labelIds"]) {
                        Fate::Gone
                    } else {
                        Fate::Present
                    };
                    set(id, m["threadId"].as_str(), f);
                }
            }
            for d in h["messagesDeleted"].as_array().into_iter().flatten() {
                if let Some(id) = d["message"]["id"].as_str() {
                    set(id, None, Fate::Gone);
                }
            }
            if !inner.options.include_spam_trash {
                for a in h["labelsAdded"].as_array().into_iter().flatten() {
                    if hidden(&a["labelIds"]) {
                        if let Some(id) = a["message"]["id"].as_str() {
                            set(id, None, Fate::Gone);
                        }
                    }
                }
                for r in h["labelsRemoved"].as_array().into_iter().flatten() {
                    // Out of Spam or Trash: back in the mailbox (unless still in the other).
                    let m = &r["message"];
                    if hidden(&r["labelIds"]) && !hidden(&m["labelIds"]) {
                        if let Some(id) = m["id"].as_str() {
                            set(id, m["threadId"].as_str(), Fate::Present);
                        }
                    }
                }
            }
        }
    }
    for (id, thread, f) in fate {
        match f {
            Fate::Present => {
                record.listed += 1;
                let item = message_item(inner, user, &id, thread.as_deref());
                send(tx, Listing::Item(item)).await?;
            }
            Fate::Gone => {
                send(
                    tx,
                    Listing::Removed(SourceRef {
                        system: "google".into(),
                        account: Some(email.to_string()),
                        container: Some("gmail".into()),
                        id,
                        version: None,
                        original_name: None,
                        original_path: None,
                    }),
                )
                .await?;
            }
        }
    }
    Ok(true)
}

/// Reads a mailbox's labels and remembers them for the records of its messages.
async fn read_labels(inner: &Inner, email: &str, base: &str) -> Result<Labels> {
    let v = inner
        .google
        .get_json(
            &format!("{base}/labels"),
            email,
            Api::Gmail,
            &format!("reading {email}'s labels"),
        )
        .await?;
    let mut map = BTreeMap::new();
    for l in v["labels"].as_array().into_iter().flatten() {
        if let (Some(id), Some(name)) = (l["id"].as_str(), l["name"].as_str()) {
            map.insert(id.to_string(), name.to_string());
        }
    }
    let labels = Arc::new(map);
    inner
        .labels
        .lock()
        .expect("labels")
        .insert(email.to_ascii_lowercase(), labels.clone());
    Ok(labels)
}

/// A count Gmail sends as a number or a decimal string.
pub(crate) fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

fn message_item(inner: &Inner, user: &User, id: &str, thread_id: Option<&str>) -> Item {
    let email = user.email.as_str();
    let path = vec![
        inner.options.domain.clone(),
        "users".into(),
        email.to_string(),
        "gmail".into(),
        "messages".into(),
        format!("{id}.eml"),
    ];
    let mut item = Item::file(
        SourceRef {
            system: "google".into(),
            account: Some(email.to_string()),
            container: Some("gmail".into()),
            id: id.to_string(),
            version: None,
            original_name: None,
            original_path: Some(format!("{email}/gmail/{id}")),
        },
        path,
    );
    item.media_type = Some("message/rfc822".into());
    let x = &mut item.extra;
    x.insert("google_type".into(), "message".into());
    x.insert("user_id".into(), user.id.clone().into());
    if user.suspended {
        x.insert("suspended".into(), true.into());
    }
    if let Some(t) = thread_id {
        x.insert("thread_id".into(), t.into());
    }
    item
}

/// Display names of system labels, as Gmail's web interface and Takeout show them.
pub(crate) fn label_display(id: &str, labels: &BTreeMap<String, String>) -> String {
    match id {
        "INBOX" => "Inbox".into(),
        "SENT" => "Sent".into(),
        "DRAFT" => "Drafts".into(),
        "SPAM" => "Spam".into(),
        "TRASH" => "Trash".into(),
        "STARRED" => "Starred".into(),
        "IMPORTANT" => "Important".into(),
        "UNREAD" => "Unread".into(),
        "CHAT" => "Chats".into(),
        _ => {
            if let Some(cat) = id.strip_prefix("CATEGORY_") {
                let mut c = cat.to_ascii_lowercase();
                if let Some(first) = c.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                return format!("Category {c}");
            }
            labels.get(id).cloned().unwrap_or_else(|| id.to_string())
        }
    }
}

/// What Gmail said about a message besides its content, as an update of its record.
fn update_of(
    others: &serde_json::Map<String, Value>,
    labels: &BTreeMap<String, String>,
) -> ItemUpdate {
    let mut u = ItemUpdate::default();
    let ids: Vec<String> = others
        .get("labelIds")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<String> = ids.iter().map(|id| label_display(id, labels)).collect();
    u.extra.insert("label_ids".into(), json!(ids));
    u.extra.insert("labels".into(), json!(names));
    for (from, to) in [
        ("threadId", "thread_id"),
        ("historyId", "history_id"),
        ("sizeEstimate", "size_estimate"),
    ] {
        if let Some(v) = others.get(from) {
            u.extra.insert(to.into(), v.clone());
        }
    }
    if let Some(ms) = others.get("internalDate").and_then(number) {
        if let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
            u.created = Some(t);
            u.modified = Some(t);
            if let Ok(s) = t.format(&time::format_description::well_known::Rfc3339) {
                u.extra.insert("internal_date".into(), s.into());
            }
        }
    }
    u
}

/// The labels remembered for a mailbox (empty if the listing did not read them).
pub(crate) fn labels_of(inner: &Inner, email: &str) -> Labels {
    inner
        .labels
        .lock()
        .expect("labels")
        .get(&email.to_ascii_lowercase())
        .cloned()
        .unwrap_or_default()
}

/// Opens a message's raw answer as a stream of decoded bytes ([`crate::raw_message`]).
pub(crate) async fn open_raw(
    inner: &Inner,
    email: &str,
    id: &str,
) -> Result<(
    ferry_core::ByteStream,
    tokio::sync::oneshot::Receiver<serde_json::Map<String, Value>>,
)> {
    let url = format!(
        "{}/messages/{}?format=raw",
        user_url(inner, email),
        ferry_http::segment(id)
    );
    let what = format!("reading message {id} of {email}");
    let d = inner.google.open(&url, email, Api::Gmail, &what, 0).await?;
    let body = ferry_http::body_stream(d.response, Some(d.permit), what.clone());
    Ok(crate::raw_message::decode_stream(body, what))
}

/// Opens one message.
pub(crate) async fn open(inner: &Inner, item: &Item, offset: u64) -> Result<Opened> {
    if offset > 0 {
        return Err(Error::transient(
            "a Gmail message cannot be read from part-way; reading it again from the start",
        ));
    }
    let email = item
        .source
        .account
        .as_deref()
        .ok_or_else(|| Error::permanent("a message item without its user"))?;
    let (bytes, others) = open_raw(inner, email, &item.source.id).await?;
    let labels = labels_of(inner, email);
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        if let Ok(others) = others.await {
            let _ = tx.send(update_of(&others, &labels));
        }
    });
    Ok(Opened {
        bytes,
        update: ItemUpdate::default(),
        trailer: Some(rx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_labels_get_takeout_names_and_user_labels_their_own() {
        let mut labels = BTreeMap::new();
        labels.insert("Label_3".to_string(), "Projects/2024".to_string());
        assert_eq!(label_display("INBOX", &labels), "Inbox");
        assert_eq!(
            label_display("CATEGORY_UPDATES", &labels),
            "Category Updates"
        );
        assert_eq!(label_display("Label_3", &labels), "Projects/2024");
        assert_eq!(label_display("Label_9", &labels), "Label_9");
    }

    #[test]
    fn trailing_members_become_the_record() {
        let mut labels = BTreeMap::new();
        labels.insert("Label_1".to_string(), "Økonomi".to_string());
        let others = json!({
            "labelIds": ["INBOX", "Label_1"],
            "threadId": "18c0",
            "historyId": "1234",
            "internalDate": "1700000000123",
            "sizeEstimate": 42,
        });
        let u = update_of(others.as_object().unwrap(), &labels);
        assert_eq!(u.extra["labels"], json!(["Inbox", "Økonomi"]));
        assert_eq!(u.extra["history_id"], "1234");
        assert_eq!(u.extra["internal_date"], "2023-11-14T22:13:20.123Z");
        assert_eq!(u.created.unwrap().unix_timestamp(), 1_700_000_000);
    }
}
