"""Counts the requests of schemathesis runs from their NDJSON event logs:
prints one line per operation (requests by status) and, last, the total as
`fuzz: N requests made`.

    python count_requests.py events-1.ndjson [events-2.ndjson ...]
"""

import collections
import json
import sys
from urllib.parse import urlsplit


def main(paths):
    by_operation = collections.defaultdict(collections.Counter)
    total = 0
    for path in paths:
        with open(path, encoding="utf-8") as events:
            for line in events:
                event = json.loads(line)
                finished = event.get("ScenarioFinished")
                if not finished:
                    continue
                for interaction in finished["recorder"].get("interactions", {}).values():
                    request = interaction["request"]
                    response = interaction.get("response") or {}
                    operation = f"{request['method']} {urlsplit(request['uri']).path}"
                    label = finished["recorder"].get("label") or operation
                    by_operation[label][str(response.get("status_code", "none"))] += 1
                    total += 1
    for label in sorted(by_operation):
        statuses = by_operation[label]
        detail = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
        print(f"  {label}: {sum(statuses.values())} ({detail})")
    print(f"fuzz: {total} requests made")


if __name__ == "__main__":
    main(sys.argv[1:])
