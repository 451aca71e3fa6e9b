"""Shared fixtures: users in the L2 groups and Observing Programs in any state."""
from __future__ import annotations

import itertools

import pytest
from django.contrib.auth.models import Group

from inversions import lifecycle
from inversions.models import ObservingProgram
from inversions.states import State

_counter = itertools.count(1)


@pytest.fixture
def make_user(django_user_model):
    def make(username: str, *groups: str, superuser: bool = False, password: str = "pw-for-tests-0"):
        user = django_user_model.objects.create_user(username=username, password=password)
        if superuser:
            user.is_superuser = user.is_staff = True
            user.save()
        for name in groups:
            user.groups.add(Group.objects.get_or_create(name=name)[0])  # a flush (transactional tests) empties it
        return user

    return make


@pytest.fixture
def scientist(make_user):
    return make_user("han", "science")


@pytest.fixture
def operator(make_user):
    return make_user("olga", "operators")


@pytest.fixture
def admin_user(make_user):
    return make_user("ada", superuser=True)


# How to reach each state through ordinary transitions (no corrections), from Discovered.
PATHS = {
    State.DISCOVERED: [],
    State.INVERTIBLE: [State.INVERTIBLE],
    State.NOT_INVERTIBLE: [State.NOT_INVERTIBLE],
    State.PREPROCESSED: [State.INVERTIBLE, State.PREPROCESSED],
    State.QUEUED: [State.INVERTIBLE, State.PREPROCESSED, State.QUEUED],
    State.WORKING: [State.INVERTIBLE, State.PREPROCESSED, State.WORKING],
    State.INVERTED: [State.INVERTIBLE, State.PREPROCESSED, State.WORKING, State.INVERTED],
    State.PUBLISHED: [State.INVERTIBLE, State.PREPROCESSED, State.WORKING, State.INVERTED, State.PUBLISHED],
    State.ERROR: [State.INVERTIBLE, State.ERROR],
}


@pytest.fixture
def make_program(django_user_model):
    """A program walked to ``state`` through the life-cycle module (so its history explains it)."""

    def make(state: str = State.DISCOVERED, *, ipeid: str | None = None, user=None, **fields):
        n = next(_counter)
        defaults = dict(
            instrument_program_execution_id=ipeid or f"id.test.{n}",
            primary_proposal_id="pid_1_118",
            primary_experiment_id="eid_1_118",
            instrument_name="VISP",
        )
        [program] = lifecycle.create_programs([ObservingProgram(**(defaults | fields))], actor="test")
        worker = user or django_user_model.objects.get_or_create(username="test-walker")[0]
        for step in PATHS[state]:
            lifecycle.transition(program, step, actor="test", user=worker, reason=f"to {step}")
        program.refresh_from_db()
        return program

    return make
