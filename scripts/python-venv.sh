#!/usr/bin/env bash
# Creates (once) the virtualenv the Python interoperability tests use, with
# the pinned packages of tests/python/requirements.txt, and prints the path
# of its python. Re-runs only when the requirements change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NOTIFY_TEST_VENV:-$root/.venv-tests}"
requirements="$root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
# Tests may call this concurrently.
exec 9>"$venv.lock"
flock 9
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
