"""The order service's application: every service, workflow, consumer and controller, wired in one place."""

from __future__ import annotations

import os

from starlette.requests import Request

from examples.orders.consumers import ORDER_OPTIONS, ProcessOrderWorkflow
from examples.orders.controllers import OrderController
from examples.orders.monitors import (
    CheckRunner,
    CheckScheduler,
    MonitorController,
    MonitorRepository,
    SetupMonitor,
    SetupMonitorWorkflow,
    UrlProbe,
)
from examples.orders.services import (
    InventoryService,
    NotificationService,
    OrderRepository,
    PaymentService,
    ShipmentService,
)
from examples.orders.workflows import ProcessOrder
from plait.core import Application, Plait, WorkflowProvider
from plait.core.api import Action

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def operators_on_this_machine(request: Request, action: Action, workflow: str) -> bool:
    """The example's rule for the workflows API: whoever connects from this machine may act, others only look.

    A real service asks its own authentication instead (a session, a token, a role); this one has no users.
    """
    return request.client is not None and request.client.host in LOOPBACK


def create_app(provider: WorkflowProvider | None = None, *, workflows_api: bool = True) -> Application:
    """Builds the order service; ``provider`` defaults to the in-process one.

    Args:
        workflows_api: serve Plait's workflows API and run inspector at ``/workflows`` (``/workflows/ui``).
    """
    app = Plait.create()
    if provider is not None:
        app.workflow_provider(provider)
    if workflows_api:
        app.workflows_api("/workflows", authorize=operators_on_this_machine)
    return (
        app.provider(InventoryService)
        .provider(PaymentService)
        .provider(ShipmentService)
        .provider(NotificationService)
        .provider(OrderRepository)
        .provider(UrlProbe)
        .provider(MonitorRepository)
        .provider(CheckScheduler)
        .provider(CheckRunner, [UrlProbe, MonitorRepository])
        .workflow(ProcessOrder)
        .consumer(
            ProcessOrderWorkflow,
            [InventoryService, PaymentService, ShipmentService, NotificationService, OrderRepository],
            options=ORDER_OPTIONS,
        )
        .workflow(SetupMonitor)
        .consumer(SetupMonitorWorkflow, [UrlProbe, MonitorRepository, CheckScheduler, CheckRunner])
        .controller("/orders", OrderController, [InventoryService, OrderRepository])
        .controller("/monitors", MonitorController)
    )


app = create_app()
"""The service on the in-process provider, for tools that take ``module:attribute`` (a worker runs ``app``'s
consumers with ``await app.start()``, without HTTP)."""

asgi = app.asgi()
"""The same application as ASGI, for any server: ``uvicorn examples.orders.app:asgi``."""


def create_arq_app() -> Application:
    """The service on the arq provider, with Redis at ``$PLAIT_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).

    A factory, so that importing this module needs no Redis: ``plait worker examples.orders.app:create_arq_app``
    runs the consumers of a worker process; the web process builds the same application.
    """
    from plait.providers.arq import ArqWorkflowProvider  # only when asked for: core needs no arq

    return create_app(ArqWorkflowProvider(os.environ.get("PLAIT_REDIS_URL", "redis://127.0.0.1:6379/0")))
