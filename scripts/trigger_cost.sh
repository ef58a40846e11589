#!/usr/bin/env bash
# What the triggers on message_records cost the send path, in PostgreSQL
# time. In a scratch database with every migration, times the statements of
# N messages (insert, the claim to `sending`, `sent`: 3N single-row
# statements in PL/pgSQL, as the busiest path runs them before batching)
# with no user triggers, with V21's live-set triggers only, with V21's and
# V9's (webhook) triggers, and with those and V10's (timeline) triggers;
# ROUNDS alternating runs each, then the medians.
# No webhook endpoint exists, so the webhook triggers only ask whether one does.
#   scripts/trigger_cost.sh [N] [ROUNDS]      (defaults 5000 and 4)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
messages=${1:-5000}
rounds=${2:-4}
db="trigger_cost_$$"
psql_() { psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
psql_ -d postgres -c "CREATE DATABASE $db"
trap 'psql_ -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
for f in $(printf '%s\n' migrations/V*.sql | sort -V); do psql_ -d "$db" -f "$f" >/dev/null; done
psql_ -d "$db" -c "INSERT INTO api_keys (id, name, key_prefix, key_hash, secret_hash, scopes)
                   VALUES ('00000000-0000-0000-0000-0000000000b1', 'bench', 'p', 'h', 's', '{send}')"

triggers() { # on|off for the live-set, the webhook and the timeline triggers
  local live=$1 webhook=$2 timeline=$3
  psql_ -d "$db" -c "
    ALTER TABLE message_records $([ "$live" = on ] && echo ENABLE || echo DISABLE) TRIGGER message_records_live_insert;
    ALTER TABLE message_records $([ "$live" = on ] && echo ENABLE || echo DISABLE) TRIGGER message_records_live_update;
    ALTER TABLE message_records $([ "$webhook" = on ] && echo ENABLE || echo DISABLE) TRIGGER message_records_webhook_insert;
    ALTER TABLE message_records $([ "$webhook" = on ] && echo ENABLE || echo DISABLE) TRIGGER message_records_webhook_update;
    ALTER TABLE message_records $([ "$timeline" = on ] && echo ENABLE || echo DISABLE) TRIGGER message_records_timeline_insert;
    ALTER TABLE message_records $([ "$timeline" = on ] && echo ENABLE || echo DISABLE) TRIGGER message_records_timeline_update;"
}

run() { # prints the milliseconds the statements took
  psql_ -d "$db" -c "TRUNCATE message_records, live_messages CASCADE" >/dev/null 2>&1
  psql_ -d "$db" 2>&1 >/dev/null <<SQL | sed -n 's/^NOTICE: *\([0-9][0-9]*\)$/\1/p'
DO \$\$
DECLARE
  started timestamptz := clock_timestamp();
  mid uuid;
BEGIN
  FOR i IN 1..$messages LOOP
    mid := gen_random_uuid();
    INSERT INTO message_records (id, task_id, api_key_id, status, to_addrs, subject, html_body)
    VALUES (mid, mid::text, '00000000-0000-0000-0000-0000000000b1', 'queued', ARRAY['a@example.org'], 's', 'b');
    UPDATE message_records SET status = 'sending', attempts = attempts + 1, claimed_by = 'w',
           account_email = 'acc@example.org', sending_at = now() WHERE message_records.id = mid;
    UPDATE message_records SET status = 'sent', smtp_response = '250 ok', sent_at = now()
     WHERE message_records.id = mid;
  END LOOP;
  RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - started) * 1000);
END
\$\$;
SQL
}

declare -A times
for ((r = 1; r <= rounds; r++)); do
  for config in none live webhooks all; do
    case $config in
      none) triggers off off off ;;
      live) triggers on off off ;;
      webhooks) triggers on on off ;;
      all) triggers on on on ;;
    esac
    ms=$(run)
    times[$config]+="$ms "
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
none=$(echo "${times[none]}" | median)
for config in none live webhooks all; do
  m=$(echo "${times[$config]}" | median)
  per=$(awk -v m="$m" -v n="$none" -v k="$messages" 'BEGIN {printf "%.0f", (m - n) * 1000 / (3 * k)}')
  echo "$config: median ${m} ms for $((3 * messages)) statements (runs: ${times[$config]}); +${per} µs per statement over none"
done
