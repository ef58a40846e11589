//! The Redis result backend's chord counters, as celery 5.4's
//! `RedisBackend.on_chord_part_return` keeps them: each header part's
//! outcome is added to the sorted set `celery-taskset-meta-<group>.j`
//! (scored by its `group_index`, so the results come back in order), the
//! client stored the header's size in `.s` (`set_chord_size`) and
//! `add_to_chord` may have raised it in `.t`; the part that completes the
//! set gets every result, to apply the chord's body with.

use serde_json::{json, Value};

use super::result::{ResultBackend, ResultError};

/// Celery's `group_keyprefix`.
pub const GROUP_PREFIX: &str = "celery-taskset-meta-";

/// One header part's outcome, as stored in the `.j` set.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordPart {
    pub task_id: String,
    pub state: String,
    /// The result, or for a failure the exception document.
    pub result: Value,
}

fn key(group_id: &str, suffix: &str) -> String {
    format!("{GROUP_PREFIX}{group_id}{suffix}")
}

impl ResultBackend {
    /// Records a header part's outcome. `Some(parts)`, in header order,
    /// when it completes the chord. Adding the same part twice (a
    /// redelivered task) adds nothing: the set holds it once.
    pub async fn chord_part_return(
        &self,
        group_id: &str,
        group_index: Option<u64>,
        part: &ChordPart,
    ) -> Result<Option<Vec<ChordPart>>, ResultError> {
        let (jkey, tkey, skey) = (
            key(group_id, ".j"),
            key(group_id, ".t"),
            key(group_id, ".s"),
        );
        let encoded = json!([1, part.task_id, part.state, part.result]).to_string();
        let score = group_index.map_or_else(|| "+inf".to_string(), |i| i.to_string());
        let expires = self.expires.as_secs().max(1) as i64;
        let mut conn = self.pool.get().await?;
        let (ready, extra, size): (i64, Option<i64>, Option<String>) = redis::pipe()
            .atomic()
            .cmd("ZADD")
            .arg(&jkey)
            .arg(&score)
            .arg(&encoded)
            .ignore()
            .cmd("ZCOUNT")
            .arg(&jkey)
            .arg("-inf")
            .arg("+inf")
            .get(&tkey)
            .get(&skey)
            .expire(&jkey, expires)
            .ignore()
            .expire(&tkey, expires)
            .ignore()
            .expire(&skey, expires)
            .ignore()
            .query_async(&mut *conn)
            .await?;
        // No size: not a chord the client set up (or one already done).
        let Some(size) = size.and_then(|s| s.trim().parse::<i64>().ok()) else {
            return Ok(None);
        };
        if ready != size + extra.unwrap_or(0) {
            return Ok(None);
        }
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&jkey)
            .arg(0)
            .arg(-1)
            .query_async(&mut *conn)
            .await?;
        Ok(Some(members.iter().filter_map(|m| decode(m)).collect()))
    }

    /// Deletes a finished chord's counters (as Celery does once it has
    /// applied the body).
    pub async fn chord_forget(&self, group_id: &str) -> Result<(), ResultError> {
        let mut conn = self.pool.get().await?;
        redis::cmd("DEL")
            .arg(key(group_id, ".j"))
            .arg(key(group_id, ".t"))
            .arg(key(group_id, ".s"))
            .query_async::<()>(&mut *conn)
            .await?;
        Ok(())
    }
}

/// `[1, task_id, state, result]`, as Python's parts are encoded too.
fn decode(member: &str) -> Option<ChordPart> {
    let Value::Array(fields) = serde_json::from_str(member).ok()? else {
        return None;
    };
    let [_, task_id, state, result] = <[Value; 4]>::try_from(fields).ok()?;
    Some(ChordPart {
        task_id: task_id.as_str()?.to_string(),
        state: state.as_str()?.to_string(),
        result,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_decode_as_celery_encodes_them() {
        let part = decode(r#"[1, "t1", "SUCCESS", {"status": "sent"}]"#).unwrap();
        assert_eq!(part.task_id, "t1");
        assert_eq!(part.state, "SUCCESS");
        assert_eq!(part.result["status"], "sent");
        for bad in ["", "[]", "[1, 2, 3, 4]", "{}", "[1, \"t\", \"S\"]"] {
            assert!(decode(bad).is_none(), "{bad}");
        }
    }
}
