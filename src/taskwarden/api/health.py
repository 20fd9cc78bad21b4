"""``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` says the process answers; ``/readyz`` checks the store (one cheap read), the
change feed and the bus, and answers 503 with the failing check when one fails. Both are
open, for load balancers and orchestrators. ``/metrics`` is the Prometheus exposition,
behind the same auth as the reads (metrics name the tasks). Its gauges are computed from
the change feed's cache at scrape time, so a scrape costs no store query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from taskwarden.errors import TaskwardenError
from taskwarden.processes import ProcessState

if TYPE_CHECKING:
    from taskwarden.api.broadcaster import Broadcaster, Change
    from taskwarden.api.routes import Service

__all__ = ["Metrics", "health_router", "metrics_router"]

health_router = APIRouter()
metrics_router = APIRouter()

_OUTCOMES = {
    ProcessState.DONE: "done",
    ProcessState.FAILED: "failed",
    ProcessState.CANCELLED: "cancelled",
}
_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, float("inf"))


class _FeedCollector(Collector):
    def __init__(self, feed: Broadcaster) -> None:
        self.feed = feed

    def collect(self) -> Iterator[Any]:
        from taskwarden import __version__

        info = InfoMetricFamily("taskwarden_build", "The taskwarden version serving.")
        info.add_metric([], {"version": __version__})
        yield info
        by_state = GaugeMetricFamily(
            "taskwarden_processes", "Processes by state, as the server sees them.", labels=["state"]
        )
        counts = dict.fromkeys(ProcessState, 0)
        for record in self.feed.records.values():
            counts[record.state] += 1
        for state, count in counts.items():
            by_state.add_metric([state.value], count)
        yield by_state
        yield GaugeMetricFamily(
            "taskwarden_sse_clients", "Event streams connected.", value=self.feed.subscribers
        )
        yield GaugeMetricFamily(
            "taskwarden_feed_changes", "Changes published by the feed.", value=self.feed.seq
        )
        yield GaugeMetricFamily(
            "taskwarden_feed_store_reads",
            "Store queries made by the change feed (independent of the clients).",
            value=self.feed.store_reads,
        )
        yield GaugeMetricFamily(
            "taskwarden_sse_resyncs",
            "Times a client fell behind and was sent a fresh snapshot.",
            value=self.feed.overflows,
        )


class Metrics:
    """The app's own Prometheus registry: counters fed by the change feed."""

    def __init__(self, feed: Broadcaster) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_FeedCollector(feed))
        self.started = Counter(
            "taskwarden_runs_started",
            "Runs that went into running.",
            registry=self.registry,
        )
        self.finished = Counter(
            "taskwarden_runs_finished",
            "Runs that reached a terminal state, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "taskwarden_run_duration_seconds",
            "How long finished runs ran.",
            ["outcome"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        feed.listeners.append(self.observe)

    def observe(self, change: Change) -> None:
        """Count the runs a change started and finished.

        A change may carry several steps of a process at once (coalescing), so a start is
        read from the run number (it grows when a run starts), and an end from a new
        outcome or a new run that already ended."""
        for item in change.processes:
            record, previous = item.record, item.previous
            if record is None:
                continue
            before = previous.run_number if previous is not None else 0
            new_runs = max(0, record.run_number - before)
            if new_runs:
                self.started.inc(new_runs)
            elif previous is not None and previous.state == record.state:
                continue
            outcome = _OUTCOMES.get(record.state)
            if outcome is not None:
                self.finished.labels(outcome).inc()
                if record.duration is not None:
                    self.duration.labels(outcome).observe(record.duration)

    def exposition(self) -> bytes:
        """The text format, with ``# HELP`` and ``# TYPE``."""
        return generate_latest(self.registry)


def _service(request: Request) -> Service:
    service: Service = request.app.state.taskwarden
    return service


@health_router.get("/healthz", summary="The process answers")
async def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the server runs."""
    return {"status": "ok"}


@health_router.get(
    "/readyz",
    summary="The store, the feed and the bus work",
    responses={503: {"description": "Not ready: the checks say which part failed"}},
)
async def readyz(request: Request) -> JSONResponse:
    """``{status, checks}``; 503 when a check fails, naming it."""
    service = _service(request)
    checks: dict[str, str] = {}
    try:
        await service.store.get("__taskwarden_readiness__")
        checks["store"] = "ok"
    except (TaskwardenError, OSError) as exc:
        checks["store"] = f"failed: {exc}"
    checks["feed"] = "closed" if service.feed.closing.is_set() else "ok"
    if service.bus is not None:
        checks["bus"] = "ok" if getattr(service.bus, "is_open", True) else "closed"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain; version=0.0.4; charset=utf-8": {}}}},
)
async def metrics(request: Request) -> Response:
    """The Prometheus text exposition of the server's metrics."""
    exporter: Metrics = request.app.state.taskwarden_metrics
    return Response(exporter.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
