//! The message as DKIM reads it (RFC 6376 §3.4, §3.7): header fields split
//! out of the formatted message, the "relaxed" canonical forms of header
//! fields and of the body, and the bytes the header hash covers.

/// A header field as it stands in the message: its name, and its value
/// from after the colon up to (not including) the CRLF that ends it, with
/// any folding CRLFs inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("header line {0} has no field name and colon")]
    NotAField(usize),
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The message with every line ending a CRLF: bare LFs and bare CRs become
/// CRLF, and a last line without one gets it. SMTP requires this anyway,
/// and it leaves no room for a verifier to read a line end differently
/// from us (dkimpy splits lines on a bare LF, for one).
pub fn crlf_lines(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Splits a message with CRLF line endings (see [`crlf_lines`]) into its
/// header fields, in order, and its body (after the empty line; empty if
/// there is none).
pub fn split(message: &[u8]) -> Result<(Vec<Field<'_>>, &[u8]), MessageError> {
    let (head, body): (&[u8], &[u8]) = if message.starts_with(b"\r\n") {
        (b"", &message[2..])
    } else {
        match find(message, b"\r\n\r\n") {
            // The first CRLF ends the last field; the second is the empty line.
            Some(at) => (&message[..at + 2], &message[at + 4..]),
            None => (message, b""),
        }
    };
    let mut fields: Vec<Field<'_>> = Vec::new();
    // Offsets of the current field: where its value starts and ends.
    let mut current: Option<(&[u8], usize, usize)> = None;
    let mut start = 0;
    for (number, line) in head.split_inclusive(|&b| b == b'\n').enumerate() {
        let content = line.strip_suffix(b"\r\n").unwrap_or(line);
        let end = start + content.len();
        if content.first().copied().is_some_and(is_wsp) {
            // A continuation: the field goes on, its CRLF inside the value.
            match &mut current {
                Some((_, _, value_end)) => *value_end = end,
                None => return Err(MessageError::NotAField(number + 1)),
            }
        } else {
            let colon = content
                .iter()
                .position(|&b| b == b':')
                .filter(|&c| c > 0)
                .ok_or(MessageError::NotAField(number + 1))?;
            if let Some((name, from, to)) = current.take() {
                fields.push(Field {
                    name,
                    value: &head[from..to],
                });
            }
            current = Some((&content[..colon], start + colon + 1, end));
        }
        start += line.len();
    }
    if let Some((name, from, to)) = current {
        fields.push(Field {
            name,
            value: &head[from..to],
        });
    }
    Ok((fields, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// "relaxed" header canonicalization (§3.4.2), without the final CRLF:
/// the name lower-cased, the value unfolded, each run of WSP made one
/// space, WSP removed at both ends of the value and around the colon.
pub fn relaxed_header(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 1);
    let name_end = name.iter().rposition(|&b| !is_wsp(b)).map_or(0, |p| p + 1);
    out.extend(name[..name_end].iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let mut pending_space = false;
    let mut any = false;
    for &b in value {
        match b {
            // Unfolding: a CRLF inside a field is always followed by WSP,
            // which the next arm turns into the one space.
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = any,
            _ => {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(b);
                any = true;
            }
        }
    }
    out
}

/// "relaxed" body canonicalization (§3.4.4): WSP at the end of each line
/// removed and each other run of WSP made one space, empty lines at the
/// end removed, and every line ending in CRLF. An empty body stays empty
/// (§3.4.4 and erratum 3758: the relaxed form of an empty body is empty).
pub fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut empty_lines = 0usize;
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    // The split leaves an empty piece after the final LF (or stands for an
    // empty body): it is no line.
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let end = line.iter().rposition(|&b| !is_wsp(b)).map_or(0, |p| p + 1);
        if end == 0 {
            // Empty, or only WSP: kept only if a non-empty line follows.
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            out.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        let mut in_wsp = false;
        for &b in &line[..end] {
            if is_wsp(b) {
                in_wsp = true;
            } else {
                if in_wsp {
                    out.push(b' ');
                    in_wsp = false;
                }
                out.push(b);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What the header hash covers (§3.7): for each name of `h=` in order,
/// the last instance of that field not yet used (counting from the bottom
/// of the header; a name with none left adds nothing), in relaxed form
/// with its CRLF; then the DKIM-Signature field itself with an empty
/// `b=`, relaxed, without a trailing CRLF.
pub fn header_hash_input(
    fields: &[Field<'_>],
    signed_names: &[&str],
    unsigned_signature: Field<'_>,
) -> Vec<u8> {
    let mut out = Vec::new();
    // Per name: how many instances from the bottom have been used.
    let mut used: Vec<(String, usize)> = Vec::new();
    for name in signed_names {
        let key = name.trim().to_ascii_lowercase();
        let skip = match used.iter_mut().find(|(n, _)| *n == key) {
            Some((_, count)) => {
                *count += 1;
                *count - 1
            }
            None => {
                used.push((key.clone(), 1));
                0
            }
        };
        let instance = fields
            .iter()
            .rev()
            .filter(|f| trimmed(f.name).eq_ignore_ascii_case(key.as_bytes()))
            .nth(skip);
        if let Some(field) = instance {
            out.extend_from_slice(&relaxed_header(field.name, field.value));
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(&relaxed_header(
        unsigned_signature.name,
        unsigned_signature.value,
    ));
    out
}

fn trimmed(name: &[u8]) -> &[u8] {
    let end = name.iter().rposition(|&b| !is_wsp(b)).map_or(0, |p| p + 1);
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn relaxed_header_unfolds_compresses_and_lower_cases() {
        // RFC 6376 §3.4.6's example, fields "A" and "B".
        assert_eq!(text(&relaxed_header(b"A", b" X")), "a:X");
        assert_eq!(
            text(&relaxed_header(b"B ", b" Y\t\r\n\tZ  ")),
            "b:Y Z",
            "WSP before the colon, folding, tabs and trailing WSP"
        );
        assert_eq!(text(&relaxed_header(b"Subject", b"")), "subject:");
        assert_eq!(text(&relaxed_header(b"Subject", b" \t ")), "subject:");
        assert_eq!(
            text(&relaxed_header(b"X-Long", b" one\r\n two\r\n\t three")),
            "x-long:one two three"
        );
    }

    #[test]
    fn relaxed_body_matches_the_rfc_example_and_its_edge_cases() {
        // RFC 6376 §3.4.6: " C \r\nD \t E\r\n\r\n\r\n" -> " C\r\nD E\r\n".
        assert_eq!(
            text(&relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n")),
            " C\r\nD E\r\n"
        );
        assert_eq!(text(&relaxed_body(b"")), "");
        assert_eq!(text(&relaxed_body(b"\r\n\r\n")), "", "only empty lines");
        assert_eq!(text(&relaxed_body(b" \t\r\n  \r\n")), "", "only WSP lines");
        assert_eq!(text(&relaxed_body(b"a")), "a\r\n", "a CRLF is added");
        assert_eq!(
            text(&relaxed_body(b"a\r\n\r\n \r\nb\r\n\r\n")),
            "a\r\n\r\n\r\nb\r\n",
            "empty lines inside the body stay"
        );
    }

    #[test]
    fn crlf_lines_mends_bare_line_ends() {
        assert_eq!(text(&crlf_lines(b"a\nb\rc\r\nd")), "a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(text(&crlf_lines(b"")), "");
        assert_eq!(text(&crlf_lines(b"a\r\n")), "a\r\n");
    }

    #[test]
    fn split_keeps_folded_values_whole() {
        let message =
            b"From: a@example.com\r\nSubject: one\r\n\ttwo\r\nTo:b@example.org\r\n\r\nbody\r\n";
        let (fields, body) = split(message).unwrap();
        let got: Vec<(&str, &str)> = fields
            .iter()
            .map(|f| (text(f.name), text(f.value)))
            .collect();
        assert_eq!(
            got,
            [
                ("From", " a@example.com"),
                ("Subject", " one\r\n\ttwo"),
                ("To", "b@example.org")
            ]
        );
        assert_eq!(body, b"body\r\n");
        assert_eq!(split(b"From: a\r\n").unwrap().1, b"");
        assert_eq!(split(b"\r\nbody").unwrap(), (vec![], &b"body"[..]));
        assert_eq!(
            split(b"From: a\r\nnonsense\r\n\r\n").unwrap_err(),
            MessageError::NotAField(2)
        );
        assert_eq!(
            split(b" x\r\n\r\n").unwrap_err(),
            MessageError::NotAField(1)
        );
    }

    #[test]
    fn the_header_hash_takes_instances_from_the_bottom_and_skips_missing_ones() {
        let message = b"Received: first\r\nFrom: a\r\nReceived: second\r\n\r\n";
        let (fields, _) = split(message).unwrap();
        let signature = Field {
            name: b"DKIM-Signature",
            value: b" v=1; h=received:received:received:from:cc;\r\n b=",
        };
        let input = header_hash_input(
            &fields,
            &["Received", "received", "RECEIVED", "from", "cc"],
            signature,
        );
        assert_eq!(
            text(&input),
            "received:second\r\nreceived:first\r\nfrom:a\r\n\
             dkim-signature:v=1; h=received:received:received:from:cc; b="
        );
    }
}
