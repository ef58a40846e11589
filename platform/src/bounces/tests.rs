//! The readers against samples built as MTAs build them
//! (tests/fixtures/bounces).

use uuid::Uuid;

use super::*;

const RECIPIENT: &str = "Gone.User@Example.org";
const ACCOUNT: &str = "sender@example.com";

fn sample(name: &str, record: Uuid) -> Vec<u8> {
    let path = format!(
        "{}/../tests/fixtures/bounces/{name}.eml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.replace(
        "{{MESSAGE_ID}}",
        &format!("{}@example.com", record.simple()),
    )
    .replace("{{NOTIFY_ID}}", &record.to_string())
    .replace("{{RECIPIENT}}", RECIPIENT)
    .replace("{{ACCOUNT}}", ACCOUNT)
    .replace('\n', "\r\n")
    .into_bytes()
}

fn report(name: &str) -> (Report, Uuid) {
    let record = Uuid::new_v4();
    match parse(&sample(name, record)) {
        Parsed::Report(report) => (report, record),
        other => panic!("{name}: expected a report, got {other:?}"),
    }
}

#[test]
fn a_postfix_dsn_is_a_hard_bounce_of_the_original_recipient() {
    let (report, record) = report("postfix_hard");
    assert_eq!(report.format, "dsn");
    assert_eq!(report.original.record_id(), Some(record));
    let [feedback] = report.feedback.as_slice() else {
        panic!("one recipient: {:?}", report.feedback)
    };
    assert_eq!(feedback.kind, Kind::Hard);
    assert_eq!(feedback.recipient.as_deref(), Some("gone.user@example.org"));
    assert_eq!(feedback.status_code.as_deref(), Some("5.1.1"));
    let diagnostic = feedback.diagnostic.as_deref().unwrap_or_default();
    assert!(
        diagnostic.starts_with("550 5.1.1") && diagnostic.contains("User unknown in virtual"),
        "{diagnostic}"
    );
}

#[test]
fn a_delayed_gmail_dsn_is_a_soft_bounce_found_through_the_returned_headers() {
    let (report, record) = report("gmail_delayed");
    assert_eq!(report.original.notify_id, Some(record));
    assert_eq!(report.feedback[0].kind, Kind::Soft);
    assert_eq!(report.feedback[0].status_code.as_deref(), Some("4.4.1"));
}

#[test]
fn an_exchange_ndr_matches_by_message_id_alone() {
    let (report, record) = report("exchange_hard");
    assert_eq!(report.original.notify_id, None);
    assert_eq!(report.original.record_id(), Some(record));
    assert_eq!(report.feedback[0].kind, Kind::Hard);
    assert_eq!(report.feedback[0].status_code.as_deref(), Some("5.1.10"));
}

#[test]
fn an_arf_report_is_a_complaint_of_the_original_recipient() {
    let (report, record) = report("arf_complaint");
    assert_eq!(report.format, "arf");
    assert_eq!(report.original.record_id(), Some(record));
    let feedback = &report.feedback[0];
    assert_eq!(feedback.kind, Kind::Complaint);
    assert_eq!(feedback.recipient.as_deref(), Some("gone.user@example.org"));
    assert_eq!(
        feedback.diagnostic.as_deref(),
        Some("feedback-type: abuse; user-agent: SomeGenerator/1.0")
    );
}

#[test]
fn plain_text_bounces_of_qmail_and_exim_are_read() {
    for name in ["qmail_plain", "exim_plain"] {
        let (report, record) = report(name);
        assert_eq!(report.format, "plain", "{name}");
        assert_eq!(report.original.record_id(), Some(record), "{name}");
        let feedback = &report.feedback[0];
        assert_eq!(feedback.kind, Kind::Hard, "{name}");
        assert_eq!(
            feedback.recipient.as_deref(),
            Some("gone.user@example.org"),
            "{name}"
        );
        assert!(
            feedback
                .status_code
                .as_deref()
                .is_some_and(|s| s.starts_with("5.")),
            "{name}: {feedback:?}"
        );
    }
}

#[test]
fn replies_and_success_notices_are_not_reports() {
    for name in ["out_of_office", "delivered_dsn"] {
        assert_eq!(
            parse(&sample(name, Uuid::new_v4())),
            Parsed::NotAReport,
            "{name}"
        );
    }
}

#[test]
fn a_report_without_its_fields_is_malformed() {
    assert!(matches!(
        parse(&sample("malformed_report", Uuid::new_v4())),
        Parsed::Malformed(_)
    ));
    assert!(matches!(
        parse(b""),
        Parsed::Malformed(_) | Parsed::NotAReport
    ));
}

#[test]
fn a_message_id_of_someone_else_names_no_record() {
    let original = Original {
        message_id: Some("CAF=abc123@mail.gmail.com".into()),
        notify_id: None,
    };
    assert_eq!(original.record_id(), None);
}

#[test]
fn parsing_never_panics_on_cut_or_scrambled_reports() {
    let full = sample("postfix_hard", Uuid::new_v4());
    for end in (0..full.len()).step_by(37) {
        let _ = parse(&full[..end]);
    }
    let mut scrambled = full.clone();
    for (i, b) in scrambled.iter_mut().enumerate() {
        if i % 11 == 0 {
            *b = b'\n';
        }
    }
    let _ = parse(&scrambled);
}
