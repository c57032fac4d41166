"""Plait on the arq provider against Celery and BullMQ, side by side on one Redis: ``python -m bench.peers``.

Not a test. The benchmark installs the peers itself on first run (see :mod:`bench.peers.install`), starts its own
``redis-server`` on a free loopback port (one database per peer), two worker processes per peer and one driver
process per peer, then runs the workloads in alternating rounds and prints the medians, Plait's ratio to each
peer, the targets, and W3's correctness per peer. It exits 0 unless something crashes.

Workloads, no-op handlers everywhere:

* **W1**, throughput: N flows of validate -> charge -> [email || sms] -> finalize, all started (200 at a time),
  then every end awaited.
* **W2**, latency: one 4-step sequential flow at a time, start to observed end.
* **W3**, throughput: N sagas of five steps whose 4th fails for good (no retry): the compensations of steps 3,
  2 and 1 run once each in that order, and step 5 never starts. Each flow is verified (:mod:`bench.peers.effects`).

Each peer's driver speaks the same protocol, one JSON object a line: a request ``{"op": "w1"|"w2"|"w3", "n": N,
"tag": T}`` (flows, or latency samples; the flows' keys are ``T-0`` .. ``T-(N-1)``) gets ``{"seconds": s}`` for
W1, ``{"latencies": [s, ...]}`` for W2, ``{"seconds": s, "ends": k}`` for W3 (k: flows seen to end as a saga
should), or ``{"error": text}``; ``{"op": "quit"}`` ends it. Each peer's side is in its own module or folder:
:mod:`bench.peers.plait_peer`, ``celery_peer/`` (Python in Celery's own environment), ``bullmq_peer/`` (Node).
"""
