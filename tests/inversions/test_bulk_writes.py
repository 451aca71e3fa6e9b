"""Bulk writes (inversions.bulk) and the life-cycle's large-batch path: COPY writes the same rows as INSERT."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from inversions import bulk, lifecycle
from inversions.models import Dataset, ObservingProgram, OutboxEvent, Transition
from inversions.states import State

SMALL, LARGE = 3, bulk.COPY_THRESHOLD + 20  # below and above the COPY threshold


def new_programs(prefix: str, count: int) -> list[ObservingProgram]:
    return [
        ObservingProgram(
            instrument_program_execution_id=f"id.{prefix}.{n}",
            observing_program_execution_id=f"eid_1_118_op{prefix}.{n}",
            primary_proposal_id="pid_1_118",
            primary_experiment_id="eid_1_118",
            instrument_name="VISP",
            experiment_description="tab\there, newline\nthere, back\\slash, “quotes”, 日本",
            spectral_lines=["Fe I 630.15", "Ca II 854.21"],
            start_time=timezone.now() - timedelta(days=400),
        )
        for n in range(count)
    ]


def history_of(programs) -> list[tuple]:
    """Each program's rows as comparable values (no ids, no times)."""
    out = []
    for p in ObservingProgram.objects.filter(pk__in=[p.pk for p in programs]).order_by("pk"):
        for t in p.transitions.order_by("at", "id"):
            event = OutboxEvent.objects.get(transition=t)
            payload = dict(event.payload)
            assert payload.pop("transition_id") == t.pk and payload.pop("program_id") == p.pk
            assert payload.pop("at") == t.at.isoformat() and event.created_at == t.at
            assert payload.pop("program") == p.instrument_program_execution_id
            out.append((
                p.state, p.experiment_description, p.spectral_lines, t.from_state, t.to_state, t.actor,
                t.actor_user_id, t.reason, t.details, t.is_correction, event.routing_key, payload,
                event.sent_at, event.attempts, event.last_error,
            ))
    return out


@pytest.mark.django_db
def test_create_programs_writes_the_same_rows_by_copy_as_by_insert():
    small = lifecycle.create_programs(new_programs("small", SMALL), actor="scan")
    large = lifecycle.create_programs(new_programs("large", LARGE), actor="scan")
    assert all(p.pk and not p._state.adding for p in small + large)
    assert len({p.pk for p in small + large}) == SMALL + LARGE
    rows_small, rows_large = history_of(small), history_of(large)
    assert (len(rows_small), len(rows_large)) == (SMALL, LARGE)
    assert all(row == rows_small[0] for row in rows_small + rows_large)
    assert rows_small[0][:6] == (State.DISCOVERED, new_programs("x", 1)[0].experiment_description,
                                ["Fe I 630.15", "Ca II 854.21"], "", State.DISCOVERED, "scan")
    # the returned instances are the stored rows
    stored = ObservingProgram.objects.get(pk=large[5].pk)
    assert (stored.instrument_program_execution_id, stored.start_time) == (large[5].instrument_program_execution_id,
                                                                          large[5].start_time)


@pytest.mark.django_db
@pytest.mark.parametrize("count", [SMALL, LARGE])
def test_apply_without_returning_writes_the_same_rows_as_with(count):
    a = lifecycle.create_programs(new_programs(f"a{count}", count), actor="scan")
    b = lifecycle.create_programs(new_programs(f"b{count}", count), actor="scan")
    details = {"rules": [{"name": "Stokes", "passed": False, "reason": "tab\t\"quote\"\n"}], "n": 1.5}

    def changes(programs):
        return [lifecycle.Change(p.pk, State.NOT_INVERTIBLE, reason="Stokes: I only", details=details,
                                 expected_from=(State.DISCOVERED,)) for p in programs]

    returned = lifecycle.apply(changes(a), actor="scan")
    lean = lifecycle.apply(changes(b), actor="scan", returning=False)
    assert len(returned) == count and all(t.pk for t in returned)
    if count >= bulk.COPY_THRESHOLD:
        assert lean == []  # a large lean batch returns nothing
    else:
        assert [(t.program_id, t.to_state) for t in lean] == [(p.pk, State.NOT_INVERTIBLE) for p in b]
    assert history_of(a) == history_of(b)
    assert set(ObservingProgram.objects.filter(pk__in=[p.pk for p in b]).values_list("state", flat=True)) == {
        State.NOT_INVERTIBLE
    }


@pytest.mark.django_db
def test_a_large_batch_with_one_illegal_change_writes_nothing():
    programs = lifecycle.create_programs(new_programs("illegal", LARGE), actor="scan")
    before = (Transition.objects.count(), OutboxEvent.objects.count())
    changes = [lifecycle.Change(p.pk, State.INVERTIBLE) for p in programs]
    changes[-1] = lifecycle.Change(programs[-1].pk, State.WORKING)  # Discovered → Working is not allowed
    with pytest.raises(lifecycle.IllegalTransition):
        lifecycle.apply(changes, actor="scan", returning=False)
    assert (Transition.objects.count(), OutboxEvent.objects.count()) == before
    assert set(ObservingProgram.objects.values_list("state", flat=True)) == {State.DISCOVERED}


@pytest.mark.django_db
def test_a_large_lean_batch_refuses_a_program_moved_meanwhile():
    programs = lifecycle.create_programs(new_programs("moved", LARGE), actor="scan")
    lifecycle.transition(programs[7], State.INVERTIBLE, actor="someone")
    changes = [lifecycle.Change(p.pk, State.NOT_INVERTIBLE, expected_from=(State.DISCOVERED,)) for p in programs]
    with pytest.raises(lifecycle.StateChanged):
        lifecycle.apply(changes, actor="scan", returning=False)
    assert Transition.objects.filter(to_state=State.NOT_INVERTIBLE).count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("count", [SMALL, LARGE])
def test_bulk_update_values_writes_each_row_by_values_or_by_copy(count):
    programs = lifecycle.create_programs(new_programs(f"u{count}", count), actor="scan")
    when = timezone.now() - timedelta(days=3)
    for n, p in enumerate(programs):
        p.dataset_count = n
        p.spectral_lines = [f"Line {n}", "it's \"quoted\""]
        p.settles_at = when + timedelta(seconds=n)
        p.experiment_description = f"changed {n}\t\\"
    written = bulk.bulk_update_values(programs, ["dataset_count", "spectral_lines", "settles_at", "experiment_description"])
    assert written == count
    for n, p in enumerate(ObservingProgram.objects.filter(pk__in=[p.pk for p in programs]).order_by("pk")):
        assert (p.dataset_count, p.spectral_lines, p.settles_at, p.experiment_description) == (
            n, [f"Line {n}", "it's \"quoted\""], when + timedelta(seconds=n), f"changed {n}\t\\")
        assert p.state == State.DISCOVERED  # other columns untouched


@pytest.mark.django_db
def test_copy_rows_takes_json_text_arrays_nulls_and_awkward_text():
    [program] = lifecycle.create_programs(new_programs("copy", 1), actor="scan")
    at = timezone.now()
    awkward = "a\tb\nc\\d \"e\" ,{f} 日本 \\N"
    written = bulk.copy_rows(
        "inversions_transition",
        ["program_id", "from_state", "to_state", "at", "actor", "actor_user_id", "reason", "details", "is_correction"],
        [(program.pk, "", State.DISCOVERED, at, awkward, None, awkward, json.dumps({"x": awkward, "n": [1, 2.5, None]}),
          False)],
    )
    assert written == 1
    row = Transition.objects.filter(program=program, actor=awkward).get()
    assert (row.reason, row.details, row.at, row.actor_user_id) == (awkward, {"x": awkward, "n": [1, 2.5, None]}, at, None)


@pytest.mark.django_db
def test_reserved_ids_are_unique_ascending_and_never_reused():
    ids = bulk.reserve_ids(Transition, 5)
    assert ids == sorted(set(ids)) and len(ids) == 5
    [program] = lifecycle.create_programs(new_programs("ids", 1), actor="scan")
    later = Transition.objects.get(program=program)  # inserted after the reservation
    assert later.pk > max(ids)
    with connection.cursor() as cursor:  # the reserved ids are free for the one who reserved them
        cursor.execute("SELECT count(*) FROM inversions_transition WHERE id = ANY(%s)", [ids])
        assert cursor.fetchone()[0] == 0


@pytest.mark.django_db
@pytest.mark.parametrize("count", [SMALL, LARGE])
def test_bulk_update_values_writes_json_fields_by_values_or_by_copy(count):
    lifecycle.create_programs(new_programs(f"j{count}", count), actor="scan")
    events = list(OutboxEvent.objects.filter(payload__program__startswith=f"id.j{count}.").order_by("pk"))
    assert len(events) == count
    for n, event in enumerate(events):
        event.payload = {"n": n, "text": "tab\t\"q\" \\ 日本", "list": [1.5, None, {"x": True}]}
        event.attempts, event.last_error = n, f"error {n}\n"
    assert bulk.bulk_update_values(events, ["payload", "attempts", "last_error"]) == count
    for n, event in enumerate(OutboxEvent.objects.filter(pk__in=[e.pk for e in events]).order_by("pk")):
        assert (event.payload, event.attempts, event.last_error) == (
            {"n": n, "text": "tab\t\"q\" \\ 日本", "list": [1.5, None, {"x": True}]}, n, f"error {n}\n")


@pytest.mark.django_db
def test_the_tables_a_scan_fills_carry_no_index_that_no_query_uses():
    """Every index costs a write per row a scan inserts: no prefix (``varchar_pattern_ops``) index on
    the ids, which are only looked up exactly, and no index of the history's program alone, which
    ``transition_program_at`` leads with (migration 0018)."""
    tables = [Dataset._meta.db_table, ObservingProgram._meta.db_table, Transition._meta.db_table]
    with connection.cursor() as cursor:
        cursor.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s)", [tables])
        indexes = cursor.fetchall()
    assert {table for table, _, _ in indexes} == set(tables)
    assert not [name for _, name, definition in indexes if "varchar_pattern_ops" in definition]
    on_transitions = {name: definition for table, name, definition in indexes if table == Transition._meta.db_table}
    assert not [name for name, definition in on_transitions.items() if definition.endswith("(program_id)")]
    assert "transition_program_at" in on_transitions
