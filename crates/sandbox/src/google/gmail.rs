//! Gmail v1 routes: profile, labels, messages (list and get), history.

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};

use super::{
    bump, gerr, invalid_param, json_resp, not_found, GLabel, GMessage, HistKind, LiveMailbox, Req,
    State, GOOGLE_SA_CLIENT_EMAIL,
};
use crate::graph::Resp;

pub(crate) fn route(state: &Arc<State>, r: &Req) -> Resp {
    let s: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    if s.len() < 5 || s[2] != "users" {
        return not_found();
    }
    let user = s[3];
    if user != "me" && !user.eq_ignore_ascii_case(&r.subject) {
        return gerr(
            403,
            "forbidden",
            format!("Delegation denied for {}", r.subject),
        )
        .resp();
    }
    if r.subject == GOOGLE_SA_CLIENT_EMAIL {
        return gerr(400, "failedPrecondition", "Precondition check failed.").resp();
    }
    if state.truth.user(&r.subject).is_some_and(|u| u.suspended) {
        return gerr(400, "failedPrecondition", "Mail service not enabled").resp();
    }
    let live = state.live.lock().expect("live lock");
    let Some(mb) = live.mailboxes.get(&r.subject) else {
        return gerr(400, "failedPrecondition", "Mail service not enabled").resp();
    };
    match &s[4..] {
        ["profile"] => profile(r, mb),
        ["labels"] => json_resp(
            200,
            &json!({"labels": mb.labels.iter().map(label_json).collect::<Vec<_>>()}),
        ),
        ["labels", id] => label(mb, id),
        ["messages"] => list(state, r, mb),
        ["messages", id] => get(state, r, mb, id),
        ["history"] => history(state, r, mb),
        _ => not_found(),
    }
}

fn live_msgs(mb: &LiveMailbox) -> impl Iterator<Item = &GMessage> {
    mb.msgs.iter().filter(|m| !m.deleted).map(|m| &m.m)
}

fn profile(r: &Req, mb: &LiveMailbox) -> Resp {
    let threads: HashSet<&str> = live_msgs(mb).map(|m| m.thread_id.as_str()).collect();
    json_resp(
        200,
        &json!({
            "emailAddress": r.subject,
            "messagesTotal": live_msgs(mb).count(),
            "threadsTotal": threads.len(),
            "historyId": mb.history_id.to_string(),
        }),
    )
}

fn label_json(l: &GLabel) -> Value {
    if l.kind == "user" {
        json!({"id": l.id, "name": l.name, "messageListVisibility": "show", "labelListVisibility": "labelShow", "type": "user"})
    } else if l.id == "CHAT" {
        json!({"id": l.id, "name": l.name, "messageListVisibility": "hide", "labelListVisibility": "labelHide", "type": "system"})
    } else {
        json!({"id": l.id, "name": l.name, "type": "system"})
    }
}

fn label(mb: &LiveMailbox, id: &str) -> Resp {
    let Some(l) = mb.labels.iter().find(|l| l.id == id) else {
        return not_found();
    };
    let with: Vec<&GMessage> = live_msgs(mb)
        .filter(|m| m.label_ids.iter().any(|x| x == id))
        .collect();
    let unread = |m: &&&GMessage| m.label_ids.iter().any(|x| x == "UNREAD");
    let threads: HashSet<&str> = with.iter().map(|m| m.thread_id.as_str()).collect();
    let unread_threads: HashSet<&str> = with
        .iter()
        .filter(unread)
        .map(|m| m.thread_id.as_str())
        .collect();
    let mut v = label_json(l);
    v["messagesTotal"] = json!(with.len());
    v["messagesUnread"] = json!(with.iter().filter(|m| unread(m)).count());
    v["threadsTotal"] = json!(threads.len());
    v["threadsUnread"] = json!(unread_threads.len());
    json_resp(200, &v)
}

/// `label:` names as Gmail search writes them: lowercase, spaces and slashes as `-`.
fn search_name(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '/' { '-' } else { c })
        .collect()
}

fn list(state: &State, r: &Req, mb: &LiveMailbox) -> Resp {
    let size = match state.requested_size(r, "maxResults", 100, 500) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let mut required: Vec<String> = r.q_all("labelIds").iter().map(|s| s.to_string()).collect();
    let mut spam_trash = r.flag("includeSpamTrash");
    for term in r.q("q").unwrap_or("").split_whitespace() {
        let t = term.to_lowercase();
        if t == "in:anywhere" {
            spam_trash = true;
        } else if let Some(x) = t.strip_prefix("in:").or_else(|| t.strip_prefix("label:")) {
            let found = mb
                .labels
                .iter()
                .find(|l| l.id.eq_ignore_ascii_case(x) || search_name(&l.name) == search_name(x));
            match found {
                Some(l) => required.push(l.id.clone()),
                None => required.push(format!("\u{0}unknown:{x}")),
            }
        } else if t == "is:unread" {
            required.push("UNREAD".into());
        } else if t == "is:starred" {
            required.push("STARRED".into());
        }
        // Other terms are ignored.
    }
    for l in &required {
        if l.starts_with('\u{0}') {
            continue;
        }
        if !mb.labels.iter().any(|x| &x.id == l) {
            return gerr(400, "invalidArgument", format!("Invalid label: {l}")).resp();
        }
    }
    let asks_spam_trash = required.iter().any(|l| l == "SPAM" || l == "TRASH");
    let mut hits: Vec<&GMessage> = live_msgs(mb)
        .filter(|m| required.iter().all(|l| m.label_ids.contains(l)))
        .filter(|m| {
            spam_trash
                || asks_spam_trash
                || !m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH")
        })
        .collect();
    hits.sort_by(|a, b| {
        b.internal_date_ms
            .cmp(&a.internal_date_ms)
            .then(b.id.cmp(&a.id))
    });
    let scope = format!("messages|{}|{required:?}|{spam_trash}", r.subject);
    let (page, next) = match state.page(r, &scope, &hits, size, false) {
        Ok(p) => p,
        Err(e) => return e,
    };
    bump(&state.c.messages_list_pages);
    let mut body = json!({});
    if !page.is_empty() {
        body["messages"] = json!(page
            .iter()
            .map(|m| json!({"id": m.id, "threadId": m.thread_id}))
            .collect::<Vec<_>>());
    }
    if let Some(n) = next {
        body["nextPageToken"] = json!(n);
    }
    body["resultSizeEstimate"] = json!(hits.len());
    json_resp(200, &body)
}

/// The header block of a message, unfolded: (name, value) in order.
fn headers_of(raw: &[u8]) -> Vec<(String, String)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push_str(line);
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.to_string(), v.trim_start().to_string()));
        }
    }
    out
}

/// The first text/plain part's opening text, as Gmail's `snippet`.
fn snippet(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let Some(at) = text.find("Content-Type: text/plain") else {
        return String::new();
    };
    let part = &text[at..];
    let Some(hdr_end) = part.find("\r\n\r\n") else {
        return String::new();
    };
    let body = &part[hdr_end + 4..];
    let body = body.split("\r\n--").next().unwrap_or("");
    let decoded = if part[..hdr_end].contains("base64") {
        let b64: String = body.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        body.to_string()
    };
    decoded
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(100)
        .collect()
}

fn get(state: &State, r: &Req, mb: &LiveMailbox, id: &str) -> Resp {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return gerr(400, "invalidArgument", "Invalid id value").resp();
    }
    let Some(m) = live_msgs(mb).find(|m| m.id == id) else {
        return not_found();
    };
    if state.failing.lock().expect("failing lock").0.as_deref() == Some(m.subject.as_str()) {
        return gerr(500, "backendError", "Backend Error").resp();
    }
    let format = r.q("format").unwrap_or("full");
    if !matches!(format, "raw" | "minimal" | "metadata" | "full") {
        return invalid_param("format");
    }
    bump(&state.c.messages_get);
    let raw = m.raw();
    let mut v = json!({
        "id": m.id,
        "threadId": m.thread_id,
        "labelIds": m.label_ids,
        "snippet": snippet(&raw),
        "sizeEstimate": raw.len(),
    });
    // Gmail sends `raw` before `historyId` and `internalDate`, so a client that streams the
    // answer learns those only at its end.
    if format == "raw" {
        // Gmail pads its base64url.
        v["raw"] = json!(base64::engine::general_purpose::URL_SAFE.encode(&raw));
    }
    v["historyId"] = json!(m.history_id.to_string());
    v["internalDate"] = json!(m.internal_date_ms.to_string());
    match format {
        "raw" => {}
        "metadata" | "full" => {
            let wanted: Vec<String> = r
                .q_all("metadataHeaders")
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
            let headers = headers_of(&raw);
            let mime = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.split(';').next().unwrap_or("").trim().to_string())
                .unwrap_or_else(|| "text/plain".into());
            let hs: Vec<Value> = headers
                .iter()
                .filter(|(k, _)| {
                    format == "full"
                        || wanted.is_empty()
                        || wanted.contains(&k.to_ascii_lowercase())
                })
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect();
            v["payload"] = json!({"partId": "", "mimeType": mime, "filename": "", "headers": hs});
        }
        _ => {}
    }
    json_resp(200, &v)
}

fn history(state: &State, r: &Req, mb: &LiveMailbox) -> Resp {
    let Some(start) = r.q("startHistoryId") else {
        return gerr(
            400,
            "invalidArgument",
            "Missing required parameter: startHistoryId",
        )
        .param("startHistoryId")
        .resp();
    };
    let Ok(start) = start.parse::<u64>() else {
        return invalid_param("startHistoryId");
    };
    if start < mb.floor {
        return not_found();
    }
    let size = match state.requested_size(r, "maxResults", 100, 500) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let types = r.q_all("historyTypes");
    for t in &types {
        if !matches!(
            *t,
            "messageAdded" | "messageDeleted" | "labelAdded" | "labelRemoved"
        ) {
            return invalid_param("historyTypes");
        }
    }
    let label = r.q("labelId");
    let recs: Vec<_> = mb
        .history
        .iter()
        .filter(|h| h.id > start)
        .filter(|h| {
            let t = match h.kind {
                HistKind::Added => "messageAdded",
                HistKind::Deleted => "messageDeleted",
            };
            types.is_empty() || types.contains(&t)
        })
        .filter(|h| label.is_none_or(|l| h.labels.iter().any(|x| x == l)))
        .collect();
    let scope = format!("history|{}|{start}|{types:?}|{label:?}", r.subject);
    let (page, next) = match state.page(r, &scope, &recs, size, false) {
        Ok(p) => p,
        Err(e) => return e,
    };
    bump(&state.c.history_pages);
    let items: Vec<Value> = page
        .iter()
        .map(|h| {
            let msg = json!({"id": h.msg_id, "threadId": h.thread_id, "labelIds": h.labels});
            let key = match h.kind {
                HistKind::Added => "messagesAdded",
                HistKind::Deleted => "messagesDeleted",
            };
            let mut v = json!({
                "id": h.id.to_string(),
                "messages": [{"id": h.msg_id, "threadId": h.thread_id}],
            });
            v[key] = json!([{ "message": msg }]);
            v
        })
        .collect();
    let mut body = json!({});
    if !items.is_empty() {
        body["history"] = json!(items);
    }
    if let Some(n) = next {
        body["nextPageToken"] = json!(n);
    }
    body["historyId"] = json!(mb.history_id.to_string());
    json_resp(200, &body)
}
