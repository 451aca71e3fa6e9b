"""Reconcile our published inversions with the store's l2Inversions (DESIGN §9.5): plan, dry run, apply."""
from __future__ import annotations

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from publishing.models import Inversion, ReconcileRun
from publishing.reconcile import NO_REMOVAL, make_plan, run

pytestmark = pytest.mark.django_db


def record_of(inv: Inversion, **changes) -> dict:
    from publishing.pipeline import store_record

    return store_record(inv) | changes


@pytest.fixture
def world(make_inversion, store_settings):
    """Ours: A (in the store), B (not in the store), C (in the store, other lines), D (not published).
    The store: A, C', and X (not ours)."""
    a, b, c = (make_inversion(i) for i in ("L2AAAA", "L2BBBB", "L2CCCC"))
    make_inversion("L2DDDD", recorded=False)
    store = store_settings.store
    store.create_l2_inversion(record_of(a))
    store.create_l2_inversion(record_of(c, spectralLines=["Ca II (854.21 nm)"]))
    store.create_l2_inversion(record_of(a, inversionId="L2XXXX", instrumentProgramExecutionId="id.elsewhere"))
    return store


def ids(records) -> list[str]:
    return [r["inversionId"] for r in records]


def test_dry_run_plans_right_and_changes_nothing(world):
    before = sorted(world.l2_inversions(), key=lambda r: r["inversionId"])
    record = run(dry_run=True, triggered_by="test")
    assert sorted(world.l2_inversions(), key=lambda r: r["inversionId"]) == before
    assert record.status == ReconcileRun.Status.SUCCEEDED and record.dry_run and record.actions == []
    assert (record.ours, record.theirs, record.missing, record.extra, record.differing) == (3, 3, 1, 1, 1)
    assert (record.added, record.removed, record.updated) == (0, 0, 0)
    plan = record.plan
    assert ids(plan["missing"]) == ["L2BBBB"] and ids(plan["extra"]) == ["L2XXXX"] and plan["in_step"] == 1
    assert [(d["inversionId"], d["fields"]) for d in plan["differing"]] == [("L2CCCC", ["spectralLines"])]


def test_a_run_adds_what_is_missing_and_reports_the_rest(world):
    record = run(triggered_by="test")
    assert record.added == 1 and ids(world.l2_inversions({"inversionId": "L2BBBB"})) == ["L2BBBB"]
    assert ids(world.l2_inversions({"inversionId": "L2XXXX"})) == ["L2XXXX"]  # reported, kept
    actions = {(a["action"], a["inversionId"]): a for a in record.actions}
    assert actions[("add", "L2BBBB")]["done"] is True
    assert actions[("report extra", "L2XXXX")]["done"] is False
    assert "differs in spectralLines" in actions[("report difference", "L2CCCC")]["reason"]
    assert run(dry_run=True).missing == 0  # in step now, but for what needs a decision


def test_remove_and_update_say_they_cannot_without_a_removal_endpoint(world, settings):
    settings.METADATA_STORE_L2_DELETE_URL = ""
    record = run(remove_extra=True, update_existing=True, triggered_by="test")
    actions = {(a["action"], a["inversionId"]): a for a in record.actions}
    assert actions[("remove", "L2XXXX")]["reason"] == NO_REMOVAL and not actions[("remove", "L2XXXX")]["done"]
    assert "no mutation updating" in actions[("update", "L2CCCC")]["reason"]
    assert (record.removed, record.updated) == (0, 0) and len(world.l2_inversions()) == 4


def test_remove_and_update_through_the_removal_endpoint(world, settings, store_settings):
    settings.METADATA_STORE_L2_DELETE_URL = store_settings.url.rsplit("/", 1)[0] + "/_control/l2inversions/delete"
    record = run(remove_extra=True, update_existing=True, triggered_by="test")
    assert (record.added, record.removed, record.updated, record.status) == (1, 1, 1, ReconcileRun.Status.SUCCEEDED)
    assert sorted(ids(world.l2_inversions())) == ["L2AAAA", "L2BBBB", "L2CCCC"]
    assert world.l2_inversions({"inversionId": "L2CCCC"})[0]["spectralLines"] == ["Fe I (630.15 nm)"]
    again = run(dry_run=True)
    assert (again.missing, again.extra, again.differing, again.plan["in_step"]) == (0, 0, 0, 3)


def test_the_command_prints_the_plan(world, capsys):
    call_command("reconcile", "--dry-run")
    out = capsys.readouterr().out
    assert "Plan (dry run: nothing changed):" in out
    assert "  add     L2BBBB (id.L2BBBB)" in out and "L2XXXX (id.elsewhere)" in out
    assert "  differs L2CCCC: spectralLines" in out
    assert ReconcileRun.objects.get().triggered_by == "manage.py reconcile"


def test_a_store_that_is_down_fails_the_run_with_the_reason(world, store_settings):
    store_settings.faults.fail(503, count=3)
    record = run(triggered_by="test")
    assert record.status == ReconcileRun.Status.FAILED and "HTTP 503" in record.error


def test_plan_notes_extra_records_we_know_but_did_not_publish():
    plan = make_plan({}, [{"inversionId": "L2DDDD"}, {"nonsense": 1}, "garbage"],
                     known={"L2DDDD": "known here, not published"})
    assert plan.theirs == 1 and plan.extra == [{"inversionId": "L2DDDD", "known": "known here, not published"}]


def test_reconcile_runs_periodically():
    assert django_settings.L2_PERIODIC_TASKS["reconcile with the metadata store"][0] == "publishing.reconcile"


def test_admin_shows_inversions_and_runs_read_only(client, admin_user, make_inversion):
    inv = make_inversion("L2ADMIN", files=2)
    record = run(dry_run=True, triggered_by="test", client=_EmptyStore())
    client.force_login(admin_user)
    for model, pk in (("inversion", inv.pk), ("reconcilerun", record.pk)):
        assert client.get(f"/admin/publishing/{model}/").status_code == 200
        page = client.get(f"/admin/publishing/{model}/{pk}/change/")
        assert page.status_code == 200 and 'type="submit" value="Save"' not in page.content.decode()
        assert client.get(f"/admin/publishing/{model}/add/").status_code == 403
    assert "L2ADMIN_00001_L2.fits" in client.get(f"/admin/publishing/inversion/{inv.pk}/change/").content.decode()


class _EmptyStore:
    def l2_inversions(self):
        return []

    def close(self):
        pass
