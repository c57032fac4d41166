"""Celery's driver for bench.peers: reads one JSON request a line on stdin, answers one JSON line on stdout.

Run with the benchmark's Celery environment from this folder: ``.bench/celery/bin/python driver.py``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from celery.result import AsyncResult
from tasks import app, last_compensation_id, line, order, saga

TIMEOUT = 300.0  # seconds one round may take before the driver gives up on it


def w1(n: int, tag: str) -> dict[str, Any]:
    """Sends ``n`` order chains, then waits for every finalize."""
    started = time.perf_counter()
    results = [order(f"{tag}-{i}").apply_async() for i in range(n)]
    for result in results:
        result.get(timeout=TIMEOUT)
    return {"seconds": time.perf_counter() - started}


def w2(n: int, tag: str) -> dict[str, Any]:
    """``n`` times, one at a time: send the 4-step chain, wait for its last result."""
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        line(i).apply_async().get(timeout=TIMEOUT)
        latencies.append(time.perf_counter() - started)
    return {"latencies": latencies}


def w3(n: int, tag: str) -> dict[str, Any]:
    """Sends ``n`` sagas, then waits for each one's last compensation (c1)."""
    started = time.perf_counter()
    keys = [f"{tag}-{i}" for i in range(n)]
    for key in keys:
        saga(key).apply_async()
    ends = 0
    for key in keys:
        AsyncResult(last_compensation_id(key), app=app).get(timeout=TIMEOUT)
        ends += 1
    return {"seconds": time.perf_counter() - started, "ends": ends}


OPS = {"w1": w1, "w2": w2, "w3": w3}


def main() -> None:
    for line_ in sys.stdin:
        request = json.loads(line_)
        if request["op"] == "quit":
            break
        try:
            reply = OPS[request["op"]](request["n"], request["tag"])
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
