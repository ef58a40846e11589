"""The Python side of the canvas tests: the tasks that follow our
`notifications.send_email` in chains, `link`/`link_error` callbacks and
chords, run by a Python Celery worker the test starts as
  python -m celery -A canvas_tasks worker -Q $PY_QUEUE -c 2 -P threads \
      -n canvas@$PY_QUEUE --without-mingle --without-gossip --without-heartbeat
with cwd tests/python. Each task also appends what it was called with to the
Redis list `canvas-calls:$PY_QUEUE` (errbacks and links have no result a
producer waits on).

Environment: BROKER_URL, RESULT_BACKEND, PY_QUEUE.
"""

import json
import os

from celery import Celery

app = Celery("canvas", broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_BACKEND"])
app.conf.task_serializer = "json"
app.conf.result_serializer = "json"
app.conf.accept_content = ["json"]
app.conf.worker_prefetch_multiplier = 1
app.conf.broker_connection_retry_on_startup = True

PY_QUEUE = os.environ["PY_QUEUE"]
CALLS = f"canvas-calls:{PY_QUEUE}"


def note(task, kind, arg, tag):
    request = task.request
    call = {
        "kind": kind,
        "tag": tag,
        "arg": arg,
        "id": request.id,
        "parent_id": request.parent_id,
        "root_id": request.root_id,
        "group": request.group,
    }
    client = app.backend.client
    client.rpush(CALLS, json.dumps(call))
    client.expire(CALLS, 3600)


def calls():
    return [json.loads(c) for c in app.backend.client.lrange(CALLS, 0, -1)]


@app.task(bind=True, name="canvas.follow_up")
def follow_up(self, result, tag=None):
    note(self, "follow_up", result, tag)
    return {"follow_up_of": result, "tag": tag}


@app.task(bind=True, name="canvas.on_error")
def on_error(self, task_id, tag=None):
    note(self, "on_error", task_id, tag)
    return {"errback_for": task_id, "tag": tag}


@app.task(bind=True, name="canvas.collect")
def collect(self, results, tag=None):
    note(self, "collect", results, tag)
    return {"collected": results, "tag": tag}
