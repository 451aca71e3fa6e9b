"""The scan's fast paths give what the plain way gives: stored records, read-ahead, summaries at creation, reports."""
from __future__ import annotations

import copy
import json
import math

import pytest
from django.db import connection

from inversions.errors import BackoffRetryError
from inversions.models import Dataset, ObservingProgram, Transition
from inversions.states import State
from scanning import prepare, qualification, qualify, store
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan
from scanning.records import parse_record
from scanning.fetch import read_ahead
from scanning.prepare import canonical_json, raw_hash, thresholds
from scanning.qualify import RECORD_SELECT, stored_record
from scanning.scan import run_scan
from scanning.store import reading_cursor, summarise_programs
from tests.scanning.conftest import TOKEN


@pytest.fixture
def store_client(metadata_store):
    def make():
        return MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0, max_attempts=3, backoff_base=0.001)

    return make


def scan(store_client, **kw) -> Scan:
    result = run_scan(store=store_client(), **kw)
    assert result.status == Scan.Status.SUCCEEDED, result.error
    return result


# --- plain helpers ---------------------------------------------------------------------------
def test_canonical_json_is_the_stored_text_and_its_digest_the_raw_hash(fixture_records):
    for raw in fixture_records[:50]:
        text, digest = canonical_json(raw)
        assert json.loads(text) == raw and digest == raw_hash(raw)
    # what jsonb cannot hold is written out as text: the same text (and digest) every time
    odd = {**fixture_records[0], "extra": math.nan, "url": "a\x00b", "note": "\ud800", "big": 10**30}
    text, digest = canonical_json(odd)
    assert json.loads(text) == {**fixture_records[0], "extra": "NaN", "url": "a\\u0000b", "note": "\\ud800",
                                "big": 10**30}
    assert "\\u0000" not in text.replace("\\\\u0000", "") and canonical_json(copy.deepcopy(odd)) == (text, digest)


def test_read_ahead_keeps_the_order_and_raises_a_fetch_error_after_the_pages_before_it():
    asked: list[int] = []

    def pages():
        for number in (1, 2, 3):
            asked.append(number)
            yield [f"record {number}"]
        asked.append(4)
        raise BackoffRetryError("metadata store unavailable", step="scan")

    got = []
    with pytest.raises(BackoffRetryError):
        with read_ahead(pages()) as read:
            for page in read:
                got.append(page)
                assert asked[-1] <= len(got) + 2  # never more than two pages ahead
    assert got == [["record 1"], ["record 2"], ["record 3"]]
    assert asked == [1, 2, 3, 4]


# --- against the database ----------------------------------------------------------------------
@pytest.mark.django_db
def test_a_stored_record_is_the_record_the_parser_made(store_client, fixture_records):
    scan(store_client, full=True)
    with reading_cursor() as cursor:
        cursor.execute(f"SELECT {RECORD_SELECT}, raw FROM inversions_dataset")
        rows = cursor.fetchall()
    assert len(rows) == len(fixture_records) == 508
    for row in rows:
        stored = stored_record(row[:-1])
        parsed = parse_record(json.loads(row[-1]))
        for name in parsed.__dataclass_fields__:
            if name == "raw":  # not kept
                continue
            assert getattr(stored, name) == getattr(parsed, name), (parsed.dataset_id, name)
        assert stored.start_time.utcoffset().total_seconds() == 0


def _stored_summaries() -> list[tuple]:
    return list(ObservingProgram.objects.order_by("pk").values_list(*(["pk"] + prepare.SUMMARY_FIELDS[:-1])))


@pytest.mark.django_db
@pytest.mark.parametrize("page_size", [7, 1000])
def test_summaries_and_reports_do_not_depend_on_how_pages_cut_programs(metadata_store, store_client, settings,
                                                                        fixture_records, page_size, monkeypatch):
    """Programs split over pages or not: summaries equal a recomputation, reports equal qualifying the stored data."""
    # two arms with the same wavelength but different execution ids: the database's order decides the summary
    a = copy.deepcopy(fixture_records[40])
    b = copy.deepcopy(a)
    for n, record in enumerate((a, b)):
        record.update(datasetId=f"TIE{n}", instrumentProgramExecutionId="id.tie.1", wavelengthMin=630.0,
                      wavelengthMax=640.0, observingProgramExecutionId=f"ope.tie.{1 - n}")
    metadata_store.store.upsert_records([a, b])
    settings.SCAN_PAGE_SIZE = page_size
    summarised: list[int] = []
    original = store.summarise_programs
    monkeypatch.setattr(store, "summarise_programs", lambda ids, d: summarised.extend(ids) or original(ids, d))
    result = scan(store_client, full=True)
    assert result.new == 510 and result.programs_qualified == result.programs_new == 143
    before = _stored_summaries()
    summarise_programs([p[0] for p in before], {})
    assert _stored_summaries() == before  # nothing to correct
    tie = ObservingProgram.objects.get(instrument_program_execution_id="id.tie.1")
    assert tie.observing_program_execution_id == "ope.tie.1"  # TIE0 sorts first in the database
    assert tie.pk in summarised  # its summary at creation depended on an order: recomputed from the database
    if page_size == 1000:  # every program found whole on one page: the others are not read back
        assert summarised == [tie.pk]
    t = thresholds()
    records = qualify.current_records([p[0] for p in before])
    for program in ObservingProgram.objects.all():
        latest = program.transitions.latest("at", "id")
        report = qualification.qualify(records[program.pk], t)
        assert (latest.details, latest.reason) == (json.loads(json.dumps(report.to_dict())), report.reason)
        assert program.state == (State.INVERTIBLE if report.invertible else State.NOT_INVERTIBLE)


@pytest.mark.django_db
def test_an_unchanged_full_rescan_parses_no_record(store_client, monkeypatch):
    scan(store_client, full=True)
    parsed = []
    for module in (prepare, store):  # the two places a record is parsed
        monkeypatch.setattr(module, "parse_record", lambda raw: parsed.append(raw) or parse_record(raw))
    again = scan(store_client, full=True)
    assert (again.unchanged, again.new, again.updated, parsed) == (508, 0, 0, [])
    assert again.newest_update_date == Dataset.objects.order_by("-update_date").values_list("update_date", flat=True)[0]


@pytest.mark.django_db
def test_a_record_holding_nan_is_stored_escaped_with_a_warning(metadata_store, store_client, fixture_records):
    good = [copy.deepcopy(r) for r in fixture_records[:10]]
    odd = copy.deepcopy(fixture_records[10])
    odd["lightLevel"] = {**odd["lightLevel"], "mean": math.inf}  # a member the parser ignores; JSON has no Infinity
    metadata_store.store.upsert_records(good + [odd], replace=True)
    result = scan(store_client, full=True)
    assert (result.new, result.errors, result.warnings) == (11, 0, 1)
    warning = result.record_warnings.get()
    assert (warning.dataset_id, warning.field) == (odd["datasetId"], "raw") and "lightLevel.mean" in warning.reason
    stored = Dataset.objects.get(dataset_id=odd["datasetId"])
    assert stored.raw["lightLevel"]["mean"] == "Infinity" and stored.light_level["med"] == odd["lightLevel"]["med"]
    again = scan(store_client, full=True)  # the escaped record compares equal: nothing written
    assert (again.unchanged, again.updated, again.warnings) == (11, 0, 0)


@pytest.mark.django_db
def test_the_scan_reads_no_dataset_back_for_programs_found_whole_on_one_page(store_client, settings):
    settings.SCAN_PAGE_SIZE = 1000  # the 508 fixture records on one page
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        scan(store_client, full=True)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM inversions_dataset" in s]
    assert len(reads) == 1 and "raw_hash" in reads[0]  # only the lookup of what is stored already


def _stored_scan() -> tuple[list, list, list]:
    """Everything a scan wrote, without ids and times."""
    dataset_fields = [f.attname for f in Dataset._meta.concrete_fields
                      if f.attname not in ("id", "program_id", "first_seen_at", "changed_at")]
    datasets = list(Dataset.objects.order_by("dataset_id").values_list("program__instrument_program_execution_id",
                                                                       *dataset_fields))
    programs = list(ObservingProgram.objects.order_by("instrument_program_execution_id").values_list(
        "instrument_program_execution_id", "state", *prepare.SUMMARY_FIELDS[:-1]))
    history = list(Transition.objects.order_by("program__instrument_program_execution_id", "id").values_list(
        "program__instrument_program_execution_id", "from_state", "to_state", "actor", "reason", "details"))
    return datasets, programs, history


@pytest.mark.django_db
def test_what_the_read_ahead_thread_makes_is_what_the_scan_makes_itself(metadata_store, store_client, settings,
                                                                         fixture_records, monkeypatch):
    """A first scan parses, builds rows, programs and reports in the read-ahead thread: the same rows as without."""
    settings.SCAN_PAGE_SIZE = 50  # programs cut by pages as well as whole ones
    warned = {**copy.deepcopy(fixture_records[3]), "datasetId": "WARN1", "frameCount": "many"}  # kept, no frameCount
    bad = {**copy.deepcopy(fixture_records[3]), "datasetId": "BAD01", "createDate": "never"}
    metadata_store.store.upsert_records([warned, bad])
    made = []
    original = prepare._make_ahead
    monkeypatch.setattr(prepare, "_make_ahead", lambda *args: made.append(args) or original(*args))
    first = scan(store_client, full=True)
    assert len(made) == first.pages == 11 and (first.new, first.errors, first.warnings) == (509, 1, 1)
    ahead = _stored_scan()
    with connection.cursor() as cursor:  # start again from an empty database
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("TRUNCATE inversions_outboxevent, inversions_transition, inversions_dataset, "
                       "inversions_observingprogram, scanning_scanrecorderror, scanning_scanrecordwarning, "
                       "scanning_scan CASCADE")
    made.clear()
    plain = prepare.prepare_page
    monkeypatch.setattr(prepare, "prepare_page", lambda page, descriptions=None: plain(page))
    again = scan(store_client, full=True)
    assert made == [] and (again.new, again.errors, again.warnings, again.programs_new) == (509, 1, 1, first.programs_new)
    assert _stored_scan() == ahead


@pytest.mark.django_db
def test_reports_given_as_json_text_are_the_details_also_when_a_program_moved_meanwhile(store_client, monkeypatch):
    from datetime import UTC, datetime

    from inversions import lifecycle

    scan(store_client, full=True, now=datetime(2000, 1, 1, tzinfo=UTC))  # nothing settled yet: all Discovered
    ids = list(ObservingProgram.objects.order_by("pk").values_list("pk", flat=True))
    assert len(ids) == 142 and not ObservingProgram.objects.exclude(state=State.DISCOVERED).exists()
    records = qualify.current_records(ids)
    reports = {pid: prepare.program_report_text(records[pid], thresholds()) for pid in ids[:100]}
    moved = ids[5]
    original = qualify.current_records

    def meanwhile(program_ids):  # between reading the settled programs and qualifying them
        if not Transition.objects.filter(program_id=moved, actor="someone").exists():
            lifecycle.transition(moved, State.NOT_INVERTIBLE, actor="someone", reason="by hand")
        return original(program_ids)

    monkeypatch.setattr(qualify, "current_records", meanwhile)
    assert qualify.qualify_settled(reports=reports) == len(ids) - 1  # the batch failed, then one by one
    for pid in ids[:10]:
        latest = Transition.objects.filter(program_id=pid).latest("at", "id")
        if pid == moved:
            assert (latest.actor, latest.details) == ("someone", {})
        else:
            state, reason, text = reports[pid]
            assert (latest.to_state, latest.reason, latest.details) == (state, reason, json.loads(text))


@pytest.mark.django_db(transaction=True)
def test_qualification_batches_written_by_two_threads_give_what_one_gives(store_client, monkeypatch, settings):
    """Outside a transaction the batches run in SCAN_QUALIFY_WORKERS threads, each in its own
    connection: every settled program is qualified once, as the plain report says, and the
    threads' connections are closed when they are done."""
    import threading
    from datetime import UTC, datetime

    scan(store_client, full=True, now=datetime(2000, 1, 1, tzinfo=UTC))  # nothing settled yet: all Discovered
    ids = list(ObservingProgram.objects.order_by("pk").values_list("pk", flat=True))
    records = qualify.current_records(ids)
    expected = {pid: prepare.program_report(records[pid], thresholds())[:2] for pid in ids}

    settings.SCAN_QUALIFY_WORKERS = 2
    monkeypatch.setattr(qualify, "QUALIFY_BATCH", 10)
    threads = set()
    original = qualify._qualify_batch

    def noted(batch, reports, t):
        threads.add(threading.current_thread().name)
        return original(batch, reports, t)

    monkeypatch.setattr(qualify, "_qualify_batch", noted)
    assert qualify.qualify_settled() == len(ids) == 142
    assert len(threads) == 2 and all(name.startswith("scan-qualify") for name in threads)
    for program in ObservingProgram.objects.all():
        history = list(program.transitions.order_by("at", "id").values_list("to_state", "reason"))
        assert history[0][0] == State.DISCOVERED and len(history) == 2
        assert history[1] == expected[program.pk] and program.state == expected[program.pk][0]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        assert cursor.fetchone()[0] == 0  # the threads' connections are closed


def _maintenance_counts() -> dict[str, tuple[int, int]]:
    """table -> (vacuums, analyses) of the dataset and program tables."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT relname, vacuum_count, analyze_count FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                       [[Dataset._meta.db_table, ObservingProgram._meta.db_table]])
        return {name: (vacuums, analyses) for name, vacuums, analyses in cursor.fetchall()}


@pytest.mark.django_db(transaction=True)
def test_a_scan_that_wrote_many_rows_vacuums_the_programs_and_a_quiet_one_does_not(store_client, monkeypatch):
    """The dead row versions a first scan leaves (each program created, then qualified) are
    vacuumed at its end, so the next scan's query for settled programs does not visit them;
    the datasets (inserted) are analysed; an unchanged store's rescan does neither."""
    calls = []
    original = store.vacuum_if_rewritten
    monkeypatch.setattr(store, "vacuum_if_rewritten", lambda rows: calls.append(rows) or original(rows))
    monkeypatch.setattr(store, "VACUUM_AFTER_ROWS", 100)
    programs, datasets = ObservingProgram._meta.db_table, Dataset._meta.db_table
    before = _maintenance_counts()
    first = scan(store_client, full=True)
    assert calls == [first.new + first.updated + first.programs_new + first.programs_qualified] and calls[0] >= 100
    after = _maintenance_counts()
    zero = (0, 0)
    assert after[programs] == (before.get(programs, zero)[0] + 1, before.get(programs, zero)[1] + 1)
    assert after[datasets] == (before.get(datasets, zero)[0], before.get(datasets, zero)[1] + 1)
    with connection.cursor() as cursor:  # the datasets' columns that plans use have statistics
        cursor.execute("SELECT attname FROM pg_stats WHERE tablename = %s", [datasets])
        analysed = {row[0] for row in cursor.fetchall()}
    assert {Dataset._meta.get_field(name).column for name in store.DATASET_PLANNER_COLUMNS} <= analysed
    scan(store_client)  # nothing changed: no rows written, no vacuum
    assert calls[1] == 0 and _maintenance_counts() == after


@pytest.mark.django_db
def test_inside_a_transaction_the_vacuum_is_skipped():
    assert store.vacuum_if_rewritten(10**9) is False  # VACUUM cannot run in a transaction block: not tried


@pytest.mark.django_db(transaction=True)
def test_a_failing_vacuum_is_logged_and_does_not_fail_the_scan(store_client, monkeypatch, caplog):
    from django.db import OperationalError

    monkeypatch.setattr(store, "VACUUM_AFTER_ROWS", 100)
    real_cursor = connection.cursor

    class Refusing:
        def __init__(self):
            self.inner = real_cursor()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def execute(self, sql, params=None):
            if sql.startswith(("VACUUM", "ANALYZE")):
                raise OperationalError("canceling statement due to statement timeout")
            return self.inner.execute(sql, params)

    monkeypatch.setattr(connection, "cursor", Refusing)
    assert store.vacuum_if_rewritten(10**6) is False
    assert "vacuum after the scan failed" in caplog.text and "statement timeout" in caplog.text
