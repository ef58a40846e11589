"""Verifies the DKIM signatures of a message with dkimpy, as a receiving
mail server would, for the end-to-end tests (tests-e2e/tests/e2e/dkim.rs).

Usage: dkim_verify.py RECORDS_JSON < message
RECORDS_JSON maps DNS names (`selector._domainkey.domain`) to TXT values:
the records an operator publishes; DNS lookups are answered from it.
Prints JSON: for each signature (in header order) its algorithm, domain,
selector and signed header names, whether it verifies, and whether it
still verifies once one letter of the body is changed.
"""

import json
import sys

import dkim


def main():
    records = json.loads(sys.argv[1])
    message = sys.stdin.buffer.read()

    def dnsfunc(name, timeout=5):
        key = name.decode() if isinstance(name, bytes) else name
        value = records.get(key.rstrip("."))
        return value.encode() if value is not None else None

    # The body changed in transit (one letter), its headers untouched.
    head, sep, body = message.partition(b"\r\n\r\n")
    tampered = head + sep + body.replace(b"Hello", b"Jello", 1)

    def verifies(raw, idx):
        # dkimpy answers False for a bad signature, and raises for some
        # failures (a body hash mismatch): both are a refusal.
        try:
            return dkim.DKIM(raw).verify(idx=idx, dnsfunc=dnsfunc)
        except dkim.DKIMException as e:
            print(f"signature {idx}: {e}", file=sys.stderr)
            return False

    assert tampered != message, "the test message's body must contain Hello"
    headers, _ = dkim.rfc822_parse(message)
    found = [value for name, value in headers if name.lower() == b"dkim-signature"]
    signatures = []
    for idx, value in enumerate(found):
        tags = dkim.util.parse_tag_value(value)
        signatures.append(
            {
                "algorithm": tags.get(b"a", b"").decode(),
                "domain": tags.get(b"d", b"").decode(),
                "selector": tags.get(b"s", b"").decode(),
                "headers": [
                    h.strip().decode()
                    for h in tags.get(b"h", b"").split(b":")
                    if h.strip()
                ],
                "verified": verifies(message, idx),
                "tampered_verified": verifies(tampered, idx),
            }
        )
    print(json.dumps({"signatures": signatures}))


if __name__ == "__main__":
    main()
