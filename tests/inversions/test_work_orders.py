"""The generic work-order services (inversions.work_orders), for every kind."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from inversions import work_orders
from inversions.models import WorkOrder
from inversions.states import State

pytestmark = pytest.mark.django_db

PRE = WorkOrder.Kind.PREPROCESS


def test_fingerprint_ignores_order():
    assert work_orders.fingerprint({"a": "1", "b": "2"}) == work_orders.fingerprint({"b": "2", "a": "1"})
    assert work_orders.fingerprint({"a": "1"}) != work_orders.fingerprint({"a": "2"})


def test_one_active_order_per_program_and_kind(make_program):
    program = make_program(State.INVERTIBLE)
    first = work_orders.request(program, PRE, requested_by="beat")
    second = work_orders.request(program, PRE, requested_by="olga")
    other_kind = work_orders.request(program, WorkOrder.Kind.PUBLISH, requested_by="beat")
    assert first.created and not second.created and other_kind.created
    assert second.order.pk == first.order.pk and "already queued" in second.reason
    assert WorkOrder.objects.filter(program=program).count() == 2


def test_life_of_an_order(make_program):
    program = make_program(State.INVERTIBLE)
    order = work_orders.request(program, PRE, requested_by="beat").order
    started = work_orders.start(order.pk, "stage")
    assert (started.status, started.step, started.attempts) == ("started", "stage", 1)
    assert work_orders.start(order.pk, "stage").attempts == 2  # a redelivered task
    assert work_orders.set_progress(order.pk, files_staged=3)
    assert work_orders.set_progress(order.pk, bytes_staged=100)
    assert work_orders.merge_details(order.pk, stage={"submission_id": "s1"})
    assert work_orders.advance(order.pk, "stage", "verify")
    assert not work_orders.advance(order.pk, "stage", "verify")  # a duplicate does not move it again
    done = work_orders.complete(order, details={"manifest": {"files": 1}})
    order.refresh_from_db()
    assert done is not None and order.status == "completed" and order.finished_at is not None
    assert order.progress == {"files_staged": 3, "bytes_staged": 100}
    assert order.details == {"stage": {"submission_id": "s1"}, "manifest": {"files": 1}}
    # finished: nothing changes any more
    assert work_orders.start(order.pk, "stage") is None
    assert work_orders.complete(order) is None
    assert work_orders.fail(order, step="x", error="late") is None
    assert not work_orders.set_progress(order.pk, files_staged=99)
    order.refresh_from_db()
    assert order.status == "completed" and order.error == "" and order.progress["files_staged"] == 3


def test_same_inputs_skipped_unless_forced(make_program):
    program = make_program(State.INVERTIBLE)
    inputs = {"ds1": "aaa", "ds2": "bbb"}
    first = work_orders.request(program, WorkOrder.Kind.PUBLISH, requested_by="beat", input_checksums=inputs)
    work_orders.complete(first.order)
    again = work_orders.request(program, WorkOrder.Kind.PUBLISH, requested_by="beat", input_checksums=dict(inputs))
    assert not again.created and again.skipped and again.order.pk == first.order.pk
    changed = work_orders.request(program, WorkOrder.Kind.PUBLISH, requested_by="beat", input_checksums={"ds1": "ccc"})
    assert changed.created
    work_orders.fail(changed.order, step="x", error="boom")
    forced = work_orders.request(program, WorkOrder.Kind.PUBLISH, requested_by="olga", input_checksums=inputs, forced=True)
    assert forced.created and forced.order.forced


def test_record_inputs_finds_the_newest_completed_only(make_program):
    program = make_program(State.INVERTIBLE)
    a = work_orders.request(program, PRE, requested_by="beat").order
    assert work_orders.record_inputs(a, {"ds": "1"}) is None
    work_orders.complete(a)
    b = work_orders.request(program, PRE, requested_by="beat").order
    assert work_orders.record_inputs(b, {"ds": "1"}).pk == a.pk
    work_orders.fail(b, step="verify", error="x")
    c = work_orders.request(program, PRE, requested_by="beat").order
    assert work_orders.record_inputs(c, {"ds": "2"}) is None
    work_orders.complete(c)
    d = work_orders.request(program, PRE, requested_by="beat").order
    assert work_orders.record_inputs(d, {"ds": "1"}) is None  # a's outputs were replaced by c's
    d.forced = True
    assert work_orders.record_inputs(d, {"ds": "2"}) is None  # forced: never skipped


def test_stalled_and_counted(make_program):
    program = make_program(State.INVERTIBLE)
    order = work_orders.request(program, PRE, requested_by="beat").order
    assert work_orders.count_active(PRE) == 1
    assert work_orders.stalled(PRE, older_than=timedelta(minutes=5)) == []
    WorkOrder.objects.filter(pk=order.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    assert work_orders.stalled(PRE, older_than=timedelta(minutes=5)) == []  # its heartbeat is recent
    WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert [o.pk for o in work_orders.stalled(PRE, older_than=timedelta(minutes=5))] == [order.pk]
    work_orders.touch(order.pk)
    assert work_orders.stalled(PRE, older_than=timedelta(minutes=5)) == []


# --- Heartbeats: a killed worker's order is found within L2_HEARTBEAT_STALE_SECONDS ----------
def _other_session():
    import psycopg
    from django.db import connection

    s = connection.settings_dict
    return psycopg.connect(dbname=s["NAME"], user=s["USER"], password=s["PASSWORD"] or None, host=s["HOST"] or None,
                           port=s["PORT"] or None, autocommit=True)


def _eventually(check, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_stalled_means_a_stale_heartbeat_and_nobody_holding_the_order(make_program, settings):
    settings.L2_HEARTBEAT_STALE_SECONDS = 120
    program = make_program(State.INVERTIBLE)
    order = work_orders.request(program, PRE, requested_by="beat").order
    assert work_orders.stalled(PRE) == []  # a new order beats at once
    WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=121))
    assert [o.pk for o in work_orders.stalled(PRE)] == [order.pk]
    with _other_session() as other:  # a live worker (another session) runs it: not lost
        other.execute("SELECT pg_advisory_lock(%s, %s)", [work_orders.LOCK_CLASS, order.pk])
        assert work_orders.stalled(PRE) == []
        with work_orders.running(order.pk) as got:
            assert got is False  # a duplicate message cannot run it alongside
    # the session ended (as when its worker is killed; its backend exits a moment later): lost again
    assert _eventually(lambda: [o.pk for o in work_orders.stalled(PRE)] == [order.pk])
    with work_orders.running(order.pk) as got:
        assert got is True
    work_orders.expect(order.pk, 600)  # waiting for a retry in 10 min: not lost meanwhile
    assert work_orders.stalled(PRE) == []
    assert work_orders.beat(order.pk) is False  # a heartbeat does not move the due time back
    WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=600))
    assert work_orders.beat(order.pk) is True and work_orders.stalled(PRE) == []
    work_orders.complete(order)
    WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    assert work_orders.stalled(PRE) == []  # finished orders are never resent


def test_the_default_settings_take_a_killed_step_up_within_five_minutes():
    """Worst case: killed just after a heartbeat, stale that much later, resent at beat's next round."""
    from django.conf import settings as defaults

    worst = defaults.L2_HEARTBEAT_STALE_SECONDS + defaults.L2_PREPROCESS_INTERVAL_SECONDS
    assert worst == 180 < 300
    assert work_orders.heartbeat_interval() == 30
    for name in ("preprocess invertible programs", "resend stalled publishing orders"):  # beat's rounds
        assert defaults.L2_PERIODIC_TASKS[name][1] == defaults.L2_PREPROCESS_INTERVAL_SECONDS


@pytest.mark.django_db(transaction=True)
def test_a_running_step_keeps_its_heartbeat_fresh(make_program, settings):
    import time

    settings.L2_HEARTBEAT_STALE_SECONDS = 4  # a beat every second
    program = make_program(State.INVERTIBLE)
    order = work_orders.request(program, PRE, requested_by="beat").order
    old = timezone.now() - timedelta(hours=1)
    WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=old)
    with work_orders.heartbeat(order.pk):
        entered = WorkOrder.objects.get(pk=order.pk).heartbeat_at
        assert entered > old
        WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=old)
        time.sleep(2.5)  # the step works; the thread beats
        during = WorkOrder.objects.get(pk=order.pk).heartbeat_at
        assert during > entered
    WorkOrder.objects.filter(pk=order.pk).update(heartbeat_at=old)
    time.sleep(1.5)
    assert WorkOrder.objects.get(pk=order.pk).heartbeat_at == old  # the thread stopped with the step
