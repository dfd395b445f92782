//! Resolves `--users` to accounts: every licensed user, a list, or a group's members.

use ferry_core::{Error, Result};
use serde_json::Value;

use crate::graph::{segment, Scope};
use crate::{Inner, UserSelection};

/// One account to read.
#[derive(Debug, Clone)]
pub struct User {
    /// The directory object id (a GUID): used in every request, since it never changes.
    pub id: String,
    /// The user principal name: the account's name in the archive.
    pub upn: String,
    /// The primary SMTP address, if any.
    pub mail: Option<String>,
}

const SELECT: &str =
    "$select=id,userPrincipalName,mail,displayName,accountEnabled,assignedLicenses";

fn user_of(v: &Value) -> Option<User> {
    Some(User {
        id: v["id"].as_str()?.to_string(),
        upn: v["userPrincipalName"]
            .as_str()
            .or(v["mail"].as_str())
            .or(v["id"].as_str())?
            .to_string(),
        mail: v["mail"].as_str().map(str::to_string),
    })
}

fn licensed(v: &Value) -> bool {
    v["assignedLicenses"]
        .as_array()
        .is_some_and(|l| !l.is_empty())
}

/// The users the run reads, in a stable order (by user principal name).
pub(crate) async fn resolve(inner: &Inner) -> Result<Vec<User>> {
    let root = inner.graph.root();
    let mut users = match &inner.options.users {
        UserSelection::All => {
            let url = format!("{root}/users?{SELECT}&$top=999");
            let (all, _) = inner
                .graph
                .collect(&url, Scope::Users, None, "listing the tenant's users")
                .await
                .map_err(|g| Error::fatal(g.error.message().to_string()))?;
            let mut out = Vec::new();
            let mut skipped = Vec::new();
            for v in &all {
                let Some(u) = user_of(v) else { continue };
                if licensed(v) {
                    out.push(u);
                } else {
                    skipped.push(u.upn);
                }
            }
            if !skipped.is_empty() {
                tracing::info!(
                    "{} users without a license are not read (no mailbox or OneDrive): {}",
                    skipped.len(),
                    skipped.join(", ")
                );
                inner.state.lock().expect("state").users_skipped = skipped;
            }
            out
        }
        UserSelection::List(names) => {
            let mut out = Vec::new();
            for name in names {
                let url = format!("{root}/users/{}?{SELECT}", segment(name));
                match inner
                    .graph
                    .get_json(&url, Scope::Users, None, &format!("looking up user {name}"))
                    .await
                {
                    Ok(v) => out.extend(user_of(&v)),
                    Err(g) if g.status == Some(404) => {
                        return Err(Error::fatal(format!(
                            "no user {name:?} in the tenant; check --users (user principal names, addresses or ids)"
                        )))
                    }
                    Err(g) => return Err(Error::fatal(g.error.message().to_string())),
                }
            }
            out
        }
        UserSelection::Group(id) => {
            let url = format!("{root}/groups/{}/members?{SELECT}&$top=999", segment(id));
            let (members, _) = inner
                .graph
                .collect(&url, Scope::Groups, None, &format!("listing the members of group {id}"))
                .await
                .map_err(|g| {
                    if g.status == Some(404) {
                        Error::fatal(format!("no group {id:?} in the tenant; check --users group:<id> (the group's object id)"))
                    } else {
                        Error::fatal(g.error.message().to_string())
                    }
                })?;
            members
                .iter()
                // Groups also hold devices, contacts and other groups.
                .filter(|v| {
                    v["@odata.type"]
                        .as_str()
                        .is_none_or(|t| t == "#microsoft.graph.user")
                })
                .filter_map(user_of)
                .collect()
        }
    };
    users.sort_by_key(|u| u.upn.to_lowercase());
    users.dedup_by(|a, b| a.id == b.id);
    Ok(users)
}
