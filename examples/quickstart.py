"""Runs the example order service: places orders through its HTTP API and prints what became of each.

    uv run python examples/quickstart.py            # in-process provider: print, then exit
    uv run python examples/quickstart.py --serve    # then keep serving on http://127.0.0.1:8001: the inspector
                                                    # is at /workflows/ui, and curl works too

One order completes; one is declined at the charge, so its stock reservation is released; one cannot be shipped,
so its charge is refunded and its reservation released. Two wait for a manager's approval: one is approved, one
cancelled. One's refund fails during an outage and is retried by an operator. With --serve, one more order is
left waiting for a manager, for you to approve or cancel.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

# Run as a script, Python puts examples/ on sys.path; the example is the package examples.orders.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.orders.app import create_app
from examples.orders.demo import run_demo
from plait.core import PlaitError, WorkflowProvider


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", action="store_true", help="after the demo, keep serving the API for curl")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8001, help="port to serve on (default: %(default)s)")
    parser.add_argument(
        "--provider",
        choices=("inprocess", "arq"),
        default="inprocess",
        help="workflow provider (default: %(default)s; arq needs plait-providers-arq and a Redis server)",
    )
    parser.add_argument("--redis-url", default="redis://localhost:6379/0", help="Redis for --provider arq")
    parser.add_argument("--verbose", "-v", action="store_true", help="show Plait's logs")
    return parser.parse_args(argv)


def make_provider(args: argparse.Namespace) -> WorkflowProvider | None:
    """``None`` for the application's default (in-process) provider; the arq provider, imported only when asked."""
    if args.provider == "inprocess":
        return None
    try:
        from plait.providers.arq import ArqWorkflowProvider
    except ImportError as error:
        raise PlaitError(
            "--provider arq needs the arq provider: pip install plait-providers-arq (and a Redis server)"
        ) from error
    return ArqWorkflowProvider(args.redis_url)


async def main(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    app = create_app(make_provider(args))
    await app.start()
    try:
        provider = "in-process" if args.provider == "inprocess" else args.provider
        print(f"Plait order service on the {provider} provider", file=out)
        print(
            "process-order: validate -> [over $500: approval -> if rejected: reject] -> charge -> fulfill "
            "-> [send_email || send_sms]",
            file=out,
        )
        shown = await run_demo(app, out, local_services=args.provider == "inprocess", leave_waiting=args.serve)
        if args.serve:
            base = f"http://{args.host}:{args.port}"
            waiting = shown[-1]["flow_id"]
            print(f"\nServing on {base} (Ctrl-C stops).", file=out)
            print(f"   The run inspector: {base}/workflows/ui", file=out)
            print("Try:", file=out)
            print(f"   curl -s {base}/orders", file=out)
            print(f"   curl -N {base}/workflows/flows/{waiting}/events      # live, until the flow ends", file=out)
            print(
                f"   curl -s -X POST {base}/orders/{waiting}/approval -H 'content-type: application/json' "
                """-d '{"approved": true, "manager": "you"}'""",
                file=out,
            )
            print(f"   curl -s -X POST {base}/orders/{waiting}/cancel", file=out)
            print(
                f"   curl -s -X POST {base}/orders -H 'content-type: application/json' "
                """-d '{"customer_id": "cus_kay", "email": "kay@example.com", "phone": "+15550199", """
                """"items": [{"sku": "CBL-C", "quantity": 3}], "payment_method": "pm_card_visa", """
                """"ship_to": {"name": "Kay", "line1": "2 High St", "city": "Leeds", "postal_code": "LS1", """
                """"country": "GB"}}'""",
                file=out,
            )
            out.flush()
            await app.serve(port=args.port, host=args.host, log_level="warning")
    finally:
        await app.stop()
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="   log: %(levelname)s %(name)s %(message)s"
    )
    try:
        return asyncio.run(main(args))
    except KeyboardInterrupt:  # Ctrl-C while serving: the server has already shut down cleanly
        return 0


if __name__ == "__main__":
    sys.exit(run())
