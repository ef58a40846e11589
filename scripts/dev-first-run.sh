#!/usr/bin/env bash
# What a newcomer needs to send the first email at once; scripts/dev.sh runs
# it last, with the platform up. Development only: with ENV=production it
# does nothing.
#   - an admin API key, minted on the first run and kept in var/dev-admin.env
#     (mode 600, git-ignored under var/), printed with the console's address;
#   - an SMTP account for the local capture server (smtp-sink on
#     127.0.0.1:2525, mail saved in var/mail/) in the pool.
# Runs again harmlessly: the key is reused while it works, the account is
# added once (409 afterwards).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ "${ENV:-development}" = production ]; then
  echo "ENV=production: no development key or capture account"
  exit 0
fi
api="http://127.0.0.1:${API_PORT:-8000}"
bin="${NOTIFY_BIN_DIR:-target/release}"
creds=var/dev-admin.env
mkdir -p var

# An access token for key $1 and secret $2, or nothing.
token_for() {
  curl -sS -X POST "$api/api/v1/auth/token" -H 'content-type: application/json' \
    -d "$(jq -cn --arg k "$1" --arg s "$2" '{api_key: $k, api_secret: $s}')" |
    jq -r '.data.access_token // empty'
}

key="" secret="" token=""
if [ -f "$creds" ]; then
  key=$(sed -n 's/^NOTIFY_API_KEY=//p' "$creds")
  secret=$(sed -n 's/^NOTIFY_API_SECRET=//p' "$creds")
  [ -z "$key" ] || token=$(token_for "$key" "$secret")
fi
if [ -z "$token" ]; then
  # No key yet, or its database was reset: mint one.
  out=$("$bin/notify-api" create-api-key --name dev-admin --description "scripts/dev.sh (development)" --admin)
  key=$(sed -n 's/^API Key: *//p' <<<"$out")
  secret=$(sed -n 's/^API Secret: *//p' <<<"$out")
  (umask 077 && printf 'NOTIFY_API_KEY=%s\nNOTIFY_API_SECRET=%s\n' "$key" "$secret" >"$creds")
  token=$(token_for "$key" "$secret")
  [ -n "$token" ] || { echo "the new development key got no token; see var/log/notify-api.log" >&2; exit 1; }
  echo "minted the development admin key (kept in $creds)"
fi

account='{"email": "noreply@example.com", "display_name": "Local capture (smtp-sink)",
  "smtp_host": "127.0.0.1", "smtp_port": 2525, "smtp_password": "dev", "tls_mode": "none",
  "daily_limit": 10000}'
status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$api/api/v1/admin/email-accounts" \
  -H "Authorization: Bearer $token" -H 'content-type: application/json' -d "$account")
case "$status" in
  201) echo "added the SMTP account noreply@example.com -> smtp-sink 127.0.0.1:2525" ;;
  409) ;; # added on an earlier run
  *) echo "adding the capture account answered HTTP $status" >&2; exit 1 ;;
esac

cat <<INFO

Ready to send (development key; the secret is in $creds):
  console     $api/console   sign in with
  API key     $key
  API secret  $secret

  TOKEN=\$(curl -s -X POST $api/api/v1/auth/token -H 'content-type: application/json' \\
    -d '{"api_key": "$key", "api_secret": "$secret"}' | jq -r .data.access_token)
  curl -s -X POST $api/api/v1/messages/email/send -H "Authorization: Bearer \$TOKEN" \\
    -H 'content-type: application/json' -d '{"to": "test@example.com", "subject": "Test", "content": "<p>It works.</p>"}'
  ls var/mail/     # the email as the capture server received it
INFO
