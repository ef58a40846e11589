"""The old Python platform's Celery worker, minimal but faithful: one task,
`app.tasks.send_email(to, subject, content)`, that records the message,
takes one send from the daily quota of the best account, decrypts its SMTP
password (Fernet) and sends through smtplib.

Started by the cut-over tests as
  python -m celery -A legacy_worker worker -Q QUEUE -c 2 -P threads \
      -n legacy@HOST --without-mingle --without-gossip --without-heartbeat -l info
with cwd tests/python and the environment BROKER_URL, RESULT_BACKEND (optional),
PYTHON_DATABASE_URL, ENCRYPTION_KEY (the Fernet key), and optionally
LEGACY_QUOTA_RETRY_SECONDS (countdown when every account is at its limit,
default 30).
"""

import logging
import os
import smtplib
import threading
from email.message import EmailMessage
from email.utils import formataddr, make_msgid

import psycopg
from celery import Celery, bootsteps
from cryptography.fernet import Fernet

app = Celery("legacy", broker=os.environ["BROKER_URL"], backend=os.environ.get("RESULT_BACKEND"))
app.conf.task_serializer = "json"
app.conf.result_serializer = "json"
app.conf.accept_content = ["json"]
app.conf.worker_prefetch_multiplier = 1
app.conf.broker_connection_retry_on_startup = True
# task_acks_late stays at Celery's default (False): acked when it starts.


class WakeUp(bootsteps.StartStopStep):
    """Wakes the worker's event loop every second. Idle, kombu's hub polls
    for up to 10 s, and a SIGTERM (warm shutdown) or a QoS raise for a held
    ETA task waits for that poll to end; the tests should not wait that long.
    Changes nothing else."""

    requires = {"celery.worker.components:Hub"}

    def __init__(self, w, **kwargs):
        super().__init__(w, **kwargs)
        self.tref = None

    def start(self, w):
        if getattr(w, "hub", None) is not None:
            self.tref = w.hub.call_repeatedly(1.0, _noop)

    def stop(self, w):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


def _noop():
    pass


app.steps["worker"].add(WakeUp)

log = logging.getLogger("legacy.tasks")

SMTP_TIMEOUT = 10
TRANSIENT_RETRY_SECONDS = 5

_local = threading.local()


def db():
    """This thread's autocommit connection, opened again when broken."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        conn = psycopg.connect(os.environ["PYTHON_DATABASE_URL"], autocommit=True, connect_timeout=10)
        _local.conn = conn
    return conn


def drop_db():
    conn = getattr(_local, "conn", None)
    _local.conn = None
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def sql(query, params=(), fetch=False):
    try:
        cur = db().execute(query, params)
        return cur.fetchone() if fetch else None
    except (psycopg.OperationalError, psycopg.InterfaceError):
        drop_db()
        raise


PICK_ACCOUNT = """
UPDATE email_accounts
   SET daily_sent_count = daily_sent_count + 1,
       last_used_at = now() AT TIME ZONE 'utc'
 WHERE id = (SELECT id FROM email_accounts
              WHERE is_active AND daily_sent_count < daily_limit
              ORDER BY priority DESC, daily_sent_count
              LIMIT 1
              FOR UPDATE SKIP LOCKED)
RETURNING id, email, smtp_host, smtp_port, smtp_username, smtp_password, display_name
"""

# The same, waiting for a row another worker holds instead of passing over it.
PICK_ACCOUNT_WAITING = PICK_ACCOUNT.replace("FOR UPDATE SKIP LOCKED", "FOR UPDATE")


def pick_account():
    """Takes one send from the quota of the best account; None when every
    active account is at its limit. SKIP LOCKED passes over an account that
    another worker holds until its commit, so the only account left looks
    exhausted while a neighbour takes from it: then wait for that lock
    (PostgreSQL re-checks the limit on the row it gets), so that None means
    real exhaustion."""
    row = sql(PICK_ACCOUNT, fetch=True)
    if row is None:
        row = sql(PICK_ACCOUNT_WAITING, fetch=True)
    return row


def give_back(account_id):
    sql(
        "UPDATE email_accounts SET daily_sent_count = GREATEST(daily_sent_count - 1, 0) WHERE id = %s",
        (account_id,),
    )


def set_pending(task_id, retries, error=None):
    sql(
        "UPDATE message_records SET status = 'pending', retry_count = %s, error_message = %s"
        " WHERE task_id = %s",
        (retries, error, task_id),
    )


def set_failed(task_id, error, account_id=None):
    sql(
        "UPDATE message_records SET status = 'failed', error_message = %s,"
        " account_id = COALESCE(%s, account_id) WHERE task_id = %s",
        (error, account_id, task_id),
    )


def record(task_id, to, subject, content):
    """Records the message as being sent; None when it was already sent."""
    return sql(
        "INSERT INTO message_records (task_id, to_email, subject, content, status)"
        " VALUES (%s, %s, %s, %s, 'sending')"
        " ON CONFLICT (task_id) DO UPDATE SET status = 'sending'"
        " WHERE message_records.status <> 'sent' RETURNING id",
        (task_id, to, subject, content),
        fetch=True,
    )


def smtp_send(host, port, username, password, message):
    # As the old platform did: smtplib's own TLS contexts (no certificate
    # verification when no context is given).
    if port == 465:
        client = smtplib.SMTP_SSL(host, port, timeout=SMTP_TIMEOUT)
    else:
        client = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
    try:
        if port == 587:
            client.starttls()
        client.login(username, password)
        client.send_message(message)
    finally:
        try:
            client.quit()
        except Exception:
            client.close()


def smtp_code(exc):
    """The SMTP reply code of a send error, or None when it has none."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code, exc.smtp_error
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, msg = next(iter(exc.recipients.values()))
        return code, msg
    return None


def retry(task, countdown, task_id, error, exc=None):
    if task.request.retries >= task.max_retries:
        set_failed(task_id, f"max retries exceeded: {error}")
        log.warning("task %s failed after %d retries: %s", task_id, task.request.retries, error)
        return {"status": "failed", "error": f"max retries exceeded: {error}"}
    set_pending(task_id, task.request.retries + 1, error)
    log.info("task %s: retry %d in %ss", task_id, task.request.retries + 1, countdown)
    raise task.retry(countdown=countdown, exc=exc)


@app.task(bind=True, name="app.tasks.send_email", max_retries=5)
def send_email(self, to, subject, content):
    task_id = self.request.id
    try:
        try:
            recorded = record(task_id, to, subject, content)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            # A connection that died while idle (database restarted): the
            # statement is idempotent, run it again on a new connection.
            recorded = record(task_id, to, subject, content)
        if recorded is None:
            log.info("task %s: already sent", task_id)
            return {"status": "already_sent"}

        account = pick_account()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise self.retry(countdown=TRANSIENT_RETRY_SECONDS, exc=exc)
    if account is None:
        countdown = int(os.environ.get("LEGACY_QUOTA_RETRY_SECONDS", "30"))
        log.info("task %s: every account is at its daily limit", task_id)
        return retry(self, countdown, task_id, "no account below its daily limit")

    account_id, email, host, port, username, token, display_name = account
    try:
        password = Fernet(os.environ["ENCRYPTION_KEY"]).decrypt(token.encode()).decode()
    except Exception as exc:
        give_back(account_id)
        error = f"cannot decrypt the SMTP password of {email}: {type(exc).__name__}"
        set_failed(task_id, error)
        log.error("task %s: %s", task_id, error)
        return {"status": "failed", "error": error}

    message = EmailMessage()
    message["From"] = formataddr((display_name, email)) if display_name else email
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=email.rpartition("@")[2] or None)
    message.set_content(content, subtype="html")

    try:
        smtp_send(host, port, username, password, message)
    except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused) as exc:
        code, text = smtp_code(exc)
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        error = f"{code} {text}"
        give_back(account_id)
        if 400 <= code < 500:
            log.warning("task %s: %s via %s", task_id, error, email)
            return retry(self, TRANSIENT_RETRY_SECONDS, task_id, error, exc)
        set_failed(task_id, error, account_id)
        log.error("task %s: %s via %s", task_id, error, email)
        return {"status": "failed", "error": error, "account": email}
    except (OSError, smtplib.SMTPException) as exc:
        # Connection refused, timeout, TLS trouble, a dropped connection.
        error = f"{type(exc).__name__}: {exc}"
        give_back(account_id)
        log.warning("task %s: %s via %s", task_id, error, email)
        return retry(self, TRANSIENT_RETRY_SECONDS, task_id, error, exc)

    sql(
        "UPDATE message_records SET status = 'sent', account_id = %s,"
        " sent_at = now() AT TIME ZONE 'utc', error_message = NULL WHERE task_id = %s",
        (account_id, task_id),
    )
    log.info("task %s: sent to %s via %s", task_id, to, email)
    return {"status": "sent", "account": email}
