"""Event-bus intake (DESIGN §8): "inverted" messages from the science cluster.

The science cluster may announce results on the event bus instead of calling the API: a
message with routing key ``l2.inverted`` on the ``EVENT_EXCHANGE`` topic exchange
(``EVENT_BUS_URL``). Its JSON body::

    {"program": "<instrumentProgramExecutionId>", "collection": "…", "path": "/…",
     "software_commit": "3f2c9e1a", "dataset_ids": ["…"], "notes": "…",
     "token": "l2t_…"          # an API token of a science-team user, or
     "client": "blanca"}       # a trusted client name listed in L2_EVENT_CLIENTS

``manage.py consume_events`` (a long-running process beside the workers: the ``events``
service of docker-compose, started by ``l2 up`` too) reads the durable queue ``l2.inverted``
and hands each message to :func:`publishing.intake.submit_report`, exactly like the API. A
message is acknowledged only after its report is recorded (an intake order, committed), so a
consumer killed half-way gets it again; a redelivered message is recognised by its message id
(the AMQP ``message_id`` property, a ``message_id`` header or body field, else the body's
sha256) and not reported twice.

A message that cannot be accepted — not JSON, not an object, no token or unknown client, a
refused report (the reason is the same as the API's) — is never dropped silently: it is
republished unchanged to the durable queue ``l2.inverted.dead`` (routing key
``l2.inverted.dead``) with headers ``x-l2-reason`` (why) and ``x-l2-original-routing-key``,
logged, and then acknowledged. Only a database outage puts a message back on its queue.
"""
from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection as db_connection
from kombu import Queue

from inversions.events import connection, exchange
from inversions.models import ObservingProgram, WorkOrder
from l2site.inputs import RULE as INPUT_RULE
from l2site.inputs import problem as input_problem

log = logging.getLogger(__name__)

ROUTING_KEY = "l2.inverted"
QUEUE = "l2.inverted"
DEAD_ROUTING_KEY = "l2.inverted.dead"
DEAD_QUEUE = "l2.inverted.dead"


def inverted_queue() -> Queue:
    return Queue(QUEUE, exchange=exchange(), routing_key=ROUTING_KEY, durable=True)


def dead_letter_queue() -> Queue:
    return Queue(DEAD_QUEUE, exchange=exchange(), routing_key=DEAD_ROUTING_KEY, durable=True)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""
    order_id: int | None = None
    duplicate: bool = False


def message_key(body, properties: dict | None, headers: dict | None) -> str:
    """The message's id: AMQP ``message_id``, a header or body field, else the body's sha256."""
    for source in (properties or {}, headers or {}, body if isinstance(body, dict) else {}):
        value = source.get("message_id")
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    raw = json.dumps(body, sort_keys=True, default=str) if not isinstance(body, (bytes, str)) else body
    raw = raw.encode() if isinstance(raw, str) else raw
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _identity(body: dict) -> tuple[str, object, bool] | str:
    """(actor, user, may report for any claimant) of the message, or the reason it has none.

    A token reports for its user's own claims unless it is a cluster client's
    (``reports_for_any_claimant``); a client of ``L2_EVENT_CLIENTS`` is a trusted cluster client.
    """
    from l2site.auth import is_science
    from publishing.models import ApiToken

    token = body.get("token")
    if isinstance(token, str) and token.strip():
        found = ApiToken.authenticate(token.strip())
        if found is None:
            return "invalid or revoked API token"
        if not is_science(found.user):
            return f"the token {found.name!r} is not one of the science team's"
        return f"bus:{found.name}", found.user, found.reports_for_any_claimant
    client = body.get("client")
    if isinstance(client, str) and client.strip():
        if client.strip() not in settings.L2_EVENT_CLIENTS:
            known = ", ".join(settings.L2_EVENT_CLIENTS) or "none configured"
            return f"unknown client {client.strip()[:80]!r} (L2_EVENT_CLIENTS: {known})"
        return f"bus:{client.strip()}", None, True
    return "the message names neither a token nor a client"


def handle(body, key: str) -> Verdict:
    """Record the report of one message (or say why not). Database errors propagate."""
    from publishing.intake import ReportRejected, submit_report

    if not isinstance(body, dict):
        return Verdict(False, f"the body must be a JSON object, not {type(body).__name__}")
    if found := input_problem(body) or input_problem(key):  # the rule of every entry point (l2site.inputs)
        return Verdict(False, f"the message {INPUT_RULE} (found {found})")
    seen = (WorkOrder.objects.filter(kind=WorkOrder.Kind.INTAKE, details__source__message_id=key)
            .exclude(status=WorkOrder.Status.FAILED).first())
    if seen is not None:
        return Verdict(True, f"already received (intake #{seen.pk})", seen.pk, duplicate=True)
    ipeid = body.get("program")
    if not isinstance(ipeid, str) or not ipeid.strip():
        return Verdict(False, "program (the instrumentProgramExecutionId) is required")
    identity = _identity(body)
    if isinstance(identity, str):
        return Verdict(False, identity)
    actor, user, for_anyone = identity
    program = ObservingProgram.objects.select_related("claimed_by").filter(
        instrument_program_execution_id=ipeid.strip()[:200]).first()
    if program is None:
        return Verdict(False, f"no Observing Program {ipeid.strip()[:200]!r}")
    dataset_ids = body.get("dataset_ids")
    try:
        order = submit_report(
            program, user=user, actor=actor, collection=body.get("collection") or "", path=body.get("path") or "",
            software_commit=body.get("software_commit") or "",
            dataset_ids=dataset_ids if dataset_ids is not None else [],
            notes=body.get("notes") if body.get("notes") is not None else "",
            require_claim=not for_anyone, source={"bus": actor, "message_id": key},
        )
    except ReportRejected as exc:
        return Verdict(False, exc.message + (f" (field {exc.field})" if exc.field else ""))
    return Verdict(True, "reported", order.pk)


class Consumer:
    """Reads ``l2.inverted`` and dead-letters what it cannot accept. See the module doc."""

    def __init__(self, url: str | None = None):
        self.url = url
        self.processed = 0
        self.dead = 0

    def _dead_letter(self, producer, message, reason: str) -> None:
        headers = dict(message.headers or {})
        headers.update({"x-l2-reason": reason[:2000], "x-l2-original-routing-key": message.delivery_info.get(
            "routing_key", ROUTING_KEY)})
        producer.publish(message.body, exchange=exchange(), routing_key=DEAD_ROUTING_KEY, headers=headers,
                         content_type=message.content_type or "application/octet-stream",
                         content_encoding=message.content_encoding or "binary",
                         declare=[dead_letter_queue()], delivery_mode=2, retry=True)
        self.dead += 1
        log.warning("event bus: message dead-lettered to %s: %s", DEAD_QUEUE, reason)

    def run(self, *, limit: int | None = None, timeout: float | None = None, idle_timeout: float | None = None) -> int:
        """Consume until ``limit`` messages were handled, ``timeout`` seconds passed, or (with
        ``idle_timeout``) no message came for that long. Forever when all are None."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        last = time.monotonic()
        with connection(self.url) as conn:
            conn.ensure_connection(max_retries=3)
            channel = conn.channel()
            producer = conn.Producer(channel=channel, serializer="json")
            queue = inverted_queue()(channel)
            queue.declare()
            dead_letter_queue()(channel).declare()

            def on_message(body, message):
                nonlocal last
                last = time.monotonic()
                key = message_key(body, message.properties, message.headers)
                try:
                    if not db_connection.in_atomic_block:  # a long-running process: drop stale connections
                        close_old_connections()
                    verdict = handle(body, key)
                except (OperationalError, InterfaceError) as exc:
                    log.error("event bus: database unavailable, message requeued: %s", exc)
                    message.requeue()
                    time.sleep(1)
                    return
                except Exception as exc:  # a bug: keep the message, with the reason
                    log.exception("event bus: failure handling a message")
                    verdict = Verdict(False, f"internal error: {type(exc).__name__}: {exc}")
                if verdict.accepted:
                    log.info("event bus: %s %s", key, verdict.reason)
                else:
                    self._dead_letter(producer, message, verdict.reason)
                message.ack()
                self.processed += 1

            def on_decode_error(message, exc):
                nonlocal last
                last = time.monotonic()
                self._dead_letter(producer, message, f"not a JSON message: {exc}")
                message.ack()
                self.processed += 1

            with conn.Consumer([queue], channel=channel, callbacks=[on_message], accept=["json"],
                               on_decode_error=on_decode_error, prefetch_count=1):
                while limit is None or self.processed < limit:
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        break
                    if idle_timeout is not None and now - last >= idle_timeout:
                        break
                    try:
                        conn.drain_events(timeout=1.0)
                    except (socket.timeout, TimeoutError):
                        continue
        return self.processed


def publish_inverted(body: dict, *, url: str | None = None, message_id: str | None = None) -> None:
    """Send an "inverted" message (what the science cluster does; for tests and by hand)."""
    with connection(url) as conn:
        producer = conn.Producer(serializer="json")
        producer.publish(body, exchange=exchange(), routing_key=ROUTING_KEY, declare=[inverted_queue()],
                         delivery_mode=2, retry=True, message_id=message_id)
