"""Several inversions per program: re-inversion, supersession, republish, archive/restore, the frame catalog's
messages in the outbox, reconcile of superseded records (issue 14)."""
from __future__ import annotations

import asdf
import pytest
from astropy.io import fits
from django.urls import reverse

from inversions import lifecycle
from inversions.events import relay_outbox
from inversions.models import OutboxEvent, Transition
from inversions.states import State
from publishing import catalog, intake, inversion_status, pipeline, reconcile
from publishing.models import Inversion, InversionEvent, L2File
from publishing.results import write_demo_results
from publishing.tasks import publish_l2

from .conftest import BUCKET, COMMIT

pytestmark = pytest.mark.django_db

NEW_COMMIT = "9b1e77d0c4"
S = Inversion.Status


@pytest.fixture
def delete_url(settings, store_settings):
    settings.METADATA_STORE_L2_DELETE_URL = store_settings.url.rsplit("/", 1)[0] + "/_control/l2inversions/delete"
    return settings.METADATA_STORE_L2_DELETE_URL


def report_and_accept(case, user, **changes):
    order = intake.submit_report(case.program, user=user, actor=user.get_username(), enqueue=False,
                                 **case.report(**changes))
    assert intake.run_intake(order.pk) == intake.Outcome.DONE
    case.program.refresh_from_db()
    return Inversion.objects.get(inversion_id=order.details["inversion_id"])


def generate_and_publish(case) -> Inversion:
    order = pipeline.request_generate(case.program, actor="olga", enqueue=False, force=True).order
    assert pipeline.run_generate(order.pk).outcome == pipeline.Outcome.DONE
    order = pipeline.request_publish(case.program, actor="olga", enqueue=False).order
    assert publish_l2.apply(args=[order.pk]).get() == "done"
    case.program.refresh_from_db()
    return Inversion.objects.get(inversion_id=order.details["inversion_id"])


def catalog_rows(conversation_id: str | None = None):
    rows = OutboxEvent.objects.filter(bus=OutboxEvent.Bus.ISB).order_by("id")
    return [r for r in rows if conversation_id is None or r.payload["conversationId"] == conversation_id]


def published_transition(program) -> Transition:
    return Transition.objects.filter(program=program, to_state=State.PUBLISHED).latest("id")


def test_the_full_cycle_twice_gives_two_inversions_the_first_superseded(make_case_for, scientist, operator, client,
                                                                        delete_url, store_settings):
    store = store_settings.store
    case = make_case_for(scientist)
    first = report_and_accept(case, scientist)
    first = generate_and_publish(case)
    assert case.program.state == State.PUBLISHED and first.status == S.PUBLISHED and first.publications == 1

    # a science user starts a new inversion of the Published program (the page's form)
    client.force_login(scientist)
    response = client.post(reverse("program-reinvert", args=[str(case.program)]), {"reason": "BLANCA 2.1"})
    assert response.status_code == 302
    case.program.refresh_from_db()
    assert case.program.state == State.WORKING and case.program.claimed_by == scientist
    write_demo_results(case.results_folder.parent / "run-again", n_steps=case.steps, n_slit=40, n_depth=8, n_wave=12,
                       line_ids=(23,), seed=99)
    second = report_and_accept(case, scientist, software_commit=NEW_COMMIT,
                               path=case.results_path.rsplit("/", 1)[0] + "/run-again")
    assert case.program.state == State.INVERTED and second.status == S.ACCEPTED
    first.refresh_from_db()
    assert first.status == S.PUBLISHED  # the current publication stays until the new one is published
    second = generate_and_publish(case)
    first.refresh_from_db()
    assert case.program.state == State.PUBLISHED
    assert (first.status, first.superseded_by, second.status) == (S.SUPERSEDED, second, S.PUBLISHED)

    # the commit is in the L2 primary header (the "inversion" software) and in the ASDF's meta
    folder = case.root / "scratch" / second.l2_path.strip("/")
    frame = L2File.objects.filter(inversion=second, kind="frame").first()
    header = fits.getheader(folder / frame.filename, 0)
    names = {header[k]: header[k.replace("NAME", "VERS")] for k in header if k.startswith("SWNAME")}
    assert names["inversion"] == NEW_COMMIT
    asdf_file = L2File.objects.get(inversion=second, kind="metadata")
    with asdf.open(folder / asdf_file.filename, lazy_load=False, memmap=False) as af:
        assert af.tree["inversion"].meta["inventory"]["softwareCommit"] == NEW_COMMIT

    # both are in the store until reconcile retires the superseded one
    assert {r["inversionId"] for r in store.l2_inversions()} >= {first.inversion_id, second.inversion_id}
    run = reconcile.run(triggered_by="test")
    assert run.status == "succeeded", run.error
    assert [a for a in run.actions if a["action"] == "retire"] == [
        {"action": "retire", "inversionId": first.inversion_id, "done": True}]
    mine = [r["inversionId"] for r in store.l2_inversions() if r["instrumentProgramExecutionId"] == str(case.program)]
    assert mine == [second.inversion_id]
    assert reconcile.run(triggered_by="test").removed == 0  # in step now

    # the history explains every step
    steps = [(t.from_state, t.to_state, t.reason) for t in case.program.transitions.order_by("at", "id")]
    assert steps[-5:] == [
        (State.WORKING, State.INVERTED, "reported inverted; result files checked"),
        (State.INVERTED, State.PUBLISHED, "published"),
        (State.PUBLISHED, State.WORKING, "re-inversion: BLANCA 2.1"),
        (State.WORKING, State.INVERTED, f"reported inverted; result files checked (re-inversion of {first.inversion_id})"),
        (State.INVERTED, State.PUBLISHED, "published"),
    ]
    assert published_transition(case.program).details["supersedes"] == first.inversion_id
    assert [(e.from_status, e.to_status) for e in first.events.all()] == [
        ("", S.ACCEPTED), (S.ACCEPTED, S.GENERATED), (S.GENERATED, S.PUBLISHED), (S.PUBLISHED, S.SUPERSEDED)]

    # the API: the program lists both, newest first, the current one marked; the history per inversion
    client.force_login(operator)
    body = client.get(reverse("api-program", args=[str(case.program)])).json()
    assert [(i["inversionId"], i["status"], i["current"]) for i in body["inversions"]] == [
        (second.inversion_id, "published", True), (first.inversion_id, "superseded", False)]
    listed = client.get(reverse("api-inversions"), {"program": str(case.program)}).json()["results"]
    assert [i["inversionId"] for i in listed] == [second.inversion_id, first.inversion_id]
    assert listed[1]["supersededBy"] == second.inversion_id and listed[1]["history"][-1]["to"] == "superseded"
    old = client.get(reverse("api-inversion", args=[first.inversion_id])).json()  # still readable
    assert old["status"] == "superseded" and old["softwareCommit"] == COMMIT and len(old["files"]) == 6
    page = client.get(reverse("program-detail", args=[str(case.program)])).content.decode()
    assert page.index(second.inversion_id + " <strong>(current)</strong>") < page.index(first.inversion_id)


def test_a_publication_writes_one_catalog_message_per_file_in_its_transaction(make_case_for, scientist,
                                                                             store_settings):
    case = make_case_for(scientist)
    report_and_accept(case, scientist)
    inv = generate_and_publish(case)
    row = published_transition(case.program)
    conversation = row.details["conversationId"]
    rows = catalog_rows()
    frames = list(L2File.objects.filter(inversion=inv, kind="frame").order_by("step"))
    assert len(rows) == len(frames) + 1 == 6
    assert [(r.routing_key, r.payload) for r in rows[:-1]] == [
        ("catalog.frame.m", {"bucket": BUCKET, "objectName": f.object_key, "incrementDatasetCatalogReceiptCount": False,
                             "conversationId": conversation}) for f in frames]
    assert (rows[-1].routing_key, rows[-1].payload) == ("catalog.object.m", {
        "bucket": BUCKET, "objectName": inv.asdf_object_key, "objectType": "ASDF", "groupId": inv.inversion_id,
        "groupName": "DATASET", "incrementDatasetCatalogReceiptCount": False, "conversationId": conversation})
    [stored] = store_settings.store.l2_inversions({"inversionId": inv.inversion_id})
    assert rows[-1].payload["objectName"] == stored["asdfObjectKey"]
    assert all(r.sent_at is None for r in rows)  # sent by the relay, not here


def test_a_rolled_back_publication_writes_no_catalog_message(make_case_for, scientist, store_settings, monkeypatch):
    case = make_case_for(scientist)
    report_and_accept(case, scientist)
    order = pipeline.request_generate(case.program, actor="olga", enqueue=False).order
    pipeline.run_generate(order.pk)
    order = pipeline.request_publish(case.program, actor="olga", enqueue=False).order

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(pipeline.work_orders, "complete", broken)  # fails after the transition, inside the block
    with pytest.raises(RuntimeError):
        pipeline.run_publish(order.pk)
    case.program.refresh_from_db()
    assert case.program.state == State.INVERTED and catalog_rows() == []
    assert not Inversion.objects.filter(status=S.PUBLISHED).exists()


def test_catalog_messages_are_plain_data():
    messages = catalog.publication_messages(bucket="data", inversion_id="L2X", frame_keys=["p/L2X/a.fits"],
                                            asdf_key="p/L2X/x.asdf", conversation_id="c-1")
    assert [k for k, _ in messages] == ["catalog.frame.m", "catalog.object.m"]
    assert messages[1][1]["groupId"] == "L2X" and messages[1][1]["objectType"] == "ASDF"
    with pytest.raises(ValueError):
        catalog.publication_messages(bucket="", inversion_id="L2X", frame_keys=[], asdf_key="k", conversation_id="c")


def test_republish_keeps_the_id_and_keys_replaces_the_record_and_sends_a_new_set(
        make_case_for, scientist, operator, client, delete_url, store_settings, django_capture_on_commit_callbacks):
    store = store_settings.store
    case = make_case_for(scientist)
    report_and_accept(case, scientist)
    inv = generate_and_publish(case)
    keys = sorted(L2File.objects.filter(inversion=inv).values_list("object_key", flat=True))
    [before] = store.l2_inversions({"inversionId": inv.inversion_id})
    first_conversation = published_transition(case.program).details["conversationId"]
    old_frame = case.root / "scratch" / inv.l2_path.strip("/") / L2File.objects.filter(inversion=inv).first().filename
    old_mtime = old_frame.stat().st_mtime_ns

    client.force_login(operator)
    assert client.post(reverse("program-republish", args=[str(case.program)]), {"reason": ""}).status_code == 302
    case.program.refresh_from_db()
    assert case.program.state == State.PUBLISHED  # refused without a reason
    with pytest.MonkeyPatch.context() as mp:
        sent = []
        mp.setattr("publishing.tasks.generate_l2.delay", lambda order_id: sent.append(order_id))
        with django_capture_on_commit_callbacks(execute=True):
            client.post(reverse("program-republish", args=[str(case.program)]), {"reason": "fixed the azimuth wrap"})
    case.program.refresh_from_db()
    assert case.program.state == State.INVERTED and len(sent) == 1
    row = Transition.objects.filter(program=case.program).latest("id")
    assert (row.from_state, row.reason, row.details["republish"]) == (State.PUBLISHED, "republish: fixed the azimuth wrap",
                                                                      True)
    # the worker: generate (from no files), then publish without an operator (L2_AUTO_PUBLISH is off here)
    from publishing.tasks import generate_l2

    with pytest.MonkeyPatch.context() as mp:
        published = []
        mp.setattr("publishing.tasks.publish_l2.delay", lambda order_id: published.append(order_id))
        with django_capture_on_commit_callbacks(execute=True):
            assert generate_l2.apply(args=[sent[0]]).get() == "done"
    assert old_frame.stat().st_mtime_ns > old_mtime  # written again, not kept
    assert len(published) == 1 and publish_l2.apply(args=[published[0]]).get() == "done"
    case.program.refresh_from_db()
    inv.refresh_from_db()
    assert case.program.state == State.PUBLISHED and inv.status == S.PUBLISHED and inv.publications == 2
    assert sorted(L2File.objects.filter(inversion=inv).values_list("object_key", flat=True)) == keys
    for f in L2File.objects.filter(inversion=inv):  # the new files are the published ones, under the same keys
        assert pipeline.sha256_of(case.root / "publish" / BUCKET / f.object_key) == f.sha256
    [after] = store.l2_inversions({"inversionId": inv.inversion_id})
    assert after["createDate"] == before["createDate"] and after["updateDate"] > before["updateDate"]
    assert {k: after[k] for k in ("asdfObjectKey", "datasetIds", "bucket")} == {
        k: before[k] for k in ("asdfObjectKey", "datasetIds", "bucket")}
    second_conversation = published_transition(case.program).details["conversationId"]
    assert second_conversation != first_conversation
    assert len(catalog_rows(first_conversation)) == len(catalog_rows(second_conversation)) == 6
    assert published_transition(case.program).reason == "republished"
    assert [e.to_status for e in inv.events.all()][-1] == S.PUBLISHED


def test_republish_without_a_replacement_endpoint_puts_the_program_in_error(make_case_for, scientist, store_settings,
                                                                            settings):
    settings.METADATA_STORE_L2_DELETE_URL = ""
    case = make_case_for(scientist)
    report_and_accept(case, scientist)
    inv = generate_and_publish(case)
    order = pipeline.request_republish(case.program, actor="olga", reason="fix", enqueue=False).order
    assert pipeline.run_generate(order.pk).outcome == pipeline.Outcome.DONE
    order = pipeline.continue_republish(order.pk, enqueue=False).order
    assert publish_l2.apply(args=[order.pk]).get() == "failed"
    case.program.refresh_from_db()
    assert case.program.state == State.ERROR
    assert "METADATA_STORE_L2_DELETE_URL is not set" in Transition.objects.filter(program=case.program).latest("id").reason
    assert len(store_settings.store.l2_inversions({"inversionId": inv.inversion_id})) == 1  # the old one stays


def test_the_emulator_replaces_a_record_in_one_step(store_settings, delete_url):
    store = store_settings.store
    record = {"inversionId": "L2R", "primaryProposalId": "p", "instrumentProgramExecutionId": "i", "bucket": "data",
              "asdfObjectKey": "p/L2R/a.asdf", "datasetIds": ["D"], "spectralLines": []}
    store.create_l2_inversion(record)
    remover = reconcile.default_remover()
    stored = remover.replace(record | {"spectralLines": ["Fe I"]})
    assert stored["spectralLines"] == ["Fe I"] and [r["spectralLines"] for r in store.l2_inversions()
                                                    if r["inversionId"] == "L2R"] == [["Fe I"]]
    with pytest.raises(Exception) as refused:
        remover.replace(record | {"inversionId": "L2NONE"})
    assert "404" in str(refused.value)


def test_archive_and_restore_an_inversion_that_is_not_published(make_case_for, scientist, operator, client,
                                                                store_settings):
    case = make_case_for(scientist)
    report_and_accept(case, scientist)
    first = generate_and_publish(case)
    lifecycle.reinvert(case.program, user=scientist, reason="other datasets")
    second = report_and_accept(case, scientist, software_commit=NEW_COMMIT)

    client.force_login(operator)
    url = reverse("inversion-archive", args=[str(case.program), second.inversion_id])
    assert client.post(url, {"reason": "bad fit"}).status_code == 403  # the science team's
    client.force_login(scientist)
    published = reverse("inversion-archive", args=[str(case.program), first.inversion_id])
    client.post(published, {"reason": "old"})
    first.refresh_from_db()
    assert first.status == S.PUBLISHED  # the published one is not archived
    client.post(url, {"reason": ""})
    second.refresh_from_db()
    assert second.status == S.ACCEPTED  # a reason is required
    client.post(url, {"reason": "bad fit in the umbra"})
    second.refresh_from_db()
    case.program.refresh_from_db()
    assert second.status == S.ARCHIVED
    # the Inverted program gets its current publication back, in its history
    assert case.program.state == State.PUBLISHED
    row = Transition.objects.filter(program=case.program).latest("id")
    assert (row.from_state, row.details["archived"], row.details["inversion_id"]) == (
        State.INVERTED, second.inversion_id, first.inversion_id)
    assert pipeline.current_inversion(case.program) == first
    event = InversionEvent.objects.filter(inversion=second).latest("id")
    assert (event.from_status, event.to_status, event.actor, event.reason) == (S.ACCEPTED, S.ARCHIVED, "han",
                                                                                "bad fit in the umbra")
    client.post(reverse("inversion-restore", args=[str(case.program), second.inversion_id]), {"reason": "it was fine"})
    second.refresh_from_db()
    assert second.status == S.ACCEPTED
    assert pipeline.current_inversion(case.program) == first  # the program is Published with the first
    with pytest.raises(inversion_status.StatusError):
        inversion_status.restore(second, user=scientist, reason="again")


def test_the_status_table_refuses_what_it_does_not_list(make_inversion):
    inv = make_inversion("L2TAB", recorded=False)
    for to_status in (S.PUBLISHED, S.SUPERSEDED, S.ACCEPTED):
        with pytest.raises(inversion_status.StatusError):
            inversion_status.change(inv, to_status, actor="test")
    inversion_status.change(inv, S.GENERATED, actor="test")
    inv.refresh_from_db()
    assert inv.status == S.GENERATED and InversionEvent.objects.filter(inversion=inv).count() == 1


def test_a_bus_outage_keeps_catalog_messages_waiting(make_case_for, scientist, store_settings):
    case = make_case_for(scientist)
    report_and_accept(case, scientist)
    generate_and_publish(case)
    relay_outbox(isb_url="amqp://guest:guest@127.0.0.1:1//")  # nobody listens there
    rows = catalog_rows()
    assert rows and all(r.sent_at is None and r.attempts == 1 and r.last_error for r in rows)


def test_who_may_re_invert_and_republish_and_bad_requests(client, make_inversion, scientist, operator):
    inv = make_inversion("L2WHO", recorded=True, files=2)
    program = inv.program
    client.force_login(operator)
    assert client.post(reverse("program-reinvert", args=[str(program)]), {"reason": "x"}).status_code == 403
    client.force_login(scientist)
    assert client.post(reverse("program-republish", args=[str(program)]), {"reason": "x"}).status_code == 403
    program.refresh_from_db()
    assert program.state == State.PUBLISHED and program.transitions.count() == 6
    lifecycle.reinvert(program, user=scientist)
    response = client.post(reverse("program-reinvert", args=[str(program)]), {"reason": "again"}, follow=True)
    assert "Not started" in response.content.decode()  # Working now: refused with the reason, nothing changed
    assert client.get(reverse("api-inversions"), {"status": "bogus"}).status_code == 400
    body = client.get(reverse("api-inversions"), {"status": "published"}).json()
    assert [i["inversionId"] for i in body["results"]] == ["L2WHO"] and body["results"][0]["current"] is True
    assert client.post(reverse("inversion-archive", args=[str(program), "L2NONE"]), {"reason": "x"}).status_code == 404


def test_the_openapi_description_has_the_inversions_and_their_status(client):
    spec = client.get(reverse("api-openapi")).json()
    program = spec["components"]["schemas"]["Program"]["allOf"][1]["properties"]
    assert program["inversions"]["items"] == {"$ref": "#/components/schemas/InversionBrief"}
    summary = spec["components"]["schemas"]["InversionSummary"]["properties"]
    assert summary["status"]["enum"] == list(S.values) and "history" in summary and "supersededBy" in summary
    params = {p["name"] for p in spec["paths"]["/inversions"]["get"]["parameters"]}
    assert {"status", "program", "published"} <= params


def test_an_endpoint_that_only_removes_is_followed_by_a_create(store_settings):
    store = store_settings.store
    client = pipeline.store_client()
    record = {"inversionId": "L2DEL", "primaryProposalId": "p", "instrumentProgramExecutionId": "i", "bucket": "data",
              "asdfObjectKey": "p/L2DEL/a.asdf", "datasetIds": ["D"], "spectralLines": []}
    store.create_l2_inversion(record)

    class OnlyRemoves:
        def replace(self, r):
            store.delete_l2_inversion(r["inversionId"])
            return None

    stored = pipeline.put_in_store(client, record | {"spectralLines": ["Fe I"]}, republish=True,
                                   replacer=OnlyRemoves())
    assert stored["spectralLines"] == ["Fe I"]
    assert [r["spectralLines"] for r in store.l2_inversions({"inversionId": "L2DEL"})] == [["Fe I"]]
    new = pipeline.put_in_store(client, record | {"inversionId": "L2NEW"}, republish=True)
    assert new["inversionId"] == "L2NEW"  # the store answered the key is new: created


def test_the_level_2_part_costs_the_same_queries_whatever_the_number_of_inversions(client, make_inversion, scientist):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    client.force_login(scientist)
    counts = []
    for name, extra in (("L2ONE", 0), ("L2FOUR", 3)):
        inv = make_inversion(name, recorded=True, files=2)
        for n in range(extra):  # older, superseded ones, each with its history
            old = Inversion.objects.create(
                inversion_id=f"{name}OLD{n}", program=inv.program, software_commit="abcdef1", dataset_ids=["D"],
                raster_steps=1, reported_collection="c", reported_path="/x", scratch_path="/x/", reported_by="han",
                reported_at=timezone.now(), status=S.SUPERSEDED, superseded_by=inv)
            InversionEvent.objects.create(inversion=old, from_status="", to_status=S.ACCEPTED, actor="han")
            InversionEvent.objects.create(inversion=old, from_status=S.PUBLISHED, to_status=S.SUPERSEDED, actor="w")
        url = reverse("program-publishing", args=[str(inv.program)])
        with CaptureQueriesContext(connection) as ctx:
            html = client.get(url).content.decode()
        assert html.count('data-testid="inversion-row"') == extra + 1 and "(current)" in html
        counts.append(len([q for q in ctx.captured_queries if "publishing_" in q["sql"] or "workorder" in q["sql"]]))
    assert counts[0] == counts[1] == 4
