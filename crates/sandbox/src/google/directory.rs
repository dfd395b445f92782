//! Admin SDK Directory v1 routes: `users` (list) and `users/{userKey}`.

use std::sync::Arc;

use serde_json::{json, Value};
use sha2::Digest;

use super::{bump, gerr, json_resp, GUser, Req, State};
use crate::graph::Resp;

fn etag(s: &str) -> String {
    let h = sha2::Sha256::digest(s.as_bytes());
    let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn user_json(state: &State, u: &GUser) -> Value {
    let created = super::domain::rfc3339_ms(1_640_995_200_000 + (u.id.len() as i64 * 86_400_000));
    let mut v = json!({
        "kind": "admin#directory#user",
        "id": u.id,
        "etag": etag(&format!("{}{}", u.id, u.email)),
        "primaryEmail": u.email,
        "name": {"givenName": u.given_name, "familyName": u.family_name, "fullName": u.name},
        "isAdmin": u.is_admin,
        "isDelegatedAdmin": false,
        "lastLoginTime": "2024-06-01T08:00:00.000Z",
        "creationTime": created,
        "agreedToTerms": true,
        "suspended": u.suspended,
        "archived": false,
        "changePasswordAtNextLogin": false,
        "ipWhitelisted": false,
        "emails": [{"address": u.email, "primary": true}],
        "customerId": state.truth.customer_id,
        "orgUnitPath": "/",
        "isMailboxSetup": true,
        "isEnrolledIn2Sv": false,
        "isEnforcedIn2Sv": false,
        "includeInGlobalAddressList": true,
    });
    if u.suspended {
        v["suspensionReason"] = json!("ADMIN");
    }
    v
}

pub(crate) fn route(state: &Arc<State>, r: &Req) -> Resp {
    let s: Vec<&str> = r.segs.iter().map(String::as_str).collect();
    let admin = state
        .truth
        .user(&r.subject)
        .is_some_and(|u| u.is_admin && !u.suspended);
    if !admin {
        return gerr(
            403,
            "forbidden",
            "Not Authorized to access this resource/api",
        )
        .resp();
    }
    match &s[3..] {
        ["users"] => list(state, r),
        ["users", key] => match state.truth.user(key) {
            Some(u) => json_resp(200, &user_json(state, u)),
            None => gerr(404, "notFound", "Resource Not Found: userKey").resp(),
        },
        _ => gerr(404, "notFound", "Not Found").resp(),
    }
}

fn list(state: &State, r: &Req) -> Resp {
    let t = &state.truth;
    match (r.q("domain"), r.q("customer")) {
        (Some(d), _) if !d.eq_ignore_ascii_case(&t.domain) => {
            return gerr(400, "badRequest", "Domain not found.").resp();
        }
        (None, Some(c)) if c != "my_customer" && c != t.customer_id => {
            return gerr(400, "badRequest", "Bad Request").resp();
        }
        (None, None) => return gerr(400, "badRequest", "Bad Request").resp(),
        _ => {}
    }
    if let Some(o) = r.q("orderBy") {
        if !matches!(o, "email" | "familyName" | "givenName") {
            return gerr(400, "invalid", "Invalid Input: orderBy").resp();
        }
    }
    let size = match state.requested_size(r, "maxResults", 100, 500) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let users: Vec<&GUser> = t.users.iter().collect();
    let (page, next) = match state.page(r, "directory", &users, size, false) {
        Ok(p) => p,
        Err(e) => return e,
    };
    bump(&state.c.directory_pages);
    let mut body = json!({
        "kind": "admin#directory#users",
        "etag": etag(&format!("users{}", page.len())),
        "users": page.iter().map(|u| user_json(state, u)).collect::<Vec<_>>(),
    });
    if let Some(n) = next {
        body["nextPageToken"] = json!(n);
    }
    json_resp(200, &body)
}
