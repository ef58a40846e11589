"""A Python producer using Celery's canvas with the platform's send task:
chains, link/link_error callbacks, groups and chords, the Python steps run
by the worker of canvas_tasks.py.

Environment: BROKER_URL, RESULT_BACKEND, QUEUE (our worker's), PY_QUEUE
(the Python worker's), TO, REFUSED (a recipient the SMTP server refuses
with 550), MODE:
  chain        (send_email | canvas.follow_up).apply_async().get()
  link         send_task(link=follow_up, link_error=on_error) for a send
               that succeeds and one that is refused
  group        group(send_email x3).apply_async(); save(); get();
               GroupResult.restore(id).get()
  chord        chord([send_email x2], canvas.collect).apply_async().get()
  chord_error  chord([send_email, refused send_email], collect.on_error(on_error))
Prints one JSON line (with `calls`: what the Python tasks were called with).
"""

import json
import os
import time

from celery import chord, group
from celery.result import GroupResult

from canvas_tasks import app, calls, collect, follow_up, on_error

QUEUE = os.environ["QUEUE"]
PY_QUEUE = os.environ["PY_QUEUE"]
TO = os.environ["TO"]
REFUSED = os.environ.get("REFUSED", "refused@example.org")
mode = os.environ["MODE"]


def send(to, subject):
    return app.signature(
        "notifications.send_email",
        kwargs={"to": to, "subject": subject, "content": "<p>canvas</p>"},
        queue=QUEUE,
    )


def wait_calls(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = calls()
        if predicate(seen):
            return seen
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for the Python tasks; calls: {calls()}")


def failure(result):
    try:
        result.get(timeout=60)
    except Exception as e:  # what the caller sees
        return {"exc_type": type(e).__name__, "exc_message": str(e)}
    return None


report = {"mode": mode}
if mode == "chain":
    c = (send(TO, "chain step 1") | follow_up.s(tag="chain").set(queue=PY_QUEUE)).apply_async()
    report["value"] = c.get(timeout=60)
    report["last_id"] = c.id
    report["first_id"] = c.parent.id
    report["first"] = c.parent.get(timeout=10)
    # Our send's result lists the step it applied, as Celery's does, in
    # the very document get() returned (and cached).
    report["first_children"] = [r.id for r in (c.parent.children or [])]
    report["calls"] = calls()
elif mode == "link":
    # No queue on the link: it goes to CELERY_CANVAS_DEFAULT_QUEUE.
    ok = app.send_task(
        "notifications.send_email",
        kwargs={"to": TO, "subject": "linked", "content": "<p>ok</p>"},
        queue=QUEUE,
        link=follow_up.s(tag="link"),
        link_error=on_error.s(tag="error-of-ok").set(queue=PY_QUEUE),
    )
    bad = app.send_task(
        "notifications.send_email",
        kwargs={"to": REFUSED, "subject": "refused", "content": "<p>no</p>"},
        queue=QUEUE,
        link=follow_up.s(tag="link-of-bad").set(queue=PY_QUEUE),
        link_error=on_error.s(tag="error").set(queue=PY_QUEUE),
    )
    report["ok_id"], report["bad_id"] = ok.id, bad.id
    report["ok"] = ok.get(timeout=60)
    report["bad"] = failure(bad)
    report["calls"] = wait_calls(
        lambda seen: {c["tag"] for c in seen} >= {"link", "error"}
    )
elif mode == "group":
    g = group(send(f"g{i}-{TO}", f"group {i}") for i in range(3)).apply_async()
    g.save()
    report["group_id"] = g.id
    report["ids"] = [r.id for r in g.results]
    report["values"] = g.get(timeout=60)
    restored = GroupResult.restore(g.id, app=app)
    report["restored_ids"] = [r.id for r in restored.results]
    report["restored_values"] = restored.get(timeout=10)
elif mode == "chord":
    r = chord(
        [send(f"c{i}-{TO}", f"chord {i}") for i in range(2)],
        collect.s(tag="chord").set(queue=PY_QUEUE),
    ).apply_async()
    report["value"] = r.get(timeout=60)
    report["body_id"] = r.id
    report["header_ids"] = [h.id for h in r.parent.results]
    report["header_values"] = r.parent.get(timeout=10)
    report["calls"] = calls()
elif mode == "chord_error":
    body = collect.s(tag="chord-body").set(queue=PY_QUEUE)
    body.link_error(on_error.s(tag="chord-error").set(queue=PY_QUEUE))
    r = chord([send(TO, "chord ok"), send(REFUSED, "chord refused")], body).apply_async()
    report["body_id"] = r.id
    report["header_ids"] = [h.id for h in r.parent.results]
    # What the chord's result raises: the failed header part's error, as
    # AsyncResult.get() checks the parents first.
    report["error"] = failure(r)
    # The body's own result: ChordError.
    report["body_error"] = failure(app.AsyncResult(r.id))
    report["calls"] = wait_calls(lambda seen: any(c["tag"] == "chord-error" for c in seen))
else:
    raise SystemExit(f"unknown MODE {mode}")

print(json.dumps(report))
