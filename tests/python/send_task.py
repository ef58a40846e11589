"""A Python producer, as an existing codebase would be: sends the platform's
send-email task with the `celery` library and waits for its result.

Environment: BROKER_URL, RESULT_BACKEND, QUEUE, TO.
Prints the task result as JSON on success; exits non-zero otherwise.
"""

import json
import os
import sys

from celery import Celery

app = Celery(broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_BACKEND"])
app.conf.task_serializer = "json"
app.conf.accept_content = ["json"]

result = app.send_task(
    "notifications.send_email",
    kwargs={
        "to": os.environ["TO"],
        "subject": "From Python",
        "content": "<p>Sent by <b>celery</b> send_task</p>",
    },
    queue=os.environ["QUEUE"],
)
value = result.get(timeout=60)
print(json.dumps({"task_id": result.id, "state": result.state, "result": value}))
sys.exit(0 if result.state == "SUCCESS" else 1)
