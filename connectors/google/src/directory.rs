//! The users to export, from the Admin SDK Directory API (`users.list` by domain, or
//! `users.get` for each name given), read as the administrator.

use ferry_core::{Error, Result};
use serde_json::{json, Value};

use crate::api::Api;
use crate::{fail_listing, Inner, Sender, UserSelection};

/// A user of the domain.
#[derive(Debug, Clone)]
pub struct User {
    /// Primary e-mail address (what the service account impersonates).
    pub email: String,
    /// The Directory's immutable id.
    pub id: String,
    /// Suspended users are exported too, and marked.
    pub suspended: bool,
}

fn user_of(v: &Value) -> Option<User> {
    Some(User {
        email: v["primaryEmail"].as_str()?.to_string(),
        id: v["id"].as_str().unwrap_or_default().to_string(),
        suspended: v["suspended"].as_bool().unwrap_or(false),
    })
}

/// Reads one user of the domain: the admin may use the Directory, and the domain exists.
pub(crate) async fn check(inner: &Inner) -> Result<()> {
    let o = &inner.options;
    let url = format!(
        "{}/users?domain={}&maxResults=1",
        inner.google.endpoints.directory,
        ferry_http::query_value(&o.domain)
    );
    inner
        .google
        .get_json(&url, &o.admin, Api::Directory, "reading the domain's users")
        .await
        .map(|_| ())
        .map_err(|e| {
            if e.error.is_fatal() {
                e.error
            } else {
                Error::fatal(format!(
                    "{}; check the domain (google:{}), --admin and --google-endpoint",
                    e.error.message(),
                    o.domain
                ))
            }
        })
}

/// The users to export, in a stable order (by address); recorded in run.json.
pub(crate) async fn resolve(inner: &Inner, tx: &Sender) -> Result<Vec<User>> {
    let o = &inner.options;
    let mut users = Vec::new();
    match &o.users {
        UserSelection::All => {
            let url = format!(
                "{}/users?domain={}&maxResults=500&orderBy=email&projection=basic",
                inner.google.endpoints.directory,
                ferry_http::query_value(&o.domain)
            );
            let mut pages =
                inner
                    .google
                    .pages(url, &o.admin, Api::Directory, "listing the domain's users");
            // Without the list of users nothing can be exported: a failure here stops the run.
            while let Some(page) = pages.next_page().await.map_err(|e| {
                if e.error.is_fatal() {
                    e.error
                } else {
                    Error::fatal(e.error.message().to_string())
                }
            })? {
                if let Some(list) = page["users"].as_array() {
                    users.extend(list.iter().filter_map(user_of));
                }
            }
        }
        UserSelection::List(names) => {
            for name in names {
                let url = format!(
                    "{}/users/{}?projection=basic",
                    inner.google.endpoints.directory,
                    ferry_http::segment(name)
                );
                match inner
                    .google
                    .get_json(&url, &o.admin, Api::Directory, "reading a user")
                    .await
                {
                    Ok(v) => match user_of(&v) {
                        Some(u) => users.push(u),
                        None => {
                            fail_listing(
                                tx,
                                &format!("google:{name}"),
                                Error::permanent("the Directory's answer has no primaryEmail"),
                            )
                            .await?
                        }
                    },
                    Err(e) if e.status == Some(404) => {
                        fail_listing(
                            tx,
                            &format!("google:{name}"),
                            Error::permanent(format!(
                                "{name} is not a user of the domain {} (check --users)",
                                o.domain
                            )),
                        )
                        .await?
                    }
                    Err(e) => fail_listing(tx, &format!("google:{name}"), e.error).await?,
                }
            }
        }
    }
    users.sort_by(|a, b| a.email.cmp(&b.email));
    users.dedup_by(|a, b| a.email.eq_ignore_ascii_case(&b.email));
    let suspended = users.iter().filter(|u| u.suspended).count();
    if suspended > 0 {
        inner.note(format!(
            "{suspended} suspended user(s) included and marked (suspended: true in items.jsonl and run.json)"
        ));
    }
    inner.state.lock().expect("state").users = users
        .iter()
        .map(|u| json!({"email": u.email, "id": u.id, "suspended": u.suspended}))
        .collect();
    Ok(users)
}
