"""The frame catalog's messages on a real RabbitMQ (the machine's, or the one CI's ISB_URL names).

Exactly N + 1 messages per publication (N FITS + 1 ASDF) arrive on ``catalog.frame.q`` /
``catalog.object.q``; with the broker down they wait in the outbox and arrive when it is back;
a republish sends a new set with a new conversationId; the queues have the configured type.
"""
from __future__ import annotations

import os
import uuid

import pytest
from amqp.exceptions import NotFound, PreconditionFailed
from kombu import Connection

from inversions.events import CATALOG_QUEUES, add_isb_messages, isb_queue, relay_outbox
from inversions import work_orders
from inversions.models import OutboxEvent, Transition, WorkOrder
from inversions.states import State
from publishing import pipeline
from publishing.models import L2File
from publishing.tasks import generate_l2, publish_l2

from .test_reinversion import generate_and_publish, report_and_accept

RABBITMQ = os.environ.get("ISB_URL") if (os.environ.get("ISB_URL") or "").startswith("amqp") else \
    "amqp://guest:guest@127.0.0.1:5672//"
DOWN = "amqp://guest:guest@127.0.0.1:1//"
QUEUES = list(CATALOG_QUEUES.values())


@pytest.fixture
def rabbit(settings):
    """The interservice bus on RabbitMQ: a private exchange, the catalog queues deleted before and after."""
    settings.ISB_URL = RABBITMQ
    settings.ISB_TRANSPORT_OPTIONS = {}
    settings.ISB_EXCHANGE = f"l2.test.isb.{uuid.uuid4().hex[:8]}"
    with Connection(RABBITMQ, connect_timeout=5) as conn:
        channel = conn.channel()

        def clean():
            for name in QUEUES:
                channel.queue_delete(name)

        clean()
        try:
            yield channel
        finally:
            clean()
            channel.exchange_delete(settings.ISB_EXCHANGE)


def drain(channel, queue: str) -> list[dict]:
    import json

    out = []
    while True:
        message = channel.basic_get(queue=queue, no_ack=True)
        if message is None:
            return out
        out.append(json.loads(message.body))


@pytest.mark.integration
@pytest.mark.django_db
def test_n_plus_one_messages_per_publication_through_an_outage_and_a_republish(
        rabbit, settings, make_case_for, scientist, store_settings, django_capture_on_commit_callbacks):
    settings.METADATA_STORE_L2_DELETE_URL = store_settings.url.rsplit("/", 1)[0] + "/_control/l2inversions/delete"
    case = make_case_for(scientist)
    report_and_accept(case, scientist)

    settings.ISB_URL = DOWN  # the broker is down when the publication commits
    inv = generate_and_publish(case)
    n = L2File.objects.filter(inversion=inv, kind="frame").count()
    relay_outbox()
    waiting = OutboxEvent.objects.filter(bus="isb", sent_at__isnull=True)
    assert waiting.count() == n + 1 and all(r.attempts == 1 and r.last_error for r in waiting)

    settings.ISB_URL = RABBITMQ  # back
    assert relay_outbox() >= n + 1
    conversation = Transition.objects.filter(program=case.program, to_state=State.PUBLISHED).latest("id").details[
        "conversationId"]
    frames, objects = drain(rabbit, "catalog.frame.q"), drain(rabbit, "catalog.object.q")
    keys = list(L2File.objects.filter(inversion=inv, kind="frame").order_by("step").values_list("object_key", flat=True))
    assert frames == [{"bucket": inv.bucket, "objectName": k, "incrementDatasetCatalogReceiptCount": False,
                       "conversationId": conversation} for k in keys]
    assert objects == [{"bucket": inv.bucket, "objectName": inv.asdf_object_key, "objectType": "ASDF",
                        "groupId": inv.inversion_id, "groupName": "DATASET",
                        "incrementDatasetCatalogReceiptCount": False, "conversationId": conversation}]
    assert relay_outbox() == 0 and drain(rabbit, "catalog.frame.q") == []  # sent once

    # a republish: a new set, a new conversationId, the same object names
    order = pipeline.request_republish(case.program, actor="olga", reason="fixed the headers", enqueue=False).order
    assert generate_l2.apply(args=[order.pk]).get() == "done"  # and asks for the publication itself
    publish = work_orders.active(case.program, WorkOrder.Kind.PUBLISH)
    assert publish_l2.apply(args=[publish.pk]).get() == "done"
    relay_outbox()
    again_frames, again_objects = drain(rabbit, "catalog.frame.q"), drain(rabbit, "catalog.object.q")
    assert len(again_frames) == n and len(again_objects) == 1
    assert {m["conversationId"] for m in again_frames + again_objects} - {conversation} == {
        again_objects[0]["conversationId"]}
    assert [m["objectName"] for m in again_frames] == keys


@pytest.mark.integration
@pytest.mark.django_db
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_the_catalog_queues_are_declared_bound_and_of_the_configured_type(rabbit, settings, queue_type):
    settings.ISB_QUEUE_TYPE = queue_type
    add_isb_messages([("catalog.frame.m", {"objectName": "a"}), ("catalog.object.m", {"objectName": "b"})])
    assert relay_outbox() == 2
    assert drain(rabbit, "catalog.frame.q") == [{"objectName": "a"}]
    assert drain(rabbit, "catalog.object.q") == [{"objectName": "b"}]
    other = "quorum" if queue_type == "classic" else "classic"
    settings.ISB_QUEUE_TYPE = other
    with Connection(RABBITMQ, connect_timeout=5) as conn:
        with pytest.raises(PreconditionFailed):  # declared as queue_type: another type is refused
            isb_queue("catalog.frame.m")(conn.channel()).declare()
    with Connection(RABBITMQ, connect_timeout=5) as conn:
        with pytest.raises(NotFound):  # and nothing else is declared
            conn.channel().queue_declare("catalog.other.q", passive=True)
