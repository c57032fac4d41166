"""An order service on Plait: the seed's process-order and setup-monitor workflows behind a small HTTP API.

``create_app()`` builds it; :mod:`examples.orders.demo` places a few orders and prints what happened.
"""
