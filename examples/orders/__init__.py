"""An order service on Plait: two workflows behind a small HTTP API.

``process-order`` reserves stock, charges the card, books the shipment, then emails and texts the customer in
parallel; when a step fails for good, what the earlier steps did is undone in reverse order. ``setup-monitor``
sets up an uptime monitor (check the URL, save the monitor, schedule its checks, run a first one) and keeps its
definition, services, consumer and controller in one module.

``create_app()`` builds it; :mod:`examples.orders.demo` places a few orders and prints what happened.
"""
