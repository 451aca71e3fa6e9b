"""The event bus (DESIGN §10): relay the transactional outbox to a topic exchange.

Each transition writes an :class:`~inversions.models.OutboxEvent` in its own transaction;
this relay publishes unsent rows in id order to the ``EVENT_EXCHANGE`` topic exchange with
routing key ``l2.program.<state>`` and marks them sent. A broker outage leaves the rows
unsent (with the error and an attempt count) for the next run; a rolled-back transition
never wrote a row. Delivery is at least once: a consumer de-duplicates on ``event_id``.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu import Connection, Exchange

from inversions.models import OutboxEvent

log = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)


def exchange() -> Exchange:
    return Exchange(settings.EVENT_EXCHANGE, type="topic", durable=True)


def connection(url: str | None = None) -> Connection:
    url = url or settings.EVENT_BUS_URL
    options = settings.EVENT_BUS_TRANSPORT_OPTIONS if url == settings.EVENT_BUS_URL else {}
    return Connection(url, transport_options=options, connect_timeout=5)


def relay_outbox(*, batch: int | None = None, url: str | None = None) -> int:
    """Publish unsent events; return how many went out. Never raises for a broker outage."""
    batch = batch or settings.EVENT_RELAY_BATCH
    sent_total = 0
    while True:
        with transaction.atomic():
            rows = list(
                OutboxEvent.objects.select_for_update(skip_locked=True)
                .filter(sent_at__isnull=True)
                .order_by("id")[:batch]
            )
            if not rows:
                return sent_total
            sent_ids: list[int] = []
            error = ""
            try:
                with connection(url) as conn:
                    conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
                    producer = conn.Producer(serializer="json")
                    ex = exchange()
                    for row in rows:
                        producer.publish(
                            {**row.payload, "event_id": row.pk},
                            exchange=ex,
                            routing_key=row.routing_key,
                            declare=[ex],
                            delivery_mode=2,
                            retry=False,
                            headers={"event_id": row.pk},
                        )
                        sent_ids.append(row.pk)
            except Exception as exc:  # kombu raises transport-specific errors: all mean "not sent"
                error = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning("event bus unavailable, %d event(s) wait in the outbox: %s", len(rows) - len(sent_ids), error)
            now = timezone.now()
            if sent_ids:
                OutboxEvent.objects.filter(pk__in=sent_ids).update(sent_at=now, last_error="")
                sent_total += len(sent_ids)
            if error:
                unsent = [r.pk for r in rows if r.pk not in set(sent_ids)]
                for row in rows:
                    if row.pk in unsent:
                        row.attempts += 1
                        row.last_error = error
                OutboxEvent.objects.bulk_update([r for r in rows if r.pk in unsent], ["attempts", "last_error"])
                return sent_total
