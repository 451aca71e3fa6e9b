"""A restart of `l2 up` does not change the demo: the store learns again what we published."""
from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from l2site import startup

pytestmark = pytest.mark.django_db


def test_a_restart_tells_the_fresh_emulator_what_was_published(make_published, store_settings):
    case = make_published()
    inv_id = case.inversion.inversion_id
    store = store_settings.store
    assert [r["inversionId"] for r in store.l2_inversions({"inversionId": inv_id})] == [inv_id]
    store.delete_l2_inversion(inv_id)  # the emulator of a new `l2 up` knows only its fixtures
    assert store.l2_inversions({"inversionId": inv_id}) == []
    names = [c[0] for c in startup.COMMANDS]
    assert names.index("reconcile") < names.index("make_demo_l1")
    for command in startup.COMMANDS:
        if command[0] == "reconcile":
            call_command(*command, stdout=io.StringIO())
    assert [r["inversionId"] for r in store.l2_inversions({"inversionId": inv_id})] == [inv_id]
