"""Celery tasks of publishing: result intake, L2 generation, publication, reconciliation.

All are ``acks_late`` (a worker killed mid-task gets the message redelivered) and idempotent:
each works on a work order, and a finished order makes a duplicate task do nothing. Waiting
for a transfer is a retry with a countdown (``poll=True``: not a new attempt), never a
blocking sleep. Failures are classified where they happen (``inversions.errors``):
``RetryError`` is retried a few times, then the program goes to Error; the metadata store's
``BackoffRetryError`` is handled by the pipeline (exponential backoff, bounded tries).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from celery import shared_task
from django.conf import settings

from inversions.errors import BackoffRetryError, RetryError

log = logging.getLogger(__name__)

RETRY_DELAYS = (10, 60, 300)  # seconds before the 1st, 2nd, 3rd retry of a RetryError


def _again(task, order_id: int, countdown: float, *, poll: bool):
    """The task again later, for the same order (a new message; this one is acknowledged)."""
    from inversions import work_orders

    work_orders.expect(order_id, countdown)  # not taken for lost while it waits
    return task.retry(countdown=countdown, max_retries=None, args=(), kwargs={"order_id": order_id, "poll": poll})


@contextmanager
def _alive(order_id: int):
    """Run the order holding its lock, with a heartbeat (``inversions.work_orders``); yields False,
    running nothing, when another worker runs it now (a duplicate message: that one carries on)."""
    from inversions import work_orders

    with work_orders.running(order_id) as got:
        if not got:
            yield False
            return
        with work_orders.heartbeat(order_id):
            yield True


def _io_retry(task, order_id: int, exc: Exception, on_give_up) -> None:
    """Retry a RetryError a few times (growing countdown); then give up through ``on_give_up``."""
    n = int(task.request.kwargs.get("io_tries", 0)) if task.request.kwargs else 0
    if n < len(RETRY_DELAYS):
        from inversions import work_orders

        work_orders.expect(order_id, RETRY_DELAYS[n])
        raise task.retry(countdown=RETRY_DELAYS[n], max_retries=None, args=(),
                         kwargs={"order_id": order_id, "poll": False, "io_tries": n + 1})
    on_give_up(f"{exc} (after {n + 1} tries)")


@shared_task(bind=True, name="publishing.intake_results", acks_late=True, ignore_result=True)
def intake_results(self, order_id: int, poll: bool = False, io_tries: int = 0) -> str:
    """Fetch and check the result files of an intake order (program → Inverted or Error)."""
    from inversions.models import WorkOrder
    from publishing import intake

    try:
        with _alive(order_id) as got:
            if not got:
                return "busy"
            outcome = intake.run_intake(order_id, poll=poll)
    except (RetryError, BackoffRetryError) as exc:
        order = WorkOrder.objects.get(pk=order_id)
        _io_retry(self, order_id, exc, lambda reason: intake.refuse(order, f"fetching the result files failed: {reason}",
                                                          stage="fetch"))
        return "failed"
    except Exception as exc:
        order = WorkOrder.objects.get(pk=order_id)
        log.exception("intake #%s: unexpected failure", order_id)
        intake.refuse(order, f"unexpected failure while checking the results: {type(exc).__name__}: {exc}")
        raise
    if outcome == intake.Outcome.WAITING:
        raise _again(self, order_id, settings.GLOBUS_POLL_SECONDS, poll=True)  # only Globus transfers take time
    if outcome == intake.Outcome.DONE:
        _carry_on(order_id)
    return outcome.value


def _carry_on(order_id: int) -> None:
    """After an intake or a generation: the next step now, not at beat's next round."""
    if settings.L2_AUTO_GENERATE or settings.L2_AUTO_PUBLISH:
        from inversions.models import WorkOrder

        program_id = WorkOrder.objects.filter(pk=order_id).values_list("program_id", flat=True).first()
        if program_id is not None:
            advance_inverted.apply_async(kwargs={"program_ids": [program_id]}, ignore_result=True)


def _give_up(order_id: int, step: str, stage_default: str):
    def give_up(reason: str) -> None:
        from inversions.models import WorkOrder
        from publishing.pipeline import fail_program

        order = WorkOrder.objects.select_related("program").get(pk=order_id)
        fail_program(order, order.program, step, order.step or stage_default, reason)

    return give_up


def _run(task, order_id: int, poll: bool, run, step: str, first_stage: str) -> str:
    from publishing.pipeline import Outcome

    try:
        with _alive(order_id) as got:
            if not got:
                return "busy"
            result = run(order_id, poll=poll)
    except (RetryError, BackoffRetryError) as exc:
        _io_retry(task, order_id, exc, _give_up(order_id, step, first_stage))
        return Outcome.FAILED.value
    except Exception as exc:
        log.exception("%s order #%s: unexpected failure", step, order_id)
        _give_up(order_id, step, first_stage)(f"unexpected failure: {type(exc).__name__}: {exc}")
        raise
    if result.outcome == Outcome.WAITING:
        raise _again(task, order_id, result.delay, poll=True)
    if result.outcome == Outcome.RETRY:
        raise _again(task, order_id, result.delay, poll=False)
    return result.outcome.value


@shared_task(bind=True, name="publishing.generate_l2", acks_late=True, ignore_result=True)
def generate_l2(self, order_id: int, poll: bool = False, io_tries: int = 0) -> str:
    """Generate the L2 files of a generate order (restartable: valid frames are kept)."""
    from publishing.pipeline import continue_republish, run_generate

    outcome = _run(self, order_id, poll, run_generate, "generate", "headers")
    if outcome in ("done", "nothing"):  # "nothing": redelivered after it finished, perhaps before this step
        continue_republish(order_id)  # a republish goes on to publish whatever L2_AUTO_PUBLISH says
    if outcome == "done":
        _carry_on(order_id)
    return outcome


@shared_task(bind=True, name="publishing.publish_l2", acks_late=True, ignore_result=True)
def publish_l2(self, order_id: int, poll: bool = False, io_tries: int = 0) -> str:
    """Transfer the L2 files to the publish collection, notify the metadata store → Published."""
    from publishing.pipeline import run_publish

    return _run(self, order_id, poll, run_publish, "publish", "transfer")


@shared_task(name="publishing.advance_inverted", acks_late=True, ignore_result=True)
def advance_inverted(program_ids: list[int] | None = None) -> dict:
    """Beat (and after an intake or a generation): generate, then publish, Inverted programs."""
    from publishing import pipeline

    return pipeline.advance_inverted(program_ids)


@shared_task(name="publishing.resend_stalled", acks_late=True, ignore_result=True)
def resend_stalled() -> dict:
    """Beat: send again the task of intake, generate and publish orders nobody is running.

    An active order whose heartbeat is older than ``L2_HEARTBEAT_STALE_SECONDS`` and whose
    lock nobody holds lost its worker (killed) or its message (a broker without redelivery, a
    purged queue): its task runs again; every step is idempotent, so a duplicate costs only
    repeated checks.
    """
    from inversions import work_orders
    from inversions.models import WorkOrder

    tasks = {WorkOrder.Kind.INTAKE: intake_results, WorkOrder.Kind.GENERATE: generate_l2,
             WorkOrder.Kind.PUBLISH: publish_l2}
    sent: dict[str, list[int]] = {}
    for kind, task in tasks.items():
        for order in work_orders.stalled(kind):
            work_orders.touch(order.pk)
            task.apply_async(kwargs={"order_id": order.pk})
            sent.setdefault(kind, []).append(order.pk)
    return sent


@shared_task(name="publishing.reconcile", acks_late=True, ignore_result=True)
def reconcile(update_existing: bool = False, remove_extra: bool = False, triggered_by: str = "beat") -> dict:
    """Compare our published inversions with the store's l2Inversions; add what it lacks."""
    from publishing.reconcile import run

    record = run(dry_run=False, update_existing=update_existing, remove_extra=remove_extra, triggered_by=triggered_by)
    return {"run": record.pk, "status": record.status, "added": record.added, "missing": record.missing,
            "extra": record.extra, "differing": record.differing}
