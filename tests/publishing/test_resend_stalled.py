"""Beat sends again the task of intake / generate / publish orders whose message was lost."""
from datetime import timedelta

import pytest
from django.utils import timezone

from inversions import work_orders
from inversions.models import WorkOrder
from inversions.states import State
from publishing import tasks

pytestmark = pytest.mark.django_db


def test_resend_stalled_sends_only_old_active_orders_again(make_program, settings, monkeypatch):
    settings.L2_HEARTBEAT_STALE_SECONDS = 1800
    sent = []
    for task in (tasks.intake_results, tasks.generate_l2, tasks.publish_l2):
        monkeypatch.setattr(task, "apply_async", lambda *a, name=task.name, **kw: sent.append((name, kw["kwargs"])))
    old = timezone.now() - timedelta(hours=1)

    def order(kind, status, updated_at):
        program = make_program(state=State.INVERTED)
        return WorkOrder.objects.create(program=program, kind=kind, status=status, requested_by="t", updated_at=updated_at)

    lost = order(WorkOrder.Kind.GENERATE, WorkOrder.Status.STARTED, old)
    queued_lost = order(WorkOrder.Kind.PUBLISH, WorkOrder.Status.QUEUED, old)
    order(WorkOrder.Kind.GENERATE, WorkOrder.Status.STARTED, timezone.now())  # alive
    order(WorkOrder.Kind.PUBLISH, WorkOrder.Status.COMPLETED, old)  # finished
    waiting = order(WorkOrder.Kind.INTAKE, WorkOrder.Status.STARTED, old)  # a retry due in 10 min
    work_orders.expect(waiting.pk, 600)
    order(WorkOrder.Kind.PREPROCESS, WorkOrder.Status.STARTED, old)  # preprocessing's own scheduler

    result = tasks.resend_stalled()

    assert sorted(sent) == sorted([("publishing.generate_l2", {"order_id": lost.pk}),
                                   ("publishing.publish_l2", {"order_id": queued_lost.pk})])
    assert result == {"generate": [lost.pk], "publish": [queued_lost.pk]}
    lost.refresh_from_db()
    assert lost.updated_at > old  # touched: not sent again at the next beat
    sent.clear()
    assert tasks.resend_stalled() == {} and sent == []
