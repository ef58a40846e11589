//! The header-like field blocks of `message/delivery-status` (RFC 3464
//! §2.1) and `message/feedback-report` (RFC 5965 §3.1): `Name: value`
//! lines, folded lines continuing with white space, blocks separated by
//! blank lines.

/// A block's fields in order; names lower-cased, folded values unfolded.
pub(super) type Block = Vec<(String, String)>;

pub(super) fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut block: Block = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if !name.is_empty() && !name.contains(char::is_whitespace) {
                block.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

/// The first value of field `name` (lower-case) in `block`.
pub(super) fn get<'a>(block: &'a Block, name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}
