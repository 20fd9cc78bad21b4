"""The process model: the state groups and transition table as data, and the document shape."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime

import pytest

from taskwarden.processes import (
    ACTIVE_STATES,
    CANCELLABLE_STATES,
    DEFINITION_FIELDS,
    DISMISSABLE_STATES,
    END_STATES,
    LAUNCHABLE_STATES,
    RUNTIME_FIELDS,
    TRANSITIONS,
    LogEntry,
    LogLevel,
    ProcessRecord,
    ProcessState,
    can_transition,
    decode_cursor,
)

S = ProcessState

SEED_TABLE = {
    S.IDLE: {S.SCHEDULED},
    S.SCHEDULED: {S.RUNNING, S.CANCEL_REQUESTED},
    S.RUNNING: {S.DONE, S.FAILED, S.CANCEL_REQUESTED},
    S.DONE: {S.SCHEDULED, S.IDLE},
    S.FAILED: {S.SCHEDULED, S.IDLE},
    S.CANCEL_REQUESTED: {S.CANCELLING},
    S.CANCELLING: {S.CANCELLED},
    S.CANCELLED: {S.SCHEDULED, S.IDLE},
}

ADDED_EDGES = {
    (S.SCHEDULED, S.CANCELLED),
    (S.SCHEDULED, S.FAILED),
    (S.CANCEL_REQUESTED, S.FAILED),
    (S.CANCELLING, S.FAILED),
    (S.RUNNING, S.SCHEDULED),  # a failed attempt waits for its retry
}


def test_state_values_are_the_seeds_lowercase_strings() -> None:
    """Stored values are exactly the seed's status.state strings."""
    assert [s.value for s in ProcessState] == [
        "idle",
        "scheduled",
        "running",
        "cancel_requested",
        "cancelling",
        "done",
        "failed",
        "cancelled",
    ]


def test_state_groups_match_the_seed() -> None:
    """The five groups are the seed's sets."""
    assert {"scheduled", "running", "cancel_requested", "cancelling"} == ACTIVE_STATES
    assert {"done", "failed", "cancelled"} == END_STATES
    assert {"idle", "done", "failed", "cancelled"} == LAUNCHABLE_STATES
    assert {"scheduled", "running"} == CANCELLABLE_STATES
    assert {"done", "failed", "cancelled"} == DISMISSABLE_STATES


def test_table_is_the_seed_table_plus_exactly_the_documented_edges() -> None:
    """Every seed edge is kept and only the deliberate additions are new."""
    table_edges = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    seed_edges = {(a, b) for a, targets in SEED_TABLE.items() for b in targets}
    assert table_edges == seed_edges | ADDED_EDGES
    assert set(TRANSITIONS) == set(ProcessState)


def test_table_is_read_only_data() -> None:
    """Nobody can patch the table at run time."""
    with pytest.raises(TypeError):
        TRANSITIONS[S.IDLE] = frozenset()  # type: ignore[index]
    assert all(isinstance(v, frozenset) for v in TRANSITIONS.values())


@pytest.mark.parametrize(("a", "b"), list(itertools.product(ProcessState, ProcessState)))
def test_can_transition_answers_from_the_table(a: ProcessState, b: ProcessState) -> None:
    """can_transition is a lookup in TRANSITIONS, for members and their string values."""
    assert can_transition(a, b) is (b in TRANSITIONS[a])
    assert can_transition(a.value, b.value) is (b in TRANSITIONS[a])


def test_can_transition_is_false_for_unknown_states() -> None:
    """A string that is no state is never a valid edge."""
    assert not can_transition("idle", "exploded")
    assert not can_transition("exploded", "idle")


def test_no_state_transitions_to_itself() -> None:
    """A compare-and-set always changes the state."""
    assert not any(a in targets for a, targets in TRANSITIONS.items())


def test_cancellable_states_can_reach_a_cancel_path() -> None:
    """Every cancellable state has an edge into the cancel path."""
    for state in CANCELLABLE_STATES:
        assert TRANSITIONS[state] & {S.CANCEL_REQUESTED, S.CANCELLED}


def test_every_active_state_can_end_failed() -> None:
    """Recovery can fail any active process whose worker died."""
    for state in ACTIVE_STATES:
        assert S.FAILED in TRANSITIONS[state]


def test_field_groups_are_disjoint_and_real_fields() -> None:
    """Definition and runtime fields never overlap, and both name record fields."""
    names = {f.name for f in dataclasses.fields(ProcessRecord)}
    assert names >= DEFINITION_FIELDS
    assert names >= RUNTIME_FIELDS
    assert not DEFINITION_FIELDS & RUNTIME_FIELDS
    assert "state" not in DEFINITION_FIELDS | RUNTIME_FIELDS


def test_root_id_defaults_to_the_process_id() -> None:
    """A root is its own root."""
    record = ProcessRecord(process_id="p", name="P")
    assert record.root_id == "p"
    assert record.is_root


def test_state_given_as_string_becomes_the_enum() -> None:
    """A record built from stored strings carries the enum member."""
    record = ProcessRecord(process_id="p", name="P", state="running")  # type: ignore[arg-type]
    assert record.state is S.RUNNING


def test_record_is_frozen_slotted_and_keyword_only() -> None:
    """Records are immutable values."""
    record = ProcessRecord(process_id="p", name="P")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.name = "Q"  # type: ignore[misc]
    assert not hasattr(record, "__dict__")
    with pytest.raises(TypeError):
        ProcessRecord("p", "P")  # type: ignore[call-arg]


def test_cursor_round_trips_ids_with_colons() -> None:
    """The keyset cursor survives process ids that contain the separator."""
    record = ProcessRecord(process_id="a:b:c", name="x", depth=2, order=-3)
    assert decode_cursor(record.cursor) == (2, -3, "a:b:c")


T0 = datetime(2026, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)


def test_to_document_has_the_seed_shape() -> None:
    """to_document gives the seed's camelCase document with ISO datetimes."""
    record = ProcessRecord(
        process_id="job/child",
        name="Child",
        description="d",
        params={"k": 1},
        metadata={"customer": "2"},
        parent_id="job",
        root_id="job",
        depth=1,
        order=3,
        cancellable=False,
        adhoc=True,
        ephemeral=True,
        special=True,
        warning="careful",
        schedule="0 2 * * *",
        state=S.FAILED,
        error="boom",
        running_since=T0,
        failed_at=T0,
        duration=1.5,
        progress_percent=40.0,
        progress_message="step",
        log=(
            LogEntry(timestamp=T0, level=LogLevel.INFO, message="hello"),
            LogEntry(timestamp=T0, level=LogLevel.ERROR, message="bad", data={"x": 1}),
        ),
        created_at=T0,
        updated_at=T0,
    )
    doc = record.to_document()
    iso = "2026-05-01T12:00:00.250000+00:00"
    assert doc["processId"] == "job/child"
    assert doc["parentId"] == "job"
    assert doc["rootId"] == "job"
    assert (doc["depth"], doc["order"]) == (1, 3)
    assert doc["cancellable"] is False
    assert doc["adhoc"] is doc["ephemeral"] is doc["special"] is True
    assert doc["warning"] == "careful"
    assert doc["status"] == {
        "state": "failed",
        "error": "boom",
        "runningSince": iso,
        "doneAt": None,
        "duration": 1.5,
        "failedAt": iso,
        "stoppedAt": None,
    }
    assert doc["progress"] == {"percent": 40.0, "message": "step"}
    assert doc["log"] == [
        {"timestamp": iso, "level": "info", "message": "hello"},
        {"timestamp": iso, "level": "error", "message": "bad", "data": {"x": 1}},
    ]
    assert doc["createdAt"] == iso
    assert doc["params"] == {"k": 1}
    assert doc["metadata"] == {"customer": "2"}
    assert doc["runNumber"] == 0
    assert doc["leaseOwner"] is None
    assert doc["resumable"] is False


def test_log_entry_round_trips_through_its_document() -> None:
    """A log entry rebuilt from its document equals the original."""
    entry = LogEntry(timestamp=T0, level=LogLevel.WARNING, message="w", data={"a": [1]})
    assert LogEntry.from_document(entry.to_document()) == entry
