//! A small CSV reader (RFC 4180: comma-separated, fields in double quotes
//! may hold commas, line breaks and doubled quotes), enough for pasted
//! imports; no dependency for it.

/// The records of `text`, each a list of fields; blank lines are skipped.
/// An unterminated quote is an error naming the line it opened on.
pub fn records(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1usize;
    let mut quote_line = 0usize;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
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
            '"' if field.is_empty() => {
                quoted = true;
                quote_line = line;
            }
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => {
                line += 1;
                record.push(std::mem::take(&mut field));
                if !(record.len() == 1 && record[0].trim().is_empty()) {
                    records.push(std::mem::take(&mut record));
                }
                record.clear();
            }
            _ => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {quote_line}: a quoted field is not closed"));
    }
    record.push(field);
    if !(record.len() == 1 && record[0].trim().is_empty()) {
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::records;

    #[test]
    fn reads_quotes_commas_line_breaks_and_blank_lines() {
        let text = "a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",\"two\nlines\"\n\n1,,3\n";
        assert_eq!(
            records(text).unwrap(),
            vec![
                vec!["a", "b", "c"],
                vec!["x, y", "say \"hi\"", "two\nlines"],
                vec!["1", "", "3"],
            ]
        );
    }

    #[test]
    fn an_open_quote_is_refused_with_its_line() {
        assert_eq!(
            records("a\n\"b,c\n").unwrap_err(),
            "line 2: a quoted field is not closed"
        );
    }
}
