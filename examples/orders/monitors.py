"""The setup-monitor workflow: setting up an uptime monitor (check the URL, save it, schedule checks, run one).

Everything about it lives here, from the definition to the controller, to show a workflow end to end in one file.
Only the steps that create something have a rollback: checking a URL and running a first check change nothing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field
from starlette.responses import Response

from plait.core import (
    IWorkflowConsumer,
    RequestContext,
    RouteBuilder,
    StepContext,
    StepHandler,
    Workflow,
    WorkflowContext,
    WorkflowError,
)

# --- definition ----------------------------------------------------------------------------------------------


class MonitorData(BaseModel):
    account_id: str
    project_id: str
    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    interval_seconds: int = Field(ge=30, le=3600)
    regions: list[str] = Field(min_length=1)


class UrlChecked(BaseModel):
    reachable: bool
    response_ms: int
    status_code: int


class MonitorCreated(BaseModel):
    monitor_id: str


class ChecksScheduled(BaseModel):
    regions: list[str]
    next_check_at: datetime


class FirstCheck(BaseModel):
    status: Literal["up", "down"]
    response_ms: int


class MonitorResult(BaseModel):
    monitor_id: str
    status: Literal["up", "down"]
    first_check_at: datetime


SetupMonitor = Workflow.define(name="setup-monitor", data=MonitorData, result=MonitorResult).steps(
    lambda s: (
        s.sequential(s.step("validate_url", UrlChecked))
        .sequential(s.step("create_record", MonitorCreated))
        .sequential(s.step("schedule_checks", ChecksScheduled))
        .sequential(s.step("first_check", FirstCheck))
    )
)

# --- services ------------------------------------------------------------------------------------------------


@dataclass
class ProbeResponse:
    status_code: int
    response_ms: int


class UrlProbe:
    """Stands in for an HTTP client: known URLs answer as configured, any other with a 200."""

    def __init__(self) -> None:
        self.responses: dict[str, ProbeResponse] = {"https://down.example.com": ProbeResponse(503, 40)}

    async def get(self, url: str) -> ProbeResponse:
        return self.responses.get(url, ProbeResponse(200, 120))


@dataclass
class Monitor:
    id: str
    account_id: str
    project_id: str
    name: str
    url: str
    interval_seconds: int


class MonitorRepository:
    def __init__(self) -> None:
        self.monitors: dict[str, Monitor] = {}
        self._ids = itertools.count(1)

    async def create(self, data: MonitorData) -> Monitor:
        monitor = Monitor(
            f"mon_{next(self._ids):04d}", data.account_id, data.project_id, data.name, data.url, data.interval_seconds
        )
        self.monitors[monitor.id] = monitor
        return monitor

    async def delete(self, monitor_id: str) -> None:
        self.monitors.pop(monitor_id, None)  # deleting twice is fine: rollbacks may run again


class UnknownRegionError(ValueError):
    pass


class CheckScheduler:
    REGIONS = frozenset({"us-east-1", "eu-west-1", "ap-southeast-2"})

    def __init__(self) -> None:
        self.schedules: dict[str, tuple[int, list[str]]] = {}

    async def schedule(self, monitor_id: str, interval_seconds: int, regions: list[str]) -> datetime:
        unknown = sorted(set(regions) - self.REGIONS)
        if unknown:
            raise UnknownRegionError(f"no check runners in {', '.join(unknown)}")
        self.schedules[monitor_id] = (interval_seconds, regions)
        return datetime.now(UTC) + timedelta(seconds=interval_seconds)

    async def unschedule(self, monitor_id: str) -> None:
        self.schedules.pop(monitor_id, None)


class CheckRunner:
    def __init__(self, probe: UrlProbe, monitors: MonitorRepository) -> None:
        self.probe = probe
        self.monitors = monitors

    async def run_check(self, monitor_id: str) -> ProbeResponse:
        return await self.probe.get(self.monitors.monitors[monitor_id].url)


# --- consumer ------------------------------------------------------------------------------------------------


class SetupMonitorWorkflow(IWorkflowConsumer[MonitorData, MonitorResult]):
    def __init__(
        self, probe: UrlProbe, monitors: MonitorRepository, scheduler: CheckScheduler, checks: CheckRunner
    ) -> None:
        self.probe = probe
        self.monitors = monitors
        self.scheduler = scheduler
        self.checks = checks
        self.steps = {
            "validate_url": StepHandler(execute=self.validate_url),  # read-only: nothing to undo
            "create_record": StepHandler(execute=self.create_record, rollback=self.delete_record),
            "schedule_checks": StepHandler(execute=self.schedule_checks, rollback=self.unschedule_checks),
            "first_check": StepHandler(execute=self.first_check),  # informational: nothing to undo
        }

    async def validate_url(self, ctx: StepContext[MonitorData]) -> UrlChecked:
        response = await self.probe.get(ctx.data.url)
        if response.status_code >= 500:
            raise RuntimeError(f"URL returned {response.status_code}: server error")
        return UrlChecked(reachable=True, response_ms=response.response_ms, status_code=response.status_code)

    async def create_record(self, ctx: StepContext[MonitorData]) -> MonitorCreated:
        return MonitorCreated(monitor_id=(await self.monitors.create(ctx.data)).id)

    async def delete_record(self, ctx: StepContext[MonitorData]) -> None:
        await self.monitors.delete(ctx.result("create_record", MonitorCreated).monitor_id)

    async def schedule_checks(self, ctx: StepContext[MonitorData]) -> ChecksScheduled:
        monitor_id = ctx.result("create_record", MonitorCreated).monitor_id
        next_check = await self.scheduler.schedule(monitor_id, ctx.data.interval_seconds, ctx.data.regions)
        return ChecksScheduled(regions=ctx.data.regions, next_check_at=next_check)

    async def unschedule_checks(self, ctx: StepContext[MonitorData]) -> None:
        await self.scheduler.unschedule(ctx.result("create_record", MonitorCreated).monitor_id)

    async def first_check(self, ctx: StepContext[MonitorData]) -> FirstCheck:
        response = await self.checks.run_check(ctx.result("create_record", MonitorCreated).monitor_id)
        return FirstCheck(status="up" if response.status_code < 400 else "down", response_ms=response.response_ms)

    async def on_complete(self, ctx: WorkflowContext[MonitorData]) -> MonitorResult:
        return MonitorResult(
            monitor_id=ctx.result("create_record", MonitorCreated).monitor_id,
            status=ctx.result("first_check", FirstCheck).status,
            first_check_at=datetime.now(UTC),
        )

    async def on_error(self, ctx: WorkflowContext[MonitorData], error: WorkflowError) -> None:
        ctx.log.error("Monitor setup for %s failed: %s", ctx.data.url, error)


# --- controller ----------------------------------------------------------------------------------------------


class MonitorController:
    """``POST /monitors`` starts a setup; ``GET /monitors/{flow_id}`` shows how it went."""

    def configure(self, r: RouteBuilder) -> None:
        r.post("/", self.create)
        r.get("/{flow_id}", self.show)

    async def create(self, ctx: RequestContext) -> Response:
        handle = await ctx.workflows.execute(SetupMonitor, await ctx.body(MonitorData))
        return ctx.json({"flow_id": handle.id}, status=202)

    async def show(self, ctx: RequestContext) -> Response:
        flow_id: str = ctx.params["flow_id"]
        status = await ctx.workflows.get_status(flow_id)
        body: dict[str, object] = {"flow_id": flow_id, "status": status}
        if status.is_terminal:
            try:
                body["result"] = await (await ctx.workflows.get_handle(flow_id)).result()
            except WorkflowError as error:
                body["error"] = str(error)
        return ctx.json(body)
