//! The signer against RFC 8463's published example (both of its
//! signatures reproduced byte for byte), and round trips through a small
//! verifier written from RFC 6376 §6.1.3: what relaxed canonicalisation
//! forgives still verifies, what it does not fails.

use super::*;
use rsa::traits::PublicKeyParts as _;

/// RFC 8463 Appendix A.1: the Ed25519 seed (RFC 8032 §7.1, test 1) and the
/// RSA key of the example.
const RFC8463_ED25519_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
const RFC8463_ED25519_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
const RFC8463_RSA: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXQIBAAKBgQDkHlOQoBTzWRiGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQi
Y/J16JYi0Qvx/byYzCNb3W91y3FutACDfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqM
KrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3Ip3G+2kryOTIKT+l/K4w3QIDAQAB
AoGAH0cxOhFZDgzXWhDhnAJDw5s4roOXN4OhjiXa8W7Y3rhX3FJqmJSPuC8N9vQm
6SVbaLAE4SG5mLMueHlh4KXffEpuLEiNp9Ss3O4YfLiQpbRqE7Tm5SxKjvvQoZZe
zHorimOaChRL2it47iuWxzxSiRMv4c+j70GiWdxXnxe4UoECQQDzJB/0U58W7RZy
6enGVj2kWF732CoWFZWzi1FicudrBFoy63QwcowpoCazKtvZGMNlPWnC7x/6o8Gc
uSe0ga2xAkEA8C7PipPm1/1fTRQvj1o/dDmZp243044ZNyxjg+/OPN0oWCbXIGxy
WvmZbXriOWoSALJTjExEgraHEgnXssuk7QJBALl5ICsYMu6hMxO73gnfNayNgPxd
WFV6Z7ULnKyV7HSVYF0hgYOHjeYe9gaMtiJYoo0zGN+L3AAtNP9huqkWlzECQE1a
licIeVlo1e+qJ6Mgqr0Q7Aa7falZ448ccbSFYEPD6oFxiOl9Y9se9iYHZKKfIcst
o7DUw1/hz2Ck4N5JrgUCQQCyKveNvjzkkd8HjYs0SwM0fPjK16//5qDZ2UiDGnOe
uEzxBDAr518Z8VFbR41in3W4Y3yCDgQlLlcETrS+zYcL
-----END RSA PRIVATE KEY-----";

/// RFC 8463 Appendix A.3: the example message with its two signatures.
const RFC8463_MESSAGE: &str = concat!(
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n",
    " d=football.example.com; i=@football.example.com;\r\n",
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n",
    " subject : date : message-id : from : subject : date;\r\n",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n",
    " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n",
    " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n",
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n",
    " d=football.example.com; i=@football.example.com;\r\n",
    " q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n",
    " date : message-id : from : subject : date;\r\n",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n",
    " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n",
    " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n",
    " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n",
    "From: Joe SixPack <joe@football.example.com>\r\n",
    "To: Suzie Q <suzie@shopping.example.net>\r\n",
    "Subject: Is dinner ready?\r\n",
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n",
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n",
    "\r\n",
    "Hi.\r\n",
    "\r\n",
    "We lost the game.  Are you hungry yet?\r\n",
    "\r\n",
    "Joe.\r\n",
);

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_string())
}

fn ed25519_signer(domain: &str, seed: &str) -> Signer {
    Signer::new(domain, "ed", Algorithm::Ed25519, &secret(seed)).unwrap()
}

fn rsa_signer(domain: &str) -> Signer {
    Signer::new(domain, "rsa", Algorithm::Rsa, &secret(RFC8463_RSA)).unwrap()
}

/// The tags of a signature field, names and values trimmed, FWS removed.
fn tags(value: &[u8]) -> Vec<(String, String)> {
    let unfolded: String = std::str::from_utf8(value)
        .unwrap()
        .chars()
        .filter(|c| !matches!(c, '\r' | '\n'))
        .collect();
    unfolded
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(n, v)| {
            let v: String = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (n.trim().to_string(), v)
        })
        .collect()
}

fn tag(value: &[u8], name: &str) -> String {
    tags(value)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {name}= tag"))
}

/// The field value with `b=`'s value (and the FWS in it) deleted (§3.7).
fn without_b(value: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(value).unwrap();
    let mut offset = 0;
    for part in text.split(';') {
        if let Some((name, _)) = part.split_once('=') {
            if name.trim() == "b" {
                let after_eq = offset + name.len() + 1;
                let end = offset + part.len();
                return [&text[..after_eq], &text[end..]].concat().into_bytes();
            }
        }
        offset += part.len() + 1;
    }
    panic!("no b= tag in {text}")
}

enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

fn public(signer: &Signer) -> PublicKey {
    match &signer.key {
        PrivateKey::Rsa(k) => PublicKey::Rsa(k.to_public_key()),
        PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
    }
}

/// Verifies the `index`th DKIM-Signature of `message` as §6.1.3 says.
fn verify(message: &[u8], index: usize, key: &PublicKey) -> Result<(), String> {
    let (fields, body) = canonical::split(message).map_err(|e| e.to_string())?;
    let field = fields
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(b"dkim-signature"))
        .nth(index)
        .ok_or("no such signature")?;
    let body_hash = STANDARD.encode(Sha256::digest(canonical::relaxed_body(body)));
    if body_hash != tag(field.value, "bh").replace(' ', "") {
        return Err("body hash mismatch".into());
    }
    let h = tag(field.value, "h");
    let names: Vec<&str> = h.split(':').map(str::trim).collect();
    let unsigned = without_b(field.value);
    let input = canonical::header_hash_input(
        &fields,
        &names,
        Field {
            name: field.name,
            value: &unsigned,
        },
    );
    let digest: [u8; 32] = Sha256::digest(&input).into();
    let b = STANDARD
        .decode(tag(field.value, "b").replace(' ', ""))
        .map_err(|e| e.to_string())?;
    let ok = match key {
        PublicKey::Rsa(k) => k.verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &b).is_ok(),
        PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(&b)
            .is_ok_and(|s| k.verify_strict(&digest, &s).is_ok()),
    };
    ok.then_some(()).ok_or_else(|| "signature mismatch".into())
}

#[test]
fn rfc8463_example_signatures_are_reproduced_byte_for_byte() {
    let (fields, body) = canonical::split(RFC8463_MESSAGE.as_bytes()).unwrap();
    assert_eq!(
        STANDARD.encode(Sha256::digest(canonical::relaxed_body(body))),
        "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
    );
    let ed = ed25519_signer("football.example.com", RFC8463_ED25519_SEED);
    let rsa = rsa_signer("football.example.com");
    let published = super::super::KeyPair::import(Algorithm::Ed25519, RFC8463_ED25519_SEED)
        .unwrap()
        .public_key;
    assert_eq!(published, RFC8463_ED25519_PUBLIC);
    let signatures: Vec<&Field<'_>> = fields
        .iter()
        .filter(|f| f.name == b"DKIM-Signature")
        .collect();
    for (field, signer) in signatures.into_iter().zip([&ed, &rsa]) {
        let names_tag = tag(field.value, "h");
        let names: Vec<&str> = names_tag.split(':').map(str::trim).collect();
        let unsigned = without_b(field.value);
        let input = canonical::header_hash_input(
            &fields,
            &names,
            Field {
                name: field.name,
                value: &unsigned,
            },
        );
        let b = signer.key.sign(&Sha256::digest(&input).into()).unwrap();
        assert_eq!(
            STANDARD.encode(b),
            tag(field.value, "b").replace(' ', ""),
            "{:?}",
            signer.algorithm()
        );
        verify(
            RFC8463_MESSAGE.as_bytes(),
            usize::from(signer.algorithm() == Algorithm::Rsa),
            &public(signer),
        )
        .unwrap();
    }
}

/// A message with the awkward parts real mail has: folded and tabbed
/// header values, odd header-name case, runs of WSP and trailing WSP in
/// the body, empty lines at its end, a bare LF.
const AWKWARD: &str = concat!(
    "From: \"News\" <news@example.com>\r\n",
    "to: reader@example.org,\r\n",
    "\t  other@example.org\r\n",
    "SUBJECT:   Weekly   news\t \r\n",
    "Date: Wed, 2 Dec 2026 09:00:00 +0000\r\n",
    "Message-ID: <1@example.com>\r\n",
    "MIME-Version: 1.0\r\n",
    "List-Unsubscribe: <https://example.com/u/abc>,\r\n <mailto:u@example.com>\r\n",
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
    "Content-Type: text/plain; charset=utf-8\r\n",
    "\r\n",
    "Hello  \t there \r\n",
    "\r\n",
    "  indented line\r\n",
    "bare lf follows\n",
    "last line\r\n",
    "\r\n",
    "\r\n",
);

fn both_signed(message: &str) -> (Vec<u8>, [PublicKey; 2]) {
    let ed = ed25519_signer("example.com", RFC8463_ED25519_SEED);
    let rsa = rsa_signer("example.com");
    let keys = [public(&ed), public(&rsa)];
    let out = signed(message.as_bytes(), &[Arc::new(ed), Arc::new(rsa)]).unwrap();
    (out, keys)
}

fn verifies(message: &[u8], keys: &[PublicKey; 2]) -> [Result<(), String>; 2] {
    [verify(message, 0, &keys[0]), verify(message, 1, &keys[1])]
}

/// Replaces the first `from` in the header block or body of `message`.
fn edit(message: &[u8], in_body: bool, from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (head, body) = if in_body {
        (head.to_string(), body.replacen(from, to, 1))
    } else {
        (head.replacen(from, to, 1), body.to_string())
    };
    assert_ne!(format!("{head}\r\n\r\n{body}"), text, "{from:?} not found");
    format!("{head}\r\n\r\n{body}").into_bytes()
}

#[test]
fn both_signatures_verify_and_survive_what_relaxed_canonicalisation_forgives() {
    let (message, keys) = both_signed(AWKWARD);
    for result in verifies(&message, &keys) {
        result.unwrap();
    }
    let forgiven: Vec<(&str, Vec<u8>)> = vec![
        (
            "header names in another case",
            edit(&message, false, "SUBJECT:", "Subject:"),
        ),
        (
            "refolded with other WSP",
            edit(&message, false, "\r\n\t  other", "\r\n other"),
        ),
        (
            "a folded value unfolded",
            edit(&message, false, ">,\r\n <mailto", ">, <mailto"),
        ),
        (
            "WSP around a colon",
            edit(&message, false, "MIME-Version: 1.0", "MIME-Version :  1.0"),
        ),
        (
            "signature refolded",
            edit(&message, false, ";\r\n b=", "; b="),
        ),
        (
            "an unsigned header added",
            edit(
                &message,
                false,
                "MIME-Version",
                "X-Scanned: yes\r\nMIME-Version",
            ),
        ),
        (
            "body WSP changed",
            edit(&message, true, "Hello  \t there", "Hello there\t"),
        ),
        (
            "more empty lines at the end",
            [message.clone(), b"\r\n \r\n".to_vec()].concat(),
        ),
    ];
    for (what, changed) in forgiven {
        for result in verifies(&changed, &keys) {
            assert_eq!(result, Ok(()), "{what}");
        }
    }
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "a body word",
            edit(&message, true, "last line", "lost line"),
        ),
        (
            "an empty line inside the body removed",
            edit(&message, true, "there \r\n\r\n", "there \r\n"),
        ),
        ("the subject", edit(&message, false, "Weekly", "Daily")),
        (
            "a second From",
            edit(
                &message,
                false,
                "MIME-Version",
                "From: x@evil.example\r\nMIME-Version",
            ),
        ),
        (
            "a Reply-To where there was none",
            edit(
                &message,
                false,
                "MIME-Version",
                "Reply-To: x@evil.example\r\nMIME-Version",
            ),
        ),
        (
            "the unsubscribe link",
            edit(&message, false, "u/abc", "u/abd"),
        ),
    ];
    for (what, changed) in refused {
        for result in verifies(&changed, &keys) {
            assert!(result.is_err(), "{what} changed, yet it verifies");
        }
    }
}

#[test]
fn the_signature_field_is_folded_and_lists_every_signed_header_once_more() {
    let (message, _) = both_signed(AWKWARD);
    let text = String::from_utf8(message).unwrap();
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.lines().all(|l| l.len() <= 78), "{head}");
    let (fields, _) = canonical::split(text.as_bytes()).unwrap();
    let signatures: Vec<&Field<'_>> = fields
        .iter()
        .filter(|f| f.name == b"DKIM-Signature")
        .collect();
    assert_eq!(signatures.len(), 2);
    let h = tag(signatures[0].value, "h");
    assert_eq!(
        h.replace(' ', ""),
        "from:from:reply-to:subject:subject:date:date:to:to:cc:message-id:message-id:\
         mime-version:mime-version:content-type:content-type:list-unsubscribe:\
         list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post:list-id"
    );
    let first: Vec<(String, String)> = tags(signatures[0].value);
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["v", "a", "c", "d", "s", "t", "h", "bh", "b"]);
    assert_eq!(tag(signatures[0].value, "a"), "ed25519-sha256");
    assert_eq!(tag(signatures[1].value, "a"), "rsa-sha256");
    assert_eq!(tag(signatures[1].value, "c"), "relaxed/relaxed");
    assert_eq!(tag(signatures[1].value, "d"), "example.com");
    // 1024-bit RSA: 128 bytes of signature, 172 characters of base64.
    assert_eq!(tag(signatures[1].value, "b").replace(' ', "").len(), 172);
    assert!(text.ends_with(&String::from_utf8(canonical::crlf_lines(AWKWARD.as_bytes())).unwrap()));
}

#[test]
fn a_message_without_a_body_and_a_2048_bit_key_sign_too() {
    let pair = super::super::KeyPair::generate(Algorithm::Rsa).unwrap();
    let signer = Signer::new("example.com", "s", Algorithm::Rsa, &pair.private_key).unwrap();
    assert_eq!(
        match &signer.key {
            PrivateKey::Rsa(k) => k.size() * 8,
            PrivateKey::Ed25519(_) => 0,
        },
        2048
    );
    let key = public(&signer);
    let message = signed(
        b"From: a@example.com\r\nSubject: empty\r\n\r\n",
        &[Arc::new(signer)],
    )
    .unwrap();
    verify(&message, 0, &key).unwrap();
    let text = String::from_utf8(message).unwrap();
    // The empty body's hash: SHA-256 of nothing.
    assert!(
        text.contains("bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;"),
        "{text}"
    );
}

#[test]
fn signers_refuse_unreadable_keys_and_odd_names() {
    assert!(matches!(
        Signer::new("example.com", "s", Algorithm::Ed25519, &secret("c2hvcnQ=")),
        Err(DkimKeyError::Unreadable("Ed25519"))
    ));
    assert!(matches!(
        Signer::new(
            "example.com",
            "s",
            Algorithm::Rsa,
            &secret(RFC8463_ED25519_SEED)
        ),
        Err(DkimKeyError::Unreadable("RSA"))
    ));
    assert!(matches!(
        Signer::new(
            "example.com; x=1",
            "s",
            Algorithm::Ed25519,
            &secret(RFC8463_ED25519_SEED)
        ),
        Err(DkimKeyError::Name)
    ));
    // Its Debug output names the key, never its private half.
    let debug = format!("{:?}", rsa_signer("example.com"));
    assert!(
        debug.contains("example.com") && !debug.contains("MIIC"),
        "{debug}"
    );
}
