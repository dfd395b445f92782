//! The Graph sandbox against the behaviour Microsoft documents, over plain HTTP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use ferry_sandbox::graph::{quick_xor_hash, QuickXorHash};
use ferry_sandbox::{GraphConfig, GraphFaults, GraphServer, GRAPH_CLIENT_ID, GRAPH_CLIENT_SECRET};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

type C = Client<HttpConnector, Full<Bytes>>;

fn client() -> C {
    Client::builder(TokioExecutor::new()).build_http()
}

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

async fn token(c: &C, s: &GraphServer) -> String {
    let body = format!(
        "grant_type=client_credentials&client_id={GRAPH_CLIENT_ID}&client_secret={GRAPH_CLIENT_SECRET}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"
    );
    let r = send(
        c,
        "POST",
        &s.token_url(),
        &[("content-type", "application/x-www-form-urlencoded")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

struct G {
    c: C,
    s: GraphServer,
    auth: String,
}

impl G {
    async fn new(cfg: GraphConfig) -> G {
        let s = GraphServer::start(cfg, 0).await.unwrap();
        let c = client();
        let t = token(&c, &s).await;
        G {
            c,
            s,
            auth: format!("Bearer {t}"),
        }
    }

    async fn get(&self, url: &str, extra: &[(&str, &str)]) -> Resp {
        let mut h = vec![("authorization", self.auth.as_str())];
        h.extend_from_slice(extra);
        send(&self.c, "GET", url, &h, "").await
    }

    fn v1(&self, path: &str) -> String {
        format!("{}{path}", self.s.graph_endpoint())
    }

    /// Follows nextLinks; returns all items, the page lengths and the final deltaLink.
    async fn all(
        &self,
        url: &str,
        extra: &[(&str, &str)],
    ) -> (Vec<Value>, Vec<usize>, Option<String>) {
        let mut items = Vec::new();
        let mut pages = Vec::new();
        let mut next = Some(url.to_string());
        let mut delta = None;
        while let Some(u) = next.take() {
            let r = self.get(&u, extra).await;
            assert_eq!(r.status, 200, "{u}: {}", String::from_utf8_lossy(&r.body));
            let v = r.json();
            let page = v["value"].as_array().unwrap().clone();
            pages.push(page.len());
            items.extend(page);
            next = v["@odata.nextLink"].as_str().map(str::to_string);
            delta = v["@odata.deltaLink"].as_str().map(str::to_string);
        }
        (items, pages, delta)
    }
}

const IMMUTABLE: (&str, &str) = ("prefer", "IdType=\"ImmutableId\"");

#[tokio::test]
async fn token_endpoint_secret_and_errors() {
    let s = GraphServer::start(GraphConfig::default(), 0).await.unwrap();
    let c = client();
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let ok = token(&c, &s).await;
    assert!(!ok.is_empty());
    // The tenant id works as well as the name.
    let by_id = format!(
        "{}/{}/oauth2/v2.0/token",
        s.login_endpoint(),
        s.truth().tenant_id
    );
    let body = format!("grant_type=client_credentials&client_id={GRAPH_CLIENT_ID}&client_secret={GRAPH_CLIENT_SECRET}&scope=https://graph.microsoft.com/.default");
    let r = send(&c, "POST", &by_id, &form, &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);

    let wrong = body.replace(GRAPH_CLIENT_SECRET, "nope");
    let r = send(&c, "POST", &s.token_url(), &form, &wrong).await;
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(v["error"], "invalid_client");
    assert_eq!(v["error_codes"][0], 7000215);
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215:"));

    let other = format!(
        "{}/fabrikam.onmicrosoft.com/oauth2/v2.0/token",
        s.login_endpoint()
    );
    let r = send(&c, "POST", &other, &form, &body).await;
    assert_eq!(
        (r.status, r.json()["error_codes"][0].as_u64()),
        (400, Some(90002))
    );

    let r = send(
        &c,
        "POST",
        &s.token_url(),
        &form,
        &body.replace(GRAPH_CLIENT_ID, "99999999-2222-3333-4444-555555555555"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "unauthorized_client");
    assert_eq!(r.json()["error_codes"][0], 700016);

    let r = send(
        &c,
        "POST",
        &s.token_url(),
        &form,
        &body.replace("/.default", "/Mail.Read"),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // Graph without, or with a bad, token.
    let r = send(&c, "GET", &format!("{}/users", s.graph_endpoint()), &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "InvalidAuthenticationToken");
    assert!(r.header("request-id").is_some() && r.header("client-request-id").is_some());
    assert!(r.json()["error"]["innerError"]["request-id"].is_string());
    let r = send(
        &c,
        "GET",
        &format!("{}/users", s.graph_endpoint()),
        &[("authorization", "Bearer forged")],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(s.stats().unauthorized, 3);
    assert_eq!(s.stats().tokens_issued, 2);
}

fn openssl(args: &[&str]) {
    let st = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[tokio::test]
async fn token_endpoint_certificate_assertion() {
    let dir = std::env::temp_dir().join(format!("ferry-graph-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &p("key.pem"),
        "-out",
        &p("cert.der"),
        "-outform",
        "DER",
        "-days",
        "1",
        "-subj",
        "/CN=ferry-sandbox",
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        &p("key.pem"),
        "-outform",
        "DER",
        "-out",
        &p("key.p8"),
    ]);
    openssl(&[
        "rsa",
        "-in",
        &p("key.pem"),
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        &p("pub.der"),
    ]);
    let cert_der = std::fs::read(p("cert.der")).unwrap();
    let pkcs8 = std::fs::read(p("key.p8")).unwrap();
    let public_key_pkcs1_der = std::fs::read(p("pub.der")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let cfg = GraphConfig {
        client_certificate: Some(ferry_sandbox::ClientCertificate {
            cert_der: cert_der.clone(),
            public_key_pkcs1_der,
        }),
        ..GraphConfig::default()
    };
    let s = GraphServer::start(cfg, 0).await.unwrap();
    let c = client();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha1::Digest;
    let x5t = b64.encode(sha1::Sha1::digest(&cert_der));
    let key = ring::signature::RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = |aud: &str, exp: u64| {
        let h =
            b64.encode(serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": x5t}).to_string());
        let c = b64.encode(serde_json::json!({"aud": aud, "iss": GRAPH_CLIENT_ID, "sub": GRAPH_CLIENT_ID, "jti": "abc-123", "nbf": now - 10, "exp": exp}).to_string());
        let msg = format!("{h}.{c}");
        let mut sig = vec![0u8; key.public().modulus_len()];
        key.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            msg.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{msg}.{}", b64.encode(sig))
    };
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let post = |assertion: String| {
        let body = format!(
            "grant_type=client_credentials&client_id={GRAPH_CLIENT_ID}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
        );
        let url = s.token_url();
        let c = c.clone();
        async move { send(&c, "POST", &url, &form, &body).await }
    };
    let r = post(jwt(&s.token_url(), now + 600)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["access_token"].is_string());
    // Expired, wrong audience, tampered signature.
    let r = post(jwt(&s.token_url(), now - 1)).await;
    assert_eq!(
        (r.status, r.json()["error_codes"][0].as_u64()),
        (401, Some(700024))
    );
    let r = post(jwt(
        "https://login.microsoftonline.com/other/oauth2/v2.0/token",
        now + 600,
    ))
    .await;
    assert_eq!(r.status, 401);
    let mut bad = jwt(&s.token_url(), now + 600);
    bad.replace_range(bad.len() - 6..bad.len() - 2, "AAAA");
    let r = post(bad).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn users_paging_groups_and_unlicensed() {
    let g = G::new(GraphConfig {
        users: 7,
        page_size: 3,
        ..GraphConfig::default()
    })
    .await;
    let (users, pages, _) = g
        .all(
            &g.v1("/users?$select=id,userPrincipalName,mail&$top=3"),
            &[],
        )
        .await;
    assert_eq!(users.len(), 8, "7 licensed + 1 unlicensed");
    assert!(
        pages.iter().rev().skip(1).any(|&n| n < 3),
        "a short page before the last: {pages:?}"
    );
    let truth_ids: Vec<&str> = g.s.truth().users.iter().map(|u| u.id.as_str()).collect();
    let got: Vec<&str> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(got, truth_ids);
    let unlicensed: Vec<&Value> = users
        .iter()
        .filter(|u| u["assignedLicenses"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(unlicensed.len(), 1);
    let upn = unlicensed[0]["userPrincipalName"].as_str().unwrap();
    let r = g
        .get(&g.v1(&format!("/users/{upn}/mailFolders")), &[])
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("MailboxNotEnabledForRESTAPI"))
    );
    let r = g.get(&g.v1(&format!("/users/{upn}/drive")), &[]).await;
    assert_eq!(r.status, 404);
    let r = g
        .get(&g.v1("/users/nobody@contoso.onmicrosoft.com"), &[])
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );

    // Prefer: odata.maxpagesize is honoured and echoed.
    let r = g
        .get(&g.v1("/users"), &[("prefer", "odata.maxpagesize=2")])
        .await;
    assert_eq!(r.json()["value"].as_array().unwrap().len(), 2);
    assert_eq!(r.header("preference-applied"), Some("odata.maxpagesize=2"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));

    let r = g
        .get(
            &g.v1("/users?$filter=assignedLicenses/$count%20ne%200&$count=true"),
            &[("consistencylevel", "eventual")],
        )
        .await;
    assert_eq!(r.status, 200);

    let staff = &g.s.truth().groups[0];
    let (members, _, _) = g
        .all(&g.v1(&format!("/groups/{}/members", staff.id)), &[])
        .await;
    let ids: Vec<&str> = members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        staff
            .member_ids
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert!(members
        .iter()
        .all(|m| m["@odata.type"] == "#microsoft.graph.user"));
}

#[tokio::test]
async fn mail_folder_tree_hidden_and_well_known() {
    let g = G::new(GraphConfig::default()).await;
    let user = g.s.truth().licensed_users().next().unwrap().clone();
    let mb = user.mailbox.as_ref().unwrap();
    let (top, _, _) = g
        .all(&g.v1(&format!("/users/{}/mailFolders", user.id)), &[])
        .await;
    assert!(top.iter().all(|f| f["isHidden"] == false));
    let (top_h, _, _) = g
        .all(
            &g.v1(&format!(
                "/users/{}/mailFolders?includeHiddenFolders=true",
                user.id
            )),
            &[],
        )
        .await;
    assert_eq!(top_h.len(), top.len() + 1);
    // Walk the whole tree with hidden folders and compare paths to the truth.
    let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queue: Vec<(Value, Vec<String>)> = top_h
        .into_iter()
        .map(|f| {
            let n = f["displayName"].as_str().unwrap().to_string();
            (f, vec![n])
        })
        .collect();
    while let Some((f, path)) = queue.pop() {
        let id = f["id"].as_str().unwrap().to_string();
        let t = mb
            .folders
            .iter()
            .find(|x| x.id == id)
            .expect("known folder");
        let live = mb.messages.iter().filter(|m| m.folder_id == id).count();
        assert_eq!(
            f["totalItemCount"].as_u64().unwrap() as usize,
            live + t.non_message_items,
            "{path:?}"
        );
        if f["childFolderCount"].as_u64().unwrap() > 0 {
            let (kids, _, _) = g
                .all(
                    &g.v1(&format!(
                        "/users/{}/mailFolders/{id}/childFolders?includeHiddenFolders=true",
                        user.id
                    )),
                    &[],
                )
                .await;
            assert_eq!(kids.len() as u64, f["childFolderCount"].as_u64().unwrap());
            for k in kids {
                let mut p = path.clone();
                p.push(k["displayName"].as_str().unwrap().to_string());
                queue.push((k, p));
            }
        }
        paths.insert(id, path);
    }
    let want: BTreeMap<String, Vec<String>> = mb
        .folders
        .iter()
        .filter(|f| f.in_ipm_subtree && !f.path.is_empty())
        .map(|f| (f.id.clone(), f.path.clone()))
        .collect();
    assert_eq!(paths, want);
    let names: HashSet<&str> = want.values().map(|p| p.last().unwrap().as_str()).collect();
    for hostile in [
        "Invoices a/b 100%",
        "Trailing space ",
        "Caf\u{e9}",
        "Cafe\u{301}",
    ] {
        assert!(names.contains(hostile), "{hostile}");
    }
    for wk in [
        "inbox",
        "sentitems",
        "deleteditems",
        "drafts",
        "junkemail",
        "archive",
        "msgfolderroot",
        "recoverableitemsdeletions",
    ] {
        let r = g
            .get(
                &g.v1(&format!(
                    "/users/{}/mailFolders/{wk}",
                    user.user_principal_name
                )),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{wk}");
    }
    let r = g
        .get(
            &g.v1(&format!("/users/{}/mailFolders/AAMkAnope", user.id)),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("ErrorItemNotFound"))
    );
}

#[tokio::test]
async fn message_delta_mime_and_incremental() {
    let g = G::new(GraphConfig {
        page_size: 4,
        ..GraphConfig::default()
    })
    .await;
    let truth = g.s.truth().clone();
    let user = truth.licensed_users().next().unwrap().clone();
    let mb = user.mailbox.as_ref().unwrap();
    assert!(
        mb.messages.iter().any(|m| m.size >= 4 << 20),
        "a message of at least 4 MiB"
    );
    let mut seen = HashSet::new();
    let mut delta_links = HashMap::new();
    for f in &mb.folders {
        let url = g.v1(&format!("/users/{}/mailFolders/{}/messages/delta?$expand=singleValueExtendedProperties($filter=id%20eq%20'Integer%200x0E08')", user.id, f.id));
        let (items, _, delta) = g
            .all(&url, &[IMMUTABLE, ("prefer", "odata.maxpagesize=3")])
            .await;
        delta_links.insert(f.id.clone(), delta.expect("deltaLink"));
        let want: HashSet<&str> = mb
            .messages
            .iter()
            .filter(|m| m.folder_id == f.id)
            .map(|m| m.id.as_str())
            .collect();
        let got: HashSet<&str> = items.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(got, want, "{:?}", f.path);
        for m in &items {
            let id = m["id"].as_str().unwrap();
            let t = mb.messages.iter().find(|x| x.id == id).unwrap();
            assert_eq!(
                m["singleValueExtendedProperties"][0]["value"],
                t.size.to_string()
            );
            assert_eq!(m["internetMessageId"], t.internet_message_id.as_str());
            seen.insert(id.to_string());
        }
    }
    assert_eq!(seen.len(), mb.messages.len());
    // $value: exact bytes, with immutable and with REST ids.
    for m in mb.messages.iter().take(12) {
        let r = g
            .get(
                &g.v1(&format!("/users/{}/messages/{}/$value", user.id, m.id)),
                &[],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.body.as_ref(), m.mime().as_slice(), "{}", m.subject);
        assert_eq!(r.body.len() as u64, m.size);
        let r = g
            .get(
                &g.v1(&format!(
                    "/users/{}/mailFolders/{}/messages/{}/$value",
                    user.id, m.folder_id, m.rest_id
                )),
                &[],
            )
            .await;
        assert_eq!(r.body.as_ref(), m.mime().as_slice());
    }
    let mime = String::from_utf8_lossy(&mb.messages[1].mime()).to_string();
    assert!(mime.contains("Subject: =?UTF-8?B?") && mime.contains("\r\nMIME-Version: 1.0\r\n"));
    // Without the ImmutableId preference the ids differ from the truth's.
    let inbox = mb
        .folders
        .iter()
        .find(|f| f.well_known_name.as_deref() == Some("inbox"))
        .unwrap();
    let (items, _, _) = g
        .all(
            &g.v1(&format!(
                "/users/{}/mailFolders/inbox/messages/microsoft.graph.delta()",
                user.id
            )),
            &[],
        )
        .await;
    assert!(
        !items.is_empty()
            && items
                .iter()
                .all(|m| !seen.contains(m["id"].as_str().unwrap()))
    );

    // Incremental: one new, one deleted.
    let added =
        g.s.add_message(&user.user_principal_name, "inbox", "Fresh news")
            .unwrap();
    let gone = mb
        .messages
        .iter()
        .find(|m| m.folder_id == inbox.id)
        .unwrap();
    assert!(g.s.delete_message(&user.id, &gone.id));
    let (items, _, delta2) = g.all(&delta_links[&inbox.id], &[IMMUTABLE]).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(items
        .iter()
        .any(|m| m["id"] == added.id.as_str() && m["subject"] == "Fresh news"));
    assert!(items
        .iter()
        .any(|m| m["id"] == gone.id.as_str() && m["@removed"]["reason"] == "deleted"));
    let (items, _, _) = g.all(&delta2.unwrap(), &[IMMUTABLE]).await;
    assert!(items.is_empty());
    let r = g
        .get(
            &g.v1(&format!("/users/{}/messages/{}/$value", user.id, added.id)),
            &[],
        )
        .await;
    assert_eq!(r.body.as_ref(), added.mime().as_slice());

    g.s.invalidate_delta_tokens();
    let r = g.get(&delta_links[&inbox.id], &[IMMUTABLE]).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (410, Some("SyncStateNotFound"))
    );
    let r = g
        .get(
            &g.v1(&format!(
                "/users/{}/messages/{}",
                user.id, "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0Anope"
            )),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("ErrorItemNotFound"))
    );
}

#[tokio::test]
async fn in_place_archive_on_beta() {
    let g = G::new(GraphConfig::default()).await;
    let truth = g.s.truth().clone();
    let with = truth.users.iter().find(|u| u.archive.is_some()).unwrap();
    let without = truth
        .users
        .iter()
        .find(|u| u.licensed && u.archive.is_none())
        .unwrap();
    let beta = g.s.beta_endpoint();
    let r = g
        .get(&format!("{beta}/users/{}/settings/exchange", with.id), &[])
        .await;
    let v = r.json();
    let archive = with.archive.as_ref().unwrap();
    assert_eq!(v["inPlaceArchiveMailboxId"], archive.mailbox_id.as_str());
    assert!(
        archive.mailbox_id.starts_with("MBX:") && archive.mailbox_id.ends_with(&truth.tenant_id)
    );
    let r = g
        .get(
            &format!("{beta}/users/{}/settings/exchange", without.id),
            &[],
        )
        .await;
    assert!(r.json()["inPlaceArchiveMailboxId"].is_null());
    let (folders, _, _) = g
        .all(
            &format!("{beta}/users/{}/mailFolders", archive.mailbox_id),
            &[],
        )
        .await;
    assert!(folders.iter().any(|f| f["displayName"] == "Old Projects"));
    let inbox = archive
        .folders
        .iter()
        .find(|f| f.well_known_name.as_deref() == Some("inbox"))
        .unwrap();
    let (items, _, _) = g
        .all(
            &format!(
                "{beta}/users/{}/mailFolders/{}/messages/delta",
                archive.mailbox_id, inbox.id
            ),
            &[IMMUTABLE],
        )
        .await;
    assert_eq!(
        items.len(),
        archive
            .messages
            .iter()
            .filter(|m| m.folder_id == inbox.id)
            .count()
    );
    let m = &archive.messages[0];
    let r = g
        .get(
            &format!(
                "{beta}/users/{}/messages/{}/$value",
                archive.mailbox_id, m.id
            ),
            &[],
        )
        .await;
    assert_eq!(r.body.as_ref(), m.mime().as_slice());
    // v1.0 does not serve archives.
    let r = g
        .get(
            &g.v1(&format!("/users/{}/mailFolders", archive.mailbox_id)),
            &[],
        )
        .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn drive_delta_repeats_deletes_and_resync() {
    let g = G::new(GraphConfig {
        files_per_user: 20,
        page_size: 5,
        ..GraphConfig::default()
    })
    .await;
    let truth = g.s.truth().clone();
    let user = truth.licensed_users().next().unwrap().clone();
    let drive_id = user.drive_id.clone().unwrap();
    let (items, pages, delta) = g
        .all(&g.v1(&format!("/users/{}/drive/root/delta", user.id)), &[])
        .await;
    assert!(pages.len() > 3);
    let mut last: HashMap<String, Value> = HashMap::new();
    let mut repeats = 0;
    for it in &items {
        assert!(
            it["parentReference"].get("path").is_none(),
            "no path in delta: {it}"
        );
        if last
            .insert(it["id"].as_str().unwrap().to_string(), it.clone())
            .is_some()
        {
            repeats += 1;
        }
    }
    assert!(repeats > 0, "the first delta repeats some items");
    let files: Vec<&ferry_sandbox::graph::File> =
        truth.files().filter(|f| f.drive_id == drive_id).collect();
    assert_eq!(files.len(), 20);
    for f in &files {
        let it = &last[&f.id];
        assert_eq!(it["size"].as_u64(), Some(f.listed_size));
        assert_eq!(
            it["file"]["hashes"]["quickXorHash"],
            f.listed_quick_xor_hash.as_str()
        );
        assert!(it["file"]["hashes"].get("sha1Hash").is_none());
        assert_eq!(it["name"], f.name.as_str());
    }
    let names: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
    for n in [
        "Report.pdf",
        "report.pdf",
        "R\u{e9}sum\u{e9}.docx",
        "Re\u{301}sume\u{301}.docx",
        "100% done.txt",
        "C# notes #1.md",
        "empty.txt",
    ] {
        assert!(names.contains(n), "{n}");
    }
    assert!(files.iter().any(|f| f.name.chars().count() == 255));
    let root = last.values().find(|v| v.get("root").is_some()).unwrap();
    assert!(root["folder"].is_object());

    // Changes: delete a file, add one.
    let victim = files.iter().find(|f| f.name == "Report.pdf").unwrap();
    assert!(g.s.delete_drive_item(&victim.id));
    let added =
        g.s.add_file(&drive_id, &["Documents"], "new.bin", 1000)
            .unwrap();
    let (changes, _, delta2) = g.all(&delta.clone().unwrap(), &[]).await;
    // The changed items, and (as OneDrive does) the folders above them, whose size changed.
    let items: Vec<&Value> = changes
        .iter()
        .filter(|c| c.get("folder").is_none())
        .collect();
    assert_eq!(items.len(), 2, "{changes:?}");
    assert!(changes
        .iter()
        .any(|c| c.get("root").is_some() && c["folder"].is_object()));
    assert!(changes.iter().any(|c| c["name"] == "Documents"));
    assert!(changes
        .iter()
        .any(|c| c["id"] == victim.id.as_str() && c["deleted"].is_object()));
    assert!(changes
        .iter()
        .any(|c| c["id"] == added.id.as_str() && c["size"] == 1000));
    // Both token forms work (nextLinks use delta(token='…'), deltaLinks ?token=…).
    let tok = delta2
        .as_ref()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap()
        .to_string();
    let r = g
        .get(
            &g.v1(&format!("/drives/{drive_id}/root/delta(token='{tok}')")),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.json()["value"].as_array().unwrap().len()),
        (200, 0)
    );

    g.s.invalidate_delta_tokens();
    let r = g.get(delta2.as_ref().unwrap(), &[]).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.json()["error"]["code"], "resyncRequired");
    assert_eq!(
        r.json()["error"]["innerError"]["code"],
        "resyncChangesApplyDifferences"
    );
    let fresh = r.header("location").unwrap().to_string();
    let (again, _, _) = g.all(&fresh, &[]).await;
    assert!(again.iter().any(|c| c["id"] == added.id.as_str()));
    assert!(!again.iter().any(|c| c["id"] == victim.id.as_str()));
}

#[tokio::test]
async fn downloads_redirect_range_and_hash() {
    let g = G::new(GraphConfig {
        large_file_bytes: 3_000_001,
        ..GraphConfig::default()
    })
    .await;
    let truth = g.s.truth().clone();
    for f in truth
        .files()
        .filter(|f| f.drive_id == truth.users[0].drive_id.clone().unwrap())
    {
        let r = g
            .get(
                &g.v1(&format!("/drives/{}/items/{}/content", f.drive_id, f.id)),
                &[],
            )
            .await;
        assert_eq!(r.status, 302);
        let loc = r.header("location").unwrap().to_string();
        let r = send(&g.c, "GET", &loc, &[], "").await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-length").unwrap().parse::<u64>().unwrap(),
            f.size
        );
        let mut want = Vec::new();
        f.bytes().read_to_end(&mut want).unwrap();
        assert_eq!(r.body.as_ref(), want.as_slice(), "{}", f.name);
        assert_eq!(
            quick_xor_hash(&r.body),
            f.listed_quick_xor_hash,
            "{}",
            f.name
        );
        if f.size > 100 {
            let r = send(&g.c, "GET", &loc, &[("range", "bytes=10-19")], "").await;
            assert_eq!(r.status, 206);
            assert_eq!(
                r.header("content-range").unwrap(),
                format!("bytes 10-19/{}", f.size)
            );
            assert_eq!(r.body.as_ref(), &want[10..20]);
            let r = send(&g.c, "GET", &loc, &[("range", "bytes=50-")], "").await;
            assert_eq!(r.body.as_ref(), &want[50..]);
        }
    }
    let big = truth.files().find(|f| f.name == "big-file.bin").unwrap();
    assert_eq!(big.size, 3_000_001);
    let mut h = QuickXorHash::new();
    let mut rd = truth.file_bytes(&big.id).unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = rd.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    assert_eq!(h.base64(), big.quick_xor_hash);
    assert!(g.s.stats().downloads > 0);
}

#[tokio::test]
async fn sites_and_sharepoint_mismatch() {
    let g = G::new(GraphConfig {
        sites: 3,
        faults: GraphFaults {
            sharepoint_size_mismatch: true,
            ..GraphFaults::default()
        },
        ..GraphConfig::default()
    })
    .await;
    let truth = g.s.truth().clone();
    let (sites, _, _) = g.all(&g.v1("/sites/getAllSites"), &[]).await;
    assert_eq!(sites.len(), 3);
    assert!(sites
        .iter()
        .all(|s| s["id"].as_str().unwrap().split(',').count() == 3));
    let r = g.get(&g.v1("/sites/root"), &[]).await;
    assert_eq!(r.json()["id"], truth.sites[0].id.as_str());
    let (drives, _, _) = g
        .all(&g.v1(&format!("/sites/{}/drives", truth.sites[0].id)), &[])
        .await;
    assert_eq!(drives.len(), 2);
    assert!(drives.iter().all(|d| d["driveType"] == "documentLibrary"));
    let odd = truth.files().find(|f| f.listed_differs()).unwrap();
    assert!(odd.name.ends_with(".docx"));
    let (items, _, _) = g
        .all(
            &g.v1(&format!("/sites/{}/drive/root/delta", truth.sites[0].id)),
            &[],
        )
        .await;
    let it = items
        .iter()
        .rev()
        .find(|i| i["id"] == odd.id.as_str())
        .unwrap();
    assert_eq!(it["size"].as_u64(), Some(odd.listed_size));
    let r = send(
        &g.c,
        "GET",
        it["@microsoft.graph.downloadUrl"].as_str().unwrap(),
        &[],
        "",
    )
    .await;
    assert_eq!(r.body.len() as u64, odd.size);
    assert_ne!(odd.size, odd.listed_size);
    assert_eq!(quick_xor_hash(&r.body), odd.quick_xor_hash);
    assert_ne!(odd.quick_xor_hash, odd.listed_quick_xor_hash);
}

#[tokio::test]
async fn fifth_concurrent_mailbox_request_is_throttled() {
    let g = G::new(GraphConfig {
        mail_latency: Duration::from_millis(400),
        ..GraphConfig::default()
    })
    .await;
    let user = g.s.truth().licensed_users().next().unwrap().id.clone();
    let url = g.v1(&format!("/users/{user}/mailFolders"));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (c, url, auth) = (g.c.clone(), url.clone(), g.auth.clone());
        tasks.push(tokio::spawn(async move {
            send(&c, "GET", &url, &[("authorization", &auth)], "").await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "ApplicationThrottled");
            assert_eq!(
                r.json()["error"]["message"],
                "Application is over its MailboxConcurrency limit."
            );
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 200, 429]);
    let st = g.s.stats();
    assert_eq!(st.max_concurrent_per_mailbox, 4);
    assert_eq!(st.mailbox_concurrency_rejections, 1);
    // Another user's mailbox is not affected, and slots are released.
    let r = g.get(&url, &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn mailbox_request_rate_limit_and_stats_endpoint() {
    let g = G::new(GraphConfig {
        mailbox_requests_per_10min: 5,
        ..GraphConfig::default()
    })
    .await;
    let users: Vec<String> = g.s.truth().licensed_users().map(|u| u.id.clone()).collect();
    let url = g.v1(&format!("/users/{}/mailFolders", users[0]));
    for i in 0..5 {
        let r = g.get(&url, &[]).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    // The 6th within 10 minutes is refused, and keeps being refused.
    for _ in 0..2 {
        let r = g.get(&url, &[]).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.json()["error"]["code"], "ApplicationThrottled");
        assert_eq!(
            r.json()["error"]["message"],
            "Application is over its MailboxRequests limit."
        );
        let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((590..=600).contains(&secs), "Retry-After {secs}");
    }
    // Another mailbox has its own budget; drives are not mailboxes.
    let other = g.v1(&format!("/users/{}/mailFolders", users[1]));
    assert_eq!(g.get(&other, &[]).await.status, 200);
    let drive = g.v1(&format!("/users/{}/drive", users[0]));
    assert_eq!(g.get(&drive, &[]).await.status, 200);

    let st = g.s.stats();
    assert_eq!(st.mailbox_rate_rejections, 2);
    assert_eq!(st.mailbox_concurrency_rejections, 0);
    assert_eq!(st.mailbox_requests, 8);
    assert_eq!(st.mailboxes_touched, 2);
    assert_eq!(st.max_requests_per_mailbox, 7);
    assert_eq!(st.max_requests_per_mailbox_10min, 5);
    assert_eq!(st.max_busy_mailboxes, 1);

    // The same counters over HTTP, without a token, and reading them is not counted.
    let requests = st.requests;
    let stats_url = format!("http://{}/_sandbox/stats", g.s.addr());
    let r = send(&g.c, "GET", &stats_url, &[], "").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["stats"]["mailbox_rate_rejections"], 2);
    assert_eq!(v["stats"]["max_requests_per_mailbox"], 7);
    assert_eq!(v["stats"]["max_requests_per_mailbox_10min"], 5);
    assert_eq!(v["stats"]["max_busy_mailboxes"], 1);
    assert_eq!(v["stats"]["requests"], requests);
    assert_eq!(v["limits"]["mailbox_requests_per_10min"], 5);
    assert_eq!(v["limits"]["mailbox_concurrency"], 4);
    let t = g.s.truth();
    assert_eq!(v["tenant"]["licensed_users"], users.len());
    assert_eq!(v["tenant"]["messages"], t.messages().count());
    assert_eq!(
        v["tenant"]["onedrive_files"].as_u64().unwrap()
            + v["tenant"]["sharepoint_files"].as_u64().unwrap(),
        t.files().count() as u64
    );
    assert_eq!(g.s.stats().requests, requests);
}

#[tokio::test]
async fn busy_mailboxes_are_counted_at_the_same_moment() {
    let g = G::new(GraphConfig {
        mail_latency: Duration::from_millis(300),
        ..GraphConfig::default()
    })
    .await;
    let users: Vec<String> = g.s.truth().licensed_users().map(|u| u.id.clone()).collect();
    assert!(users.len() >= 3);
    let mut tasks = Vec::new();
    for u in users.iter().take(3) {
        // Two requests to each of three mailboxes, all at once.
        for _ in 0..2 {
            let (c, url, auth) = (
                g.c.clone(),
                g.v1(&format!("/users/{u}/mailFolders")),
                g.auth.clone(),
            );
            tasks.push(tokio::spawn(async move {
                send(&c, "GET", &url, &[("authorization", &auth)], "")
                    .await
                    .status
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // One after another: never more than one busy.
    let url = g.v1(&format!("/users/{}/mailFolders", users[0]));
    assert_eq!(g.get(&url, &[]).await.status, 200);
    let st = g.s.stats();
    assert_eq!(st.max_busy_mailboxes, 3);
    assert_eq!(st.max_concurrent_per_mailbox, 2);
    assert_eq!(st.max_requests_per_mailbox, 3);
    assert_eq!(st.mailboxes_touched, 3);
}

#[tokio::test]
async fn faults_throttle_expiry_truncation_corruption_permissions() {
    let faults = GraphFaults {
        throttle_every: 3,
        expire_tokens_after_requests: 5,
        truncate_every: 2,
        corrupt_always: Some("100% done.txt".into()),
        fail_message_always: Some("Lunch on Friday?".into()),
        ..GraphFaults::default()
    };
    let g = G::new(GraphConfig {
        faults,
        ..GraphConfig::default()
    })
    .await;
    let truth = g.s.truth().clone();
    let u = truth.licensed_users().next().unwrap();
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            let r = g.get(&g.v1("/users"), &[]).await;
            if r.status == 429 {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.json()["error"]["code"], "TooManyRequests");
            }
            v.push(r.status);
        }
        v
    };
    // Requests 3 and 6 throttled; after request 5 the token is revoked (so 6 is 401).
    assert_eq!(statuses, vec![200, 200, 429, 200, 200, 401]);
    let fresh = format!("Bearer {}", token(&g.c, &g.s).await);
    let get = |url: String, auth: String| {
        let c = g.c.clone();
        async move { send(&c, "GET", &url, &[("authorization", &auth)], "").await }
    };
    // 401s are not counted: this is API request 6, throttled; then 7 succeeds.
    let r = get(g.v1("/users"), fresh.clone()).await;
    assert_eq!(r.status, 429);
    let r = get(g.v1("/users"), fresh.clone()).await;
    assert_eq!(r.status, 200);

    // Corrupted permanently: right length, wrong bytes.
    let f = truth
        .files()
        .find(|f| f.name == "100% done.txt" && f.drive_id == *u.drive_id.as_ref().unwrap())
        .unwrap();
    let r = get(
        g.v1(&format!("/drives/{}/items/{}/content", f.drive_id, f.id)),
        fresh.clone(),
    )
    .await;
    let loc = r.header("location").unwrap().to_string();
    let mut want = Vec::new();
    f.bytes().read_to_end(&mut want).unwrap();
    let r = send(&g.c, "GET", &loc, &[], "").await; // download 1: whole, corrupted
    assert_eq!(r.body.len(), want.len());
    assert_ne!(r.body.as_ref(), want.as_slice());
    // Download 2 is truncated: the connection closes early.
    let req = http::Request::get(&loc)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = g.c.request(req).await.unwrap();
    assert_eq!(
        resp.headers()["content-length"],
        want.len().to_string().as_str()
    );
    assert!(
        resp.into_body().collect().await.is_err(),
        "truncated body is an error"
    );

    let m = u
        .mailbox
        .as_ref()
        .unwrap()
        .messages
        .iter()
        .find(|m| m.subject == "Lunch on Friday?");
    if let Some(m) = m {
        let r = get(
            g.v1(&format!("/users/{}/messages/{}/$value", u.id, m.id)),
            fresh.clone(),
        )
        .await;
        assert!(
            r.status == 500 || r.status == 429 || r.status == 401,
            "{}",
            r.status
        );
    }
    assert!(g.s.stats().throttled >= 2);

    let d = G::new(GraphConfig {
        denied_scopes: vec![
            "Mail.Read".into(),
            "Files.Read.All".into(),
            "User.Read.All".into(),
        ],
        ..GraphConfig::default()
    })
    .await;
    let u = d.s.truth().licensed_users().next().unwrap().id.clone();
    let r = d.get(&d.v1(&format!("/users/{u}/mailFolders")), &[]).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("ErrorAccessDenied"))
    );
    let r = d
        .get(&d.v1(&format!("/users/{u}/drive/root/delta")), &[])
        .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("accessDenied"))
    );
    let r = d.get(&d.v1("/users"), &[]).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("Authorization_RequestDenied"))
    );
}

#[tokio::test]
async fn same_seed_same_tenant() {
    let a = GraphServer::start(GraphConfig::default(), 0).await.unwrap();
    let b = GraphServer::start(GraphConfig::default(), 0).await.unwrap();
    let c = GraphServer::start(
        GraphConfig {
            seed: 2,
            ..GraphConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    assert_eq!(format!("{:?}", a.truth()), format!("{:?}", b.truth()));
    assert_ne!(a.truth().tenant_id, c.truth().tenant_id);
    let ids = |s: &GraphServer| {
        s.truth()
            .messages()
            .map(|e| e.message.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    // Every message's folder is one of its mailbox's folders; counts match the config.
    for u in a.truth().licensed_users() {
        assert_eq!(u.mailbox.as_ref().unwrap().messages.len(), 20 + 3);
        assert!(u
            .mailbox
            .as_ref()
            .unwrap()
            .folders
            .iter()
            .any(|f| f.hidden && f.in_ipm_subtree));
    }
}
