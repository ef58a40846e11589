//! Provider webhooks in (`/api/v1/webhooks/inbound/{provider}`): each
//! provider's documented payload, signed as the provider signs it (SNS
//! with a certificate this test makes and serves on loopback), turns our
//! sent message `bounced` or `complained`; a bad signature changes nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::support::TestEnv;

const WAIT: Duration = Duration::from_secs(30);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-bounces";
const POSTMARK: (&str, &str) = ("postmark-hook", "postmark-password-0123456789abcdef");
const MAILGUN_KEY: &str = "mailgun-signing-key-0123456789";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

fn message_id(id: Uuid) -> String {
    format!("<{}@example.com>", id.simple())
}

/// POSTs `body` to the provider's route with `headers`.
async fn post(
    env: &TestEnv,
    provider: &str,
    body: &str,
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(
            env.api()
                .url(&format!("/api/v1/webhooks/inbound/{provider}")),
        )
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// An environment taking every provider, and one sent message to `to`.
async fn sent(extra: &[(&str, &str)], to: &str) -> (TestEnv, String, Uuid) {
    let mut vars = vec![
        ("SES_SNS_TOPIC_ARNS", TOPIC),
        ("INBOUND_WEBHOOK_ALLOW_LOOPBACK", "true"),
        ("POSTMARK_WEBHOOK_USERNAME", POSTMARK.0),
        ("POSTMARK_WEBHOOK_PASSWORD", POSTMARK.1),
        ("MAILGUN_WEBHOOK_SIGNING_KEY", MAILGUN_KEY),
    ];
    vars.extend_from_slice(extra);
    let (env, token) = TestEnv::sending(&vars, 1000).await;
    let id = env.send_until(&token, to, "sent", WAIT).await;
    (env, token, id)
}

async fn assert_next_send_suppressed(env: &TestEnv, token: &str, to: &str) {
    let next = env.api().send_simple(token, to).await;
    env.wait_status(next, "suppressed", WAIT).await;
}

/// A loopback HTTP server standing in for SNS: serves the certificate and
/// records every path asked for.
struct FakeSns {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
    key: rsa::RsaPrivateKey,
}

impl FakeSns {
    async fn start() -> FakeSns {
        let dir = std::env::temp_dir().join(format!("fake-sns-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=sns.test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let key =
            rsa::RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
        let cert = std::fs::read(&cert).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (cert, log) = (cert.clone(), log.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                    log.lock().unwrap().push(path.clone());
                    let body = if path.starts_with("/cert.pem") {
                        cert
                    } else {
                        b"<ConfirmSubscriptionResponse/>".to_vec()
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        FakeSns { base, seen, key }
    }

    /// An SNS message of `kind` carrying `message`, signed (version 2).
    fn signed(&self, kind: &str, message: &str, cert_url: &str) -> Value {
        let mut m = json!({
            "Type": kind, "MessageId": Uuid::new_v4().to_string(), "TopicArn": TOPIC,
            "Message": message, "Timestamp": "2026-01-27T14:59:38.237Z",
            "SignatureVersion": "2", "SigningCertURL": cert_url,
        });
        let fields: &[&str] = if kind == "Notification" {
            &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ]
        } else {
            m["Token"] = json!("2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb71854e285d6ad02428b09ceece29417f1f02d609c582afbacc99c583a916b9981dd2728f4ae6fdb82efd087cc3b7849e05798d2d2785c03b0879594eeac82c01f235d0e717736");
            m["SubscribeURL"] = json!(format!(
                "{}/subscribe?Action=ConfirmSubscription",
                self.base
            ));
            &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        };
        let mut text = String::new();
        for f in fields {
            if let Some(v) = m.get(*f).and_then(Value::as_str) {
                text.push_str(&format!("{f}\n{v}\n"));
            }
        }
        let sig = SigningKey::<sha2::Sha256>::new(self.key.clone()).sign(text.as_bytes());
        m["Signature"] = json!(b64(&sig.to_vec()));
        m
    }

    fn cert_url(&self) -> String {
        format!("{}/cert.pem", self.base)
    }
}

fn ses_bounce(id: Uuid, to: &str) -> String {
    json!({
        "notificationType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
                   "bouncedRecipients": [{"emailAddress": to, "status": "5.1.1", "action": "failed",
                                          "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                   "timestamp": "2026-01-27T14:59:38.237Z", "feedbackId": format!("feedback-{}", Uuid::new_v4())},
        "mail": {"timestamp": "2026-01-27T14:59:38.237Z", "source": "sender@example.com",
                 "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
                 "destination": [to], "headersTruncated": false,
                 "headers": [{"name": "Message-ID", "value": message_id(id)}],
                 "commonHeaders": {"messageId": message_id(id)}}
    })
    .to_string()
}

#[tokio::test]
async fn inbound_ses_signed_bounce_is_applied_once_and_a_tampered_one_is_refused() {
    let to = "gone@example.net";
    let (env, token, id) = sent(&[], to).await;
    let sns = FakeSns::start().await;
    let good = sns.signed("Notification", &ses_bounce(id, to), &sns.cert_url());
    let mut tampered = good.clone();
    tampered["Message"] = json!(good["Message"].as_str().unwrap().replace("5.1.1", "5.1.2"));
    let (status, body) = post(&env, "ses", &tampered.to_string(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "invalid_signature");
    assert_eq!(env.status(id).await, "sent");

    let (status, body) = post(
        &env,
        "ses",
        &good.to_string(),
        &[("content-type", "text/plain; charset=UTF-8".into())],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["applied"], 1, "{body}");
    assert_eq!(env.status(id).await, "bounced");
    let (status, body) = post(&env, "ses", &good.to_string(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["duplicates"], 1,
        "the same event is applied once: {body}"
    );
    let listed = env
        .api()
        .get("/api/v1/admin/bounces?source=ses", &token)
        .await;
    let items = listed.body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", listed.body);
    assert_eq!(items[0]["source"], "ses");
    assert_next_send_suppressed(&env, &token, to).await;
}

#[tokio::test]
async fn inbound_ses_subscription_is_verified_and_confirmed() {
    let (env, _token) = TestEnv::sending(
        &[
            ("SES_SNS_TOPIC_ARNS", TOPIC),
            ("INBOUND_WEBHOOK_ALLOW_LOOPBACK", "true"),
        ],
        10,
    )
    .await;
    let sns = FakeSns::start().await;
    let message = "You have chosen to subscribe to the topic. To confirm the subscription, visit the SubscribeURL included in this message.";
    let confirmation = sns.signed("SubscriptionConfirmation", message, &sns.cert_url());
    let (status, body) = post(&env, "ses", &confirmation.to_string(), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["subscription"], "confirmed");
    assert!(sns
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.starts_with("/subscribe?Action=ConfirmSubscription")));
}

#[tokio::test]
async fn inbound_ses_certificate_on_a_foreign_host_is_refused() {
    let to = "kept@example.net";
    let (env, _token, id) = sent(&[], to).await;
    let sns = FakeSns::start().await;
    for url in [
        "https://evil.example/cert.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
    ] {
        let forged = sns.signed("Notification", &ses_bounce(id, to), url);
        let (status, body) = post(&env, "ses", &forged.to_string(), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "untrusted_certificate_url");
    }
    assert!(sns.seen.lock().unwrap().is_empty());
    let mut other = sns.signed("Notification", &ses_bounce(id, to), &sns.cert_url());
    other["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:not-ours");
    let (status, body) = post(&env, "ses", &other.to_string(), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(env.status(id).await, "sent");
}

#[tokio::test]
async fn inbound_sendgrid_signed_batch_bounces_and_complains() {
    use p256::pkcs8::EncodePublicKey;
    let key = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let public = b64(key.verifying_key().to_public_key_der().unwrap().as_bytes());
    let (env, token, bounced) =
        sent(&[("SENDGRID_WEBHOOK_PUBLIC_KEY", &public)], "a@example.net").await;
    let complained = env.send_until(&token, "b@example.net", "sent", WAIT).await;
    let body = json!([
        {"email": "a@example.net", "timestamp": 1513299569, "smtp-id": message_id(bounced), "event": "bounce",
         "sg_event_id": format!("bounce-{bounced}"), "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
         "reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce"},
        {"email": "b@example.net", "timestamp": 1513299569, "smtp-id": message_id(complained), "event": "spamreport",
         "sg_event_id": format!("spam-{complained}"), "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"},
        {"email": "b@example.net", "timestamp": 1513299569, "event": "open", "sg_event_id": "open-1"}
    ])
    .to_string();
    let ts = now();
    let sign = |key: &p256::ecdsa::SigningKey| {
        let sig: p256::ecdsa::Signature = key.sign(format!("{ts}{body}").as_bytes());
        b64(sig.to_der().as_bytes())
    };
    let other = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
    let headers = |sig: String| {
        vec![
            ("X-Twilio-Email-Event-Webhook-Signature", sig),
            ("X-Twilio-Email-Event-Webhook-Timestamp", ts.clone()),
            ("content-type", "application/json".into()),
        ]
    };
    let (status, res) = post(&env, "sendgrid", &body, &headers(sign(&other))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    assert_eq!(res["error"]["code"], "invalid_signature");
    assert_eq!(env.status(bounced).await, "sent");
    let (status, res) = post(&env, "sendgrid", &body, &headers(sign(&key))).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(
        (
            res["data"]["applied"].as_u64(),
            res["data"]["ignored"].as_u64()
        ),
        (Some(2), Some(1)),
        "{res}"
    );
    assert_eq!(env.status(bounced).await, "bounced");
    assert_eq!(env.status(complained).await, "complained");
}

#[tokio::test]
async fn inbound_postmark_hard_bounce_needs_the_basic_credentials() {
    let to = "pm@example.net";
    let (env, token, id) = sent(&[], to).await;
    let body = json!({
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807u64,
        "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce", "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"notify_message_id": id.to_string()}, "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details", "Email": to, "From": "sender@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z", "DumpAvailable": true, "Inactive": true,
        "CanActivate": true, "Subject": "Test subject"
    })
    .to_string();
    let auth = |user: &str, pw: &str| {
        vec![(
            "authorization",
            format!("Basic {}", b64(format!("{user}:{pw}").as_bytes())),
        )]
    };
    let (status, res) = post(&env, "postmark", &body, &auth(POSTMARK.0, "wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    let (status, _) = post(&env, "postmark", &body, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(env.status(id).await, "sent");
    let (status, res) = post(&env, "postmark", &body, &auth(POSTMARK.0, POSTMARK.1)).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(env.status(id).await, "bounced");
    assert_next_send_suppressed(&env, &token, to).await;
}

fn mailgun(id: Uuid, to: &str, key: &str, timestamp: &str) -> String {
    let token = Uuid::new_v4().simple().to_string();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    json!({
        "signature": {"timestamp": timestamp, "token": token, "signature": hex::encode(mac.finalize().into_bytes())},
        "event-data": {
            "event": "failed", "id": format!("G9Bn5sl1TC6nu79C8C0bwg-{id}"), "timestamp": 1521233195.375624,
            "log-level": "error", "severity": "permanent", "reason": "bounce", "recipient": to,
            "message": {"headers": {"to": to, "message-id": format!("{}@example.com", id.simple()),
                                    "from": "sender@example.com", "subject": "Test permanent_fail webhook"},
                        "attachments": [], "size": 111},
            "delivery-status": {"attempt-no": 1, "message": "550 5.1.1 No such user", "code": 550,
                                "description": "", "session-seconds": 0.0},
            "user-variables": {}
        }
    })
    .to_string()
}

#[tokio::test]
async fn inbound_mailgun_signed_failure_bounces_and_stale_or_forged_ones_are_refused() {
    let to = "mg@example.net";
    let (env, token, id) = sent(&[], to).await;
    let (status, res) = post(
        &env,
        "mailgun",
        &mailgun(id, to, "not-the-key", &now()),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    assert_eq!(res["error"]["code"], "invalid_signature");
    let stale = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600)
        .to_string();
    let (status, res) = post(&env, "mailgun", &mailgun(id, to, MAILGUN_KEY, &stale), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{res}");
    assert_eq!(res["error"]["code"], "stale_timestamp");
    assert_eq!(env.status(id).await, "sent");
    let (status, res) = post(&env, "mailgun", &mailgun(id, to, MAILGUN_KEY, &now()), &[]).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(env.status(id).await, "bounced");
    assert_next_send_suppressed(&env, &token, to).await;
}

#[tokio::test]
async fn inbound_unconfigured_or_unknown_provider_is_not_found() {
    let mut env = TestEnv::new().await;
    env.start_api().await;
    for (provider, code) in [
        ("sendgrid", "provider_not_configured"),
        ("ses", "provider_not_configured"),
        ("nope", "not_found"),
    ] {
        let (status, res) = post(&env, provider, "[]", &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{provider}: {res}");
        assert_eq!(res["error"]["code"], code, "{provider}");
    }
}
