"""The event-bus intake: real "inverted" messages on the real broker (EVENT_BUS_URL)."""
from __future__ import annotations

import uuid

import pytest
from django.core.management import call_command
from kombu import Connection

from inversions.models import WorkOrder
from publishing import consumer
from publishing.consumer import Consumer, publish_inverted
from publishing.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def bus(settings, monkeypatch):
    """A private exchange and queues on the configured broker, removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    settings.EVENT_EXCHANGE = f"l2.test.{tag}"
    monkeypatch.setattr(consumer, "QUEUE", f"l2.inverted.{tag}")
    monkeypatch.setattr(consumer, "DEAD_QUEUE", f"l2.inverted.dead.{tag}")
    yield settings.EVENT_BUS_URL
    with Connection(settings.EVENT_BUS_URL, transport_options=settings.EVENT_BUS_TRANSPORT_OPTIONS) as conn:
        for queue in (consumer.inverted_queue(), consumer.dead_letter_queue()):
            bound = queue(conn.default_channel)
            bound.purge()
            bound.delete()


def dead_letters(url) -> list:
    from django.conf import settings

    out = []
    with Connection(url, transport_options=settings.EVENT_BUS_TRANSPORT_OPTIONS) as conn:
        queue = consumer.dead_letter_queue()(conn.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            out.append(message)
    return out


def test_inverted_messages_are_reported_and_bad_ones_dead_lettered(bus, make_case_for, make_user, settings):
    settings.L2_EVENT_CLIENTS = ["blanca"]
    scientist = make_user("han", "science")
    case = make_case_for(scientist, l1=False)
    other = make_case_for(scientist, l1=False)
    token = ApiToken.issue(name="blanca-cluster", user=make_user("blanca", "science"), reports_for_any_claimant=True)[1]
    good = {"program": str(case.program), "token": token, **case.report()}
    publish_inverted(good, url=bus, message_id="blanca-1")
    publish_inverted(good, url=bus, message_id="blanca-1")  # delivered twice: reported once
    publish_inverted({"program": str(other.program), "client": "blanca", **other.report()}, url=bus)
    publish_inverted({"program": "id.nope", "client": "blanca", **case.report()}, url=bus)
    publish_inverted({"program": str(other.program), "client": "mallory", **other.report()}, url=bus)
    publish_inverted({"program": str(case.program), "token": "l2t_revoked", **case.report()}, url=bus)
    publish_inverted({"program": str(other.program), "client": "blanca", **other.report(software_commit="zz")},
                     url=bus, message_id="blanca-2")
    with Connection(bus, transport_options=settings.EVENT_BUS_TRANSPORT_OPTIONS) as conn:
        conn.Producer().publish(b"{not json", exchange=consumer.exchange(), routing_key=consumer.ROUTING_KEY,
                                content_type="application/json", content_encoding="utf-8",
                                declare=[consumer.inverted_queue()])

    run = Consumer(bus)
    assert run.run(limit=8, timeout=30) == 8
    orders = {o.program_id: o for o in WorkOrder.objects.filter(kind=WorkOrder.Kind.INTAKE)}
    assert set(orders) == {case.program.pk, other.program.pk}
    assert orders[case.program.pk].requested_by == "bus:blanca-cluster"
    assert orders[case.program.pk].details["source"]["message_id"] == "blanca-1"
    assert orders[other.program.pk].requested_by == "bus:blanca"

    reasons = sorted(m.headers["x-l2-reason"] for m in dead_letters(bus))
    assert run.dead == len(reasons) == 5
    assert any("no Observing Program 'id.nope'" in r for r in reasons)
    assert any("unknown client 'mallory'" in r for r in reasons)
    assert any("invalid or revoked API token" in r for r in reasons)
    assert any("7 to 40 hexadecimal digits" in r and "(field software_commit)" in r for r in reasons)
    assert any(r.startswith("not a JSON message") for r in reasons)


def test_the_command_stops_when_idle(bus, capsys):
    call_command("consume_events", "--idle-timeout", "1", "--timeout", "10")
    assert "handled 0 message(s), 0 dead-lettered" in capsys.readouterr().out


def test_a_bus_token_reports_only_its_users_claims_unless_it_is_a_cluster_clients(make_case_for, make_user, settings):
    """The rule of the API on the bus too; and NUL or lone surrogates are refused like at every entry point."""
    settings.L2_EVENT_CLIENTS = ["blanca"]
    han = make_user("han", "science")
    case = make_case_for(han, l1=False)
    mei = ApiToken.issue(name="mei-laptop", user=make_user("mei", "science"))[1]
    refused = consumer.handle({"program": str(case.program), "token": mei, **case.report()}, "m-1")
    assert not refused.accepted and "claimed by han, not by you" in refused.reason
    bad = consumer.handle({"program": str(case.program), "client": "blanca", **case.report(notes="a\x00b")}, "m-2")
    assert not bad.accepted and "NUL" in bad.reason
    bad = consumer.handle({"program": str(case.program), "client": "blanca", **case.report(notes="a\ud800b")}, "m-3")
    assert not bad.accepted and "lone surrogate" in bad.reason
    assert not WorkOrder.objects.exists()
    own = ApiToken.issue(name="han-laptop", user=han)[1]
    assert consumer.handle({"program": str(case.program), "token": own, **case.report()}, "m-4").accepted
