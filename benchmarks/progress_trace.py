"""A run's progress as its log file recorded it: the trace the console's time-left test
replays (tests/test_console.py).

From ``<artifact_root>/logs/run-<time>.log``: each job's start ("job k of n: <ns>"),
each epoch it reported ("<ns>: epoch e of N, loss ..."), and its end, taken as its last
epoch (the record's save and figure follow within a second). Times in seconds from the
first line.

Usage::

    python benchmarks/progress_trace.py data/07_model_output/ptychi_baseline/logs/run-*.log > tests/data/default_run_trace.json
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path

STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
START = re.compile(STAMP + r" INFO fly64_recon\.hooks: job \d+ of \d+: (\S+)")
EPOCH = re.compile(STAMP + r" INFO fly64_recon\.progress: (\S+): epoch (\d+) of (\d+)")


def seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def trace(log: Path) -> dict:
    """Starts, epochs and ends, in time order."""
    events: list[list] = []
    last: dict[str, list] = {}
    for line in log.read_text().splitlines():
        if found := START.match(line):
            events.append([seconds(found[1]), "start", found[2]])
        elif found := EPOCH.match(line):
            event = [seconds(found[1]), "epoch", found[2], int(found[3]), int(found[4])]
            events.append(event)
            last[found[2]] = event
    events += [[t, "finish", ns, epoch] for t, _, ns, epoch, _ in last.values()]
    events.sort(key=lambda event: (event[0], event[1] == "finish"))
    zero = events[0][0]
    for event in events:
        event[0] = round(event[0] - zero, 3)
    return {"jobs": sorted(last), "events": events}


if __name__ == "__main__":
    json.dump(trace(Path(sys.argv[1])), sys.stdout)
