"""Scans end to end: the emulator over real HTTP → parse → upsert → settle → qualify (DESIGN §5, §6)."""
from __future__ import annotations

import copy
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inversions.models import Dataset, ObservingProgram, OutboxEvent, Transition
from inversions.states import State
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan
from scanning.scan import run_scan
from tests.scanning.conftest import TOKEN
from tests.scanning.expected_qualification import EXPECTED


@pytest.fixture
def store_client(metadata_store):
    def make():
        return MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0, max_attempts=3, backoff_base=0.001)

    return make


@pytest.fixture
def small_pages(settings):
    settings.SCAN_PAGE_SIZE = 100  # the fixtures are 508 records: 6 pages


def scan(store_client, **kw):
    return run_scan(store=store_client(), **kw)


def table_rows():
    """Every row of the tables a scan may write, except the scan's own."""
    return {
        "datasets": list(Dataset.objects.order_by("pk").values_list("pk", "raw_hash", "changed_at", "superseded")),
        "programs": list(ObservingProgram.objects.order_by("pk").values_list("pk", "state", "updated_at")),
        "transitions": Transition.objects.count(),
        "events": OutboxEvent.objects.count(),
    }


@pytest.mark.django_db
def test_scanning_the_real_fixtures_gives_the_programs_and_states_the_rules_imply(store_client, small_pages, fixture_records):
    result = scan(store_client, full=True)
    assert result.status == Scan.Status.SUCCEEDED, result.error
    # 508 records, 142 distinct instrumentProgramExecutionIds (34 + 108, counted from the files)
    assert (result.records, result.new, result.errors, result.pages) == (508, 508, 0, 6)
    ipeids = {r["instrumentProgramExecutionId"] for r in fixture_records}
    assert ObservingProgram.objects.count() == len(ipeids) == 142 == result.programs_new
    # All fixture records are years old: every program is settled and qualified.
    visp = {p.instrument_program_execution_id: p for p in ObservingProgram.objects.filter(instrument_name__iexact="visp")}
    assert set(visp) == set(EXPECTED)  # 73 ViSP programs, each derived by hand in expected_qualification.py
    for ipeid, expected in EXPECTED.items():
        program = visp[ipeid]
        wanted = State.INVERTIBLE if expected.invertible else State.NOT_INVERTIBLE
        assert program.state == wanted, f"{ipeid}: {expected.why}"
        report = program.transitions.get(to_state=wanted).details
        failing = {rule["name"] for rule in report["rules"] if not rule["passed"]}
        assert failing == set(expected.failing), f"{ipeid}: {expected.why}"
    # VBI: 69 programs, not supported
    vbi = ObservingProgram.objects.filter(instrument_name="VBI")
    assert vbi.count() == 69 and set(vbi.values_list("state", flat=True)) == {State.NOT_INVERTIBLE}
    assert Transition.objects.filter(program__instrument_name="VBI", to_state=State.NOT_INVERTIBLE, reason="VBI not supported").count() == 69
    # each dataset keeps its raw JSON as the store sent it (the store adds experimentDescription, productId)
    sample = fixture_records[0]
    raw = Dataset.objects.get(dataset_id=sample["datasetId"]).raw
    assert {k: raw[k] for k in sample} == sample and "experimentDescription" in raw


@pytest.mark.django_db
def test_an_unchanged_store_writes_nothing_but_the_scan_row(store_client, small_pages):
    scan(store_client, full=True)
    before = table_rows()
    again = scan(store_client, full=True)
    incremental = scan(store_client)
    assert (again.new, again.updated, again.unchanged, again.programs_qualified) == (0, 0, 508, 0)
    assert incremental.update_date_min is not None and incremental.records < 508
    assert table_rows() == before


@pytest.mark.django_db
def test_a_changed_dataset_updates_exactly_it_and_requalifies_its_program(metadata_store, store_client, small_pages, fixture_records):
    scan(store_client, full=True)
    before = table_rows()
    # id.85572.528411 is invertible; make its Fe arm (BLGOX) Stokes I: it must become Not Invertible
    record = copy.deepcopy(next(r for r in fixture_records if r["datasetId"] == "BLGOX"))
    record["stokesParameters"] = "I"
    record["updateDate"] = (timezone.now() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.%f")
    metadata_store.store.upsert_records([record])

    result = scan(store_client)
    assert (result.new, result.updated, result.errors) == (0, 1, 0)
    after = table_rows()
    changed = [a for a, b in zip(after["datasets"], before["datasets"]) if a != b]
    assert [Dataset.objects.get(pk=row[0]).dataset_id for row in changed] == ["BLGOX"]
    program = ObservingProgram.objects.get(instrument_program_execution_id="id.85572.528411")
    history = list(program.transitions.order_by("at", "id").values_list("to_state", "reason"))
    assert history[-2:] == [(State.DISCOVERED, "datasets changed"), (State.NOT_INVERTIBLE, "Stokes: BLGOX has Stokes I only")] or (
        history[-2] == (State.DISCOVERED, "datasets changed") and history[-1][0] == State.NOT_INVERTIBLE
    )
    assert "Stokes" in program.transitions.latest("at", "id").details["failed_rules"]
    changed_programs = [a for a, b in zip(after["programs"], before["programs"]) if a != b]
    assert [p[0] for p in changed_programs] == [program.pk]


@pytest.mark.django_db
def test_unsettled_programs_wait_and_show_when_they_settle(metadata_store, store_client, fixture_records):
    fresh = copy.deepcopy(next(r for r in fixture_records if r["instrumentName"] == "VISP"))
    now = timezone.now()
    fresh.update(datasetId="NEWDS", instrumentProgramExecutionId="id.new.1", createDate=now.strftime("%Y-%m-%dT%H:%M:%S"), updateDate=now.strftime("%Y-%m-%dT%H:%M:%S"))
    metadata_store.store.upsert_records([fresh], replace=True)
    scan(store_client, full=True)
    program = ObservingProgram.objects.get(instrument_program_execution_id="id.new.1")
    assert program.state == State.DISCOVERED
    assert abs((program.settles_at - (now + timedelta(days=3))).total_seconds()) < 5
    # three days later it qualifies
    scan(store_client, now=now + timedelta(days=3, minutes=1))
    program.refresh_from_db()
    assert program.state in (State.INVERTIBLE, State.NOT_INVERTIBLE)


@pytest.mark.django_db
def test_reprocessed_dataset_supersedes_the_older_one(metadata_store, store_client, fixture_records):
    old = next(r for r in fixture_records if r["datasetId"] == "BLGOX")
    first, second = copy.deepcopy(old), copy.deepcopy(old)
    first["productId"] = second["productId"] = "P-BLGOX"
    second.update(datasetId="BLGOX2", createDate="2024-01-01T00:00:00", updateDate="2024-01-01T00:00:00")
    metadata_store.store.upsert_records([first, second], replace=True)
    scan(store_client, full=True)
    assert dict(Dataset.objects.values_list("dataset_id", "superseded")) == {"BLGOX": True, "BLGOX2": False}
    assert ObservingProgram.objects.get().dataset_count == 1


GARBAGE = [
    ["only an id", {"datasetId": "G1"}],  # missing every other field (replaces the record)
    {"datasetId": "G2", "instrumentProgramExecutionId": None},
    {"datasetId": 17, "frameCount": "many"},
    "not an object",
    None,
    {"datasetId": "G5", "boundingBox": "(nan,1),(2,3)"},  # kept: no boundingBox data, a warning
    {"datasetId": "G6", "createDate": "yesterday"},
]


@pytest.mark.django_db
def test_a_fuzzed_store_never_crashes_a_scan_and_lists_each_bad_record(metadata_store, store_client, fixture_records):
    good = [copy.deepcopy(r) for r in fixture_records[:20]]
    bad = []
    for i, base in enumerate(fixture_records[20:27]):
        record = copy.deepcopy(base)
        if isinstance(GARBAGE[i], dict):
            record.update(GARBAGE[i])  # a real record with one field spoiled
            bad.append(record)
        elif isinstance(GARBAGE[i], list):
            bad.append(GARBAGE[i][1])
        else:
            bad.append(GARBAGE[i])
    unknown = copy.deepcopy(fixture_records[30])
    unknown.update(instrumentName="CRYO-NIRSP", datasetId="CRYO1", instrumentProgramExecutionId="id.cryo.1")
    duplicate = copy.deepcopy(good[0])
    metadata_store.store.upsert_records(good + bad + [unknown], replace=True)
    metadata_store.store._records.append(duplicate)  # the same datasetId twice in one answer
    result = scan(store_client, full=True)
    assert result.status == Scan.Status.SUCCEEDED
    assert result.new == 22  # 20 good + the unknown instrument + G5 (only its bounding box is bad)
    assert result.errors == len(bad)  # the 5 others that cannot be identified, and the duplicate
    assert (result.warnings, *result.record_warnings.values_list("dataset_id", "field").get()) == (1, "G5", "boundingBox")
    reasons = list(result.record_errors.values_list("reason", flat=True))
    assert len(reasons) == len(bad) and all(reasons)
    assert any("duplicate" in r for r in reasons)
    assert ObservingProgram.objects.get(instrument_program_execution_id="id.cryo.1").state == State.NOT_INVERTIBLE
    assert Dataset.objects.filter(dataset_id=good[0]["datasetId"]).count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("fault", ["fail", "malformed"])
def test_store_failures_are_retried_then_the_scan_fails_cleanly_keeping_what_it_stored(metadata_store, store_client, small_pages, fault):
    scan(store_client, full=True)
    before = table_rows()
    # descriptions pass, page 1 passes, then page 2 fails three times (the client's attempts)
    metadata_store.faults.add("pass", count=2)
    getattr(metadata_store.faults, fault)(count=3)
    result = scan(store_client, full=True)
    assert result.status == Scan.Status.FAILED
    assert "BackoffRetryError" in result.error and result.finished_at
    assert result.pages == 1
    assert table_rows() == before


@pytest.mark.django_db(transaction=True)
def test_two_scans_started_together_never_insert_a_dataset_twice(store_client, small_pages):
    results = []

    def run():
        try:
            results.append(run_scan(store=store_client(), full=True))
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(r.status for r in results) == [Scan.Status.SUCCEEDED] * 2
    assert sorted(r.new for r in results) == [0, 508]
    assert Dataset.objects.count() == 508
    assert ObservingProgram.objects.count() == 142


@pytest.mark.django_db
def test_statements_grow_with_pages_not_records(metadata_store, store_client, settings, fixture_records):
    """1,000 then 4,000 new records (1 then 4 pages): the SQL count follows pages, not records."""
    from scanning.emulator.server import synthesize_records

    settings.SCAN_PAGE_SIZE = 1000
    records = synthesize_records(fixture_records, 5000, seed=7)
    counts = []
    for chunk in (records[:1000], records[1000:]):
        metadata_store.store.upsert_records(chunk, replace=True)
        with CaptureQueriesContext(connection) as ctx:
            result = scan(store_client, full=True)
        assert result.status == Scan.Status.SUCCEEDED and result.new == len(chunk)
        counts.append(len(ctx.captured_queries))
    one_page, four_pages = counts
    print(f"SQL statements: 1 page/1,000 records: {one_page}; 4 pages/4,000 records: {four_pages}")
    assert four_pages <= 4 * one_page
    assert four_pages < 4000 / 20
