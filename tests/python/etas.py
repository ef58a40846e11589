"""A Python producer scheduling far and many ETAs on our worker: one
send_email task due in 60 days, then COUNT tasks with distinct countdowns
between 1 and 20 seconds.

Environment: BROKER_URL, RESULT_BACKEND, QUEUE, COUNT.
Prints one JSON line: {"far": task_id, "tasks": [[task_id, to, eta], ...]}.
"""

import json
import os
from datetime import datetime, timedelta, timezone

from celery import Celery

app = Celery(broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_BACKEND"])
app.conf.task_serializer = "json"
app.conf.accept_content = ["json"]

queue = os.environ["QUEUE"]
count = int(os.environ["COUNT"])


def kwargs(to):
    return {"to": to, "subject": "ETA", "content": "<p>On time</p>"}


far = app.send_task(
    "notifications.send_email",
    kwargs=kwargs("far@example.org"),
    queue=queue,
    eta=datetime.now(timezone.utc) + timedelta(days=60),
)
tasks = []
for i in range(count):
    to = f"eta{i}@example.org"
    eta = datetime.now(timezone.utc) + timedelta(seconds=1 + i * 19 / max(count, 1))
    r = app.send_task("notifications.send_email", kwargs=kwargs(to), queue=queue, eta=eta)
    tasks.append([r.id, to, eta.isoformat()])
print(json.dumps({"far": far.id, "tasks": tasks}))
