//! The providers' documented example payloads (SES's notification
//! examples, SendGrid's event examples, Postmark's bounce and spam
//! complaint webhook examples, Mailgun's `failed` and `complained`
//! examples), with our Message-ID where the test matches a message.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::json;

use super::*;
use crate::bounces::Kind;

const RECORD: &str = "0191e6b2c0a57c3e8f1d2a3b4c5d6e7f";

fn message_id() -> String {
    format!("<{RECORD}@example.com>")
}

fn ses_bounce() -> String {
    json!({
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "reportingMTA": "dns; email.example.com",
            "bouncedRecipients": [{
                "emailAddress": "jane@example.com", "status": "5.1.1", "action": "failed",
                "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User"
            }],
            "bounceSubType": "General",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000",
            "remoteMtaIp": "127.0.2.0"
        },
        "mail": {
            "timestamp": "2016-01-27T14:59:38.237Z",
            "source": "john@example.com",
            "messageId": "00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000",
            "destination": ["jane@example.com"],
            "headersTruncated": false,
            "headers": [
                {"name": "From", "value": "\"John Doe\" <john@example.com>"},
                {"name": "Message-ID", "value": message_id()}
            ],
            "commonHeaders": {"from": ["John Doe <john@example.com>"], "to": ["Jane Doe <jane@example.com>"],
                              "messageId": "custom-message-ID", "subject": "Hello"}
        }
    })
    .to_string()
}

#[test]
fn ses_permanent_bounce_is_hard_and_names_our_message() {
    let events = ses::events(&ses_bounce(), "sns-id").unwrap();
    assert_eq!(events.events.len(), 1);
    let e = &events.events[0];
    assert_eq!(e.feedback.kind, Kind::Hard);
    assert_eq!(e.feedback.recipient.as_deref(), Some("jane@example.com"));
    assert_eq!(e.feedback.status_code.as_deref(), Some("5.1.1"));
    assert_eq!(
        e.original
            .record_id()
            .map(|u| u.simple().to_string())
            .as_deref(),
        Some(RECORD)
    );
    assert!(e.source_ref.starts_with("00000138111222aa-33322211"));
}

#[test]
fn ses_transient_bounce_is_soft_and_complaint_is_complaint() {
    let soft = ses_bounce().replace("Permanent", "Transient");
    assert_eq!(
        ses::events(&soft, "x").unwrap().events[0].feedback.kind,
        Kind::Soft
    );
    let complaint = json!({
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "AnyCompany Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": "richard@example.com"}],
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2016-01-27T14:59:38.237Z",
            "timestamp": "2016-01-27T14:59:38.237Z",
            "feedbackId": "000001378603177f-18c07c78-fa81-4a58-9dd1-fedc3cb8f49a-000000"
        },
        "mail": {"timestamp": "2016-01-27T14:59:38.237Z", "messageId": "000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000",
                 "source": "john@example.com", "destination": ["richard@example.com"]}
    })
    .to_string();
    let events = ses::events(&complaint, "x").unwrap();
    assert_eq!(events.events[0].feedback.kind, Kind::Complaint);
    assert_eq!(
        events.events[0].feedback.diagnostic.as_deref(),
        Some("abuse")
    );
    assert_eq!(events.events[0].original.record_id(), None);
    let delivery = json!({"notificationType": "Delivery", "mail": {}, "delivery": {}}).to_string();
    assert_eq!(ses::events(&delivery, "x").unwrap().ignored, 1);
    assert!(ses::events("not json", "x").is_err());
}

fn envelope(message: &str) -> sns::Envelope {
    sns::Envelope::parse(
        json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Subject": "My First Message",
            "Message": message,
            "Timestamp": "2012-05-02T00:54:06.655Z",
            "SignatureVersion": "1",
            "Signature": "",
            "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe"
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

#[test]
fn sns_string_to_sign_is_the_documented_canonical_form() {
    let e = envelope("Hello world!");
    assert_eq!(
        e.string_to_sign().unwrap(),
        "Message\nHello world!\nMessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\nSubject\nMy First Message\n\
         Timestamp\n2012-05-02T00:54:06.655Z\nTopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nNotification\n"
    );
}

#[test]
fn sns_signatures_verify_in_both_versions_and_tampering_fails() {
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
    let public = key.to_public_key();
    let mut e = envelope(&ses_bounce());
    let signed = e.string_to_sign().unwrap();
    let b64 = |s: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(s);
    e.signature = b64(SigningKey::<sha1::Sha1>::new(key.clone())
        .sign(signed.as_bytes())
        .to_vec());
    e.verify_with(&public).unwrap();
    e.signature_version = "2".into();
    assert!(
        e.verify_with(&public).is_err(),
        "a v1 signature is no v2 one"
    );
    e.signature = b64(SigningKey::<sha2::Sha256>::new(key)
        .sign(signed.as_bytes())
        .to_vec());
    e.verify_with(&public).unwrap();
    e.message = e.message.replace("Permanent", "Transient");
    assert!(matches!(
        e.verify_with(&public),
        Err(InboundError::Unauthenticated(_))
    ));
}

#[test]
fn sns_urls_must_be_https_on_an_sns_host() {
    for ok in [
        "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
        "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
    ] {
        assert!(sns::check_url(ok, false).is_ok(), "{ok}");
    }
    for bad in [
        "http://sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
        "https://evil.example/sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com:8443/x.pem",
        "https://user@sns.us-east-1.amazonaws.com/x.pem",
        "https://s3.amazonaws.com/x.pem",
        "http://127.0.0.1:8080/x.pem",
    ] {
        assert!(sns::check_url(bad, false).is_err(), "{bad}");
    }
    assert!(sns::check_url("http://127.0.0.1:8080/x.pem", true).is_ok());
    assert!(sns::check_url("http://10.0.0.1/x.pem", true).is_err());
}

fn sendgrid_batch() -> String {
    json!([
        {"email": "example@test.com", "timestamp": 1513299569, "smtp-id": message_id(),
         "event": "bounce", "category": "cat facts", "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
         "reason": "500 unknown recipient", "status": "5.0.0", "type": "bounce"},
        {"email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "bounce", "sg_event_id": "blocked-1", "reason": "500 blocked", "status": "5.0.0", "type": "blocked"},
        {"email": "example@test.com", "timestamp": 1513299569, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "deferred", "sg_event_id": "deferred-1", "response": "400 try again later", "attempt": "5"},
        {"email": "example@test.com", "timestamp": 1513299569, "event": "dropped",
         "sg_event_id": "dropped-1", "reason": "Bounced Address", "status": "5.0.0"},
        {"email": "example@test.com", "timestamp": 1513299569, "event": "dropped",
         "sg_event_id": "dropped-2", "reason": "Unsubscribed Address", "status": "5.0.0"},
        {"email": "example@test.com", "timestamp": 1513299569, "smtp-id": message_id(),
         "event": "spamreport", "sg_event_id": "spam-1"},
        {"email": "example@test.com", "timestamp": 1513299569, "event": "delivered",
         "sg_event_id": "delivered-1", "response": "250 OK"},
        {"email": "example@test.com", "timestamp": 1513299569, "event": "open",
         "sg_event_id": "open-1", "useragent": "Mozilla/4.0", "ip": "255.255.255.255"}
    ])
    .to_string()
}

#[test]
fn sendgrid_events_map_to_kinds_and_the_rest_is_ignored() {
    let events = sendgrid::events(sendgrid_batch().as_bytes()).unwrap();
    let kinds: Vec<Kind> = events.events.iter().map(|e| e.feedback.kind).collect();
    assert_eq!(
        kinds,
        [
            Kind::Hard,
            Kind::Soft,
            Kind::Soft,
            Kind::Hard,
            Kind::Complaint
        ]
    );
    assert_eq!(events.ignored, 3);
    assert_eq!(
        events.events[0]
            .original
            .record_id()
            .unwrap()
            .simple()
            .to_string(),
        RECORD
    );
    assert_eq!(events.events[0].source_ref, "6g4ZI7SA-xmRDv57GoPIPw==");
}

#[test]
fn sendgrid_signature_covers_timestamp_and_body() {
    use p256::ecdsa::SigningKey as EcKey;
    use p256::pkcs8::EncodePublicKey;
    let key = EcKey::random(&mut rand::thread_rng());
    let spki = key.verifying_key().to_public_key_der().unwrap();
    let verifying =
        sendgrid::parse_key(&base64::engine::general_purpose::STANDARD.encode(spki.as_bytes()))
            .unwrap();
    let body = sendgrid_batch();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let sign = |ts: &str, body: &str| {
        let sig: p256::ecdsa::Signature = key.sign(format!("{ts}{body}").as_bytes());
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    };
    let max = Duration::from_secs(300);
    let good = sign(&now, &body);
    sendgrid::verify(&verifying, Some(&good), Some(&now), body.as_bytes(), max).unwrap();
    let tampered = body.replace("bounce", "bounced");
    assert!(sendgrid::verify(
        &verifying,
        Some(&good),
        Some(&now),
        tampered.as_bytes(),
        max
    )
    .is_err());
    assert!(sendgrid::verify(&verifying, None, Some(&now), body.as_bytes(), max).is_err());
    let old = "1513299569";
    let stale = sign(old, &body);
    assert!(matches!(
        sendgrid::verify(&verifying, Some(&stale), Some(old), body.as_bytes(), max),
        Err(InboundError::Stale { .. })
    ));
}

fn postmark_bounce() -> serde_json::Value {
    json!({
        "RecordType": "Bounce", "MessageStream": "outbound", "ID": 4323372036854775807u64,
        "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce", "Tag": "Test",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"a_key": "a_value", "notify_message_id": "0191e6b2-c0a5-7c3e-8f1d-2a3b4c5d6e7f"},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "Test bounce details", "Email": "john@example.com", "From": "sender@example.com",
        "BouncedAt": "2019-11-05T16:33:54.9070259Z", "DumpAvailable": true, "Inactive": true,
        "CanActivate": true, "Subject": "Test subject", "Content": "<Full dump of bounce>"
    })
}

#[test]
fn postmark_bounces_and_complaints() {
    let events = postmark::events(postmark_bounce().to_string().as_bytes()).unwrap();
    let e = &events.events[0];
    assert_eq!(e.feedback.kind, Kind::Hard);
    assert_eq!(e.source_ref, "4323372036854775807");
    assert_eq!(e.original.record_id().unwrap().simple().to_string(), RECORD);
    let mut soft = postmark_bounce();
    soft["Type"] = json!("SoftBounce");
    soft["Metadata"] = json!({});
    soft["Content"] = json!(format!(
        "Received: from x\r\nMessage-ID: {}\r\n",
        message_id()
    ));
    let events = postmark::events(soft.to_string().as_bytes()).unwrap();
    assert_eq!(events.events[0].feedback.kind, Kind::Soft);
    assert_eq!(
        events.events[0]
            .original
            .record_id()
            .unwrap()
            .simple()
            .to_string(),
        RECORD
    );
    let mut complaint = postmark_bounce();
    complaint["RecordType"] = json!("SpamComplaint");
    complaint["Type"] = json!("SpamComplaint");
    assert_eq!(
        postmark::events(complaint.to_string().as_bytes())
            .unwrap()
            .events[0]
            .feedback
            .kind,
        Kind::Complaint
    );
    let mut auto = postmark_bounce();
    auto["Type"] = json!("AutoResponder");
    assert_eq!(
        postmark::events(auto.to_string().as_bytes())
            .unwrap()
            .ignored,
        1
    );
}

#[test]
fn postmark_basic_auth() {
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("hook:s3cret")
    );
    postmark::check_basic_auth(Some(&header), "hook", "s3cret").unwrap();
    assert!(postmark::check_basic_auth(Some(&header), "hook", "other").is_err());
    assert!(postmark::check_basic_auth(None, "hook", "s3cret").is_err());
    assert!(postmark::check_basic_auth(Some("Bearer x"), "hook", "s3cret").is_err());
}

fn mailgun_failed(key: &str, timestamp: &str) -> String {
    let token = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0";
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{timestamp}{token}").as_bytes());
    json!({
        "signature": {"timestamp": timestamp, "token": token,
                      "signature": hex::encode(mac.finalize().into_bytes())},
        "event-data": {
            "event": "failed", "id": "G9Bn5sl1TC6nu79C8C0bwg", "timestamp": 1521233195.375624,
            "log-level": "error", "severity": "permanent", "reason": "suppress-bounce",
            "recipient": "alice@example.com",
            "message": {"headers": {"to": "Alice <alice@example.com>", "message-id": format!("{RECORD}@example.com"),
                                    "from": "Bob <bob@example.com>", "subject": "Test permanent_fail webhook"},
                        "attachments": [], "size": 111},
            "delivery-status": {"attempt-no": 1, "message": "", "code": 605,
                                "description": "Not delivering to previously bounced address", "session-seconds": 0.0},
            "flags": {"is-routed": false, "is-authenticated": true, "is-system-test": false, "is-test-mode": false},
            "user-variables": {"my_var_1": "Mailgun Variable #1"}
        }
    })
    .to_string()
}

#[test]
fn mailgun_signed_failed_event() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let max = Duration::from_secs(300);
    let hook = mailgun::Webhook::parse(mailgun_failed("key-1", &now).as_bytes()).unwrap();
    hook.verify(b"key-1", max).unwrap();
    assert!(hook.verify(b"key-2", max).is_err());
    let events = hook.events().unwrap();
    let e = &events.events[0];
    assert_eq!(e.feedback.kind, Kind::Hard);
    assert_eq!(e.feedback.status_code.as_deref(), Some("605"));
    assert_eq!(e.original.record_id().unwrap().simple().to_string(), RECORD);
    let stale = mailgun::Webhook::parse(mailgun_failed("key-1", "1529006854").as_bytes()).unwrap();
    assert!(matches!(
        stale.verify(b"key-1", max),
        Err(InboundError::Stale { .. })
    ));
    let temporary = mailgun_failed("k", &now).replace("\"permanent\"", "\"temporary\"");
    let hook = mailgun::Webhook::parse(temporary.as_bytes()).unwrap();
    assert_eq!(hook.events().unwrap().events[0].feedback.kind, Kind::Soft);
}
