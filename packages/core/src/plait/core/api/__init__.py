"""Plait's HTTP API and run inspector: start, watch and steer an application's flows over HTTP.

``app.workflows_api()`` serves it under ``/workflows`` of ``app.asgi()``, and returns it for mounting elsewhere::

    from plait.core import Plait

    def authorize(request, action, workflow):  # sync or async; without it the API is read-only
        return request.headers.get("x-operator-token") == "let-me-in"

    app = Plait.create().workflow(ProcessOrder).consumer(ProcessOrderWorkflow)
    api = app.workflows_api("/workflows", authorize=authorize)
    # GET /workflows/ui: the inspector; GET /workflows/openapi.json: the routes and every model's schema
"""

from plait.core.api.security import ACTIONS, Action, Authorize
from plait.core.api.server import WorkflowsApi

__all__ = ["ACTIONS", "Action", "Authorize", "WorkflowsApi"]
