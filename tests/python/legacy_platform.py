"""The old Python platform (FastAPI + Celery, PostgreSQL) as it stood in
production, for the cut-over tests: builds its database exactly as it had it,
reads it back, damages it, and publishes tasks the way its API did.

Every subcommand prints ONE JSON line on stdout; an error exits non-zero with
a message on stderr.

  create   --database-url URL --fernet-key KEY --spec FILE.json
  bulk     --database-url URL --fernet-key KEY [--accounts 10000] [--messages 100000]
  corrupt  --database-url URL --email ADDR
  accounts --database-url URL
  records  --database-url URL
  produce  --database-url URL --count N --prefix P --to ADDR [--start K]
           (env BROKER_URL, QUEUE)
"""

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import random
import secrets
import string
import sys
import time
import uuid

import psycopg

# The old platform's tables, as its migrations left them in production.
SCHEMA = """
CREATE TABLE api_keys (
    id SERIAL PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    description TEXT,
    api_key VARCHAR(64) NOT NULL UNIQUE,
    api_secret_hash VARCHAR(255) NOT NULL,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    rate_limit INTEGER,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    last_used_at TIMESTAMP WITHOUT TIME ZONE,
    expires_at TIMESTAMP WITHOUT TIME ZONE
);
CREATE TABLE email_accounts (
    id SERIAL PRIMARY KEY,
    email VARCHAR(255) NOT NULL UNIQUE,
    smtp_host VARCHAR(255) NOT NULL,
    smtp_port INTEGER NOT NULL,
    smtp_username VARCHAR(255) NOT NULL,
    smtp_password TEXT NOT NULL,
    display_name VARCHAR(255),
    daily_limit INTEGER NOT NULL DEFAULT 500,
    daily_sent_count INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    last_reset_date DATE,
    last_used_at TIMESTAMP WITHOUT TIME ZONE,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
CREATE TABLE message_records (
    id SERIAL PRIMARY KEY,
    task_id VARCHAR(255) UNIQUE,
    api_key_id INTEGER REFERENCES api_keys(id),
    to_email VARCHAR(255) NOT NULL,
    subject VARCHAR(500) NOT NULL,
    content TEXT NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'pending',
    account_id INTEGER REFERENCES email_accounts(id),
    error_message TEXT,
    retry_count INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    sent_at TIMESTAMP WITHOUT TIME ZONE
);
"""

SCHEMES = ("sha256", "bcrypt", "pbkdf2_sha256", "argon2", "werkzeug_pbkdf2", "md5_crypt", "plain")
URLSAFE_B64 = string.ascii_letters + string.digits + "-_"


class Fail(Exception):
    """An error reported on stderr with a non-zero exit."""


def emit(obj):
    print(json.dumps(obj), flush=True)


def connect(url, autocommit=False):
    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)


def fernet(key):
    from cryptography.fernet import Fernet

    try:
        return Fernet(key)
    except (ValueError, TypeError) as e:
        raise Fail(f"bad Fernet key: {e}")


def utc_now():
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def parse_ts(value, what):
    """An ISO 8601 string as the naive UTC datetime the old platform stored
    (an offset, or Z, is converted to UTC; a naive value is taken as UTC)."""
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise Fail(f"{what}: not an ISO 8601 timestamp: {value!r}")
    if t.tzinfo is not None:
        t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return t


def parse_date(value, what):
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise Fail(f"{what}: not an ISO date: {value!r}")


def hash_secret(secret, scheme):
    """The api_secret_hash the old platform (or one of its ancestors) stored."""
    if scheme == "sha256":
        return hashlib.sha256(secret.encode()).hexdigest()
    if scheme == "bcrypt":
        import bcrypt

        return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=10)).decode()
    if scheme == "pbkdf2_sha256":
        from passlib.hash import pbkdf2_sha256

        return pbkdf2_sha256.hash(secret)
    if scheme == "argon2":
        from passlib.hash import argon2

        return argon2.hash(secret)
    if scheme == "werkzeug_pbkdf2":
        # werkzeug.security.generate_password_hash(secret, "pbkdf2:sha256")
        # of werkzeug >= 2.3: 600,000 iterations, a 16-character salt,
        # the derived key in lowercase hex.
        iterations = 600000
        alphabet = string.ascii_letters + string.digits
        salt = "".join(secrets.choice(alphabet) for _ in range(16))
        dk = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt.encode(), iterations)
        return f"pbkdf2:sha256:{iterations}${salt}${dk.hex()}"
    if scheme == "md5_crypt":
        from passlib.hash import md5_crypt

        return md5_crypt.hash(secret)
    if scheme == "plain":
        return secret
    raise Fail(f"unknown scheme {scheme!r} (one of {', '.join(SCHEMES)})")


def create_schema(conn):
    with conn.cursor() as cur:
        cur.execute(SCHEMA)


# ---------------------------------------------------------------- create


def cmd_create(args):
    try:
        with open(args.spec) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        raise Fail(f"cannot read the spec {args.spec}: {e}")
    f = fernet(args.fernet_key)
    accounts = spec.get("accounts") or []
    keys = spec.get("keys") or []
    messages = spec.get("messages") or []
    with connect(args.database_url) as conn:
        create_schema(conn)
        cur = conn.cursor()
        account_ids = {}
        for i, a in enumerate(accounts):
            what = f"accounts[{i}]"
            try:
                email = a["email"]
                row = (
                    email,
                    a["smtp_host"],
                    int(a["smtp_port"]),
                    a.get("smtp_username", email),
                    f.encrypt(a["password"].encode()).decode(),
                    a.get("display_name"),
                    int(a.get("daily_limit", 500)),
                    int(a.get("daily_sent_count", 0)),
                    int(a.get("priority", 0)),
                    bool(a.get("is_active", True)),
                    parse_date(a.get("last_reset_date"), what + ".last_reset_date"),
                    parse_ts(a.get("last_used_at"), what + ".last_used_at"),
                )
            except KeyError as e:
                raise Fail(f"{what}: missing {e}")
            cur.execute(
                "INSERT INTO email_accounts (email, smtp_host, smtp_port, smtp_username,"
                " smtp_password, display_name, daily_limit, daily_sent_count, priority,"
                " is_active, last_reset_date, last_used_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
                row,
            )
            account_ids[email] = cur.fetchone()[0]
        key_ids = {}
        for i, k in enumerate(keys):
            what = f"keys[{i}]"
            try:
                row = (
                    k["name"],
                    k.get("description"),
                    k["api_key"],
                    hash_secret(k["api_secret"], k.get("scheme", "sha256")),
                    bool(k.get("is_active", True)),
                    bool(k.get("is_admin", False)),
                    k.get("rate_limit"),
                    parse_ts(k.get("last_used_at"), what + ".last_used_at"),
                    parse_ts(k.get("expires_at"), what + ".expires_at"),
                )
            except KeyError as e:
                raise Fail(f"{what}: missing {e}")
            created = parse_ts(k.get("created_at"), what + ".created_at")
            cur.execute(
                "INSERT INTO api_keys (name, description, api_key, api_secret_hash,"
                " is_active, is_admin, rate_limit, last_used_at, expires_at, created_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,"
                " COALESCE(%s, now() AT TIME ZONE 'utc')) RETURNING id",
                row + (created,),
            )
            key_ids[k["api_key"]] = cur.fetchone()[0]
        for i, m in enumerate(messages):
            what = f"messages[{i}]"
            account = m.get("account_email")
            if account is not None and account not in account_ids:
                raise Fail(f"{what}: unknown account_email {account!r}")
            api_key = m.get("api_key")
            if api_key is not None and api_key not in key_ids:
                raise Fail(f"{what}: unknown api_key {api_key!r}")
            try:
                row = (
                    m.get("task_id"),
                    key_ids.get(api_key) if api_key is not None else None,
                    m["to_email"],
                    m["subject"],
                    m["content"],
                    m.get("status", "pending"),
                    account_ids[account] if account is not None else None,
                    m.get("error_message"),
                    int(m.get("retry_count", 0)),
                    parse_ts(m.get("sent_at"), what + ".sent_at"),
                    parse_ts(m.get("created_at"), what + ".created_at"),
                )
            except KeyError as e:
                raise Fail(f"{what}: missing {e}")
            cur.execute(
                "INSERT INTO message_records (task_id, api_key_id, to_email, subject, content,"
                " status, account_id, error_message, retry_count, sent_at, created_at)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"
                " COALESCE(%s, now() AT TIME ZONE 'utc'))",
                row,
            )
    emit({"accounts": len(accounts), "keys": len(keys), "messages": len(messages)})


# ------------------------------------------------------------------ bulk


def cmd_bulk(args):
    started = time.monotonic()
    f = fernet(args.fernet_key)
    rng = random.Random(20261201)
    now = utc_now()
    today = now.date()
    n_keys = 10
    with connect(args.database_url) as conn:
        create_schema(conn)
        cur = conn.cursor()
        with cur.copy(
            "COPY email_accounts (email, smtp_host, smtp_port, smtp_username, smtp_password,"
            " display_name, daily_limit, daily_sent_count, priority, is_active,"
            " last_reset_date, last_used_at, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(args.accounts):
                email = f"acct{i}@bulk.example"
                copy.write_row(
                    (
                        email,
                        "smtp.bulk.example",
                        587,
                        email,
                        f.encrypt(f"pw-{i}".encode()).decode(),
                        f"Bulk Account {i}",
                        1000,
                        i % 50,
                        i % 10,
                        True,
                        today,
                        now if i % 50 else None,
                        now - dt.timedelta(days=30),
                        now,
                    )
                )
        with cur.copy(
            "COPY api_keys (name, description, api_key, api_secret_hash, is_active, is_admin,"
            " rate_limit, created_at) FROM STDIN"
        ) as copy:
            for i in range(n_keys):
                copy.write_row(
                    (
                        f"bulk-{i}",
                        f"bulk key {i}",
                        f"noti_bulk{i:04d}",
                        hash_secret(f"bulk-secret-{i}", "sha256"),
                        True,
                        i == 0,
                        None,
                        now - dt.timedelta(days=30),
                    )
                )
        cur.execute("SELECT id FROM email_accounts ORDER BY id")
        account_ids = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT id FROM api_keys ORDER BY id")
        key_ids = [r[0] for r in cur.fetchall()]
        counts = {"sent": 0, "failed": 0, "pending": 0}
        span = 20 * 86400
        with cur.copy(
            "COPY message_records (task_id, api_key_id, to_email, subject, content, status,"
            " account_id, error_message, retry_count, created_at, sent_at) FROM STDIN"
        ) as copy:
            for i in range(args.messages):
                # Exactly 5% failed, 5% pending, 90% sent.
                r = i % 20
                status = "failed" if r == 0 else "pending" if r == 1 else "sent"
                counts[status] += 1
                created = now - dt.timedelta(seconds=rng.randrange(span))
                account = account_ids[rng.randrange(len(account_ids))] if status == "sent" and account_ids else None
                copy.write_row(
                    (
                        str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        key_ids[i % len(key_ids)],
                        f"rcpt{i % 5000}@dest.example",
                        f"Bulk message {i}",
                        f"<p>Bulk message {i}</p>",
                        status,
                        account,
                        "550 5.1.1 User unknown" if status == "failed" else None,
                        (i % 3) if status != "sent" else 0,
                        created,
                        created + dt.timedelta(seconds=1 + i % 30) if status == "sent" else None,
                    )
                )
    emit(
        {
            "accounts": args.accounts,
            "keys": n_keys,
            "messages": args.messages,
            "statuses": counts,
            "seconds": round(time.monotonic() - started, 3),
        }
    )


# --------------------------------------------------------------- corrupt


def cmd_corrupt(args):
    with connect(args.database_url) as conn:
        cur = conn.cursor()
        cur.execute(
            "SELECT id, smtp_password FROM email_accounts WHERE email = %s FOR UPDATE",
            (args.email,),
        )
        row = cur.fetchone()
        if row is None:
            raise Fail(f"no account {args.email!r}")
        account_id, token = row
        # A Fernet token is urlsafe base64 of version (1) | timestamp (8) |
        # IV (16) | ciphertext (16n) | HMAC-SHA256 (32). Character 40 carries
        # six full bits of the ciphertext's first block: changing it keeps the
        # token decodable and the same length, and breaks the HMAC.
        pos = 40
        if len(token) <= pos + 4 or token[pos] not in URLSAFE_B64:
            raise Fail(f"{args.email}: smtp_password is not a Fernet token")
        old = token[pos]
        new = URLSAFE_B64[(URLSAFE_B64.index(old) + 1) % len(URLSAFE_B64)]
        damaged = token[:pos] + new + token[pos + 1 :]
        before = base64.urlsafe_b64decode(token)
        after = base64.urlsafe_b64decode(damaged)
        assert len(before) == len(after) and before != after
        cur.execute(
            "UPDATE email_accounts SET smtp_password = %s WHERE id = %s",
            (damaged, account_id),
        )
    emit({"corrupted": args.email})


# ------------------------------------------------------- accounts, records


def cmd_accounts(args):
    with connect(args.database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT email, daily_sent_count, daily_limit, is_active FROM email_accounts ORDER BY id"
        ).fetchall()
    emit(
        {
            "accounts": {
                e: {"daily_sent_count": c, "daily_limit": l, "is_active": a} for e, c, l, a in rows
            }
        }
    )


def cmd_records(args):
    with connect(args.database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT task_id, status FROM message_records WHERE task_id IS NOT NULL ORDER BY id"
        ).fetchall()
    emit({"records": {t: s for t, s in rows}})


# --------------------------------------------------------------- produce


def cmd_produce(args):
    from celery import Celery

    try:
        broker = os.environ["BROKER_URL"]
        queue = os.environ["QUEUE"]
    except KeyError as e:
        raise Fail(f"environment variable {e} is not set")
    app = Celery("legacy_api", broker=broker)
    app.conf.task_serializer = "json"
    app.conf.accept_content = ["json"]
    app.conf.broker_connection_retry_on_startup = True
    task_ids = []
    # Like the old API: record the message as pending, then publish the task
    # under the record's task id.
    with connect(args.database_url, autocommit=True) as conn, app.producer_or_acquire() as producer:
        for i in range(args.start, args.start + args.count):
            task_id = str(uuid.uuid4())
            subject = f"{args.prefix} {i}"
            content = "<p>body</p>"
            conn.execute(
                "INSERT INTO message_records (task_id, to_email, subject, content, status)"
                " VALUES (%s, %s, %s, %s, 'pending')",
                (task_id, args.to, subject, content),
            )
            app.send_task(
                "app.tasks.send_email",
                args=[args.to, subject, content],
                task_id=task_id,
                queue=queue,
                producer=producer,
            )
            task_ids.append(task_id)
    emit({"published": len(task_ids), "task_ids": task_ids})


# ------------------------------------------------------------------ main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("create", help="create the tables and insert the rows of a JSON spec")
    s.add_argument("--database-url", required=True)
    s.add_argument("--fernet-key", required=True)
    s.add_argument("--spec", required=True)
    s.set_defaults(func=cmd_create)

    s = sub.add_parser("bulk", help="create the tables and fill them with generated rows")
    s.add_argument("--database-url", required=True)
    s.add_argument("--fernet-key", required=True)
    s.add_argument("--accounts", type=int, default=10000)
    s.add_argument("--messages", type=int, default=100000)
    s.set_defaults(func=cmd_bulk)

    s = sub.add_parser("corrupt", help="break the HMAC of an account's Fernet token")
    s.add_argument("--database-url", required=True)
    s.add_argument("--email", required=True)
    s.set_defaults(func=cmd_corrupt)

    s = sub.add_parser("accounts", help="daily counts, limits and activity per account")
    s.add_argument("--database-url", required=True)
    s.set_defaults(func=cmd_accounts)

    s = sub.add_parser("records", help="the status of each message record by task id")
    s.add_argument("--database-url", required=True)
    s.set_defaults(func=cmd_records)

    s = sub.add_parser("produce", help="record and publish send_email tasks like the old API")
    s.add_argument("--database-url", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--prefix", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--start", type=int, default=0)
    s.set_defaults(func=cmd_produce)

    args = p.parse_args(argv)
    try:
        args.func(args)
    except Fail as e:
        print(f"legacy_platform {args.command}: {e}", file=sys.stderr)
        return 1
    except psycopg.Error as e:
        print(f"legacy_platform {args.command}: database error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
