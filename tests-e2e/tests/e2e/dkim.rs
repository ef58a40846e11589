//! DKIM: keys generated or imported through the admin API sign the mail of
//! their domain, and a real verifier (dkimpy, tests/python/dkim_verify.py,
//! its DNS answered with the records the API gave) accepts the signatures
//! and refuses them once the body is changed.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::python_interop::{python, repo_root};
use crate::support::TestEnv;

/// dkimpy's verdict on `message`, with DNS answered from `records`.
async fn verify(message: &[u8], records: &HashMap<String, String>) -> Vec<Value> {
    let mut child = Command::new(python().await)
        .arg(repo_root().join("tests/python/dkim_verify.py"))
        .arg(serde_json::to_string(records).unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dkim_verify.py");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(message).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.expect("dkim_verify.py");
    assert!(out.status.success(), "dkim_verify.py failed");
    let verdict: Value = serde_json::from_slice(&out.stdout).expect("verdict JSON");
    verdict["signatures"].as_array().unwrap().clone()
}

async fn create_key(env: &TestEnv, admin: &str, body: Value) -> crate::support::api::Response {
    env.api()
        .post("/api/v1/admin/dkim-keys", admin, &body)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_from_a_domain_with_keys_carries_signatures_a_real_verifier_accepts() {
    let mut env = TestEnv::new().await;
    let admin = env.start_api_as_admin().await;

    // An RSA key generated here, and an Ed25519 key imported (its seed).
    let res = create_key(
        &env,
        &admin,
        json!({"domain": "Signed.Example.com", "selector": "s2026", "algorithm": "rsa"}),
    )
    .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let rsa = res.body["data"].clone();
    assert_eq!(rsa["domain"], "signed.example.com");
    assert_eq!(
        rsa["dns_record"]["name"],
        "s2026._domainkey.signed.example.com"
    );
    assert!(rsa["dns_record"]["value"]
        .as_str()
        .unwrap()
        .starts_with("v=DKIM1; k=rsa; p=MII"));
    let seed = base64_seed();
    let res = create_key(
        &env,
        &admin,
        json!({"domain": "signed.example.com", "selector": "ed2026", "algorithm": "ed25519",
               "private_key": seed}),
    )
    .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let ed = res.body["data"].clone();
    // The private halves are never shown, nor stored in clear.
    for key in [&rsa, &ed] {
        assert!(key.get("private_key").is_none(), "{key}");
    }
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT private_key_ciphertext FROM dkim_keys")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(stored
        .iter()
        .all(|c| !String::from_utf8_lossy(c).contains("PRIVATE KEY")
            && !String::from_utf8_lossy(c).contains(&seed)));
    let mut records: HashMap<String, String> = [&rsa, &ed]
        .iter()
        .map(|k| {
            (
                k["dns_record"]["name"].as_str().unwrap().to_string(),
                k["dns_record"]["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();

    // Mail from the domain is signed with both; mail from another is not.
    let signed_account = env
        .api()
        .add_account(&admin, env.smtp.port(), "news@signed.example.com", 1000, 10)
        .await;
    env.start_worker();
    // With a one-click unsubscribe link: RFC 8058 needs it signed.
    let res = env
        .api()
        .post(
            "/api/v1/messages/email/send",
            &admin,
            &json!({"to": "reader@example.org", "subject": "Hello", "content": "<p>Hello</p>",
                    "list_unsubscribe": true}),
        )
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let mail = env.smtp.wait_for(1, Duration::from_secs(30)).await;
    assert!(mail[0].data_str().contains("\r\nList-Unsubscribe-Post: "));
    let signatures = verify(&mail[0].data, &records).await;
    let algorithms: Vec<&str> = signatures
        .iter()
        .map(|s| s["algorithm"].as_str().unwrap())
        .collect();
    assert_eq!(algorithms.len(), 2, "{signatures:?}");
    assert!(algorithms.contains(&"rsa-sha256") && algorithms.contains(&"ed25519-sha256"));
    for s in &signatures {
        assert_eq!(s["domain"], "signed.example.com");
        assert_eq!(s["verified"], true, "{s}");
        let signed: Vec<&str> = s["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        for header in [
            "from",
            "subject",
            "list-unsubscribe",
            "list-unsubscribe-post",
        ] {
            assert!(signed.contains(&header), "{header} unsigned: {s}");
        }
        assert_eq!(
            s["tampered_verified"], false,
            "a changed body must fail: {s}"
        );
    }

    // Rotation: a new RSA key created off (its record published first),
    // then turned on, which turns the old one off in the same change. A
    // fresh worker reads the keys at once (a running one within 30 s).
    let res = create_key(
        &env,
        &admin,
        json!({"domain": "signed.example.com", "selector": "s2027", "algorithm": "rsa",
               "is_active": false}),
    )
    .await;
    assert_eq!(res.status, StatusCode::CREATED, "{}", res.body);
    let next = res.body["data"].clone();
    assert_eq!(next["is_active"], false);
    records.insert(
        next["dns_record"]["name"].as_str().unwrap().to_string(),
        next["dns_record"]["value"].as_str().unwrap().to_string(),
    );
    let res = set_active(&env, &admin, &next, true).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    assert_eq!(res.body["data"]["is_active"], true);
    let old = env
        .api()
        .get(
            &format!("/api/v1/admin/dkim-keys/{}", rsa["id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(old.body["data"]["is_active"], false, "{}", old.body);
    env.signal_worker(0, "KILL").await;
    env.start_worker();
    env.api().send_simple(&admin, "second@example.org").await;
    let mail = env.smtp.wait_for(2, Duration::from_secs(30)).await;
    let second = mail
        .iter()
        .find(|m| m.rcpt_to == ["second@example.org"])
        .unwrap();
    let signatures = verify(&second.data, &records).await;
    let mut selectors: Vec<&str> = signatures
        .iter()
        .map(|s| s["selector"].as_str().unwrap())
        .collect();
    selectors.sort_unstable();
    assert_eq!(selectors, ["ed2026", "s2027"], "{signatures:?}");
    assert!(
        signatures.iter().all(|s| s["verified"] == true),
        "{signatures:?}"
    );

    // Turned off, a key stops signing; the other still signs.
    let res = set_active(&env, &admin, &ed, false).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    env.signal_worker(1, "KILL").await;
    env.start_worker();
    env.api().send_simple(&admin, "third@example.org").await;
    let mail = env.smtp.wait_for(3, Duration::from_secs(30)).await;
    let third = mail
        .iter()
        .find(|m| m.rcpt_to == ["third@example.org"])
        .unwrap();
    let signatures = verify(&third.data, &records).await;
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    assert_eq!(signatures[0]["algorithm"], "rsa-sha256");
    assert_eq!(signatures[0]["selector"], "s2027");
    assert_eq!(signatures[0]["verified"], true);

    // Mail from another domain goes out unsigned: the signed account
    // paused, the next email leaves through the other one.
    let signed_account = signed_account["id"].as_str().unwrap().to_string();
    env.api()
        .add_account(
            &admin,
            env.smtp.port(),
            "news@unsigned.example.net",
            1000,
            10,
        )
        .await;
    let res = env
        .api()
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/email-accounts/{signed_account}"),
            Some(&admin),
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.body);
    env.api().send_simple(&admin, "fourth@example.org").await;
    let mail = env.smtp.wait_for(4, Duration::from_secs(30)).await;
    let fourth = mail
        .iter()
        .find(|m| m.rcpt_to == ["fourth@example.org"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&fourth.data).contains("<news@unsigned.example.net>"),
        "{}",
        String::from_utf8_lossy(&fourth.data)
    );
    assert_eq!(verify(&fourth.data, &records).await, Vec::<Value>::new());
}

async fn set_active(
    env: &TestEnv,
    admin: &str,
    key: &Value,
    active: bool,
) -> crate::support::api::Response {
    env.api()
        .request(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/dkim-keys/{}", key["id"].as_str().unwrap()),
            Some(admin),
            Some(&json!({"is_active": active})),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_keys_refuse_bad_input_clearly() {
    let mut env = TestEnv::new().await;
    let admin = env.start_api_as_admin().await;
    for (body, code, field) in [
        (
            json!({"domain": "localhost", "selector": "s1", "algorithm": "rsa"}),
            "validation_error",
            "domain",
        ),
        (
            json!({"domain": "bad_domain.com", "selector": "s1", "algorithm": "rsa"}),
            "validation_error",
            "domain",
        ),
        (
            json!({"domain": "example.com", "selector": "a.b", "algorithm": "rsa"}),
            "validation_error",
            "selector",
        ),
        (
            json!({"domain": "example.com", "selector": "s1", "algorithm": "rsa", "private_key": "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----"}),
            "invalid_private_key",
            "private_key",
        ),
        (
            json!({"domain": "example.com", "selector": "s1", "algorithm": "ed25519", "private_key": "c2hvcnQ="}),
            "invalid_private_key",
            "private_key",
        ),
        (
            json!({"domain": "example.com", "selector": "s1", "algorithm": "rsa", "private_key": WEAK_RSA}),
            "invalid_private_key",
            "private_key",
        ),
    ] {
        let res = create_key(&env, &admin, body.clone()).await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            res.body
        );
        assert_eq!(res.code(), code, "{body}");
        assert_eq!(res.body["error"]["field"], field, "{body}");
    }
    let res = create_key(
        &env,
        &admin,
        json!({"domain": "example.com", "selector": "s1", "algorithm": "dsa"}),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", res.body);

    let first = json!({"domain": "example.com", "selector": "s1", "algorithm": "ed25519"});
    assert_eq!(
        create_key(&env, &admin, first.clone()).await.status,
        StatusCode::CREATED
    );
    // The same selector again, or a second active key of one algorithm: 409.
    for body in [
        json!({"domain": "example.com", "selector": "s1", "algorithm": "rsa"}),
        json!({"domain": "example.com", "selector": "s2", "algorithm": "ed25519"}),
    ] {
        let res = create_key(&env, &admin, body).await;
        assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.body);
        assert_eq!(res.code(), "dkim_key_exists");
    }
    // Not for keys without admin.
    let (_, sender) = env.api().token(&env.pool, &["send", "read"]).await;
    assert_eq!(
        create_key(&env, &sender, first).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.api()
            .get("/api/v1/admin/dkim-keys", &sender)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let listed = env.api().get("/api/v1/admin/dkim-keys", &admin).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 1);
}

/// A fresh Ed25519 seed, base64.
fn base64_seed() -> String {
    use base64::Engine;
    let seed: Vec<u8> = (0..2)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(seed)
}

/// A 512-bit RSA key (`openssl genrsa -traditional 512`): readable, and
/// too weak to accept.
const WEAK_RSA: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBAMXuczqzejqXDj9Jedp+M2nS1TToN2QGvXTstw9O3zvRh3IktWa3
30zQpCS4WeL4vQWFi54/hSQv6hkaOYBJV5ECAwEAAQJAbAlnpBbrFKf3AtxcQsK3
1X9bGPHXqiVzrCq5EQYAG2mgYXFok5ow6aXDneQ8CerJ0eEwZkME7o76EdhE5j6a
QQIhAPUJ8D7DWkyAxHMn0/bx3NbHADCGq5kQL2gDkEPXlG1FAiEAzskPx4b6RF0a
jWw/URBgbml+yMLg37qpZUCL8ZrTp90CIAi6/OtPjIUTRWyQ67Vtsp+YYYJZGf4P
HJFJJzezk589AiEAjp7MHFCzMg2I77uWHAIQkHaAdFU8pfJnPSd8neGsU50CIEYw
A7Ue1aDfB2BjvPud4QtYAxBvGOSyEc2/W0psBYQr
-----END RSA PRIVATE KEY-----";
