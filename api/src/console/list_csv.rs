//! The CSV of a list import, parsed in the console: a header row naming an
//! `email` (or `address`) column and any others, which become each
//! member's template variables. Quoted fields (RFC 4180: `""` inside
//! quotes, commas and line breaks within them) are understood. Rows that
//! cannot become a member are reported with their line number instead of
//! failing the import; the file as a whole is refused only when it cannot
//! be read at all (too large, no header, no email column).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// How much one import may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_rows: usize,
}

/// The console's limits: 512 KiB of text (its form body, URL-encoded,
/// then stays under the console's 2 MiB form limit) and 20,000 rows.
pub const LIMITS: Limits = Limits {
    max_bytes: 512 * 1024,
    max_rows: 20_000,
};

/// A row that becomes a member.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The line the row starts on (the header is line 1).
    pub line: usize,
    pub email: String,
    pub variables: Map<String, Value>,
}

/// A row that does not, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub line: usize,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub rejected: Vec<Rejected>,
}

/// Why a file is refused as a whole.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CsvError {
    #[error("the CSV is larger than {max} bytes; split it into several imports")]
    TooLarge { max: usize },
    #[error("the CSV has more than {max} rows; split it into several imports")]
    TooManyRows { max: usize },
    #[error("the CSV is empty: give a header row (email,name,...) and one row per member")]
    Empty,
    #[error("the header row has no email column (name one column `email`)")]
    NoEmailColumn,
    #[error("header column {column}: {reason}")]
    BadHeader { column: usize, reason: String },
}

impl From<CsvError> for ApiError {
    fn from(e: CsvError) -> Self {
        let code = match e {
            CsvError::TooLarge { .. } | CsvError::TooManyRows { .. } => "import_too_large",
            _ => "validation_error",
        };
        ApiError::invalid(code, "csv", e.to_string())
    }
}

/// One record as read: its fields, the line it starts on, its text (for
/// reports), and what was wrong with its quoting, if anything.
struct Record {
    line: usize,
    fields: Vec<String>,
    raw: String,
    fault: Option<&'static str>,
}

impl Record {
    fn is_blank(&self) -> bool {
        self.fault.is_none() && self.fields.iter().all(|f| f.trim().is_empty())
    }
}

/// Splits `text` into records.
fn records(text: &str) -> Vec<Record> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut raw = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        let mut fault = None;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    fault = Some("a quoted field is not closed");
                }
                break;
            };
            if quoted {
                raw.push(c);
                match c {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        raw.push('"');
                        field.push('"');
                    }
                    '"' => quoted = false,
                    '\n' => {
                        line += 1;
                        field.push(c);
                    }
                    _ => field.push(c),
                }
                continue;
            }
            match c {
                '\r' | '\n' => {
                    if c == '\r' && chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    line += 1;
                    break;
                }
                ',' => {
                    raw.push(c);
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '"' if field.is_empty() && !was_quoted => {
                    raw.push(c);
                    quoted = true;
                    was_quoted = true;
                }
                _ => {
                    raw.push(c);
                    if was_quoted && fault.is_none() {
                        fault = Some("text after a closing quote");
                    }
                    field.push(c);
                }
            }
        }
        fields.push(field);
        out.push(Record {
            line: start,
            fields,
            raw,
            fault,
        });
    }
    out
}

fn is_identifier(name: &str) -> bool {
    name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The report's value of a row: its email cell, or its text.
fn shown(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Parses an import. Cells are taken as written, except that the email and
/// the header's names are trimmed; blank lines are skipped.
pub fn parse(text: &str, limits: Limits) -> Result<Parsed, CsvError> {
    if text.len() > limits.max_bytes {
        return Err(CsvError::TooLarge {
            max: limits.max_bytes,
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = records(text).into_iter().filter(|r| !r.is_blank());
    let header = records.next().ok_or(CsvError::Empty)?;
    if let Some(fault) = header.fault {
        return Err(CsvError::BadHeader {
            column: 1,
            reason: fault.to_string(),
        });
    }
    let names: Vec<String> = header
        .fields
        .iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let email_at = names
        .iter()
        .position(|n| n == "email" || n == "address")
        .ok_or(CsvError::NoEmailColumn)?;
    for (i, name) in names.iter().enumerate() {
        let column = i + 1;
        if i != email_at && !is_identifier(name) {
            return Err(CsvError::BadHeader {
                column,
                reason: format!(
                    "{name:?} is not a variable name (letters, digits and _, not starting with a digit)"
                ),
            });
        }
        if names[..i].contains(name) {
            return Err(CsvError::BadHeader {
                column,
                reason: format!("{name:?} is named twice"),
            });
        }
    }
    let mut parsed = Parsed::default();
    for (n, record) in records.enumerate() {
        if n >= limits.max_rows {
            return Err(CsvError::TooManyRows {
                max: limits.max_rows,
            });
        }
        let reject = |reason: String| Rejected {
            line: record.line,
            value: shown(&record.raw),
            reason,
        };
        if let Some(fault) = record.fault {
            parsed.rejected.push(reject(fault.to_string()));
            continue;
        }
        if record.fields.len() != names.len() {
            parsed.rejected.push(reject(format!(
                "{} fields where the header has {}",
                record.fields.len(),
                names.len()
            )));
            continue;
        }
        let email = record.fields[email_at].trim().to_string();
        if email.is_empty() {
            parsed.rejected.push(reject("no email address".into()));
            continue;
        }
        let variables = names
            .iter()
            .zip(&record.fields)
            .enumerate()
            .filter(|(i, _)| *i != email_at)
            .map(|(_, (name, value))| (name.clone(), Value::String(value.clone())))
            .collect();
        parsed.rows.push(Row {
            line: record.line,
            email,
            variables,
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn header_columns_become_variables_and_lines_are_counted() {
        let parsed = parse(
            "email,name,city\nann@example.com,Ann,Paris\r\nbob@example.com,Bob,Lyon\n",
            LIMITS,
        )
        .unwrap();
        assert_eq!(
            parsed.rows,
            [
                Row {
                    line: 2,
                    email: "ann@example.com".into(),
                    variables: vars(json!({"name": "Ann", "city": "Paris"})),
                },
                Row {
                    line: 3,
                    email: "bob@example.com".into(),
                    variables: vars(json!({"name": "Bob", "city": "Lyon"})),
                },
            ]
        );
        assert!(parsed.rejected.is_empty());
    }

    #[test]
    fn quoted_fields_keep_commas_quotes_and_line_breaks() {
        let text = "Name,Email\n\"Doe, Jane\",jane@example.com\n\"say \"\"hi\"\"\nthere\",x@example.com\nZed,z@example.com";
        let parsed = parse(text, LIMITS).unwrap();
        assert_eq!(parsed.rows.len(), 3);
        assert_eq!(parsed.rows[0].variables["name"], "Doe, Jane");
        assert_eq!(parsed.rows[0].email, "jane@example.com");
        assert_eq!(parsed.rows[1].variables["name"], "say \"hi\"\nthere");
        assert_eq!(parsed.rows[1].line, 3);
        assert_eq!(parsed.rows[2].line, 5, "the quoted line break counts");
    }

    #[test]
    fn blank_lines_are_skipped_and_keep_their_numbers() {
        let parsed = parse(
            "\n\nemail,name\n\na@example.com,A\n  \n\nb@example.com,B\n\n",
            LIMITS,
        )
        .unwrap();
        let lines: Vec<usize> = parsed.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [5, 8]);
        assert!(parsed.rejected.is_empty());
    }

    #[test]
    fn a_header_without_an_email_column_refuses_the_file() {
        assert_eq!(
            parse("name,city\nAnn,Paris\n", LIMITS),
            Err(CsvError::NoEmailColumn)
        );
        assert_eq!(parse("\n \n", LIMITS), Err(CsvError::Empty));
        assert!(matches!(
            parse("email,first name\n", LIMITS),
            Err(CsvError::BadHeader { column: 2, .. })
        ));
        assert!(matches!(
            parse("email,name,Name\n", LIMITS),
            Err(CsvError::BadHeader { column: 3, .. })
        ));
        let refused = ApiError::from(CsvError::NoEmailColumn).detail();
        assert_eq!(refused.field.as_deref(), Some("csv"));
    }

    #[test]
    fn bad_rows_are_reported_by_line_and_the_others_kept() {
        let text = "email,name\nok@example.com,Ok\n,Nobody\nthree@example.com,A,extra\n\"open@example.com,Open\n";
        let parsed = parse(text, LIMITS).unwrap();
        assert_eq!(parsed.rows.len(), 1);
        let report: Vec<(usize, &str)> = parsed
            .rejected
            .iter()
            .map(|r| (r.line, r.reason.as_str()))
            .collect();
        assert_eq!(
            report,
            [
                (3, "no email address"),
                (4, "3 fields where the header has 2"),
                (5, "a quoted field is not closed"),
            ]
        );
        assert_eq!(parsed.rejected[1].value, "three@example.com,A,extra");
        let after_quote = parse("email\n\"a@example.com\"x\n", LIMITS).unwrap();
        assert_eq!(after_quote.rejected[0].reason, "text after a closing quote");
    }

    #[test]
    fn too_many_rows_or_bytes_refuse_the_file() {
        let limits = Limits {
            max_bytes: 1000,
            max_rows: 3,
        };
        let rows = |n: usize| {
            let mut text = String::from("email\n");
            for i in 0..n {
                text.push_str(&format!("u{i}@example.com\n"));
            }
            text
        };
        assert_eq!(parse(&rows(3), limits).unwrap().rows.len(), 3);
        assert_eq!(
            parse(&rows(4), limits),
            Err(CsvError::TooManyRows { max: 3 })
        );
        assert_eq!(
            parse(&rows(100), limits),
            Err(CsvError::TooLarge { max: 1000 })
        );
    }
}
