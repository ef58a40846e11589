//! Attachments: stored with the message, delivered as MIME parts, and
//! refused with 413 beyond the configured sizes.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use mail_parser::MimeHeaders;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::TestEnv;

const SEND: &str = "/api/v1/messages/email/send";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_arrive_as_mime_parts() {
    let (env, token) = TestEnv::sending(&[], 100).await;
    let pdf: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let res = env
        .api()
        .post(SEND, &token, &json!({"to": "a@example.org", "subject": "Invoice", "content": "<p>Attached.</p>",
            "attachments": [
                {"filename": "invoice.pdf", "content_type": "application/pdf", "content": STANDARD.encode(&pdf)},
                {"filename": "notes.txt", "content_type": "text/plain", "content": STANDARD.encode("line one\n")},
            ]}))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let mail = env.smtp.wait_for(1, Duration::from_secs(20)).await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail[0].data)
        .unwrap();
    assert_eq!(parsed.body_html(0).unwrap(), "<p>Attached.</p>");
    assert_eq!(parsed.attachment_count(), 2);
    let first = parsed.attachment(0).unwrap();
    assert_eq!(first.attachment_name(), Some("invoice.pdf"));
    assert_eq!(first.content_type().map(|c| c.ctype()), Some("application"));
    assert_eq!(first.contents(), &pdf[..]);
    let second = parsed.attachment(1).unwrap();
    assert_eq!(second.attachment_name(), Some("notes.txt"));
    assert_eq!(second.contents(), b"line one\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_or_malformed_attachments_are_refused_and_nothing_is_recorded() {
    let mut env =
        TestEnv::with_vars(&[("ATTACHMENT_MAX_SIZE", "1000"), ("EMAIL_MAX_SIZE", "2500")]).await;
    env.start_api().await;
    let api = env.api();
    let (_, token) = api.token(&env.pool, &["send"]).await;
    let file = |size: usize| {
        json!({"filename": "f.bin", "content_type": "application/octet-stream",
        "content": STANDARD.encode(vec![7u8; size])})
    };
    let send = |attachments: serde_json::Value| json!({"to": "a@example.org", "subject": "s", "content": "<p>c</p>", "attachments": attachments});
    let res = api.post(SEND, &token, &send(json!([file(1001)]))).await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "attachment_too_large")
    );
    let res = api
        .post(
            SEND,
            &token,
            &send(json!([file(1000), file(1000), file(1000)])),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "email_too_large")
    );
    let res = api
        .post(
            SEND,
            &token,
            &send(json!([{"filename": "x", "content_type": "text/plain", "content": "%%%"}])),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_attachment")
    );
    let res = api
        .post(
            SEND,
            &token,
            &send(json!([{"filename": "../x", "content_type": "text/plain", "content": ""}])),
        )
        .await;
    assert_eq!(
        (res.status, res.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error")
    );
    let res = api
        .post(
            SEND,
            &token,
            &send(json!([{"filename": "x", "content_type": "nonsense", "content": ""}])),
        )
        .await;
    assert_eq!(res.body["error"]["field"], "attachments[0].content_type");
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM message_records")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(records, 0, "no half-written records");
    // Within the limits it is accepted.
    let res = api
        .post(SEND, &token, &send(json!([file(1000), file(1000)])))
        .await;
    assert_eq!(res.status, StatusCode::ACCEPTED, "{}", res.body);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM message_attachments")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}
