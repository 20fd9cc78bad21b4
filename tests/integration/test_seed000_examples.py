"""The OperationRegistry examples of seed 000 run against taskwarden, imports changed only.

Each test reproduces one documented example (same calls, same attribute names), importing
from ``taskwarden`` instead of ``hother.cancelable``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI

from taskwarden import Cancelable, CancelationReason, OperationRegistry, OperationStatus


@pytest.fixture(autouse=True)
def fresh_default_registry() -> Iterator[OperationRegistry]:
    """The examples use the process-wide singleton: give each test a fresh one."""
    registry = OperationRegistry()
    OperationRegistry.set_instance(registry)
    yield registry
    OperationRegistry.set_instance(None)


async def operation() -> None:
    await anyio.lowlevel.checkpoint()


def test_monitoring_dashboard_example_prints_the_live_operation() -> None:
    async def monitor_operations() -> None:
        """Print operation status every second."""
        registry = OperationRegistry.get_instance()

        while True:
            active = registry.get_active_operations()

            print("\n" + "=" * 60)
            print(f"Active Operations: {len(active)}")
            print("=" * 60)

            for op in active:
                elapsed = op.elapsed_time
                print(f"📊 {op.name}")
                print(f"   ID: {op.id[:8]}...")
                print(f"   Status: {op.status}")
                print(f"   Elapsed: {elapsed:.1f}s")

                if op.parent_id:
                    parent = registry.get_operation(op.parent_id)
                    if parent:
                        print(f"   Parent: {parent.name}")

            await anyio.sleep(1.0)

    async def main() -> None:
        # Start monitoring in background
        async with anyio.create_task_group() as tg:
            tg.start_soon(monitor_operations)

            # Run some operations
            async with Cancelable(name="task_1"):
                await anyio.sleep(0.05)  # the document sleeps 5 s
            tg.cancel_scope.cancel()  # the document's monitor runs forever

    out = io.StringIO()
    with redirect_stdout(out):
        anyio.run(main)
    text = out.getvalue()
    assert "Active Operations: 1" in text
    assert "📊 task_1" in text
    assert "Status: running" in text


async def test_lookup_examples() -> None:
    registry = OperationRegistry.get_instance()
    async with Cancelable(name="data_processor") as cancel:
        op_id = cancel.context.id
        operation = registry.get_operation(op_id)
        assert operation is not None
        assert f"Found: {operation.name}" == "Found: data_processor"
        assert operation.status == OperationStatus.RUNNING

        operation = registry.get_operation_by_name("data_processor")
        assert operation is not None
        assert operation.id == op_id
        assert f"Running for: {operation.elapsed_time:.1f}s".startswith("Running for: ")


async def test_automatic_registration_examples() -> None:
    registry = OperationRegistry.get_instance()
    # Auto-registered (default)
    async with Cancelable(name="auto_registered") as cancel:
        await operation()
        assert registry.get_operation(cancel.context.id) is not None
    # Automatically unregistered after context exits
    assert registry.get_operation(cancel.context.id) is None

    # Disable auto-registration (not recommended)
    async with Cancelable(name="manual", auto_register=False) as cancel:
        await operation()
        # NOT in registry
        assert registry.get_operation(cancel.context.id) is None


async def test_hierarchical_tracking_example() -> None:
    registry = OperationRegistry.get_instance()

    async with Cancelable(name="parent") as parent:
        parent_id = parent.context.id

        async with Cancelable(name="child_1", parent=parent):
            # Query hierarchy
            children = registry.get_children(parent_id)
            assert len(children) == 1
            assert children[0].name == "child_1"

        async with Cancelable(name="child_2", parent=parent):
            children = registry.get_children(parent_id)
            assert len(children) == 1  # child_1 already completed


async def test_export_metrics_and_health_check_examples() -> None:
    def export_operation_metrics() -> dict[str, Any]:
        """Export metrics for Prometheus/Datadog."""
        registry = OperationRegistry.get_instance()
        active = registry.get_active_operations()

        metrics = {
            "active_operations": len(active),
            "operations_by_status": {
                "running": sum(1 for op in active if op.status == OperationStatus.RUNNING),
                "pending": sum(1 for op in active if op.status == OperationStatus.PENDING),
            },
            "longest_running": max((op.elapsed_time for op in active), default=0),
        }

        return metrics

    app = FastAPI()

    @app.get("/health/operations")
    async def operation_health() -> dict[str, Any]:
        """Health check showing active operations."""
        registry = OperationRegistry.get_instance()
        active = registry.get_active_operations()

        return {
            "status": "healthy",
            "active_count": len(active),
            "operations": [
                {"name": op.name, "status": op.status.value, "elapsed": round(op.elapsed_time, 2)}
                for op in active
            ],
        }

    async with Cancelable(name="busy"):
        metrics = export_operation_metrics()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = (await client.get("/health/operations")).json()
    assert metrics["active_operations"] == 1
    assert metrics["operations_by_status"] == {"running": 1, "pending": 0}
    assert body["active_count"] == 1
    assert body["operations"][0]["name"] == "busy"
    assert body["operations"][0]["status"] == "running"


async def test_find_stuck_tree_and_progress_aggregation_patterns() -> None:
    def find_stuck_operations(threshold_seconds: float = 300) -> list[Any]:
        """Find operations running longer than threshold."""
        registry = OperationRegistry.get_instance()
        active = registry.get_active_operations()

        stuck = [op for op in active if op.elapsed_time > threshold_seconds]

        return stuck

    def print_operation_tree() -> None:
        """Print hierarchical operation tree."""
        registry = OperationRegistry.get_instance()
        active = registry.get_active_operations()

        # Find root operations (no parent)
        roots = [op for op in active if not op.parent_id]

        def print_node(op: Any, indent: int = 0) -> None:
            prefix = "  " * indent
            print(f"{prefix}├─ {op.name} ({op.status}, {op.elapsed_time:.1f}s)")

            children = registry.get_children(op.id)
            for child in children:
                print_node(child, indent + 1)

        for root in roots:
            print_node(root)

    def aggregate_progress() -> float:
        """Calculate overall progress across all operations."""
        registry = OperationRegistry.get_instance()
        active = registry.get_active_operations()

        total_weight = len(active)
        completed_weight = sum(1 for op in active if op.status == OperationStatus.COMPLETED)

        if total_weight == 0:
            return 100.0

        return (completed_weight / total_weight) * 100

    async with Cancelable(name="root") as root, Cancelable(name="leaf"):
        root.context.start_time -= 600
        assert [op.name for op in find_stuck_operations()] == ["root"]
        out = io.StringIO()
        with redirect_stdout(out):
            print_operation_tree()
        assert out.getvalue().splitlines()[0].startswith("├─ root (running,")
        assert out.getvalue().splitlines()[1].startswith("  ├─ leaf (running,")
        assert aggregate_progress() == 0.0
    assert aggregate_progress() == 100.0


async def test_maintenance_and_history_examples() -> None:
    registry = OperationRegistry.get_instance()
    async with Cancelable(name="finished"):
        pass
    async with Cancelable(name="stopped") as cancel:
        await cancel.cancel()
        await anyio.sleep(1)

    # Get last 100 operations
    history = await registry.get_history(limit=100)
    lines = [f"{op.name}: {op.status} - {op.elapsed_time}s" for op in history]
    assert lines[0].startswith("stopped: cancelled - ")
    assert lines[1].startswith("finished: completed - ")

    # Filter by status
    completed = await registry.get_history(status=OperationStatus.COMPLETED, limit=50)
    assert [op.name for op in completed] == ["finished"]

    # Remove operations completed more than 1 hour ago
    assert await registry.cleanup_completed(max_age_seconds=3600) == 0
    # Or cleanup all completed
    await registry.cleanup_completed()
    assert await registry.get_history() == []

    # Clear all operations (use with caution!)
    registry.clear()


async def test_bulk_cancelation_examples() -> None:
    registry = OperationRegistry.get_instance()
    async with (
        Cancelable(name="user_123_export") as export,
        Cancelable(name="report", metadata={"priority": "low"}) as report,
    ):
        export.context.start_time -= 600
        # Cancel all operations for a user
        await registry.cancel_all(name_pattern="user_123_*", reason=CancelationReason.MANUAL)
        # Cancel all long-running operations
        await registry.cancel_all(
            min_age_seconds=300,  # Older than 5 minutes
            reason=CancelationReason.TIMEOUT,
        )
        # Cancel operations matching complex criteria
        await registry.cancel_all(
            filter_func=lambda op: op.context.metadata.get("priority") == "low",
            reason=CancelationReason.MANUAL,
        )
        await anyio.sleep(1)
    assert export.context.cancel_reason is CancelationReason.MANUAL
    assert report.context.cancel_reason is CancelationReason.PARENT  # report was inside export
