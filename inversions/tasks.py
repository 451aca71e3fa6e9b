"""Celery tasks of the inversions app."""
from __future__ import annotations

from celery import shared_task

from inversions.events import relay_outbox


@shared_task(name="inversions.relay_events", ignore_result=True, acks_late=True)
def relay_events() -> int:
    """Relay the event outbox to the bus (kicked after each commit, and run by beat)."""
    return relay_outbox()
