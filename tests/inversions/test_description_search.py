"""The description search (DESIGN §9): each (experiment, description) pair once, kept by PostgreSQL, searched there."""
from __future__ import annotations

import pytest
from django.db import connection

from inversions import lifecycle
from inversions.forms import filter_programs
from inversions.models import ExperimentDescription, ObservingProgram
from inversions.states import State

pytestmark = pytest.mark.django_db

SUNSPOT = "Sunspot penumbra raster, Fe I and Ca II"
QUIET = "Quiet Sun network"


def pairs() -> set[tuple[str, str]]:
    return set(ExperimentDescription.objects.values_list("experiment_id", "description"))


def found(text: str) -> list[str]:
    qs = filter_programs(ObservingProgram.objects.all(), {"q": text})
    return sorted(qs.values_list("instrument_program_execution_id", flat=True))


def test_every_description_a_program_carries_is_there_once(make_program):
    many = [ObservingProgram(instrument_program_execution_id=f"id.bulk.{n}", primary_proposal_id="pid_1",
                             primary_experiment_id=f"eid_{n % 3}", instrument_name="VISP",
                             experiment_description=SUNSPOT if n % 3 else "")
            for n in range(150)]
    lifecycle.create_programs(many, actor="test")  # COPY: one statement for all
    make_program(ipeid="id.one", primary_experiment_id="eid_1", experiment_description=SUNSPOT)  # INSERT
    make_program(ipeid="id.two", primary_experiment_id="eid_9", experiment_description=QUIET)
    assert pairs() == {("eid_1", SUNSPOT), ("eid_2", SUNSPOT), ("eid_9", QUIET)}  # no empty description


def test_a_changed_description_is_added_and_a_state_change_writes_nothing(make_program):
    program = make_program(State.INVERTIBLE, ipeid="id.edit", primary_experiment_id="eid_5",
                           experiment_description=QUIET)
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text FROM inversions_experimentdescription")
        before = cursor.fetchall()
    lifecycle.transition(program, State.PREPROCESSED, actor="test", reason="preprocessed")
    with connection.cursor() as cursor:
        cursor.execute("SELECT id, xmin::text FROM inversions_experimentdescription")
        assert cursor.fetchall() == before
    ObservingProgram.objects.filter(pk=program.pk).update(experiment_description="Pore magnetic field")  # the admin
    assert pairs() == {("eid_5", QUIET), ("eid_5", "Pore magnetic field")}
    assert found("pore MAGNETIC") == ["id.edit"]
    assert found("quiet sun") == []  # the pair left behind finds no program: it no longer carries that text


def test_the_search_finds_a_description_only_where_the_program_carries_it(make_program):
    make_program(ipeid="id.a", primary_experiment_id="eid_7", experiment_description=SUNSPOT)
    make_program(ipeid="id.b", primary_experiment_id="eid_7", experiment_description=QUIET)  # same experiment
    make_program(ipeid="id.c", primary_experiment_id="eid_8", experiment_description=QUIET)
    make_program(ipeid="id.d", primary_experiment_id="", experiment_description="Sunspot umbra")  # no experiment id
    assert found("quiet sun") == ["id.b", "id.c"]
    assert found("SUNSPOT") == ["id.a", "id.d"]
    assert found("fe i and ca") == ["id.a"]
    assert found("eid_8") == ["id.c"]  # the ids are still searched as before
    assert found("nothing like it") == []
