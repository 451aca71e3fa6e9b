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
    assert [o.pk for o in work_orders.stalled(PRE, older_than=timedelta(minutes=5))] == [order.pk]
    work_orders.touch(order.pk)
    assert work_orders.stalled(PRE, older_than=timedelta(minutes=5)) == []
