"""A webhook receiver for the end-to-end tests (tests-e2e/tests/e2e/webhooks.rs).

Verifies every request with the `standardwebhooks` package, as a customer
would, and records what it saw. Prints its port on the first line of
stdout. The test steers it with POST /_control (JSON merged into its state:
`secrets`, `fail_next` requests to answer 500, `hang` to never answer,
`delay_ms` to answer each request that much later) and
reads GET /_control/log.

For each request it records whether each known secret verifies it, and
whether the verifier rejects the same request with a changed body (a
forgery) and with a timestamp ten minutes old (a replay).
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

state = {"secrets": [], "fail_next": 0, "hang": False, "delay_ms": 0, "log": []}
lock = threading.Lock()


def verifies(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except WebhookVerificationError:
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/_control/log":
            with lock:
                self.reply(200, state["log"])
        else:
            self.reply(404, {})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/_control":
            with lock:
                state.update(json.loads(body))
            self.reply(200, {})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        with lock:
            secrets = list(state["secrets"])
            hang = state["hang"]
            delay = state["delay_ms"] / 1000
        if hang:
            time.sleep(3600)
            return
        time.sleep(delay)
        verified = [verifies(s, body, headers) for s in secrets]
        forged_rejected = not any(verifies(s, body + b" ", headers) for s in secrets)
        replayed = dict(headers)
        replayed["webhook-timestamp"] = str(int(headers.get("webhook-timestamp", "0")) - 600)
        replay_rejected = not any(verifies(s, body, replayed) for s in secrets)
        with lock:
            if state["fail_next"] > 0:
                state["fail_next"] -= 1
                status = 500
            else:
                status = 200 if any(verified) else 400
            try:
                event = json.loads(body)
            except ValueError:
                event = None
            state["log"].append(
                {
                    "id": headers.get("webhook-id"),
                    "signatures": len(headers.get("webhook-signature", "").split()),
                    "verified": verified,
                    "forged_rejected": forged_rejected,
                    "replay_rejected": replay_rejected,
                    "answered": status,
                    "event": event,
                }
            )
        self.reply(status, {"ok": status == 200})


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
