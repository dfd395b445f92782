//! The Google Workspace sandbox against the behaviour Google documents, over plain HTTP.

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use ferry_sandbox::google::{SCOPE_DIRECTORY, SCOPE_DRIVE, SCOPE_GMAIL};
use ferry_sandbox::{GoogleConfig, GoogleFaults, GoogleServer, GOOGLE_SA_CLIENT_EMAIL};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

type C = Client<HttpConnector, Full<Bytes>>;

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, k: &str) -> Option<&str> {
        self.headers.get(k).and_then(|v| v.to_str().ok())
    }
    fn reason(&self) -> String {
        self.json()["error"]["errors"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

async fn send(c: &C, method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = c
        .request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A signed JWT grant, as a service-account client makes it.
fn jwt(s: &GoogleServer, claims: Value, tamper: bool) -> String {
    let key: Value = serde_json::from_str(&s.service_account_key_json()).unwrap();
    let pem = key["private_key"].as_str().unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed = format!(
        "{}.{}",
        e.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        e.encode(claims.to_string())
    );
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut sig,
    )
    .unwrap();
    if tamper {
        sig[10] ^= 1;
    }
    format!("{signed}.{}", e.encode(sig))
}

fn claims(s: &GoogleServer, sub: &str, scope: &str) -> Value {
    json!({"iss": GOOGLE_SA_CLIENT_EMAIL, "sub": sub, "scope": scope, "aud": s.token_uri(),
           "iat": now(), "exp": now() + 3600})
}

async fn grant(c: &C, s: &GoogleServer, jwt: &str) -> Resp {
    let body =
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}");
    send(
        c,
        "POST",
        &s.token_uri(),
        &[("content-type", "application/x-www-form-urlencoded")],
        &body,
    )
    .await
}

struct G {
    c: C,
    s: GoogleServer,
}

impl G {
    async fn new(cfg: GoogleConfig) -> G {
        G {
            c: Client::builder(TokioExecutor::new()).build_http(),
            s: GoogleServer::start(cfg, 0).await.unwrap(),
        }
    }

    async fn token(&self, sub: &str, scope: &str) -> String {
        let r = grant(
            &self.c,
            &self.s,
            &jwt(&self.s, claims(&self.s, sub, scope), false),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 3599);
        v["access_token"].as_str().unwrap().to_string()
    }

    async fn get(&self, token: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {token}");
        let mut h = vec![("authorization", auth.as_str())];
        h.extend_from_slice(extra);
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.s.endpoint())
        };
        send(&self.c, "GET", &url, &h, "").await
    }

    /// Follows `nextPageToken`; (items under `key`, page lengths).
    async fn all(&self, token: &str, path: &str, key: &str) -> (Vec<Value>, Vec<usize>) {
        let mut items = Vec::new();
        let mut pages = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = match &page_token {
                None => path.to_string(),
                Some(t) => format!("{path}{sep}pageToken={t}"),
            };
            let r = self.get(token, &url, &[]).await;
            assert_eq!(r.status, 200, "{url}: {}", String::from_utf8_lossy(&r.body));
            let v = r.json();
            let page = v[key].as_array().cloned().unwrap_or_default();
            pages.push(page.len());
            items.extend(page);
            match v["nextPageToken"].as_str() {
                Some(t) => page_token = Some(t.to_string()),
                None => return (items, pages),
            }
        }
    }
}

fn user(g: &G, i: usize) -> String {
    g.s.truth()
        .users
        .iter()
        .filter(|u| !u.suspended)
        .nth(i)
        .unwrap()
        .email
        .clone()
}

#[tokio::test]
async fn token_endpoint_follows_the_service_account_flow() {
    let g = G::new(GoogleConfig {
        granted_scopes: vec![SCOPE_GMAIL.into(), SCOPE_DIRECTORY.into()],
        ..Default::default()
    })
    .await;
    let key: Value = serde_json::from_str(&g.s.service_account_key_json()).unwrap();
    assert_eq!(key["type"], "service_account");
    assert_eq!(key["client_email"], GOOGLE_SA_CLIENT_EMAIL);
    assert_eq!(key["token_uri"], g.s.token_uri());
    assert!(key["private_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let admin = g.s.admin_email();
    assert_eq!(admin, "admin@example.no");
    let t = g.token(&admin, SCOPE_GMAIL).await;
    assert!(t.starts_with("ya29."));

    // Bad signature.
    let r = grant(
        &g.c,
        &g.s,
        &jwt(&g.s, claims(&g.s, &admin, SCOPE_GMAIL), true),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(r.json()["error_description"], "Invalid JWT Signature.");
    // A scope delegation does not grant.
    let r = grant(
        &g.c,
        &g.s,
        &jwt(&g.s, claims(&g.s, &admin, SCOPE_DRIVE), false),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized_client");
    // Unknown subject.
    let r = grant(
        &g.c,
        &g.s,
        &jwt(&g.s, claims(&g.s, "nobody@example.no", SCOPE_GMAIL), false),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error_description"], "Invalid email or User ID");
    // Unknown scope, wrong audience, too long a lifetime, wrong grant type.
    let r = grant(
        &g.c,
        &g.s,
        &jwt(&g.s, claims(&g.s, &admin, "https://example.com/x"), false),
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_scope");
    let mut c = claims(&g.s, &admin, SCOPE_GMAIL);
    c["aud"] = json!("https://oauth2.googleapis.com/token");
    let r = grant(&g.c, &g.s, &jwt(&g.s, c, false)).await;
    assert_eq!(r.json()["error_description"], "Invalid audience");
    let mut c = claims(&g.s, &admin, SCOPE_GMAIL);
    c["exp"] = json!(now() + 7200);
    let r = grant(&g.c, &g.s, &jwt(&g.s, c, false)).await;
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("short-lived"));
    let r = send(
        &g.c,
        "POST",
        &g.s.token_uri(),
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");

    // No token, a made-up token, a token without the API's scope.
    let r = send(
        &g.c,
        "GET",
        &format!("{}/gmail/v1/users/me/profile", g.s.endpoint()),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.reason(), "authError");
    assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    let r = g
        .get("ya29.made-up", "/gmail/v1/users/me/profile", &[])
        .await;
    assert_eq!(r.status, 401);
    let r = g.get(&t, "/drive/v3/files", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.reason(), "insufficientPermissions");
    let st = g.s.stats();
    assert_eq!(st.tokens_issued, 1);
    assert!(st.token_errors >= 6);
    assert_eq!(st.unauthorized, 2);
}

#[tokio::test]
async fn directory_pages_and_admin_only() {
    let g = G::new(GoogleConfig {
        users: 5,
        page_size: 2,
        ..Default::default()
    })
    .await;
    let admin = g.s.admin_email();
    let t = g.token(&admin, SCOPE_DIRECTORY).await;
    let (users, pages) = g
        .all(
            &t,
            "/admin/directory/v1/users?customer=my_customer&maxResults=500&orderBy=email",
            "users",
        )
        .await;
    assert_eq!(users.len(), 6);
    assert!(
        pages.len() >= 3 && pages.iter().all(|&n| n <= 2),
        "{pages:?}"
    );
    let emails: Vec<&str> = users
        .iter()
        .map(|u| u["primaryEmail"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = g.s.truth().users.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(emails, want);
    let suspended: Vec<&Value> = users.iter().filter(|u| u["suspended"] == true).collect();
    assert_eq!(suspended.len(), 1);
    assert_eq!(users[0]["isAdmin"], true);
    assert_eq!(users[0]["kind"], "admin#directory#user");
    assert_eq!(users[0]["id"].as_str().unwrap().len(), 21);
    let r = g
        .get(&t, "/admin/directory/v1/users?domain=other.example", &[])
        .await;
    assert_eq!(r.status, 400);
    let r = g
        .get(
            &t,
            &format!("/admin/directory/v1/users/{}", user(&g, 1)),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["primaryEmail"], user(&g, 1));
    let t1 = g.token(&user(&g, 1), SCOPE_DIRECTORY).await;
    let r = g
        .get(&t1, "/admin/directory/v1/users?customer=my_customer", &[])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"]["message"],
        "Not Authorized to access this resource/api"
    );
}

#[tokio::test]
async fn gmail_lists_gets_and_follows_history() {
    let g = G::new(GoogleConfig {
        page_size: 7,
        ..Default::default()
    })
    .await;
    let me = user(&g, 1);
    let t = g.token(&me, SCOPE_GMAIL).await;
    let truth = g.s.truth().clone();
    let all = truth.messages_of(&me);
    assert_eq!(all.len(), 24);

    let (with, pages) = g
        .all(
            &t,
            "/gmail/v1/users/me/messages?maxResults=500&includeSpamTrash=true",
            "messages",
        )
        .await;
    assert_eq!(with.len(), 24);
    assert!(pages.iter().all(|&n| n <= 7));
    assert!(
        pages[..pages.len() - 1].iter().any(|&n| n < 7),
        "a short page while more follow: {pages:?}"
    );
    let ids: Vec<&str> = with.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = all.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, want, "newest first, like the truth");
    let (without, _) = g.all(&t, "/gmail/v1/users/me/messages", "messages").await;
    assert_eq!(without.len(), 20);
    let (spam, _) = g
        .all(&t, "/gmail/v1/users/me/messages?labelIds=SPAM", "messages")
        .await;
    assert_eq!(spam.len(), 2);
    let (anywhere, _) = g
        .all(
            &t,
            "/gmail/v1/users/me/messages?q=in%3Aanywhere",
            "messages",
        )
        .await;
    assert_eq!(anywhere.len(), 24);
    let (both, _) = g
        .all(
            &t,
            "/gmail/v1/users/me/messages?labelIds=INBOX&labelIds=Label_2",
            "messages",
        )
        .await;
    let n = all
        .iter()
        .filter(|m| {
            m.label_ids.contains(&"INBOX".to_string())
                && m.label_ids.contains(&"Label_2".to_string())
        })
        .count();
    assert!(n > 0);
    assert_eq!(both.len(), n);
    let r = g
        .get(
            &t,
            "/gmail/v1/users/me/messages?q=label%3Anothing-here",
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"resultSizeEstimate": 0}));
    let threads: HashSet<&str> = all.iter().map(|m| m.thread_id.as_str()).collect();
    assert!(threads.len() < all.len(), "some messages share a thread");

    // Raw bytes: padded base64url of exactly the truth's bytes.
    for m in all.iter().take(8) {
        let r = g
            .get(
                &t,
                &format!("/gmail/v1/users/me/messages/{}?format=raw", m.id),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        let v = r.json();
        let raw = v["raw"].as_str().unwrap();
        assert_eq!(raw.len() % 4, 0, "padded");
        let bytes = base64::engine::general_purpose::URL_SAFE
            .decode(raw)
            .unwrap();
        assert_eq!(bytes, m.raw());
        assert_eq!(v["internalDate"], m.internal_date_ms.to_string());
        assert_eq!(v["historyId"], m.history_id.to_string());
        assert_eq!(v["sizeEstimate"], m.size_estimate);
    }
    assert!(
        all.iter().any(|m| m.size_estimate > 100_000),
        "a few large messages"
    );
    let r = g
        .get(
            &t,
            &format!(
                "/gmail/v1/users/me/messages/{}?format=metadata&metadataHeaders=Subject",
                all[0].id
            ),
            &[],
        )
        .await;
    let hs = r.json()["payload"]["headers"].as_array().unwrap().clone();
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0]["name"], "Subject");
    let r = g
        .get(
            &t,
            "/gmail/v1/users/me/messages/0123456789abcdef?format=raw",
            &[],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["message"],
        "Requested entity was not found."
    );

    // Labels and profile.
    let r = g.get(&t, "/gmail/v1/users/me/labels", &[]).await;
    let labels = r.json()["labels"].as_array().unwrap().clone();
    let names: Vec<&str> = labels.iter().map(|l| l["name"].as_str().unwrap()).collect();
    for n in ["INBOX", "SPAM", "TRASH", "Projects/2024", "Økonomi"] {
        assert!(names.contains(&n), "{n}");
    }
    let r = g.get(&t, "/gmail/v1/users/me/labels/INBOX", &[]).await;
    let inbox = all
        .iter()
        .filter(|m| m.label_ids.contains(&"INBOX".to_string()))
        .count();
    assert_eq!(r.json()["messagesTotal"], inbox);
    let r = g
        .get(&t, &format!("/gmail/v1/users/{me}/profile"), &[])
        .await;
    let p = r.json();
    assert_eq!(p["messagesTotal"], 24);
    assert_eq!(p["threadsTotal"], threads.len());
    let start: u64 = p["historyId"].as_str().unwrap().parse().unwrap();

    // Another user's mailbox, the suspended user.
    let r = g
        .get(&t, &format!("/gmail/v1/users/{}/profile", user(&g, 2)), &[])
        .await;
    assert_eq!(r.status, 403);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Delegation denied"));
    let suspended =
        g.s.truth()
            .users
            .iter()
            .find(|u| u.suspended)
            .unwrap()
            .email
            .clone();
    let ts = g.token(&suspended, SCOPE_GMAIL).await;
    let r = g.get(&ts, "/gmail/v1/users/me/profile", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.reason(), "failedPrecondition");

    // History after changes.
    let added =
        g.s.add_message(&me, &["INBOX", "UNREAD"], "Ny melding")
            .unwrap();
    assert!(g.s.delete_message(&me, &all[3].id));
    let r = g
        .get(
            &t,
            &format!("/gmail/v1/users/me/history?startHistoryId={start}"),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let h = r.json();
    let recs = h["history"].as_array().unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["messagesAdded"][0]["message"]["id"], added.id);
    assert_eq!(recs[1]["messagesDeleted"][0]["message"]["id"], all[3].id);
    assert_eq!(h["historyId"], (start + 2).to_string());
    let cur = g.s.current_truth();
    assert_eq!(cur.messages_of(&me).len(), 24);
    assert_eq!(cur.messages_of(&me)[0].id, added.id);
    let r = g
        .get(
            &t,
            &format!("/gmail/v1/users/me/messages/{}?format=raw", added.id),
            &[],
        )
        .await;
    let raw = r.json()["raw"].as_str().unwrap().to_string();
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE
            .decode(raw)
            .unwrap(),
        added.raw()
    );
    g.s.invalidate_history();
    let r = g
        .get(
            &t,
            &format!("/gmail/v1/users/me/history?startHistoryId={start}"),
            &[],
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(g.s.stats().messages_get >= 9);
}

fn file_by_name<'a>(
    t: &'a ferry_sandbox::GoogleTruth,
    owner: &str,
    name: &str,
) -> &'a ferry_sandbox::google::GFile {
    t.files_of_owner(owner)
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name}"))
}

#[tokio::test]
async fn drive_lists_with_fields_q_and_corpora() {
    let g = G::new(GoogleConfig {
        page_size: 7,
        ..Default::default()
    })
    .await;
    let me = user(&g, 1);
    let t = g.token(&me, SCOPE_DRIVE).await;
    let truth = g.s.truth().clone();

    // No fields: kind, id, name, mimeType only.
    let r = g.get(&t, "/drive/v3/files?pageSize=3", &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["kind"], "drive#fileList");
    assert!(v["nextPageToken"].is_string());
    for f in v["files"].as_array().unwrap() {
        let keys: HashSet<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, HashSet::from(["kind", "id", "name", "mimeType"]));
    }
    let fields = "nextPageToken,files(id,name,mimeType,size,md5Checksum,sha256Checksum,parents,owners,ownedByMe,trashed,exportLinks,shortcutDetails)";
    let (files, pages) = g
        .all(
            &t,
            &format!("/drive/v3/files?pageSize=1000&fields={fields}"),
            "files",
        )
        .await;
    assert!(
        pages.contains(&0) && *pages.last().unwrap() > 0,
        "an empty page while more follow: {pages:?}"
    );
    let mine = truth.files_of_owner(&me);
    let shared_in: Vec<_> = truth
        .files
        .iter()
        .filter(|f| f.shared_with.contains(&me))
        .collect();
    assert_eq!(shared_in.len(), 1);
    assert_eq!(files.len(), mine.len() + 1);
    for f in &files {
        let tf = truth.file(f["id"].as_str().unwrap()).unwrap();
        assert!(f.get("kind").is_none());
        assert_eq!(f["id"].as_str().unwrap().len(), 33);
        match tf.size {
            Some(n) => {
                assert_eq!(f["size"], n.to_string(), "sizes are strings");
                assert_eq!(f["md5Checksum"].as_str(), tf.md5.as_deref());
                assert_eq!(f["sha256Checksum"].as_str(), tf.sha256.as_deref());
            }
            None => {
                assert!(f.get("size").is_none() && f.get("md5Checksum").is_none());
            }
        }
        assert_eq!(f["trashed"], tf.trashed);
        if tf.owner.as_deref() == Some(me.as_str()) {
            assert_eq!(f["ownedByMe"], true);
            assert_eq!(f["parents"], json!(tf.parents));
        } else {
            assert_eq!(f["ownedByMe"], false);
            assert!(
                f.get("parents").is_none(),
                "shared-with-me items show no parents"
            );
            assert_eq!(f["owners"][0]["emailAddress"].as_str(), tf.owner.as_deref());
        }
        assert_eq!(
            f.get("exportLinks").is_some(),
            !tf.export_formats().is_empty()
        );
    }
    assert!(files
        .iter()
        .any(|f| f["shortcutDetails"]["targetId"].is_string()));
    assert!(
        mine.iter().any(|f| f.size.is_some() && f.sha256.is_none())
            || mine.iter().all(|f| f.size.is_none() || f.sha256.is_some())
    );

    // q.
    let root = &truth.user(&me).unwrap().root_folder_id;
    let (top, _) = g
        .all(&t, "/drive/v3/files?q=%27root%27%20in%20parents%20and%20trashed%20%3D%20false&fields=nextPageToken,files(id,parents,trashed)", "files")
        .await;
    let want = mine
        .iter()
        .filter(|f| f.parents == [root.clone()] && !f.trashed)
        .count();
    assert_eq!(top.len(), want);
    let (folders, _) = g
        .all(&t, "/drive/v3/files?q=mimeType%20%3D%20%27application%2Fvnd.google-apps.folder%27%20and%20%27me%27%20in%20owners", "files")
        .await;
    assert_eq!(folders.len(), mine.iter().filter(|f| f.is_folder()).count());
    let r = g
        .get(
            &t,
            "/drive/v3/files?q=modifiedTime%20%3E%20%272024%27%20or%20x",
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["errors"][0]["location"], "q");
    let r = g
        .get(&t, "/drive/v3/files?fields=files(id,bogus)", &[])
        .await;
    assert_eq!(r.status, 400);

    // Shared drives.
    let drive = &truth.shared_drives[0];
    assert!(drive.members.contains(&me));
    let r = g
        .get(
            &t,
            &format!("/drive/v3/files?corpora=drive&driveId={}", drive.id),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    let (dfiles, _) = g
        .all(&t, &format!("/drive/v3/files?corpora=drive&driveId={}&includeItemsFromAllDrives=true&supportsAllDrives=true&fields=nextPageToken,files(id,driveId,owners)", drive.id), "files")
        .await;
    assert_eq!(dfiles.len(), truth.drive_files(&drive.id).len());
    assert!(dfiles
        .iter()
        .all(|f| f["driveId"] == drive.id.as_str() && f.get("owners").is_none()));
    let id = dfiles[0]["id"].as_str().unwrap();
    let r = g.get(&t, &format!("/drive/v3/files/{id}"), &[]).await;
    assert_eq!(r.status, 404);
    let r = g
        .get(
            &t,
            &format!("/drive/v3/files/{id}?supportsAllDrives=true"),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let orphan = truth.shared_drives.last().unwrap();
    let r = g.get(&t, &format!("/drive/v3/files?corpora=drive&driveId={}&includeItemsFromAllDrives=true&supportsAllDrives=true", orphan.id), &[]).await;
    assert_eq!(r.status, 404);
    let r = g.get(&t, "/drive/v3/drives", &[]).await;
    assert_eq!(
        r.json()["drives"].as_array().unwrap().len(),
        truth.shared_drives.len() - 1
    );
    let ta = g.token(&g.s.admin_email(), SCOPE_DRIVE).await;
    let r = g
        .get(
            &ta,
            "/drive/v3/drives?useDomainAdminAccess=true&pageSize=100",
            &[],
        )
        .await;
    assert_eq!(
        r.json()["drives"].as_array().unwrap().len(),
        truth.shared_drives.len()
    );
    let r = g.get(&t, "/drive/v3/about", &[]).await;
    assert_eq!(r.status, 400);
    let r = g.get(&t, "/drive/v3/about?fields=user", &[]).await;
    assert_eq!(r.json()["user"]["emailAddress"], me);
}

#[tokio::test]
async fn drive_downloads_exports_and_changes() {
    let g = G::new(GoogleConfig {
        large_export_bytes: 10 * 1024 * 1024 + 512,
        ..Default::default()
    })
    .await;
    let admin = g.s.admin_email();
    let t = g.token(&admin, SCOPE_DRIVE).await;
    let truth = g.s.truth().clone();

    let report = file_by_name(&truth, &admin, "report.pdf");
    let r = g
        .get(&t, &format!("/drive/v3/files/{}?alt=media", report.id), &[])
        .await;
    assert_eq!(r.status, 200);
    let mut want = Vec::new();
    report.content().read_to_end(&mut want).unwrap();
    assert_eq!(r.body.as_ref(), &want[..]);
    assert_eq!(r.header("content-length").unwrap(), want.len().to_string());
    let r = g
        .get(
            &t,
            &format!("/drive/v3/files/{}?alt=media", report.id),
            &[("range", "bytes=100-199")],
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.as_ref(), &want[100..200]);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes 100-199/{}", want.len())
    );
    let empty = file_by_name(&truth, &admin, "empty.txt");
    let r = g
        .get(&t, &format!("/drive/v3/files/{}?alt=media", empty.id), &[])
        .await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    let r = g
        .get(
            &t,
            &format!("/drive/v3/files/{}?alt=media", empty.id),
            &[("range", "bytes=0-")],
        )
        .await;
    assert_eq!(r.status, 416);
    let doc = file_by_name(&truth, &admin, "Meeting notes");
    let r = g
        .get(&t, &format!("/drive/v3/files/{}?alt=media", doc.id), &[])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.reason(), "fileNotDownloadable");

    // Export: files.export and the exportLinks URL give the truth's bytes.
    let odt = "application/vnd.oasis.opendocument.text";
    let r = g
        .get(
            &t,
            &format!(
                "/drive/v3/files/{}/export?mimeType={}",
                doc.id,
                odt.replace('/', "%2F")
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let bytes = truth.export_bytes(&doc.id, odt).unwrap();
    assert_eq!(r.body.as_ref(), &bytes[..]);
    assert_eq!(&bytes[..4], b"PK\x03\x04");
    assert_eq!(&bytes[30..38], b"mimetype");
    assert_eq!(&bytes[38..38 + odt.len()], odt.as_bytes());
    assert!(bytes.len() > 2_000 && bytes.len() < 60_000);
    let r = g
        .get(
            &t,
            &format!("/drive/v3/files/{}/export?mimeType=image%2Fpng", doc.id),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    let r = g
        .get(
            &t,
            &format!(
                "/drive/v3/files/{}/export?mimeType=application%2Fpdf",
                report.id
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.reason(), "fileNotExportable");
    let pdf = truth.export_bytes(&doc.id, "application/pdf").unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4") && pdf.ends_with(b"%%EOF\n"));
    let big = file_by_name(&truth, &admin, "Big report");
    let r = g
        .get(
            &t,
            &format!(
                "/drive/v3/files/{}/export?mimeType=application%2Fpdf",
                big.id
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.reason(), "exportSizeLimitExceeded");
    let r = g
        .get(
            &t,
            &format!("/drive/v3/files/{}?fields=exportLinks", big.id),
            &[],
        )
        .await;
    let link = r.json()["exportLinks"]["application/pdf"]
        .as_str()
        .unwrap()
        .to_string();
    let r = g.get(&t, &link, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, 10 * 1024 * 1024 + 512);
    assert!(r.body.starts_with(b"%PDF-1.4"));
    let r = send(&g.c, "GET", &link, &[], "").await;
    assert_eq!(r.status, 401, "exportLinks need the token");

    // Changes.
    let r = g.get(&t, "/drive/v3/changes/startPageToken", &[]).await;
    let start = r.json()["startPageToken"].as_str().unwrap().to_string();
    assert!(g.s.modify_file(&report.id));
    let added = g.s.add_file(&admin, None, "new.bin", 1234).unwrap();
    assert!(g.s.delete_file(&empty.id));
    let r = g
        .get(
            &t,
            &format!("/drive/v3/changes?pageToken={start}&fields=*"),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let ch = v["changes"].as_array().unwrap();
    assert_eq!(ch.len(), 3);
    assert_eq!(ch[0]["fileId"], report.id);
    assert_eq!(ch[0]["file"]["version"], (report.version + 1).to_string());
    assert_ne!(ch[0]["file"]["md5Checksum"].as_str(), report.md5.as_deref());
    assert_eq!(ch[1]["file"]["size"], "1234");
    assert_eq!(ch[2]["removed"], true);
    assert!(ch[2].get("file").is_none());
    assert!(v["newStartPageToken"].is_string());
    let cur = g.s.current_truth();
    let modified = cur.file(&report.id).unwrap();
    let r = g
        .get(&t, &format!("/drive/v3/files/{}?alt=media", report.id), &[])
        .await;
    let mut now_bytes = Vec::new();
    modified.content().read_to_end(&mut now_bytes).unwrap();
    assert_eq!(r.body.as_ref(), &now_bytes[..]);
    assert_ne!(now_bytes, want);
    assert!(cur.file(&added.id).is_some() && cur.file(&empty.id).is_none());
    let r = g.get(&t, "/drive/v3/changes?pageToken=bogus", &[]).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn faults_throttle_revoke_and_limit_concurrency() {
    let g = G::new(GoogleConfig {
        faults: GoogleFaults {
            throttle_every: 3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let me = user(&g, 1);
    let t = g.token(&me, SCOPE_GMAIL).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let r = g.get(&t, "/gmail/v1/users/me/profile", &[]).await;
        seen.push((r.status, r.header("retry-after").map(str::to_string)));
        if r.status == 403 {
            assert_eq!(r.reason(), "userRateLimitExceeded");
            assert_eq!(r.json()["error"]["errors"][0]["domain"], "usageLimits");
        }
        if r.status == 429 {
            assert_eq!(r.reason(), "rateLimitExceeded");
        }
    }
    assert_eq!(seen[2], (403, None));
    assert_eq!(seen[5], (429, Some("1".into())));
    assert_eq!(g.s.stats().throttled, 2);

    let g = G::new(GoogleConfig {
        faults: GoogleFaults {
            expire_tokens_after_requests: 2,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let t = g.token(&me, SCOPE_GMAIL).await;
    assert_eq!(
        g.get(&t, "/gmail/v1/users/me/profile", &[]).await.status,
        200
    );
    assert_eq!(
        g.get(&t, "/gmail/v1/users/me/profile", &[]).await.status,
        200
    );
    assert_eq!(
        g.get(&t, "/gmail/v1/users/me/profile", &[]).await.status,
        401
    );

    let g = G::new(GoogleConfig {
        user_concurrency: 2,
        api_latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let t = g.token(&me, &format!("{SCOPE_GMAIL} {SCOPE_DRIVE}")).await;
    let futs = (0..5).map(|i| {
        let path = if i % 2 == 0 {
            "/gmail/v1/users/me/profile"
        } else {
            "/drive/v3/files"
        };
        g.get(&t, path, &[])
    });
    let rs = futures_join(futs).await;
    let limited: Vec<&Resp> = rs.iter().filter(|r| r.status == 429).collect();
    assert_eq!(rs.iter().filter(|r| r.status == 200).count(), 2);
    assert_eq!(limited.len(), 3);
    assert_eq!(
        limited[0].json()["error"]["message"],
        "Too many concurrent requests for user."
    );
    let st = g.s.stats();
    assert_eq!(st.max_concurrent_per_user, 2);
    assert_eq!(st.concurrency_rejections, 3);
    // Slots are released once bodies are sent.
    assert_eq!(
        g.get(&t, "/gmail/v1/users/me/profile", &[]).await.status,
        200
    );
    let r = send(
        &g.c,
        "GET",
        &format!("{}/_sandbox/stats", g.s.endpoint()),
        &[],
        "",
    )
    .await;
    let v = r.json();
    assert_eq!(v["stats"]["concurrency_rejections"], 3);
    assert_eq!(v["domain"]["active_users"], 3);
}

/// Runs futures concurrently on the current task.
async fn futures_join<F: std::future::Future<Output = Resp>>(
    futs: impl Iterator<Item = F>,
) -> Vec<Resp> {
    let handles: Vec<_> = futs.map(Box::pin).collect();
    let mut out = Vec::new();
    let mut pending: Vec<_> = handles.into_iter().map(Some).collect();
    let mut results: Vec<Option<Resp>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => {
                        results[i] = Some(r);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().map(Option::unwrap));
    out
}

#[tokio::test]
async fn same_seed_same_domain_with_hostile_names() {
    let a = GoogleServer::start(GoogleConfig::default(), 0)
        .await
        .unwrap();
    let b = GoogleServer::start(GoogleConfig::default(), 0)
        .await
        .unwrap();
    let (ta, tb) = (a.truth(), b.truth());
    let ids =
        |t: &ferry_sandbox::GoogleTruth| t.files.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(ta), ids(tb));
    let admin = a.admin_email();
    assert_eq!(
        ta.messages_of(&admin)[0].raw(),
        tb.messages_of(&admin)[0].raw()
    );
    let doc = file_by_name(ta, &admin, "Meeting notes");
    assert_eq!(
        ta.export_bytes(&doc.id, "application/pdf"),
        tb.export_bytes(&doc.id, "application/pdf")
    );
    let names: Vec<&str> = ta
        .files_of_owner(&admin)
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    for n in [
        "Q1/Q2 report.pdf",
        "../escape.txt",
        "Cafe\u{301}.txt",
        "Caf\u{e9}.txt",
        "bell\u{7}name.txt",
    ] {
        assert!(names.contains(&n), "{n:?}");
    }
    assert_eq!(names.iter().filter(|n| **n == "notes.txt").count(), 2);
    let mine = ta.files_of_owner(&admin);
    for kind in [
        ferry_sandbox::google::DOCUMENT,
        ferry_sandbox::google::SPREADSHEET,
        ferry_sandbox::google::PRESENTATION,
        ferry_sandbox::google::DRAWING,
        ferry_sandbox::google::FORM,
        ferry_sandbox::google::SHORTCUT,
    ] {
        assert!(mine.iter().any(|f| f.mime_type == kind), "{kind}");
    }
    assert!(mine.iter().any(|f| f.size == Some(0)));
    assert!(mine.iter().any(|f| f.trashed));
    assert!(mine.iter().any(|f| f.path.len() == 3 && f.is_folder()));
    let label_names: Vec<&str> = ta
        .mailbox(&admin)
        .unwrap()
        .labels
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert!(label_names.contains(&"Økonomi") && label_names.contains(&"Receipts / 2023 a/b"));
}

#[tokio::test]
async fn the_changes_feed_pages_masks_and_follows_renames_moves_trash_and_shared_drives() {
    let g = G::new(GoogleConfig {
        page_size: 2,
        ..Default::default()
    })
    .await;
    let truth = g.s.truth().clone();
    let me = user(&g, 1);
    let t = g.token(&me, SCOPE_DRIVE).await;
    let start = g
        .get(&t, "/drive/v3/changes/startPageToken", &[])
        .await
        .json()["startPageToken"]
        .as_str()
        .unwrap()
        .to_string();
    let docs = file_by_name(&truth, &me, "Documents").clone();
    let projects = file_by_name(&truth, &me, "Projects").clone();
    let csv = file_by_name(&truth, &me, "data.csv").clone();
    let photo = file_by_name(&truth, &me, "photo.jpg").clone();
    let report = file_by_name(&truth, &me, "report.pdf").clone();
    assert!(g.s.rename_file(&csv.id, "data (2).csv"));
    assert!(g.s.move_file(&photo.id, Some(&docs.id)));
    assert!(g.s.trash_file(&report.id));
    let folder = g.s.add_folder(&me, Some(&projects.id), "New").unwrap();
    assert!(folder
        .path
        .ends_with(&["Projects".to_string(), "New".to_string()]));
    assert!(g.s.rename_file(&projects.id, "Projects (old)"));
    // Not into a folder of its own, nor into another user's drive.
    assert!(!g.s.move_file(&docs.id, Some(&projects.id)));
    let other = user(&g, 2);
    let theirs = file_by_name(&truth, &other, "Documents").clone();
    assert!(!g.s.move_file(&csv.id, Some(&theirs.id)));

    // Pages of two, the new start token on the last page only; each file's latest change.
    let fields = "nextPageToken,newStartPageToken,changes(changeType,removed,fileId,file(id,name,parents,trashed,version,modifiedTime,headRevisionId))";
    let mut token = start.clone();
    let mut all = Vec::new();
    let mut pages = 0;
    let new_start = loop {
        let r = g
            .get(
                &t,
                &format!("/drive/v3/changes?pageToken={token}&pageSize=2&fields={fields}"),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        pages += 1;
        all.extend(v["changes"].as_array().unwrap().iter().cloned());
        match v["nextPageToken"].as_str() {
            Some(n) => {
                assert!(v.get("newStartPageToken").is_none());
                token = n.to_string();
            }
            None => break v["newStartPageToken"].as_str().unwrap().to_string(),
        }
    };
    assert_eq!(pages, 3);
    let ids: Vec<&str> = all.iter().map(|c| c["fileId"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [&csv.id, &photo.id, &report.id, &folder.id, &projects.id]
    );
    let by = |id: &str| all.iter().find(|c| c["fileId"] == id).unwrap()["file"].clone();
    let f = by(&csv.id);
    assert_eq!(f["name"], "data (2).csv");
    // A rename raises the version, not modifiedTime or the head revision.
    assert_eq!(f["version"], (csv.version + 1).to_string());
    assert_eq!(f["modifiedTime"], csv.modified_time.as_str());
    assert_eq!(
        f["headRevisionId"].as_str(),
        csv.head_revision_id.as_deref()
    );
    assert_eq!(by(&photo.id)["parents"], json!([docs.id]));
    assert_eq!(by(&report.id)["trashed"], true);
    assert_eq!(by(&projects.id)["name"], "Projects (old)");
    let cur = g.s.current_truth();
    assert_eq!(
        cur.file(&folder.id).unwrap().path,
        ["Documents", "Projects (old)", "New"]
    );
    assert_eq!(
        cur.file(&photo.id).unwrap().path,
        ["Documents", "photo.jpg"]
    );
    // Nothing since the new token; a field a change does not have is refused.
    let r = g
        .get(&t, &format!("/drive/v3/changes?pageToken={new_start}"), &[])
        .await;
    assert_eq!(r.json()["changes"], json!([]));
    let r = g
        .get(
            &t,
            &format!("/drive/v3/changes?pageToken={new_start}&fields=changes(bogus)"),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.reason(), "invalidParameter");

    // A shared drive's feed: its own changes only, with driveId and supportsAllDrives.
    let d = truth
        .shared_drives
        .iter()
        .find(|d| d.members.contains(&me))
        .unwrap()
        .clone();
    let q = format!(
        "driveId={}&includeItemsFromAllDrives=true&supportsAllDrives=true",
        d.id
    );
    let dstart = g
        .get(&t, &format!("/drive/v3/changes/startPageToken?{q}"), &[])
        .await
        .json()["startPageToken"]
        .as_str()
        .unwrap()
        .to_string();
    let added = g.s.add_file(&me, Some(&d.id), "team.bin", 10).unwrap();
    g.s.add_file(&me, None, "mine.bin", 10).unwrap();
    let r = g
        .get(
            &t,
            &format!("/drive/v3/changes?pageToken={dstart}&{q}&fields=*"),
            &[],
        )
        .await;
    let v = r.json();
    assert_eq!(v["changes"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["changes"][0]["fileId"], added.id);
    assert_eq!(v["changes"][0]["driveId"], d.id);
    let r = g
        .get(
            &t,
            &format!("/drive/v3/changes?pageToken={dstart}&driveId={}", d.id),
            &[],
        )
        .await;
    assert_eq!(
        r.status, 404,
        "a shared drive's feed needs supportsAllDrives"
    );
    // My Drive's feed leaves the shared drive's change out.
    let r = g
        .get(
            &t,
            &format!("/drive/v3/changes?pageToken={new_start}&fields=*"),
            &[],
        )
        .await;
    let names: Vec<String> = r.json()["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["file"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["mine.bin"]);

    // Tokens made unusable: 400 invalid at pageToken; a fresh token works.
    g.s.invalidate_change_tokens();
    let r = g
        .get(&t, &format!("/drive/v3/changes?pageToken={new_start}"), &[])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.reason(), "invalid");
    assert_eq!(r.json()["error"]["errors"][0]["location"], "pageToken");
    let fresh = g
        .get(&t, "/drive/v3/changes/startPageToken", &[])
        .await
        .json()["startPageToken"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(fresh, new_start);
    let r = g
        .get(&t, &format!("/drive/v3/changes?pageToken={fresh}"), &[])
        .await;
    assert_eq!(r.status, 200);
    assert!(g.s.stats().changes_pages >= 6);

    // A renamed shared drive is listed by its new name; a deleted one is gone with its files.
    assert!(g.s.rename_shared_drive(&d.id, "Renamed"));
    let r = g.get(&t, &format!("/drive/v3/drives/{}", d.id), &[]).await;
    assert_eq!(r.json()["name"], "Renamed");
    assert!(g.s.delete_shared_drive(&d.id));
    let r = g.get(&t, "/drive/v3/drives", &[]).await;
    assert!(!r.json()["drives"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["id"] == d.id.as_str()));
    let r = g.get(&t, &format!("/drive/v3/drives/{}", d.id), &[]).await;
    assert_eq!(r.status, 404);
    let r = g
        .get(&t, &format!("/drive/v3/changes?pageToken={fresh}&{q}"), &[])
        .await;
    assert_eq!(r.status, 404);
    let r = g
        .get(
            &t,
            &format!("/drive/v3/files/{}?supportsAllDrives=true", added.id),
            &[],
        )
        .await;
    assert_eq!(r.status, 404);
    assert!(g.s.current_truth().shared_drive(&d.id).is_none());
}
