"""Celery tasks of the inversions app."""
from __future__ import annotations

from celery import shared_task

from inversions.events import relay_outbox


@shared_task(name="inversions.relay_events", ignore_result=True, acks_late=True)
def relay_events() -> int:
    """Relay the event outbox to the bus (kicked after each commit, and run by beat)."""
    return relay_outbox()


# --- Preprocessing (inversions.pipeline) ---------------------------------------------------
def _run_step(task, order_id: int, step: str) -> str:
    """Run one step of a preprocessing order; then retry it later or send the next step.

    The next step goes to the queue this one came from, so a program's chain stays on the
    workers that serve that queue; with a private scratch (``L2_SCRATCH_PRIVATE``) it, and
    a poll of this step, go to this worker's own queue, where its files are. ``acks_late``: a worker killed mid-step leaves the
    message unacknowledged and the broker redelivers it; beat resends it sooner once the
    order's heartbeat is stale (``inversions.work_orders``). The step is idempotent.
    """
    from django.conf import settings

    from inversions import pipeline, work_orders

    worker = task.request.hostname or ""
    outcome = pipeline.execute(order_id, step, worker=worker)
    own = pipeline.worker_queue(worker) if worker and settings.L2_SCRATCH_PRIVATE else None
    if outcome.retry_in is not None:
        work_orders.expect(order_id, outcome.retry_in)  # not taken for lost while it waits
        raise task.retry(countdown=outcome.retry_in, max_retries=None, **({"queue": own} if own else {}))
    if outcome.next_step:
        queue = own or (task.request.delivery_info or {}).get("routing_key") or None
        pipeline.dispatch(order_id, outcome.next_step, queue=queue)
    return outcome.note


@shared_task(bind=True, name="inversions.preprocess.stage", acks_late=True, ignore_result=True)
def preprocess_stage(self, order_id: int) -> str:
    """Stage the program's L1 folders on scratch (submit once, then poll)."""
    return _run_step(self, order_id, "stage")


@shared_task(bind=True, name="inversions.preprocess.verify", acks_late=True, ignore_result=True)
def preprocess_verify(self, order_id: int) -> str:
    """Check every frame is there and the headers agree; the inputs' fingerprint."""
    return _run_step(self, order_id, "verify")


@shared_task(bind=True, name="inversions.preprocess.assemble", acks_late=True, ignore_result=True)
def preprocess_assemble(self, order_id: int) -> str:
    """Assemble one Stokes cube per dataset (input checksums checked as frames are read)."""
    return _run_step(self, order_id, "assemble")


@shared_task(bind=True, name="inversions.preprocess.quicklook", acks_late=True, ignore_result=True)
def preprocess_quicklook(self, order_id: int) -> str:
    """Quick-look PNGs of every cube."""
    return _run_step(self, order_id, "quicklook")


@shared_task(bind=True, name="inversions.preprocess.handover", acks_late=True, ignore_result=True)
def preprocess_handover(self, order_id: int) -> str:
    """Manifest, transfer to the science cluster, then Preprocessed."""
    return _run_step(self, order_id, "handover")


PREPROCESS_TASKS = {
    "stage": preprocess_stage,
    "verify": preprocess_verify,
    "assemble": preprocess_assemble,
    "quicklook": preprocess_quicklook,
    "handover": preprocess_handover,
}


@shared_task(name="inversions.preprocess_pending", acks_late=True, ignore_result=True)
def preprocess_pending() -> dict:
    """Beat: start Invertible programs up to L2_PREPROCESS_CONCURRENCY; resend stalled orders."""
    from inversions import pipeline

    return pipeline.schedule()
