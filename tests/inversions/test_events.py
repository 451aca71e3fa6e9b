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


# --- The relay-on-commit: a hook of the life-cycle, a thread that sends, never the request ---------
def test_lifecycle_imports_no_tasks_and_gets_the_relay_as_a_hook():
    import ast
    import inspect

    from inversions import relay

    tree = ast.parse(inspect.getsource(lifecycle))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and (m.startswith("celery") or m == "inversions.tasks")}
    assert relay.wake in lifecycle._outbox_hooks  # registered by the app


@pytest.mark.django_db(transaction=True)
def test_outbox_hook_runs_after_commit_only(make_program, settings, monkeypatch):
    settings.EVENT_RELAY_ON_COMMIT = True
    calls = []
    monkeypatch.setattr(lifecycle, "_outbox_hooks", [lambda: calls.append(1)])
    program = make_program(State.DISCOVERED)
    calls.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        lifecycle.transition(program, State.INVERTIBLE, actor="test")
        raise RuntimeError("rolled back")
    assert calls == []
    with transaction.atomic():
        lifecycle.transition(program, State.INVERTIBLE, actor="test")
        assert calls == []  # not before the commit
    assert calls == [1]
    settings.EVENT_RELAY_ON_COMMIT = False
    lifecycle.transition(program, State.PREPROCESSED, actor="test")
    assert calls == [1]


def test_waker_never_waits_for_the_send_and_coalesces_a_burst():
    import threading
    import time

    from inversions.relay import RelayWaker

    gate, sends = threading.Event(), []

    def slow_send():  # a broker that hangs until released
        sends.append(time.monotonic())
        gate.wait(10)

    waker = RelayWaker(slow_send, lambda: 0.0)
    t = time.perf_counter()
    for _ in range(1000):
        waker.wake()
    assert time.perf_counter() - t < 0.5  # no call waited for the hanging broker
    deadline = time.monotonic() + 5
    while not sends and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(sends) == 1  # the burst is one send so far
    for _ in range(1000):  # more commits while the broker hangs
        waker.wake()
    gate.set()
    deadline = time.monotonic() + 5
    while waker.sent < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert waker.sent == 2  # the wakes during the first send: one more, not 1000


def test_waker_survives_a_failing_send():
    import time

    from inversions.relay import RelayWaker

    attempts = []

    def failing():
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("broker down")

    waker = RelayWaker(failing, lambda: 0.0)
    waker.wake()
    deadline = time.monotonic() + 5
    while len(attempts) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    waker.wake()
    while waker.sent < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(attempts) == 2 and waker.sent == 1


@pytest.mark.django_db(transaction=True)
def test_claims_reach_the_bus_through_the_woken_relay(make_program, make_user, bus, settings, monkeypatch):
    """End to end without a worker: the waker's send runs the relay (as the task would); each
    claim's event is delivered once, and the claims themselves never called the broker."""
    from inversions import relay

    settings.EVENT_RELAY_ON_COMMIT = True
    events.relay_outbox()  # what the fixtures wrote
    from django.db import connection

    def send():  # what the relay task does, on the waker's thread (its own connection, closed after)
        try:
            events.relay_outbox()
        finally:
            connection.close()

    waker = relay.RelayWaker(send, lambda: 0.0)
    monkeypatch.setattr(lifecycle, "_outbox_hooks", [waker.wake])
    user = make_user("picker", "science")
    programs = [make_program(State.QUEUED) for _ in range(3)]
    events.relay_outbox()
    bus(1000, timeout=1.0)  # drain the fixtures' events
    claimed = [lifecycle.claim_next(user=user) for _ in range(3)]
    assert {p.pk for p in claimed} == {p.pk for p in programs}
    got = bus(3)
    assert sorted(m["program_id"] for m in got) == sorted(p.pk for p in programs)
    assert all(m["routing_key"] == "l2.program.working" and m["transition_id"] for m in got)
    assert not OutboxEvent.objects.filter(sent_at__isnull=True).exists()
