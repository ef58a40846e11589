//! What an import did, row by row, for the operator to read (text) or a
//! script to check (`--json`). Never holds a password or a secret hash.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `account`, `key`, `quota` or `message`.
    pub kind: &'static str,
    /// The account's address, the key's first characters and name, or the
    /// message's task id.
    pub row: String,
    /// `imported`, `updated`, `unchanged`, `carried`, `skipped` or `refused`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    pub imported: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub skipped: usize,
    pub refused: usize,
}

impl Counts {
    fn add(&mut self, outcome: &str) {
        match outcome {
            "imported" => self.imported += 1,
            "updated" => self.updated += 1,
            "unchanged" => self.unchanged += 1,
            "skipped" => self.skipped += 1,
            "refused" => self.refused += 1,
            _ => {}
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} imported, {} updated, {} unchanged, {} skipped, {} refused",
            self.imported, self.updated, self.unchanged, self.skipped, self.refused
        )
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub accounts: Counts,
    pub keys: Counts,
    /// Accounts whose count of today's sends was raised to the Python
    /// platform's.
    pub quota_carried: usize,
    /// Imported messages are counted, not listed (there may be millions);
    /// skipped and refused ones are listed.
    pub messages: Counts,
    pub seconds: Phases,
    pub rows: Vec<Row>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Phases {
    pub accounts: f64,
    pub keys: f64,
    pub messages: f64,
}

impl ImportReport {
    pub fn record(
        &mut self,
        kind: &'static str,
        row: String,
        outcome: &'static str,
        detail: Option<String>,
    ) {
        match kind {
            "account" => self.accounts.add(outcome),
            "key" => self.keys.add(outcome),
            "message" => self.messages.add(outcome),
            _ => {}
        }
        if kind != "message" || outcome == "skipped" || outcome == "refused" {
            self.rows.push(Row {
                kind,
                row,
                outcome,
                detail,
            });
        }
    }
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.rows {
            write!(f, "{:<8} {:<40} {}", r.kind, r.row, r.outcome)?;
            if let Some(detail) = &r.detail {
                write!(f, ": {detail}")?;
            }
            writeln!(f)?;
        }
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        let accounts = self.accounts.imported + self.accounts.updated + self.accounts.unchanged;
        writeln!(
            f,
            "accounts: {} ({:.2} s, {:.0} rows/s)",
            self.accounts,
            self.seconds.accounts,
            rate(accounts, self.seconds.accounts)
        )?;
        writeln!(
            f,
            "quota:    today's count carried for {} account(s)",
            self.quota_carried
        )?;
        writeln!(f, "keys:     {} ({:.2} s)", self.keys, self.seconds.keys)?;
        let messages = self.messages.imported + self.messages.unchanged;
        writeln!(
            f,
            "messages: {} ({:.2} s, {:.0} rows/s)",
            self.messages,
            self.seconds.messages,
            rate(messages, self.seconds.messages)
        )?;
        if self.dry_run {
            writeln!(f, "dry run: nothing was written")?;
        }
        Ok(())
    }
}
