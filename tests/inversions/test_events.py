"""The transactional outbox and its relay to a topic exchange on the real broker (DESIGN §10)."""
from __future__ import annotations

import uuid

import pytest
from django.db import transaction
from kombu import Queue

from inversions import events, lifecycle
from inversions.models import OutboxEvent
from inversions.states import State

DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1: a broker outage


@pytest.fixture
def bus():
    """A private queue bound to the event exchange for every program event; yields a drain()."""
    conn = events.connection()
    queue = Queue(f"test-{uuid.uuid4().hex[:8]}", exchange=events.exchange(), routing_key="l2.program.#", auto_delete=True)
    bound = queue(conn.channel())
    bound.declare()

    def drain(expected: int, timeout: float = 10.0) -> list[dict]:
        import time

        got, deadline = [], time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            message = bound.get(no_ack=True)
            if message is None:
                time.sleep(0.05)
                continue
            got.append({"routing_key": message.delivery_info["routing_key"], **message.decode()})
        # brokers do not all keep order (kombu's filesystem transport does not): consumers use event_id
        return sorted(got, key=lambda m: m["event_id"])

    yield drain
    try:
        bound.delete()
    finally:
        conn.release()


@pytest.mark.django_db
def test_each_committed_transition_is_published_with_its_routing_key(make_program, bus):
    program = make_program(State.PREPROCESSED)  # Discovered, Invertible, Preprocessed
    assert events.relay_outbox() == 3
    got = bus(3)
    assert [m["routing_key"] for m in got] == ["l2.program.discovered", "l2.program.invertible", "l2.program.preprocessed"]
    last = got[-1]
    assert last["program"] == program.instrument_program_execution_id
    assert (last["from"], last["to"], last["actor"]) == ("invertible", "preprocessed", "test")
    assert {"at", "reason", "event_id", "transition_id"} <= last.keys()
    assert not OutboxEvent.objects.filter(sent_at__isnull=True).exists()
    assert events.relay_outbox() == 0  # nothing sent twice


@pytest.mark.django_db
def test_a_rolled_back_transition_sends_nothing(make_program, bus):
    program = make_program(State.DISCOVERED)
    events.relay_outbox()
    bus(1)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            lifecycle.transition(program, State.INVERTIBLE, actor="test")
            raise RuntimeError("the caller fails after the transition")
    assert OutboxEvent.objects.filter(sent_at__isnull=True).count() == 0
    assert events.relay_outbox() == 0
    assert bus(1, timeout=1.0) == []


@pytest.mark.django_db
def test_events_wait_in_the_outbox_while_the_broker_is_down(make_program, bus):
    make_program(State.INVERTIBLE)
    assert events.relay_outbox(url=DEAD_BROKER) == 0
    waiting = list(OutboxEvent.objects.filter(sent_at__isnull=True))
    assert len(waiting) == 2
    assert all(e.attempts == 1 and e.last_error for e in waiting)
    assert bus(1, timeout=1.0) == []
    # the broker is back
    assert events.relay_outbox() == 2
    assert [m["to"] for m in bus(2)] == ["discovered", "invertible"]
    assert not OutboxEvent.objects.filter(sent_at__isnull=True).exists()
