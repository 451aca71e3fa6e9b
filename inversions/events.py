"""The event bus (DESIGN §10): relay the transactional outbox to a topic exchange.

Each transition writes an :class:`~inversions.models.OutboxEvent` in its own transaction;
this relay publishes unsent rows in id order to the ``EVENT_EXCHANGE`` topic exchange with
routing key ``l2.program.<state>`` and marks them sent. A broker outage leaves the rows
unsent (with the error and an attempt count) for the next run; a rolled-back transition
never wrote a row. Delivery is at least once: a consumer de-duplicates on ``event_id``.

The same outbox carries the frame catalog's messages of a publication to the data center's
interservice bus (rows with ``bus="isb"``: the ``ISB_EXCHANGE`` topic exchange on ``ISB_URL``,
routing keys ``catalog.frame.m`` / ``catalog.object.m``, the queues ``catalog.frame.q`` /
``catalog.object.q`` declared and bound, of type ``ISB_QUEUE_TYPE``). The publication writes
them in the transaction of its Published transition (:func:`add_isb_messages`); each bus is
relayed on its own, so one bus being down does not hold up the other.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu import Connection, Exchange, Queue

from inversions.models import OutboxEvent

log = logging.getLogger(__name__)

BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)


#: the frame catalog's routing keys on the interservice bus, and the queue bound to each
CATALOG_FRAME_KEY, CATALOG_OBJECT_KEY = "catalog.frame.m", "catalog.object.m"
CATALOG_QUEUES = {CATALOG_FRAME_KEY: "catalog.frame.q", CATALOG_OBJECT_KEY: "catalog.object.q"}


def exchange() -> Exchange:
    return Exchange(settings.EVENT_EXCHANGE, type="topic", durable=True)


def isb_exchange() -> Exchange:
    return Exchange(settings.ISB_EXCHANGE, type="topic", durable=True)


def isb_queue(routing_key: str) -> Queue:
    """The frame catalog's queue for ``routing_key``, durable, of type ``ISB_QUEUE_TYPE``."""
    return Queue(CATALOG_QUEUES[routing_key], isb_exchange(), routing_key=routing_key, durable=True,
                 queue_arguments={"x-queue-type": settings.ISB_QUEUE_TYPE})


def connection(url: str | None = None) -> Connection:
    url = url or settings.EVENT_BUS_URL
    options = settings.EVENT_BUS_TRANSPORT_OPTIONS if url == settings.EVENT_BUS_URL else {}
    return Connection(url, transport_options=options, connect_timeout=5)


def isb_connection(url: str | None = None) -> Connection:
    url = url or settings.ISB_URL
    options = settings.ISB_TRANSPORT_OPTIONS if url == settings.ISB_URL else {}
    return Connection(url, transport_options=options, connect_timeout=5)


def add_isb_messages(messages: list[tuple[str, dict]]) -> list[OutboxEvent]:
    """Write interservice-bus messages ``(routing_key, body)`` to the outbox (the caller's transaction)."""
    now = timezone.now()
    rows = OutboxEvent.objects.bulk_create(
        [OutboxEvent(created_at=now, bus=OutboxEvent.Bus.ISB, routing_key=key, payload=body) for key, body in messages])
    transaction.on_commit(_kick, robust=True)
    return rows


def _kick() -> None:
    from inversions.lifecycle import kick_event_relay

    kick_event_relay()


def relay_outbox(*, batch: int | None = None, url: str | None = None, isb_url: str | None = None) -> int:
    """Publish unsent events of both buses; return how many went out. Never raises for a broker outage."""
    return (_relay(OutboxEvent.Bus.EVENTS, batch=batch, url=url)
            + _relay(OutboxEvent.Bus.ISB, batch=batch, url=isb_url))


def _relay(bus: str, *, batch: int | None, url: str | None) -> int:
    batch = batch or settings.EVENT_RELAY_BATCH
    isb = bus == OutboxEvent.Bus.ISB
    sent_total = 0
    while True:
        with transaction.atomic():
            rows = list(
                OutboxEvent.objects.select_for_update(skip_locked=True)
                .filter(sent_at__isnull=True, bus=bus)
                .order_by("id")[:batch]
            )
            if not rows:
                return sent_total
            sent_ids: list[int] = []
            error = ""
            try:
                with (isb_connection(url) if isb else connection(url)) as conn:
                    conn.ensure_connection(max_retries=1, interval_start=0, timeout=5)
                    producer = conn.Producer(serializer="json")
                    ex = isb_exchange() if isb else exchange()
                    for row in rows:
                        if isb:  # the frame catalog's message as it is; its queue declared and bound
                            queue = [isb_queue(row.routing_key)] if row.routing_key in CATALOG_QUEUES else []
                            body, declare, headers = row.payload, [ex, *queue], {}
                        else:
                            body, declare, headers = {**row.payload, "event_id": row.pk}, [ex], {"event_id": row.pk}
                        producer.publish(
                            body,
                            exchange=ex,
                            routing_key=row.routing_key,
                            declare=declare,
                            delivery_mode=2,
                            retry=False,
                            headers=headers,
                        )
                        sent_ids.append(row.pk)
            except Exception as exc:  # kombu raises transport-specific errors: all mean "not sent"
                error = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning("%s unavailable, %d message(s) wait in the outbox: %s",
                            "interservice bus" if isb else "event bus", len(rows) - len(sent_ids), error)
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
