"""The Celery app the interoperability tests point `celery -A celery_app`
(inspect, control, flower, events) at: nothing but the broker and the
result backend, from the environment (BROKER_URL, RESULT_BACKEND)."""

import os

from celery import Celery

app = Celery(
    "notify_compat",
    broker=os.environ["BROKER_URL"],
    backend=os.environ.get("RESULT_BACKEND"),
)
app.conf.task_serializer = "json"
app.conf.result_serializer = "json"
app.conf.accept_content = ["json"]
