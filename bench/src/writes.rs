//! Rows written per email, from PostgreSQL's table statistics: inserts,
//! updates (and how many were HOT: no index entry written) and deletes,
//! per table and in all. Backends report these in batches (a connection
//! left idle holds up to 10 s of them), so the figure is taken over the
//! whole run, after a pause that lets every connection report.

use std::collections::BTreeMap;

use sqlx::PgPool;

#[derive(Default, Clone, Copy)]
struct Counts {
    inserted: i64,
    updated: i64,
    hot: i64,
    deleted: i64,
}

pub struct Writes(BTreeMap<String, Counts>);

impl Writes {
    pub async fn take(pool: &PgPool) -> anyhow::Result<Writes> {
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
               FROM pg_stat_user_tables",
        )
        .fetch_all(pool)
        .await?;
        Ok(Writes(
            rows.into_iter()
                .map(|(table, inserted, updated, hot, deleted)| {
                    let counts = Counts {
                        inserted,
                        updated,
                        hot,
                        deleted,
                    };
                    (table, counts)
                })
                .collect(),
        ))
    }

    /// Prints what was written since `before`, per email of `emails`.
    pub fn report(&self, before: &Writes, emails: usize) {
        let per = |n: i64| n as f64 / emails as f64;
        let mut tables: Vec<(&String, Counts)> = self
            .0
            .iter()
            .map(|(table, now)| {
                let was = before.0.get(table).copied().unwrap_or_default();
                let diff = Counts {
                    inserted: now.inserted - was.inserted,
                    updated: now.updated - was.updated,
                    hot: now.hot - was.hot,
                    deleted: now.deleted - was.deleted,
                };
                (table, diff)
            })
            .filter(|(_, d)| d.inserted + d.updated + d.deleted > 0)
            .collect();
        tables.sort_by_key(|(_, d)| -(d.inserted + d.updated + d.deleted));
        let sum = tables.iter().fold(Counts::default(), |a, (_, d)| Counts {
            inserted: a.inserted + d.inserted,
            updated: a.updated + d.updated,
            hot: a.hot + d.hot,
            deleted: a.deleted + d.deleted,
        });
        let hot_share = |d: &Counts| {
            if d.updated == 0 {
                0.0
            } else {
                100.0 * d.hot as f64 / d.updated as f64
            }
        };
        println!(
            "rows written per email over the run ({emails} emails): {:.2} inserted, {:.2} updated ({:.0}% HOT), {:.2} deleted",
            per(sum.inserted),
            per(sum.updated),
            hot_share(&sum),
            per(sum.deleted)
        );
        for (table, d) in tables.iter().take(6) {
            println!(
                "  {table}: {:.2} inserted, {:.2} updated ({:.0}% HOT), {:.2} deleted",
                per(d.inserted),
                per(d.updated),
                hot_share(d),
                per(d.deleted)
            );
        }
    }
}
