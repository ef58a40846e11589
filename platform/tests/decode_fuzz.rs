//! Property test: `TaskMessage::decode` never panics, whatever the body,
//! the headers (any AMQP field values, Celery's header names with any
//! types) and the content type/encoding. Whatever decodes also survives
//! a re-encode and decode, and the aliases applied to it. Compressed
//! bodies (kombu's `compression` header) with flipped bytes never panic
//! the decoders either.
//!
//! Runs `DECODE_FUZZ_CASES` cases per property (default 2000; proptest's
//! `PROPTEST_CASES` is overridden by it).

use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::BasicProperties;
use platform::celery::compression;
use platform::celery::{TaskAliases, TaskMessage};
use proptest::prelude::*;
use std::io::Write;

fn cases() -> u32 {
    std::env::var("DECODE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Any AMQP field value, nested a few levels.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        ".{0,12}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        // Strings shaped like Celery's dates and lists, valid or not.
        prop_oneof![
            Just("2026-01-01T00:00:00"),
            Just("2026-01-01T00:00:00+05:30"),
            Just("2026-13-45T99:99:99Z"),
            Just("[1, 2]"),
            Just(""),
        ]
        .prop_map(|s| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            prop::collection::vec((".{0,8}", inner), 0..4).prop_map(|kv| {
                let mut t = FieldTable::default();
                for (k, v) in kv {
                    t.insert(ShortString::from(k), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

/// Headers mixing Celery's names (with values of any type) and others.
fn headers() -> impl Strategy<Value = Option<FieldTable>> {
    let name = prop_oneof![
        Just("lang".to_string()),
        Just("task".to_string()),
        Just("id".to_string()),
        Just("root_id".to_string()),
        Just("parent_id".to_string()),
        Just("group".to_string()),
        Just("eta".to_string()),
        Just("expires".to_string()),
        Just("retries".to_string()),
        Just("timelimit".to_string()),
        Just("argsrepr".to_string()),
        Just("kwargsrepr".to_string()),
        Just("origin".to_string()),
        Just("compression".to_string()),
        ".{0,10}",
    ];
    let base = prop_oneof![
        // Mostly a valid minimum, so the body parser is reached.
        6 => Just(vec![
            (
                "task",
                AMQPValue::LongString(LongString::from(b"t".to_vec()))
            ),
            ("id", AMQPValue::LongString(LongString::from(b"i".to_vec()))),
        ]),
        1 => Just(vec![]),
    ];
    prop::option::weighted(
        0.95,
        (base, prop::collection::vec((name, amqp_value()), 0..4)).prop_map(|(base, extra)| {
            let mut t = FieldTable::default();
            for (k, v) in base {
                t.insert(ShortString::from(k), v);
            }
            for (k, v) in extra {
                t.insert(ShortString::from(k), v);
            }
            t
        }),
    )
}

/// A JSON value (for bodies that parse but may have any shape).
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,10}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => json().prop_map(|v| v.to_string().into_bytes()),
        1 => (json(), json(), json())
            .prop_map(|(a, k, e)| serde_json::json!([a, k, e]).to_string().into_bytes()),
        3 => (prop::collection::vec(json(), 0..4), json()).prop_map(|(a, e)| {
            serde_json::json!([a, {"to": "x"}, e])
                .to_string()
                .into_bytes()
        }),
    ]
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    let content_type = prop::option::weighted(
        0.95,
        prop_oneof![
            6 => Just("application/json".to_string()),
            1 => Just("application/x-python-serialize".to_string()),
            1 => ".{0,20}",
        ],
    );
    let encoding = prop::option::of(prop_oneof![
        6 => Just("utf-8".to_string()),
        1 => Just("binary".to_string()),
        1 => ".{0,8}",
    ]);
    (
        content_type,
        encoding,
        headers(),
        prop::option::of(any::<u8>()),
        prop::option::of(".{0,8}"),
    )
        .prop_map(|(ct, enc, headers, priority, reply_to)| {
            let mut p = BasicProperties::default();
            if let Some(ct) = ct {
                p = p.with_content_type(ShortString::from(ct));
            }
            if let Some(enc) = enc {
                p = p.with_content_encoding(ShortString::from(enc));
            }
            if let Some(h) = headers {
                p = p.with_headers(h);
            }
            if let Some(priority) = priority {
                p = p.with_priority(priority);
            }
            if let Some(r) = reply_to {
                p = p.with_reply_to(ShortString::from(r));
            }
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics(properties in properties(), body in body()) {
        if let Ok(mut message) = TaskMessage::decode(&properties, &body) {
            // What decoded re-encodes to something that decodes again.
            let again = TaskMessage::decode(&message.properties(), &message.body());
            prop_assert!(again.is_ok(), "{:?}", again);
            let aliases = TaskAliases::parse("t=notifications.send_email").unwrap();
            aliases.apply(&mut message);
        }
    }
}

/// kombu's compression names, and others.
fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("application/x-gzip".to_string()),
        Just("application/x-bz2".to_string()),
        Just("application/x-lzma".to_string()),
        Just("zlib".to_string()),
        ".{0,12}",
    ]
}

/// `body` compressed as `method` says (unknown methods: as zlib).
fn compress(method: &str, body: &[u8]) -> Vec<u8> {
    match method {
        "application/x-bz2" => {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        "application/x-lzma" => {
            let mut out = Vec::new();
            lzma_rs::xz_compress(&mut std::io::BufReader::new(body), &mut out).unwrap();
            out
        }
        _ => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 4, ..ProptestConfig::default() })]

    #[test]
    fn compressed_bodies_never_panic(
        method in method(),
        body in body(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let mut compressed = compress(&method, &body);
        for (at, byte) in flips {
            let i = at.index(compressed.len());
            compressed[i] ^= byte;
        }
        if let Some(cut) = cut {
            compressed.truncate(cut.index(compressed.len() + 1));
        }
        let _ = compression::decompress(&method, &compressed, 1 << 16);
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("task"), AMQPValue::LongString(LongString::from(b"t".to_vec())));
        headers.insert(ShortString::from("id"), AMQPValue::LongString(LongString::from(b"i".to_vec())));
        headers.insert(ShortString::from("compression"), AMQPValue::LongString(LongString::from(method.into_bytes())));
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers);
        if let Ok(message) = TaskMessage::decode(&properties, &compressed) {
            let again = TaskMessage::decode(&message.properties(), &message.body());
            prop_assert!(again.is_ok(), "{:?}", again);
        }
    }
}
