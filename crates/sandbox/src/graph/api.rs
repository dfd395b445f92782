//! Graph routes: directory, mail, files, sites, and the pre-authenticated download URL.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::Digest;

use super::content::iso;
use super::tenant::{IMMUTABLE_PREFIX, REST_PREFIX};
use super::{full, now_unix, BytesBody, ContentBody, Ctx, DItem, Live, LiveItem, Req, Resp, State};

const LICENSE_SKU: &str = "c7df2760-2c81-4ef7-b578-5b5392b571df"; // Office 365 E5

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn unb64(s: &str) -> Option<String> {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()?;
    String::from_utf8(b).ok()
}

/// Encodes paging/delta state as an opaque token (JSON, base64url, with a checksum so a
/// tampered token is refused like a malformed one).
fn encode_token(state: &State, v: &Value) -> String {
    let s = v.to_string();
    let mac = sha2::Sha256::digest(format!("{}{s}", state.secret).as_bytes());
    format!("{}.{}", b64(&s), &hex_of(&mac)[..16])
}

fn decode_token(state: &State, t: &str) -> Option<Value> {
    let (body, mac) = t.split_once('.')?;
    let s = unb64(body)?;
    let want = sha2::Sha256::digest(format!("{}{s}", state.secret).as_bytes());
    if hex_of(&want)[..16] != *mac {
        return None;
    }
    serde_json::from_str(&s).ok()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn enc_seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---------------------------------------------------------------------------------------------
// Paging.

fn page_size(state: &State, r: &Req) -> usize {
    let top = r.q("$top").and_then(|t| t.parse::<usize>().ok());
    let pref = r.max_page_size();
    let n = match (top, pref) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => state.cfg.page_size,
    };
    n.clamp(1, 999)
}

/// How many items a page takes: every third page (the second, fifth, …) is half size while
/// more follow, so clients must follow `@odata.nextLink` rather than count.
fn take_for(page: u64, size: usize) -> usize {
    if page % 3 == 1 {
        (size / 2).max(1)
    } else {
        size
    }
}

/// The request's own URL (path as sent) with its query minus `drop` keys, plus `extra`.
fn self_link(
    state: &State,
    r: &Req,
    path: &str,
    drop: &[&str],
    extra: &[(&str, String)],
) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &r.query {
        if !drop.iter().any(|d| eq(d, k)) {
            ser.append_pair(k, v);
        }
    }
    for (k, v) in extra {
        ser.append_pair(k, v);
    }
    let q = ser.finish();
    if q.is_empty() {
        format!("{}{path}", state.base)
    } else {
        format!("{}{path}?{q}", state.base)
    }
}

fn raw_path(r: &Req) -> String {
    let mut p = format!("/{}", r.version);
    for s in &r.segs {
        p.push('/');
        p.push_str(&enc_seg(s));
    }
    p
}

/// A paged collection response.
fn paged(state: &State, ctx: &Ctx, r: &Req, context: &str, items: Vec<Value>) -> Resp {
    let (mut offset, mut page, mut size) = (0usize, 0u64, page_size(state, r));
    if let Some(t) = r.q("$skiptoken") {
        let Some(v) = decode_token(state, t) else {
            return ctx.error(400, "BadRequest", "Invalid $skiptoken.");
        };
        offset = v["o"].as_u64().unwrap_or(0) as usize;
        page = v["p"].as_u64().unwrap_or(0);
        if r.max_page_size().is_none() {
            size = v["s"].as_u64().unwrap_or(size as u64) as usize;
        }
    }
    let take = take_for(page, size);
    let end = (offset + take).min(items.len());
    let value: Vec<Value> = items[offset.min(items.len())..end].to_vec();
    let mut body = json!({
        "@odata.context": format!("{}/{}/$metadata#{context}", state.base, r.version),
        "value": value,
    });
    if end < items.len() && state.cfg.faults.repeat_next_link {
        body["@odata.nextLink"] = json!(self_link(state, r, &raw_path(r), &[], &[]));
    } else if end < items.len() {
        let tok = encode_token(state, &json!({"o": end, "p": page + 1, "s": size}));
        body["@odata.nextLink"] = json!(self_link(
            state,
            r,
            &raw_path(r),
            &["$skiptoken"],
            &[("$skiptoken", tok)]
        ));
    }
    ctx.json(200, &body)
}

// ---------------------------------------------------------------------------------------------
// Routing.

/// The in-flight key of a mailbox addressed by a user segment: its mailbox id if known.
pub(crate) fn mailbox_key(state: &State, seg: &str) -> String {
    if let Some(u) = state.truth.user(seg) {
        if let Some(mb) = &u.mailbox {
            return mb.mailbox_id.clone();
        }
    }
    seg.to_ascii_lowercase()
}

pub(crate) fn route(state: &Arc<State>, ctx: &Ctx, r: &Req) -> Resp {
    if r.method != http::Method::GET && r.method != http::Method::HEAD {
        return ctx.error(405, "Request_BadRequest", "The sandbox serves reads only.");
    }
    let s: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let files_denied = state.denied("Files.Read.All") || state.denied("Sites.Read.All");
    let deny_files = || ctx.error(403, "accessDenied", "Access denied");
    let deny_dir = || {
        ctx.error(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    };
    match s.as_slice() {
        [u, ..] if eq(u, "users") => {
            if s.len() >= 3 && (eq(s[2], "mailFolders") || eq(s[2], "messages")) {
                if state.denied("Mail.Read") {
                    return ctx.error(
                        403,
                        "ErrorAccessDenied",
                        "Access is denied. Check credentials and try again.",
                    );
                }
                return mail(state, ctx, r, s[1], &s[2..]);
            }
            if s.len() >= 3 && (eq(s[2], "drive") || eq(s[2], "drives")) {
                if files_denied {
                    return deny_files();
                }
                return user_drive(state, ctx, r, s[1], &s[2..]);
            }
            if state.denied("User.Read.All") {
                return deny_dir();
            }
            users(state, ctx, r, &s[1..])
        }
        [g, ..] if eq(g, "groups") => {
            if state.denied("User.Read.All") {
                return deny_dir();
            }
            groups(state, ctx, r, &s[1..])
        }
        [d, id, rest @ ..] if eq(d, "drives") => {
            if files_denied {
                return deny_files();
            }
            match drive_index(state, id) {
                Some(i) => drive_routes(state, ctx, r, i, rest),
                None => ctx.error(404, "itemNotFound", "The resource could not be found."),
            }
        }
        [x, rest @ ..] if eq(x, "sites") => {
            if files_denied {
                return deny_files();
            }
            sites(state, ctx, r, rest)
        }
        _ => not_segment(ctx, s.first().copied().unwrap_or("")),
    }
}

fn not_segment(ctx: &Ctx, seg: &str) -> Resp {
    ctx.error(
        400,
        "BadRequest",
        &format!("Resource not found for the segment '{seg}'."),
    )
}

fn user_not_found(ctx: &Ctx, u: &str) -> Resp {
    ctx.error(
        404,
        "Request_ResourceNotFound",
        &format!("Resource '{u}' does not exist or one of its queried reference-property objects are not present."),
    )
}

// ---------------------------------------------------------------------------------------------
// Directory.

fn user_json(u: &super::User) -> Value {
    json!({
        "id": u.id,
        "userPrincipalName": u.user_principal_name,
        "mail": u.mail,
        "displayName": u.display_name,
        "accountEnabled": true,
        "assignedLicenses": if u.licensed { json!([{"disabledPlans": [], "skuId": LICENSE_SKU}]) } else { json!([]) },
    })
}

fn filter_users(filter: &str, u: &super::User) -> Option<bool> {
    let f = filter.trim();
    let lit = |f: &str, key: &str| -> Option<String> {
        let rest = f.strip_prefix(key)?.trim_start();
        let rest = rest.strip_prefix("eq")?.trim();
        Some(rest.trim_matches('\'').replace("''", "'"))
    };
    if let Some(v) = lit(f, "userPrincipalName") {
        return Some(u.user_principal_name.eq_ignore_ascii_case(&v));
    }
    if let Some(v) = lit(f, "mail") {
        return Some(
            u.mail
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(&v)),
        );
    }
    if let Some(v) = lit(f, "id") {
        return Some(u.id.eq_ignore_ascii_case(&v));
    }
    if f.replace(' ', "") == "accountEnabledeqtrue" {
        return Some(true);
    }
    if f.replace(' ', "")
        .eq_ignore_ascii_case("assignedLicenses/$countne0")
    {
        return Some(u.licensed);
    }
    None
}

fn users(state: &State, ctx: &Ctx, r: &Req, s: &[&str]) -> Resp {
    let deleted = state.live.lock().expect("live lock").deleted_users.clone();
    if let [id, ..] = s {
        if state
            .truth
            .user(id)
            .is_some_and(|u| deleted.contains(&u.id))
        {
            return user_not_found(ctx, id);
        }
    }
    match s {
        [] => {
            let mut list = Vec::new();
            for u in state
                .truth
                .users
                .iter()
                .filter(|u| !deleted.contains(&u.id))
            {
                if let Some(f) = r.q("$filter") {
                    match filter_users(f, u) {
                        Some(true) => {}
                        Some(false) => continue,
                        None => {
                            return ctx.error(
                                400,
                                "Request_UnsupportedQuery",
                                "Unsupported Query.",
                            );
                        }
                    }
                }
                list.push(user_json(u));
            }
            paged(state, ctx, r, "users", list)
        }
        [id] => match state.truth.user(id) {
            Some(u) => {
                let mut v = user_json(u);
                v["@odata.context"] = json!(format!(
                    "{}/{}/$metadata#users/$entity",
                    state.base, r.version
                ));
                ctx.json(200, &v)
            }
            None => user_not_found(ctx, id),
        },
        [id, settings, exchange] if eq(settings, "settings") && eq(exchange, "exchange") => {
            if r.version != "beta" {
                return not_segment(ctx, exchange);
            }
            let Some(u) = state.truth.user(id) else {
                return user_not_found(ctx, id);
            };
            let Some(mb) = &u.mailbox else {
                return ctx.error(
                    404,
                    "MailboxNotEnabledForRESTAPI",
                    "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                );
            };
            ctx.json(200, &json!({
                "@odata.context": format!("{}/beta/$metadata#users('{}')/settings/exchange/$entity", state.base, u.id),
                "primaryMailboxId": mb.mailbox_id,
                "inPlaceArchiveMailboxId": u.archive.as_ref().map(|a| a.mailbox_id.clone()),
            }))
        }
        [id, ..] if state.truth.user(id).is_none() => user_not_found(ctx, id),
        [_, seg, ..] => not_segment(ctx, seg),
    }
}

fn groups(state: &State, ctx: &Ctx, r: &Req, s: &[&str]) -> Resp {
    let group_json = |g: &super::Group| json!({"id": g.id, "displayName": g.display_name, "mailEnabled": false, "securityEnabled": true, "groupTypes": []});
    match s {
        [] => paged(
            state,
            ctx,
            r,
            "groups",
            state.truth.groups.iter().map(group_json).collect(),
        ),
        [id, rest @ ..] => {
            let Some(g) = state.truth.groups.iter().find(|g| eq(&g.id, id)) else {
                return user_not_found(ctx, id);
            };
            match rest {
                [] => ctx.json(200, &group_json(g)),
                [m] if eq(m, "members") || eq(m, "transitiveMembers") => {
                    let members = g
                        .member_ids
                        .iter()
                        .filter_map(|id| state.truth.user(id))
                        .map(|u| {
                            let mut v = user_json(u);
                            v["@odata.type"] = json!("#microsoft.graph.user");
                            v
                        })
                        .collect();
                    paged(state, ctx, r, "directoryObjects", members)
                }
                [seg, ..] => not_segment(ctx, seg),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mail.

fn resolve_mailbox(state: &State, ctx: &Ctx, r: &Req, seg: &str) -> Result<usize, Box<Resp>> {
    let live = state.live.lock().expect("live lock");
    if let Some(u) = state.truth.user(seg) {
        if !u.licensed {
            return Err(Box::new(ctx.error(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )));
        }
        return live
            .mailboxes
            .iter()
            .position(|m| m.user_id == u.id && !m.is_archive)
            .ok_or_else(|| Box::new(user_not_found(ctx, seg)));
    }
    // Mailbox ids (MBX:…) are how the beta API addresses an in-place archive.
    if r.version == "beta" {
        if let Some(i) = live
            .mailboxes
            .iter()
            .position(|m| m.mailbox_id.eq_ignore_ascii_case(seg))
        {
            return Ok(i);
        }
    }
    Err(Box::new(user_not_found(ctx, seg)))
}

fn find_folder<'a>(mb: &'a super::LiveMailbox, f: &str) -> Option<&'a super::MailFolder> {
    mb.folders
        .iter()
        .find(|x| x.id == f || x.well_known_name.as_deref().is_some_and(|w| eq(w, f)))
}

fn folder_json(mb: &super::LiveMailbox, f: &super::MailFolder) -> Value {
    let live: Vec<&super::LiveMsg> = mb
        .msgs
        .iter()
        .filter(|m| m.deleted.is_none() && m.m.folder_id == f.id)
        .collect();
    json!({
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": f.parent_id,
        "childFolderCount": mb.folders.iter().filter(|c| c.parent_id == f.id).count(),
        "unreadItemCount": live.iter().filter(|m| !m.m.is_read).count(),
        "totalItemCount": live.len() + f.non_message_items,
        "sizeInBytes": live.iter().map(|m| m.m.size).sum::<u64>(),
        "isHidden": f.hidden,
    })
}

fn message_id_out(m: &super::Message, immutable: bool) -> &str {
    if immutable {
        &m.id
    } else {
        &m.rest_id
    }
}

fn addr_json(a: &(String, String)) -> Value {
    json!({"emailAddress": {"name": a.0, "address": a.1}})
}

fn message_json(m: &super::Message, immutable: bool, with_size: bool) -> Value {
    let spec = &m.spec;
    let mut v = json!({
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": format!("W/\"CQAAABYAAAD{}\"", &m.id_suffix()[..12]),
        "id": message_id_out(m, immutable),
        "createdDateTime": iso(m.received),
        "lastModifiedDateTime": iso(m.received),
        "changeKey": format!("CQAAABYAAAD{}", &m.id_suffix()[..12]),
        "categories": m.categories,
        "receivedDateTime": iso(m.received),
        "sentDateTime": iso(spec.date),
        "hasAttachments": m.has_attachments,
        "internetMessageId": m.internet_message_id,
        "subject": m.subject,
        "importance": "normal",
        "parentFolderId": m.folder_id,
        "conversationId": format!("AAQkA{}", &m.id_suffix()[..20]),
        "isDeliveryReceiptRequested": false,
        "isReadReceiptRequested": false,
        "isRead": m.is_read,
        "isDraft": false,
        "inferenceClassification": "focused",
        "sender": addr_json(&spec.from),
        "from": addr_json(&spec.from),
        "toRecipients": spec.to.iter().map(addr_json).collect::<Vec<_>>(),
        "ccRecipients": spec.cc.iter().map(addr_json).collect::<Vec<_>>(),
        "bccRecipients": [],
        "replyTo": [],
        "flag": {"flagStatus": "notFlagged"},
    });
    if with_size {
        // PR_MESSAGE_SIZE (0x0E08), as Exchange reports it: the id normalised, the value a string.
        v["singleValueExtendedProperties"] =
            json!([{"id": "Integer 0xe08", "value": m.size.to_string()}]);
    }
    v
}

/// True if `$expand` asks for PR_MESSAGE_SIZE.
fn wants_size(r: &Req) -> bool {
    r.q("$expand").is_some_and(|e| {
        let e = e.to_ascii_lowercase();
        e.contains("singlevalueextendedproperties") && e.contains("0x0e08")
    })
}

fn msg_suffix(id: &str) -> Option<&str> {
    id.strip_prefix(IMMUTABLE_PREFIX)
        .or_else(|| id.strip_prefix(REST_PREFIX))
}

fn is_delta(seg: &str) -> bool {
    eq(seg, "delta")
        || eq(seg, "delta()")
        || eq(seg, "microsoft.graph.delta()")
        || eq(seg, "microsoft.graph.delta")
}

fn mail(state: &Arc<State>, ctx: &Ctx, r: &Req, user: &str, s: &[&str]) -> Resp {
    let mbi = match resolve_mailbox(state, ctx, r, user) {
        Ok(i) => i,
        Err(e) => return *e,
    };
    let immutable = r.immutable_ids();
    let hidden_too = r.q("includeHiddenFolders").is_some_and(|v| eq(v, "true"));
    let live = state.live.lock().expect("live lock");
    let mb = &live.mailboxes[mbi];
    let ctx_prefix = format!("users('{}')", mb.user_id);
    let not_found = || {
        ctx.error(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    };
    let list_children = |parent: &str, what: &str| {
        let list: Vec<Value> = mb
            .folders
            .iter()
            .filter(|f| f.parent_id == parent && (hidden_too || !f.hidden))
            .map(|f| folder_json(mb, f))
            .collect();
        paged(state, ctx, r, &format!("{ctx_prefix}/{what}"), list)
    };
    match s {
        [mf] if eq(mf, "mailFolders") => {
            let Some(root) = find_folder(mb, "msgfolderroot") else {
                return not_found();
            };
            list_children(&root.id.clone(), "mailFolders")
        }
        [mf, fid, rest @ ..] if eq(mf, "mailFolders") => {
            let Some(f) = find_folder(mb, fid) else {
                return not_found();
            };
            match rest {
                [] => {
                    let mut v = folder_json(mb, f);
                    v["@odata.context"] = json!(format!(
                        "{}/{}/$metadata#{ctx_prefix}/mailFolders/$entity",
                        state.base, r.version
                    ));
                    ctx.json(200, &v)
                }
                [c] if eq(c, "childFolders") => {
                    list_children(&f.id.clone(), "mailFolders('…')/childFolders")
                }
                [m] if eq(m, "messages") => {
                    let list = mb
                        .msgs
                        .iter()
                        .filter(|m| m.deleted.is_none() && m.m.folder_id == f.id)
                        .map(|m| message_json(&m.m, immutable, wants_size(r)))
                        .collect();
                    paged(state, ctx, r, &format!("{ctx_prefix}/messages"), list)
                }
                [m, d] if eq(m, "messages") && is_delta(d) => {
                    let fid = f.id.clone();
                    mail_delta(state, ctx, r, &live, mbi, &fid)
                }
                [m, id, tail @ ..] if eq(m, "messages") => {
                    message_item(state, ctx, r, &live, mbi, id, tail)
                }
                [seg, ..] => not_segment(ctx, seg),
            }
        }
        [m] if eq(m, "messages") => {
            let list = mb
                .msgs
                .iter()
                .filter(|m| m.deleted.is_none())
                .filter(|m| {
                    mb.folders
                        .iter()
                        .any(|f| f.id == m.m.folder_id && f.in_ipm_subtree)
                })
                .map(|m| message_json(&m.m, immutable, wants_size(r)))
                .collect();
            paged(state, ctx, r, &format!("{ctx_prefix}/messages"), list)
        }
        [m, id, tail @ ..] if eq(m, "messages") => {
            message_item(state, ctx, r, &live, mbi, id, tail)
        }
        [seg, ..] => not_segment(ctx, seg),
        [] => not_segment(ctx, user),
    }
}

fn message_item(
    state: &State,
    ctx: &Ctx,
    r: &Req,
    live: &Live,
    mbi: usize,
    id: &str,
    tail: &[&str],
) -> Resp {
    let mb = &live.mailboxes[mbi];
    let found = msg_suffix(id).and_then(|sfx| {
        mb.msgs
            .iter()
            .find(|m| m.deleted.is_none() && m.m.id_suffix() == sfx)
    });
    let Some(lm) = found else {
        return ctx.error(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        );
    };
    let m = &lm.m;
    match tail {
        [] => {
            let mut v = message_json(m, r.immutable_ids(), wants_size(r));
            v["@odata.context"] = json!(format!(
                "{}/{}/$metadata#users('{}')/messages/$entity",
                state.base, r.version, mb.user_id
            ));
            ctx.json(200, &v)
        }
        [v] if *v == "$value" => {
            if state.cfg.faults.fail_message_always.as_deref() == Some(m.subject.as_str()) {
                return ctx.error(
                    500,
                    "ErrorInternalServerError",
                    "An internal server error occurred. The operation failed.",
                );
            }
            let mime = m.mime();
            state.downloads.fetch_add(1, Ordering::Relaxed);
            let n = state.download_count.fetch_add(1, Ordering::SeqCst) + 1;
            let te = state.cfg.faults.truncate_every;
            let truncate = te > 0 && n.is_multiple_of(te) && !mime.is_empty();
            let len = mime.len();
            let body = if truncate {
                BytesBody {
                    data: Some(bytes::Bytes::from(mime).slice(..len / 2)),
                    fail_after: true,
                    cutoff: Default::default(),
                }
                .boxed()
            } else {
                full(mime)
            };
            let mut b = http::Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .header("content-length", len)
                .header("request-id", &ctx.request_id)
                .header("client-request-id", &ctx.client_request_id);
            if !ctx.applied.is_empty() {
                b = b.header("preference-applied", ctx.applied.join(","));
            }
            b.body(body).expect("valid response")
        }
        [seg, ..] => not_segment(ctx, seg),
    }
}

fn mail_delta(state: &State, ctx: &Ctx, r: &Req, live: &Live, mbi: usize, fid: &str) -> Resp {
    let mb = &live.mailboxes[mbi];
    let epoch = state.epoch.load(Ordering::SeqCst);
    let mut size = page_size(state, r);
    let (since, upto, offset, page, with_size);
    let tok = r
        .q("$skiptoken")
        .map(|t| (t, true))
        .or(r.q("$deltatoken").map(|t| (t, false)));
    match tok {
        None => {
            since = 0;
            upto = live.seq;
            offset = 0;
            page = 0;
            with_size = wants_size(r);
        }
        Some((t, next)) => {
            let Some(v) = decode_token(state, t) else {
                return ctx.error(400, "ErrorInvalidUrlQuery", "The delta token is malformed.");
            };
            if v["e"].as_u64() != Some(epoch) || v["f"].as_str() != Some(fid) || v["k"] != "m" {
                return ctx.error(
                    410,
                    "SyncStateNotFound",
                    "The sync state is not found. Reset the sync state by doing a full sync.",
                );
            }
            with_size = v["x"].as_bool().unwrap_or(false) || wants_size(r);
            if r.max_page_size().is_none() && r.q("$top").is_none() {
                size = v["s"].as_u64().unwrap_or(size as u64) as usize;
            }
            if next {
                since = v["a"].as_u64().unwrap_or(0);
                upto = v["b"].as_u64().unwrap_or(0);
                offset = v["o"].as_u64().unwrap_or(0) as usize;
                page = v["p"].as_u64().unwrap_or(0);
            } else {
                since = v["b"].as_u64().unwrap_or(0);
                upto = live.seq;
                offset = 0;
                page = 0;
            }
        }
    }
    let immutable = r.immutable_ids();
    let mut changes: Vec<Value> = Vec::new();
    for lm in mb.msgs.iter().filter(|m| m.m.folder_id == fid) {
        let present = lm.created <= upto && lm.deleted.is_none_or(|d| d > upto);
        if present && lm.created > since {
            changes.push(message_json(&lm.m, immutable, with_size));
        } else if since > 0
            && lm.created <= since
            && lm.deleted.is_some_and(|d| d > since && d <= upto)
        {
            changes.push(json!({
                "@odata.type": "#microsoft.graph.message",
                "id": message_id_out(&lm.m, immutable),
                "@removed": {"reason": "deleted"},
            }));
        }
    }
    let take = take_for(page, size);
    let end = (offset + take).min(changes.len());
    let value = changes[offset.min(changes.len())..end].to_vec();
    let path = raw_path(r);
    let mut body = json!({
        "@odata.context": format!("{}/{}/$metadata#Collection(message)", state.base, r.version),
        "value": value,
    });
    let base = |v: Value| encode_token(state, &v);
    if end < changes.len() {
        let t = base(
            json!({"k": "m", "f": fid, "e": epoch, "a": since, "b": upto, "o": end, "p": page + 1, "s": size, "x": with_size}),
        );
        body["@odata.nextLink"] = json!(format!("{}{path}?%24skiptoken={t}", state.base));
    } else {
        let t = base(json!({"k": "m", "f": fid, "e": epoch, "b": upto, "s": size, "x": with_size}));
        body["@odata.deltaLink"] = json!(format!("{}{path}?%24deltatoken={t}", state.base));
    }
    ctx.json(200, &body)
}

// ---------------------------------------------------------------------------------------------
// Drives.

fn drive_index(state: &State, id: &str) -> Option<usize> {
    let live = state.live.lock().expect("live lock");
    live.drives.iter().position(|d| d.drive.id == id)
}

fn user_drive(state: &Arc<State>, ctx: &Ctx, r: &Req, user: &str, s: &[&str]) -> Resp {
    let Some(u) = state.truth.user(user) else {
        return user_not_found(ctx, user);
    };
    let Some(did) = u.drive_id.clone() else {
        return ctx.error(404, "ResourceNotFound", "User's mysite not found.");
    };
    let Some(i) = drive_index(state, &did) else {
        return ctx.error(404, "itemNotFound", "The resource could not be found.");
    };
    match s {
        [d, rest @ ..] if eq(d, "drive") => drive_routes(state, ctx, r, i, rest),
        [d] if eq(d, "drives") => {
            let live = state.live.lock().expect("live lock");
            let v = drive_json(state, &live.drives[i].drive);
            drop(live);
            paged(state, ctx, r, "drives", vec![v])
        }
        [d, id, rest @ ..] if eq(d, "drives") && *id == did => drive_routes(state, ctx, r, i, rest),
        _ => ctx.error(404, "itemNotFound", "The resource could not be found."),
    }
}

fn drive_json(state: &State, d: &super::Drive) -> Value {
    let owner = match &d.owner {
        super::DriveOwner::User(uid) => {
            let u = state.truth.user(uid);
            json!({"user": {"id": uid, "displayName": u.map(|u| u.display_name.clone()), "email": u.and_then(|u| u.mail.clone())}})
        }
        super::DriveOwner::Site(_) => json!({"user": {"displayName": "System Account"}}),
    };
    json!({
        "id": d.id,
        "driveType": d.drive_type,
        "name": d.name,
        "description": "",
        "webUrl": d.web_url,
        "createdDateTime": "2023-06-01T08:00:00Z",
        "lastModifiedDateTime": iso(now_unix()),
        "owner": owner,
        "quota": {"deleted": 0, "remaining": 1_099_511_627_776u64, "state": "normal", "total": 1_099_511_627_776u64, "used": 0},
    })
}

/// The signed, expiring download URL of a file, shaped like SharePoint's.
fn download_url(state: &State, drive_id: &str, item_id: &str) -> String {
    let exp = now_unix() + 3600;
    let payload = format!("{drive_id}|{item_id}|{exp}");
    let mac = sha2::Sha256::digest(format!("{}|{payload}", state.secret).as_bytes());
    let tempauth = format!("v1.{}.{}", b64(&payload), &hex_of(&mac)[..32]);
    format!(
        "{}/download/_layouts/15/download.aspx?UniqueId={}&Translate=false&tempauth={tempauth}&ApiVersion=2.0",
        state.base,
        &hex_of(&sha2::Sha256::digest(item_id.as_bytes()))[..32]
    )
}

struct Present<'a> {
    items: Vec<&'a LiveItem>,
    child_counts: HashMap<&'a str, usize>,
    sizes: HashMap<&'a str, u64>,
}

/// Items present as of `upto`, with folder child counts and sizes.
fn present(items: &[LiveItem], upto: u64) -> Present<'_> {
    let items: Vec<&LiveItem> = items
        .iter()
        .filter(|i| i.created <= upto && i.deleted.is_none_or(|d| d > upto))
        .collect();
    let mut child_counts: HashMap<&str, usize> = HashMap::new();
    let mut sizes: HashMap<&str, u64> = HashMap::new();
    let parent_of: HashMap<&str, &str> = items
        .iter()
        .filter_map(|i| Some((i.item.id(), i.item.parent_id()?)))
        .collect();
    for i in &items {
        if let Some(p) = i.item.parent_id() {
            *child_counts.entry(p).or_default() += 1;
        }
        if let DItem::File(f) = &i.item {
            let mut cur = Some(f.parent_id.as_str());
            while let Some(c) = cur {
                *sizes.entry(c).or_default() += f.listed_size;
                cur = parent_of.get(c).copied();
            }
        }
    }
    Present {
        items,
        child_counts,
        sizes,
    }
}

fn item_json(
    state: &State,
    d: &super::Drive,
    it: &LiveItem,
    p: &Present<'_>,
    with_path: bool,
) -> Value {
    let pref = |parent: &str, path: Option<String>| {
        let mut v = json!({"driveId": d.id, "driveType": d.drive_type, "id": parent});
        if let (true, Some(path)) = (with_path, path) {
            v["path"] = json!(path);
        }
        v
    };
    let path_of = |path: &[String]| {
        let mut s = "/drive/root:".to_string();
        if !path.is_empty() {
            s.push('/');
            s.push_str(&path.join("/"));
        }
        s
    };
    match &it.item {
        DItem::Folder(f) => {
            let mut v = json!({
                "id": f.id,
                "name": f.name,
                "eTag": format!("\"{{{}}},{}\"", f.id, it.changed),
                "cTag": format!("\"c:{{{}}},{}\"", f.id, it.changed),
                "createdDateTime": iso(f.created),
                "lastModifiedDateTime": iso(f.created),
                "size": p.sizes.get(f.id.as_str()).copied().unwrap_or(0),
                "webUrl": format!("{}/{}", d.web_url, f.path.join("/")),
                "folder": {"childCount": p.child_counts.get(f.id.as_str()).copied().unwrap_or(0)},
                "fileSystemInfo": {"createdDateTime": iso(f.created), "lastModifiedDateTime": iso(f.created)},
            });
            match &f.parent_id {
                None => {
                    v["root"] = json!({});
                    v["parentReference"] = json!({"driveId": d.id, "driveType": d.drive_type});
                }
                Some(pid) => {
                    v["parentReference"] = pref(pid, Some(path_of(&f.path[..f.path.len() - 1])));
                }
            }
            v
        }
        DItem::File(f) => json!({
            "@microsoft.graph.downloadUrl": download_url(state, &d.id, &f.id),
            "id": f.id,
            "name": f.name,
            "eTag": format!("\"{{{}}},{}\"", f.id, it.changed),
            // The content tag changes with the content only, not with a rename or move.
            "cTag": format!("\"c:{{{}}},{:x}\"", f.id, f.content.key),
            "createdDateTime": iso(f.created),
            "lastModifiedDateTime": iso(f.modified),
            "size": f.listed_size,
            "webUrl": format!("{}/{}", d.web_url, f.path.join("/")),
            "parentReference": pref(&f.parent_id, Some(path_of(&f.path[..f.path.len() - 1]))),
            "file": {"mimeType": f.mime_type, "hashes": {"quickXorHash": f.listed_quick_xor_hash}},
            "fileSystemInfo": {"createdDateTime": iso(f.created), "lastModifiedDateTime": iso(f.modified)},
        }),
    }
}

fn item_not_found(ctx: &Ctx) -> Resp {
    ctx.error(404, "itemNotFound", "The resource could not be found.")
}

/// `delta`, `delta()`, `delta(token='…')`, `delta(token=…)` → Some(token in the segment).
fn delta_segment(seg: &str) -> Option<Option<String>> {
    if is_delta(seg) {
        return Some(None);
    }
    let rest = seg
        .strip_prefix("delta(")
        .or_else(|| seg.strip_prefix("microsoft.graph.delta("))?;
    let inner = rest.strip_suffix(')')?;
    let t = inner.strip_prefix("token=")?;
    Some(Some(t.trim_matches('\'').to_string()))
}

fn drive_routes(state: &Arc<State>, ctx: &Ctx, r: &Req, di: usize, s: &[&str]) -> Resp {
    let live = state.live.lock().expect("live lock");
    let ld = &live.drives[di];
    let d = &ld.drive;
    let find = |id: &str| {
        ld.items
            .iter()
            .find(|i| i.item.id() == id && i.deleted.is_none())
    };
    let root = || ld.items.iter().find(|i| i.item.parent_id().is_none());
    let get_item = |it: &LiveItem| {
        let p = present(&ld.items, live.seq);
        let mut v = item_json(state, d, it, &p, true);
        v["@odata.context"] = json!(format!(
            "{}/{}/$metadata#drives('{}')/items/$entity",
            state.base, r.version, d.id
        ));
        ctx.json(200, &v)
    };
    let children = |it: &LiveItem| {
        let p = present(&ld.items, live.seq);
        let list = p
            .items
            .iter()
            .filter(|c| c.item.parent_id() == Some(it.item.id()))
            .map(|c| item_json(state, d, c, &p, true))
            .collect();
        paged(
            state,
            ctx,
            r,
            &format!("drives('{}')/items('{}')/children", d.id, it.item.id()),
            list,
        )
    };
    let content = |it: &LiveItem| match &it.item {
        DItem::File(f) => http::Response::builder()
            .status(302)
            .header("location", download_url(state, &d.id, &f.id))
            .header("request-id", &ctx.request_id)
            .header("client-request-id", &ctx.client_request_id)
            .header("content-length", 0)
            .body(full(""))
            .expect("valid response"),
        DItem::Folder(_) => ctx.error(400, "invalidRequest", "Cannot download a folder."),
    };
    match s {
        [] => {
            let mut v = drive_json(state, d);
            v["@odata.context"] = json!(format!(
                "{}/{}/$metadata#drives/$entity",
                state.base, r.version
            ));
            ctx.json(200, &v)
        }
        [rt] if eq(rt, "root") => match root() {
            Some(it) => get_item(it),
            None => item_not_found(ctx),
        },
        [rt, c] if eq(rt, "root") && eq(c, "children") => match root() {
            Some(it) => children(it),
            None => item_not_found(ctx),
        },
        [rt, dseg] if eq(rt, "root") && delta_segment(dseg).is_some() => {
            let token = delta_segment(dseg)
                .flatten()
                .or_else(|| r.q("token").map(str::to_string));
            drive_delta(state, ctx, r, &live, di, token)
        }
        [items, id, rest @ ..] if eq(items, "items") => {
            let Some(it) = find(id) else {
                return item_not_found(ctx);
            };
            match rest {
                [] => get_item(it),
                [c] if eq(c, "children") => children(it),
                [c] if eq(c, "content") || *c == "$value" => content(it),
                [seg, ..] => not_segment(ctx, seg),
            }
        }
        [seg, ..] => not_segment(ctx, seg),
    }
}

fn drive_delta(
    state: &State,
    ctx: &Ctx,
    r: &Req,
    live: &Live,
    di: usize,
    token: Option<String>,
) -> Resp {
    let ld = &live.drives[di];
    let d = &ld.drive;
    let epoch = state.epoch.load(Ordering::SeqCst);
    let fresh = format!(
        "{}/{}/drives/{}/root/delta",
        state.base,
        r.version,
        enc_seg(&d.id)
    );
    let mut size = page_size(state, r);
    let (since, upto, offset, page);
    match token.as_deref() {
        None => {
            state.drive_enumerations.fetch_add(1, Ordering::Relaxed);
            since = 0;
            upto = live.seq;
            offset = 0;
            page = 0;
        }
        Some("latest") => {
            let t = encode_token(
                state,
                &json!({"k": "d", "d": d.id, "e": epoch, "n": false, "b": live.seq, "s": size}),
            );
            return ctx.json(200, &json!({
                "@odata.context": format!("{}/{}/$metadata#Collection(driveItem)", state.base, r.version),
                "value": [],
                "@odata.deltaLink": format!("{fresh}?token={t}"),
            }));
        }
        Some(t) => {
            let Some(v) = decode_token(state, t) else {
                return ctx.error(400, "invalidRequest", "Invalid delta token.");
            };
            if v["e"].as_u64() != Some(epoch)
                || v["d"].as_str() != Some(d.id.as_str())
                || v["k"] != "d"
            {
                return ctx.error_with(
                    410,
                    "resyncRequired",
                    "Resync required. Replace any local items with the server's version (including deletes) if you're sure that the service was up to date with your local changes when you last sync'd. Upload any local changes that the server doesn't know about.",
                    vec![("location", fresh.clone())],
                )
                .pipe_inner("resyncChangesApplyDifferences");
            }
            if r.max_page_size().is_none() && r.q("$top").is_none() {
                size = v["s"].as_u64().unwrap_or(size as u64) as usize;
            }
            if v["n"].as_bool() == Some(true) {
                since = v["a"].as_u64().unwrap_or(0);
                upto = v["b"].as_u64().unwrap_or(0);
                offset = v["o"].as_u64().unwrap_or(0) as usize;
                page = v["p"].as_u64().unwrap_or(0);
            } else {
                since = v["b"].as_u64().unwrap_or(0);
                upto = live.seq;
                offset = 0;
                page = 0;
            }
        }
    }
    let p = present(&ld.items, upto);
    let mut list: Vec<Value> = Vec::new();
    if since == 0 {
        // Initial enumeration. The docs promise no order and allow repeats ("use the last
        // occurrence you see"): list the first top-level "Photos" folder after its children,
        // and every fifth file twice.
        let late = p
            .items
            .iter()
            .find(
                |i| matches!(&i.item, DItem::Folder(f) if f.path.len() == 1 && f.name == "Photos"),
            )
            .map(|i| i.item.id().to_string());
        let mut repeats = Vec::new();
        let mut nfile = 0;
        for it in &p.items {
            if late.as_deref() == Some(it.item.id()) {
                continue;
            }
            list.push(item_json(state, d, it, &p, false));
            if let DItem::File(_) = it.item {
                nfile += 1;
                if nfile % 5 == 0 {
                    repeats.push(item_json(state, d, it, &p, false));
                }
            }
            if list.len().is_multiple_of(7) {
                list.append(&mut repeats);
            }
        }
        list.append(&mut repeats);
        if let Some(id) = late {
            if let Some(it) = p.items.iter().find(|i| i.item.id() == id) {
                list.push(item_json(state, d, it, &p, false));
            }
        }
    } else {
        for it in &ld.items {
            let is_present = it.created <= upto && it.deleted.is_none_or(|x| x > upto);
            if is_present && (it.changed > since) {
                list.push(item_json(state, d, it, &p, false));
            } else if it.created <= since && it.deleted.is_some_and(|x| x > since && x <= upto) {
                // OneDrive for Business omits name and cTag of deleted items.
                let mut v = json!({
                    "id": it.item.id(),
                    "parentReference": {"driveId": d.id, "driveType": d.drive_type, "id": it.item.parent_id()},
                    "deleted": {"state": "deleted"},
                });
                match &it.item {
                    DItem::File(_) => v["file"] = json!({}),
                    DItem::Folder(_) => v["folder"] = json!({"childCount": 0}),
                }
                list.push(v);
            }
        }
    }
    let take = take_for(page, size);
    let end = (offset + take).min(list.len());
    let value = list[offset.min(list.len())..end].to_vec();
    let mut body = json!({
        "@odata.context": format!("{}/{}/$metadata#Collection(driveItem)", state.base, r.version),
        "value": value,
    });
    if end < list.len() {
        let t = encode_token(
            state,
            &json!({"k": "d", "d": d.id, "e": epoch, "n": true, "a": since, "b": upto, "o": end, "p": page + 1, "s": size}),
        );
        body["@odata.nextLink"] = json!(format!(
            "{}/{}/drives/{}/root/delta(token='{t}')",
            state.base,
            r.version,
            enc_seg(&d.id)
        ));
    } else {
        let t = encode_token(
            state,
            &json!({"k": "d", "d": d.id, "e": epoch, "n": false, "b": upto, "s": size}),
        );
        body["@odata.deltaLink"] = json!(format!("{fresh}?token={t}"));
    }
    ctx.json(200, &body)
}

/// Adds the documented inner error code to a 410 resync response.
trait InnerCode {
    fn pipe_inner(self, code: &str) -> Resp;
}

impl InnerCode for Resp {
    fn pipe_inner(self, code: &str) -> Resp {
        add_inner_code(self, code)
    }
}

/// Adds `innerError.code` to an error response built by [`Ctx::error_with`].
fn add_inner_code(resp: Resp, code: &str) -> Resp {
    let (parts, _) = resp.into_parts();
    // Rebuild the body: the error helper's shape plus the inner code the docs name.
    let rid = parts
        .headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let crid = parts
        .headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = json!({"error": {
        "code": "resyncRequired",
        "message": "Resync required. Replace any local items with the server's version (including deletes) if you're sure that the service was up to date with your local changes when you last sync'd. Upload any local changes that the server doesn't know about.",
        "innerError": {"code": code, "date": iso(now_unix()), "request-id": rid, "client-request-id": crid},
    }});
    http::Response::from_parts(parts, full(body.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Sites.

fn site_json(state: &State, s: &super::Site, root: bool) -> Value {
    let mut v = json!({
        "id": s.id,
        "name": s.name,
        "displayName": s.display_name,
        "webUrl": s.web_url,
        "createdDateTime": "2023-06-01T08:00:00Z",
        "lastModifiedDateTime": iso(now_unix()),
        "siteCollection": {"hostname": s.id.split(',').next().unwrap_or("")},
    });
    if root {
        v["root"] = json!({});
    }
    let _ = state;
    v
}

fn sites(state: &Arc<State>, ctx: &Ctx, r: &Req, s: &[&str]) -> Resp {
    let all = &state.truth.sites;
    let by_id = |id: &str| all.iter().position(|x| x.id.eq_ignore_ascii_case(id));
    match s {
        [] => {
            if r.q("search").is_none() {
                return ctx.error(
                    400,
                    "invalidRequest",
                    "Can only provide expand and select for expand options, or use search.",
                );
            }
            let list = all
                .iter()
                .enumerate()
                .map(|(i, x)| site_json(state, x, i == 0))
                .collect();
            paged(state, ctx, r, "sites", list)
        }
        [g] if eq(g, "getAllSites")
            || eq(g, "getAllSites()")
            || eq(g, "microsoft.graph.getAllSites()") =>
        {
            let list = all
                .iter()
                .enumerate()
                .map(|(i, x)| site_json(state, x, i == 0))
                .collect();
            paged(state, ctx, r, "sites", list)
        }
        [id, rest @ ..] => {
            // A site by path (site-getbypath): `/sites/{hostname}:/{server-relative-path}`,
            // optionally followed by `:/…` for something inside the site.
            let by_path;
            let (idx, rest) = if let Some(host) = id.strip_suffix(':') {
                let end = rest.iter().position(|p| p.ends_with(':'));
                let (path, tail): (Vec<&str>, &[&str]) = match end {
                    Some(i) => {
                        let mut p = rest[..=i].to_vec();
                        let last = p.pop().unwrap_or_default().trim_end_matches(':');
                        p.push(last);
                        (p, &rest[i + 1..])
                    }
                    None => (rest.to_vec(), &[]),
                };
                let path: Vec<&str> = path.into_iter().filter(|p| !p.is_empty()).collect();
                by_path = if path.is_empty() {
                    format!("https://{host}")
                } else {
                    format!("https://{host}/{}", path.join("/"))
                };
                (
                    all.iter()
                        .position(|x| x.web_url.eq_ignore_ascii_case(&by_path)),
                    tail,
                )
            } else if eq(id, "root") {
                ((!all.is_empty()).then_some(0), rest)
            } else {
                (by_id(id), rest)
            };
            let Some(i) = idx else {
                return ctx.error(404, "itemNotFound", "Requested site could not be found");
            };
            let site = &all[i];
            match rest {
                [] => {
                    let mut v = site_json(state, site, i == 0);
                    v["@odata.context"] = json!(format!(
                        "{}/{}/$metadata#sites/$entity",
                        state.base, r.version
                    ));
                    ctx.json(200, &v)
                }
                [d] if eq(d, "drives") => {
                    let live = state.live.lock().expect("live lock");
                    let list = site
                        .drive_ids
                        .iter()
                        .filter_map(|id| live.drives.iter().find(|d| &d.drive.id == id))
                        .map(|d| drive_json(state, &d.drive))
                        .collect();
                    drop(live);
                    paged(state, ctx, r, "drives", list)
                }
                [d, rest @ ..] if eq(d, "drive") => {
                    match site.drive_ids.first().and_then(|id| drive_index(state, id)) {
                        Some(di) => drive_routes(state, ctx, r, di, rest),
                        None => item_not_found(ctx),
                    }
                }
                [d, id, rest @ ..] if eq(d, "drives") && site.drive_ids.iter().any(|x| x == id) => {
                    match drive_index(state, id) {
                        Some(di) => drive_routes(state, ctx, r, di, rest),
                        None => item_not_found(ctx),
                    }
                }
                [seg, ..] => not_segment(ctx, seg),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pre-authenticated downloads.

pub(crate) fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || len == 0 {
            return None;
        }
        return Some((len.saturating_sub(n), len - 1));
    }
    let start: u64 = a.parse().ok()?;
    let end: u64 = if b.is_empty() {
        len.checked_sub(1)?
    } else {
        b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end && start < len).then_some((start, end))
}

pub(crate) fn download(
    state: &Arc<State>,
    ctx: &Ctx,
    query: &[(String, String)],
    headers: &http::HeaderMap,
) -> Resp {
    let plain = |status: u16, text: &str| {
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("request-id", &ctx.request_id)
            .body(full(json!({"error": {"code": if status == 401 { "unauthenticated" } else { "itemNotFound" }, "message": text}}).to_string()))
            .expect("valid response")
    };
    let Some(tempauth) = query
        .iter()
        .find(|(k, _)| k == "tempauth")
        .map(|(_, v)| v.as_str())
    else {
        return plain(401, "Missing tempauth.");
    };
    let parts: Vec<&str> = tempauth.split('.').collect();
    let payload = match parts.as_slice() {
        ["v1", p, mac] => match unb64(p) {
            Some(payload) => {
                let want = sha2::Sha256::digest(format!("{}|{payload}", state.secret).as_bytes());
                if hex_of(&want)[..32] != **mac {
                    return plain(401, "Invalid tempauth signature.");
                }
                payload
            }
            None => return plain(401, "Malformed tempauth."),
        },
        _ => return plain(401, "Malformed tempauth."),
    };
    let fields: Vec<&str> = payload.split('|').collect();
    let [drive_id, item_id, exp] = fields.as_slice() else {
        return plain(401, "Malformed tempauth.");
    };
    if exp.parse::<i64>().unwrap_or(0) < now_unix() {
        return plain(401, "The download URL has expired.");
    }
    let (spec, name, mime) = {
        let live = state.live.lock().expect("live lock");
        let file = live
            .drives
            .iter()
            .find(|d| d.drive.id == *drive_id)
            .and_then(|d| {
                d.items
                    .iter()
                    .find(|i| i.item.id() == *item_id && i.deleted.is_none())
            })
            .and_then(|i| match &i.item {
                DItem::File(f) => Some(f.clone()),
                DItem::Folder(_) => None,
            });
        match file {
            Some(f) => (f.content, f.name, f.mime_type),
            None => return plain(404, "The file was not found."),
        }
    };
    if let Some(status) = state.random_fault() {
        return state.throttle_response(ctx, status);
    }
    state.downloads.fetch_add(1, Ordering::Relaxed);
    let n = state.download_count.fetch_add(1, Ordering::SeqCst) + 1;
    let nf = state.file_download_count.fetch_add(1, Ordering::SeqCst) + 1;
    let len = spec.len;
    let (status, start, end) = match headers.get("range").and_then(|v| v.to_str().ok()) {
        None => (200, 0, len),
        Some(h) => match parse_range(h, len) {
            Some((a, b)) => (206, a, b + 1),
            None => {
                return http::Response::builder()
                    .status(416)
                    .header("content-range", format!("bytes */{len}"))
                    .header("request-id", &ctx.request_id)
                    .body(full(""))
                    .expect("valid response");
            }
        },
    };
    let f = &state.cfg.faults;
    let span = end - start;
    let corrupt = (f.corrupt_every > 0 && nf.is_multiple_of(f.corrupt_every))
        || f.corrupt_always.as_deref() == Some(name.as_str())
        || state
            .live
            .lock()
            .expect("live lock")
            .corrupt
            .contains(&name);
    let truncate = f.truncate_every > 0 && n.is_multiple_of(f.truncate_every) && span > 0;
    let body = ContentBody {
        spec,
        pos: start,
        end,
        stop_at: truncate.then_some(start + span / 2),
        cutoff: Default::default(),
        corrupt_at: (corrupt && span > 0).then_some(start + span / 2),
    };
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", mime)
        .header("content-length", span)
        .header("accept-ranges", "bytes")
        .header("etag", format!("\"{{{item_id}}},1\""))
        .header(
            "content-disposition",
            format!("attachment; filename*=UTF-8''{}", enc_seg(&name)),
        )
        .header("request-id", &ctx.request_id);
    if status == 206 {
        b = b.header("content-range", format!("bytes {start}-{}/{len}", end - 1));
    }
    b.body(body.boxed()).expect("valid response")
}
