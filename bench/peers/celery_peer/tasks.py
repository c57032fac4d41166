"""Celery's side of bench.peers: the app, the no-op tasks of every workload, and the canvases that chain them.

Runs only in the benchmark's own virtual environment (.bench/celery), never in the workspace, where Celery is
not installed: mypy does not check this folder (see the root pyproject.toml), and the benchmark talks to it
through the JSON lines of driver.py, nothing else.

Configured for speed: Redis broker and result backend, JSON serialisation, workers with the solo pool (one
process each runs its tasks inline, no prefork children), hiredis installed as on Plait's side.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from celery import Celery, chain, group
from celery.canvas import Signature
from celery.signals import worker_process_shutdown, worker_shutdown

URL = os.environ["BENCH_REDIS_URL"]

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue="bench",
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)

# Side effects of the saga's tasks in this process: (flow key, effect, CLOCK_MONOTONIC ns), written to
# BENCH_EFFECTS_DIR when the worker stops. "s1".."s5" are steps starting, "c1".."c3" compensations.
EFFECTS: list[tuple[str, str, int]] = []


def record(key: str, effect: str) -> None:
    EFFECTS.append((key, effect, time.monotonic_ns()))


@worker_shutdown.connect
@worker_process_shutdown.connect
def dump_effects(**_: object) -> None:
    folder = os.environ.get("BENCH_EFFECTS_DIR")
    if folder and EFFECTS:
        Path(folder, f"celery-{os.getpid()}.json").write_text(json.dumps(EFFECTS))


# --- W1: validate -> charge -> [email || sms] -> finalize ---------------------------------------------------


@app.task(name="w1.validate")
def validate(key: str) -> dict[str, bool]:
    return {"ok": True}


@app.task(name="w1.charge")
def charge(key: str) -> dict[str, str]:
    return {"charge_id": "ch-1"}


@app.task(name="w1.email")
def email(key: str) -> dict[str, bool]:
    return {"sent": True}


@app.task(name="w1.sms")
def sms(key: str) -> dict[str, bool]:
    return {"sent": True}


@app.task(name="w1.finalize")
def finalize(key: str) -> dict[str, bool]:
    return {"done": True}


def order(key: str) -> Signature:
    """A chain whose group followed by a task becomes a chord: finalize runs once both sends are done."""
    return chain(validate.si(key), charge.si(key), group(email.si(key), sms.si(key)), finalize.si(key))


# --- W2: four steps in a row --------------------------------------------------------------------------------


@app.task(name="w2.step")
def step(n: int) -> dict[str, int]:
    return {"n": n}


def line(n: int) -> Signature:
    return chain(step.si(n), step.si(n), step.si(n), step.si(n))


# --- W3: five steps, the fourth fails, compensations of the first three in reverse order ----------------------


@app.task(name="w3.s1")
def s1(key: str) -> dict[str, bool]:
    record(key, "s1")
    return {"ok": True}


@app.task(name="w3.s2")
def s2(key: str) -> dict[str, bool]:
    record(key, "s2")
    return {"ok": True}


@app.task(name="w3.s3")
def s3(key: str) -> dict[str, bool]:
    record(key, "s3")
    return {"ok": True}


class Declined(Exception):
    pass


@app.task(name="w3.s4")  # no autoretry: a failure is final
def s4(key: str) -> dict[str, bool]:
    record(key, "s4")
    raise Declined("declined")


@app.task(name="w3.s5")
def s5(key: str) -> dict[str, bool]:
    record(key, "s5")
    return {"ok": True}


@app.task(name="w3.c1")
def c1(key: str) -> None:
    record(key, "c1")


@app.task(name="w3.c2")
def c2(key: str) -> None:
    record(key, "c2")


@app.task(name="w3.c3")
def c3(key: str) -> None:
    record(key, "c3")


def last_compensation_id(key: str) -> str:
    """The task id of c1, the compensation that runs last: the driver waits for it."""
    return f"{key}-c1"


def saga(key: str) -> Signature:
    """s1 -> ... -> s5, each step's ``link_error`` a chain of the compensations of the steps before it, the most
    recent first. Celery stops a chain at its first failure, so s5 never runs after s4 fails."""
    compensations = {1: c1.si(key).set(task_id=last_compensation_id(key)), 2: c2.si(key), 3: c3.si(key)}
    steps = []
    for index, task in enumerate((s1, s2, s3, s4, s5), start=1):
        signature = task.si(key)
        undo = [compensations[i] for i in range(min(index - 1, 3), 0, -1)]
        if undo:
            signature.link_error(chain(*undo))
        steps.append(signature)
    return chain(*steps)
