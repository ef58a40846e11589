"""A Python producer exercising more of Celery's calling API against our
worker: countdown, expires, priority, results and failures.

Environment: BROKER_URL, RESULT_BACKEND, QUEUE, TO, MODE, and TASK_NAME
(default notifications.send_email). MODE:
  countdown  send_task(countdown=2, expires=300, priority=5) and get(), with
             `metadata` in the kwargs
  failure    get() on a send the SMTP server refuses: prints the raised type
  expired    countdown=4 with expires=1: the task ends REVOKED
  delay      args=[to, subject, content] positionally, like an existing
             `send_email.delay(to, subject, content)` call
  long_subject     a 999-character subject (the API's limit is 998)
  many_recipients  51 recipients (the API's limit is 50)
  revoke     countdown=3, then AsyncResult.revoke(): the task ends REVOKED
  revoke_first     app.control.revoke(id) before the task is published
             under that id: it ends REVOKED
  priority_backlog BACKLOG sends to low<n>@example.org without a priority,
             then one to TO with priority=9; waits for no result (the
             worker starts after); with MAX_PRIORITY, the app declares its
             queues with that x-max-priority (task_queue_max_priority)
  timelimit  soft_time_limit=1, time_limit=2, then get()
  compressed compression=COMPRESSION (zlib, bzip2, lzma), then get()
TASK_ID, when set, is the task's id. Prints one JSON line.
"""

import json
import os
import time
import uuid

from celery import Celery

app = Celery(broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_BACKEND"])
app.conf.task_serializer = "json"
app.conf.accept_content = ["json"]
if os.environ.get("MAX_PRIORITY"):
    app.conf.task_queue_max_priority = int(os.environ["MAX_PRIORITY"])

mode = os.environ["MODE"]
name = os.environ.get("TASK_NAME", "notifications.send_email")
to = os.environ["TO"]
kwargs = {"to": to, "subject": f"From Python ({mode})", "content": "<p>Hello</p>"}
if mode == "long_subject":
    kwargs["subject"] = "x" * 999
elif mode == "many_recipients":
    kwargs["cc"] = [f"cc{i}@example.org" for i in range(50)]
queue = os.environ["QUEUE"]
task_id = os.environ.get("TASK_ID") or None
started = time.monotonic()

if mode == "countdown":
    kwargs["metadata"] = {"origin": "python", "order_id": "P-7"}
    r = app.send_task(name, kwargs=kwargs, queue=queue, countdown=2, expires=300, priority=5)
elif mode == "expired":
    r = app.send_task(name, kwargs=kwargs, queue=queue, countdown=4, expires=1)
elif mode == "revoke":
    r = app.send_task(name, kwargs=kwargs, queue=queue, countdown=3)
    r.revoke()
elif mode == "revoke_first":
    task_id = str(uuid.uuid4())
    app.control.revoke(task_id)
    time.sleep(2)  # the broadcast reaches the workers first
    r = app.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id)
elif mode == "delay":
    r = app.send_task(name, args=[to, kwargs["subject"], kwargs["content"]], queue=queue)
elif mode == "priority_backlog":
    backlog = []
    for i in range(int(os.environ.get("BACKLOG", "30"))):
        low = dict(kwargs, to=f"low{i}@example.org")
        backlog.append(app.send_task(name, kwargs=low, queue=queue).id)
    r = app.send_task(name, kwargs=kwargs, queue=queue, priority=9, task_id=task_id)
    print(json.dumps({"task_id": r.id, "backlog": backlog}))
    raise SystemExit(0)
elif mode == "timelimit":
    r = app.send_task(
        name, kwargs=kwargs, queue=queue, soft_time_limit=1, time_limit=2, task_id=task_id
    )
elif mode == "compressed":
    r = app.send_task(
        name, kwargs=kwargs, queue=queue, compression=os.environ["COMPRESSION"], task_id=task_id
    )
else:
    r = app.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id)

report = {"task_id": r.id}
try:
    report["result"] = r.get(timeout=60)
except Exception as e:  # the failure the caller sees
    report["exc_type"] = type(e).__name__
    report["exc_message"] = str(e)
report["state"] = r.state
report["elapsed"] = time.monotonic() - started
print(json.dumps(report))
