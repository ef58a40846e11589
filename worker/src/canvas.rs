//! Callbacks, chains and chords: what follows a task's final outcome, as
//! celery 5.4's worker does it (`app/trace.py` on success,
//! `Backend.mark_as_failure` and `_call_task_errbacks` on failure, the
//! Redis backend's `on_chord_part_return` for both).
//!
//! - Success: each `link` is applied with the result prepended (several
//!   together as a group), and the next step of a chain with the rest of
//!   the chain in its message; `parent_id` is this task, `root_id` its root.
//! - Final failure: the chain's later steps get the same `FAILURE` (so a
//!   chain's result raises instead of waiting forever), and each
//!   `link_error` is published with this task's id as its argument, as
//!   Celery does for errbacks its worker does not have (ours has no Python
//!   tasks), as a group.
//! - A header part of a chord (success, failure, revoke) adds its outcome
//!   to the chord's counters; the part that completes them applies the body
//!   with every result in order, or, if a part failed, stores `ChordError`
//!   for the body and applies its `link_error`s.
//!
//! Only after the task's outcome is committed (the lane calls this once its
//! re-publication, if any, is confirmed, before the ack). A follow-up that
//! cannot be published sends the delivery back to the queue; the
//! redelivery finds the outcome recorded and publishes again. Once all are
//! confirmed, `notify:canvas-done:<task id>` records it, so a later
//! redelivery (or a duplicate of the task) publishes nothing; only a crash
//! between the confirms and that record (or a duplicate settling in that
//! same moment) publishes twice, with the same task ids (ids this worker
//! invents are derived from the task's).

use chrono::Utc;
use platform::celery::canvas::{apply_all, Applying, CanvasError, Embed, Publication, Signature};
use platform::celery::{ChordPart, ResultError, TaskMessage, TaskState};
use serde_json::{json, Value};

use crate::context::Context;

/// What a task's outcome makes this worker publish.
pub struct FollowUps {
    pub task_id: String,
    pub publications: Vec<Publication>,
    /// The chord this task completed: its counters go once the body is out.
    chord_done: Option<String>,
}

fn done_key(task_id: &str) -> String {
    format!("notify:canvas-done:{task_id}")
}

/// The follow-ups of `message`'s final outcome (as stored for Python
/// callers); `None` when it embeds none, its outcome is not final, or an
/// earlier delivery published them.
pub async fn follow_ups(
    ctx: &Context,
    message: &TaskMessage,
) -> Result<Option<FollowUps>, ResultError> {
    let embed = Embed::of(message);
    if embed.is_empty() {
        return Ok(None);
    }
    let id = message.id();
    let mut conn = ctx.results.pool().get().await?;
    let done: bool = redis::cmd("EXISTS")
        .arg(done_key(id))
        .query_async(&mut *conn)
        .await?;
    drop(conn);
    if done {
        tracing::debug!(
            task_id = id,
            "callbacks already published by an earlier delivery"
        );
        return Ok(None);
    }
    let Some(stored) = ctx.results.fetch(id).await? else {
        return Ok(None);
    };
    let state = stored["status"].as_str().unwrap_or_default().to_string();
    let result = stored["result"].clone();
    let now = Utc::now();
    let applying = |label: &str| applying_for(ctx, message, label, now);
    let mut publications = Vec::new();
    match state.as_str() {
        "SUCCESS" => {
            let (applied, refused) = on_success(&embed, &result, &applying);
            publications.extend(applied);
            refused.iter().for_each(|e| refuse(id, e));
        }
        "FAILURE" => {
            // The chain's later steps fail too (`mark_as_failure`).
            for step in parsed(id, &embed.chain) {
                if let Some(step_id) = step.task_id() {
                    ctx.results
                        .write(
                            step_id,
                            TaskState::Failure,
                            result.clone(),
                            stored["traceback"].clone(),
                        )
                        .await?;
                }
            }
            let errbacks = parsed(id, &embed.errbacks);
            if !errbacks.is_empty() {
                let applying = Applying {
                    priority: None,
                    ..applying("errbacks")
                };
                let (applied, refused) = apply_all(&errbacks, &[json!(id)], &applying);
                publications.extend(applied);
                refused.iter().for_each(|e| refuse(id, e));
            }
        }
        "REVOKED" => {}
        // Not final (STARTED, RETRY): nothing follows yet.
        _ => return Ok(None),
    }

    let mut chord_done = None;
    if let (Some(body), Some(group_id)) = (&embed.chord, &message.headers.group) {
        let group_index = message
            .headers
            .extra
            .get("group_index")
            .and_then(Value::as_u64);
        let part = ChordPart {
            task_id: id.to_string(),
            state: state.clone(),
            result,
        };
        if let Some(parts) = ctx
            .results
            .chord_part_return(group_id, group_index, &part)
            .await?
        {
            tracing::info!(
                task_id = id,
                group_id,
                parts = parts.len(),
                "chord complete"
            );
            let applying = Applying {
                priority: None,
                keep_own_ids: true,
                seed: format!("{group_id}/chord"),
                ..applying("chord")
            };
            publications.extend(chord_body(ctx, id, body, parts, &applying).await?);
            chord_done = Some(group_id.clone());
        }
    }
    Ok(Some(FollowUps {
        task_id: id.to_string(),
        publications,
        chord_done,
    }))
}

/// What a success applies: each `link` with the result prepended
/// (several together as a group), then the next step of a chain with the
/// rest of the chain in its message.
fn on_success<'a>(
    embed: &Embed,
    result: &Value,
    applying: &dyn Fn(&str) -> Applying<'a>,
) -> (Vec<Publication>, Vec<CanvasError>) {
    let mut publications = Vec::new();
    let mut refused = Vec::new();
    let callbacks: Vec<Signature> = embed
        .callbacks
        .iter()
        .filter_map(|v| Signature::parse(v).map_err(|e| refused.push(e)).ok())
        .collect();
    let partial = std::slice::from_ref(result);
    if let [callback] = callbacks.as_slice() {
        match callback.apply(partial, Vec::new(), &applying("callbacks")) {
            Ok(p) => publications.extend(p),
            Err(e) => refused.push(e),
        }
    } else if !callbacks.is_empty() {
        let (applied, errors) = apply_all(&callbacks, partial, &applying("callbacks"));
        publications.extend(applied);
        refused.extend(errors);
    }
    let mut chain = embed.chain.clone();
    if let Some(next) = chain.pop() {
        match Signature::parse(&next).and_then(|n| n.apply(partial, chain, &applying("chain"))) {
            Ok(p) => publications.extend(p),
            Err(e) => refused.push(e),
        }
    }
    (publications, refused)
}

/// How this worker applies the signatures `message` embeds: `parent_id` is
/// the task, `root_id` its root, and ids it must invent are derived from
/// the task's id and `label`, so every computation gives the same ones.
fn applying_for<'a>(
    ctx: &'a Context,
    message: &'a TaskMessage,
    label: &str,
    now: chrono::DateTime<Utc>,
) -> Applying<'a> {
    let id = message.id();
    Applying {
        parent_id: id,
        root_id: message.headers.root_id.as_deref().unwrap_or(id),
        priority: message.priority,
        origin: &ctx.worker.node,
        default_queue: &ctx.canvas_queue,
        keep_own_ids: false,
        seed: format!("{id}/{label}"),
        now,
    }
}

/// The `children` of `message`'s success: the ids of the tasks it will
/// apply, stored with its result as Celery does (`AsyncResult.children`).
/// The ids do not depend on the result (they are frozen in the signatures
/// or derived from this task's id), so they are known before it is stored.
pub fn children(ctx: &Context, message: &TaskMessage) -> Vec<String> {
    let embed = Embed::of(message);
    if embed.callbacks.is_empty() && embed.chain.is_empty() {
        return Vec::new();
    }
    let now = Utc::now();
    let applying = |label: &str| applying_for(ctx, message, label, now);
    // What cannot be applied is reported once, when the follow-ups are.
    on_success(&embed, &Value::Null, &applying)
        .0
        .iter()
        .map(|p| p.message.id().to_string())
        .collect()
}

/// Records that the follow-ups are out (for as long as results are kept)
/// and deletes a completed chord's counters.
pub async fn finish(ctx: &Context, follow_ups: FollowUps) {
    if let Some(group_id) = &follow_ups.chord_done {
        if let Err(e) = ctx.results.chord_forget(group_id).await {
            tracing::warn!(group_id, error = %e, "cannot delete the chord's counters");
        }
    }
    let expires = ctx.settings.result_expires.as_secs().max(1);
    let marked = async {
        let mut conn = ctx.results.pool().get().await?;
        redis::cmd("SET")
            .arg(done_key(&follow_ups.task_id))
            .arg(1)
            .arg("EX")
            .arg(expires)
            .query_async::<()>(&mut *conn)
            .await?;
        Ok::<(), ResultError>(())
    };
    if let Err(e) = marked.await {
        // A redelivery would publish them again: logged, nothing lost.
        tracing::warn!(task_id = %follow_ups.task_id, error = %e, "cannot record that the callbacks were published");
    }
    metrics::counter!("canvas_published_total").increment(follow_ups.publications.len() as u64);
}

/// The chord's body applied with every header result, in order, or (a part
/// failed or was revoked) `ChordError` stored for it and its `link_error`s
/// applied (`chord_error_from_stack`).
async fn chord_body(
    ctx: &Context,
    id: &str,
    body: &Value,
    parts: Vec<ChordPart>,
    applying: &Applying<'_>,
) -> Result<Vec<Publication>, ResultError> {
    let callback = match Signature::parse(body) {
        Ok(callback) => callback,
        Err(e) => {
            refuse(id, &e);
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::new();
    let Some(failed) = parts
        .iter()
        .find(|p| p.state == "FAILURE" || p.state == "REVOKED")
    else {
        let results = Value::Array(parts.into_iter().map(|p| p.result).collect());
        collect(
            id,
            callback.apply(&[results], Vec::new(), applying),
            &mut out,
        );
        return Ok(out);
    };
    let reason = format!(
        "Dependency {} raised {}",
        failed.task_id,
        exception_repr(&failed.result)
    );
    tracing::warn!(task_id = id, %reason, "chord failed");
    let Some(callback_id) = callback.task_id() else {
        return Ok(out);
    };
    let error = json!({
        "exc_type": "ChordError",
        "exc_message": [reason],
        "exc_module": "celery.exceptions",
    });
    ctx.results
        .write(
            callback_id,
            TaskState::Failure,
            error,
            Value::String(format!("celery.exceptions.ChordError: {reason}")),
        )
        .await?;
    let errbacks = parsed(id, &callback.errbacks());
    if !errbacks.is_empty() {
        let applying = Applying {
            parent_id: callback_id,
            root_id: callback_id,
            ..applying.clone()
        };
        let (applied, refused) = apply_all(&errbacks, &[json!(callback_id)], &applying);
        out.extend(applied);
        refused.iter().for_each(|e| refuse(id, e));
    }
    Ok(out)
}

/// How Python prints the exception a failure document stands for:
/// `EmailDeliveryError('reason')`.
fn exception_repr(result: &Value) -> String {
    let kind = result["exc_type"].as_str().unwrap_or("Exception");
    let args: Vec<String> = match &result["exc_message"] {
        Value::Array(args) => args.iter().map(python_repr).collect(),
        Value::Null => Vec::new(),
        other => vec![python_repr(other)],
    };
    format!("{kind}({})", args.join(", "))
}

fn python_repr(value: &Value) -> String {
    match value {
        Value::String(s) if s.contains('\'') && !s.contains('"') => {
            format!("\"{}\"", s.replace('\\', "\\\\"))
        }
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        other => other.to_string(),
    }
}

fn parsed(id: &str, values: &[Value]) -> Vec<Signature> {
    values
        .iter()
        .filter_map(|v| match Signature::parse(v) {
            Ok(sig) => Some(sig),
            Err(e) => {
                refuse(id, &e);
                None
            }
        })
        .collect()
}

fn collect(id: &str, applied: Result<Vec<Publication>, CanvasError>, into: &mut Vec<Publication>) {
    match applied {
        Ok(p) => into.extend(p),
        Err(e) => refuse(id, &e),
    }
}

/// A signature this worker cannot apply is skipped (the others go on).
fn refuse(id: &str, error: &CanvasError) {
    tracing::warn!(task_id = id, %error, "embedded signature not applied");
    metrics::counter!("canvas_signatures_refused_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_print_as_python_does() {
        let doc = json!({"exc_type": "EmailDeliveryError", "exc_message": ["it's 550"], "exc_module": "builtins"});
        assert_eq!(exception_repr(&doc), r#"EmailDeliveryError("it's 550")"#);
        assert_eq!(exception_repr(&json!({})), "Exception()");
    }
}
