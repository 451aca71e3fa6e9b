"""Every identifiable record is kept (issue 12): unusable values are warnings, hostile values never block a scan.

End to end: the emulator over real HTTP → parse → check against the columns → COPY → qualify.
"""
from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from inversions.models import Dataset, ObservingProgram, OutboxEvent, Transition
from inversions.states import State
from scanning.metadata_store import MetadataStoreClient
from scanning.models import Scan, ScanRecordError, ScanRecordWarning
from scanning.scan import run_scan
from tests.scanning.conftest import TOKEN
from tests.scanning.expected_qualification import EXPECTED


@pytest.fixture
def store_client(metadata_store):
    def make():
        return MetadataStoreClient(metadata_store.url, TOKEN, timeout=5.0, max_attempts=3, backoff_base=0.001)

    return make


def scan(store_client, **kw) -> Scan:
    result = run_scan(store=store_client(), **kw)
    assert result.status == Scan.Status.SUCCEEDED, result.error
    return result


def by_id(fixture_records, dataset_id: str) -> dict:
    return copy.deepcopy(next(r for r in fixture_records if r["datasetId"] == dataset_id))


def program_records(fixture_records, ipeid: str) -> list[dict]:
    return [copy.deepcopy(r) for r in fixture_records if r["instrumentProgramExecutionId"] == ipeid]


def latest_report(ipeid: str) -> tuple[str, dict]:
    program = ObservingProgram.objects.get(instrument_program_execution_id=ipeid)
    transition = program.transitions.filter(to_state__in=[State.INVERTIBLE, State.NOT_INVERTIBLE]).latest("at", "id")
    return program.state, transition.details


def table_rows():
    return {
        "datasets": list(Dataset.objects.order_by("pk").values_list("pk", "raw_hash", "changed_at", "superseded")),
        "programs": list(ObservingProgram.objects.order_by("pk").values_list("pk", "state", "updated_at")),
        "transitions": Transition.objects.count(),
        "events": OutboxEvent.objects.count(),
    }


# --- a NaN bounding box ------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_record_with_only_a_nan_bounding_box_is_stored_and_fails_on_disk(metadata_store, store_client,
                                                                            fixture_records):
    """id.157345.999393 is Invertible; the real store sends "(NaN,NaN),(NaN,NaN)" for some boxes."""
    records = program_records(fixture_records, "id.157345.999393")
    for record in records:
        if record["datasetId"] == "BKRKL":
            record["boundingBox"] = "(NaN,NaN),(NaN,NaN)"
    metadata_store.store.upsert_records(records, replace=True)
    result = scan(store_client, full=True)
    assert (result.new, result.errors, result.warnings) == (3, 0, 1)
    warning = result.record_warnings.get()
    assert (warning.dataset_id, warning.field) == ("BKRKL", "boundingBox") and "NaN" in warning.reason
    stored = Dataset.objects.get(dataset_id="BKRKL")
    assert stored.bounding_box is None and stored.field_warnings == [["boundingBox", warning.reason]]
    state, report = latest_report("id.157345.999393")
    assert state == State.NOT_INVERTIBLE and report["failed_rules"] == ["On disk"]
    on_disk = next(r for r in report["rules"] if r["name"] == "On disk")
    assert (on_disk["reason"], on_disk["dataset_id"]) == ("no boundingBox data", "BKRKL")


# --- an older export -----------------------------------------------------------------------------
@pytest.mark.django_db
def test_an_export_in_the_old_record_shape_keeps_every_record_and_names_the_reasons(metadata_store, store_client,
                                                                                   fixture_records, settings):
    """Older stores had no health, gosStatus, aoLocked or spectralLines, and NaN bounding boxes."""
    settings.SCAN_PAGE_SIZE = 100
    old = []
    for n, record in enumerate(copy.deepcopy(fixture_records)):
        for key in ("health", "gosStatus", "aoLocked", "spectralLines"):
            record.pop(key)
        if record["instrumentName"] == "VISP" and n % 3 == 0:
            record["boundingBox"] = "(NaN,NaN),(NaN,NaN)"
        old.append(record)
    nan_boxes = sum(1 for r in old if r["boundingBox"] == "(NaN,NaN),(NaN,NaN)")
    metadata_store.store.upsert_records(old, replace=True)
    result = scan(store_client, full=True)
    assert (result.records, result.new, result.errors) == (508, 508, 0)  # no record lost
    assert result.warnings == nan_boxes > 30  # one per NaN box; absent fields are no data, not warnings
    assert Dataset.objects.count() == 508 and ObservingProgram.objects.count() == 142  # every program appears
    for ipeid in EXPECTED:  # every ViSP program: Not Invertible, the reasons named
        state, report = latest_report(ipeid)
        assert state == State.NOT_INVERTIBLE, ipeid
        rules = {r["name"]: r for r in report["rules"]}
        assert (rules["Health"]["reason"], rules["GOS"]["reason"], rules["AO"]["reason"]) == (
            "no health data", "no gosStatus data", "no aoLocked data")
        for name in ("Health", "GOS", "AO"):
            assert f"{name}: no " in report["reason"]
        assert rules["On disk"]["passed"] or rules["On disk"]["reason"] == "no boundingBox data"
    assert Transition.objects.filter(program__instrument_name="VBI", reason="VBI not supported").count() == 69


# --- hostile values --------------------------------------------------------------------------------
BIG = 10**30


def _set(**values):
    return lambda record: record.update(values)


def _lines(*lines):
    return lambda record: record.update(spectralLines=list(lines))


def _member(key, member, value):
    def mutate(record):
        record[key] = {**record[key], member: value}
    return mutate


REFUSED = {  # name -> mutation; the record cannot be identified or stored: a bad record (its raw JSON escaped)
    "datasetId over 64": _set(datasetId="D" * 65),
    "datasetId with a NUL": _set(datasetId="H\x00NUL"),
    "datasetId with a lone surrogate": _set(datasetId="H\ud800SUR"),
    "instrumentProgramExecutionId over 200": _set(instrumentProgramExecutionId="i" * 201),
    "instrumentProgramExecutionId with a NUL": _set(instrumentProgramExecutionId="id.\x00"),
    "createDate with a NUL": _set(createDate="2024-01-01\x00"),
    "createDate out of range": _set(createDate="9999-12-31T23:00:00-05:00"),
    "no datasetId, raw JSON holding \\u0000": lambda record: record.update(
        datasetId=None, browseMovieUrl="x\x00y", health={"g\x00od": 1}),
}
WARNED = {  # name -> (mutation, the field warned about); the dataset is stored with no data for it
    "productId over 64": (_set(productId="P" * 65), "productId"),
    "productId with a NUL": (_set(productId="P\x00"), "productId"),
    "instrumentName over 50": (_set(instrumentName="V" * 51), "instrumentName"),
    "instrumentName with a lone surrogate": (_set(instrumentName="VI\udfffSP"), "instrumentName"),
    "spectral line over 40": (_lines("Fe I (630.15 nm)", "X" * 41 + " (500.00 nm)"), "spectralLines"),
    "spectral line with a NUL": (_lines("Fe I\x00 (630.15 nm)"), "spectralLines"),
    "spectral line with a lone surrogate": (_lines("\ud800"), "spectralLines"),
    "browseMovieUrl over 500": (_set(browseMovieUrl="https://vimeo.com/" + "9" * 500), "browseMovieUrl"),
    "browseMovieUrl with a NUL": (_set(browseMovieUrl="https://vimeo.com/\x00"), "browseMovieUrl"),
    "frameCount 10**30": (_set(frameCount=BIG), "frameCount"),
    "aoLocked 10**30": (_set(aoLocked=BIG), "aoLocked"),
    "health.good 10**30": (_member("health", "good", BIG), "health.good"),
    "gosStatus key with a NUL": (_member("gosStatus", "op\x00en", 3), "gosStatus"),
    "primaryProposalId over 100": (_set(primaryProposalId="p" * 101), "primaryProposalId"),
    "primaryExperimentId with a NUL": (_set(primaryExperimentId="eid\x00"), "primaryExperimentId"),
    "observingProgramExecutionId over 200": (_set(observingProgramExecutionId="o" * 201), "observingProgramExecutionId"),
    "stokesParameters over 8": (_set(stokesParameters="IQUVIQUVI"), "stokesParameters"),
    "bucket over 100": (_set(bucket="b" * 101), "bucket"),
    "experimentDescription with a NUL": (_set(experimentDescription="Sun\x00spot"), "experimentDescription"),
    "status with a lone surrogate": (_set(status="\udc80"), "status"),
    "targetTypes item with a NUL": (_set(targetTypes=["sun\x00spot"]), "targetTypes"),
    "asdfObjectKey over 1000": (_set(asdfObjectKey="k" * 1001), "asdfObjectKey"),
    "qualityReportObjectKey with a NUL": (_set(qualityReportObjectKey="q\x00"), "qualityReportObjectKey"),
    "browseMovieObjectKey with a lone surrogate": (_set(browseMovieObjectKey="\ud83d"), "browseMovieObjectKey"),
    "startTime with a NUL": (_set(startTime="2024-04-22T10:00:00\x00"), "startTime"),
    "endTime out of range": (_set(endTime="0001-01-01T00:00:00+01:00"), "endTime"),
    "boundingBox with a NUL": (_set(boundingBox="(1,2),(3,4)\x00"), "boundingBox"),
    "NaN wavelengthMin": (_set(wavelengthMin=float("nan")), "wavelengthMin"),
    "Infinity exposureTime": (_set(exposureTime=float("inf")), "exposureTime"),
    "NaN in polarimetricAccuracy": (_set(polarimetricAccuracy={"med": float("nan")}), "polarimetricAccuracy.med"),
    "datasetSize 1e400 as text": (_set(datasetSize="1e400"), "datasetSize"),
    "a member nothing reads holding a NUL": (_member("lightLevel", "mean", "\x00"), "raw"),
    "a member nothing reads holding -Infinity": (_member("friedParameter", "mean", float("-inf")), "raw"),
}


@pytest.mark.django_db
def test_hostile_values_in_one_page_never_block_the_good_records(metadata_store, store_client, fixture_records,
                                                                 settings):
    settings.SCAN_PAGE_SIZE = 1000  # everything on one page: one bad value would abort the whole page's write
    good_programs = ["id.157345.999393", "id.136838.981348", "id.85407.60330"]  # Invertible, Not Invertible, VBI
    good = [r for ipeid in good_programs for r in program_records(fixture_records, ipeid)]
    base = by_id(fixture_records, "BLZLV")  # a ViSP Fe arm
    hostile, warned_ids = [], {}
    for n, (name, mutate) in enumerate(REFUSED.items()):
        record = {**copy.deepcopy(base), "datasetId": f"R{n:02d}", "instrumentProgramExecutionId": f"id.refused.{n}"}
        mutate(record)
        hostile.append(record)
    for n, (name, (mutate, field)) in enumerate(WARNED.items()):
        record = {**copy.deepcopy(base), "datasetId": f"W{n:02d}", "instrumentProgramExecutionId": f"id.warned.{n}"}
        mutate(record)
        hostile.append(record)
        warned_ids[record["datasetId"]] = (name, field)
    hostile.insert(3, "\x00 not an object")
    records = good[:4] + hostile + good[4:]  # good records before and after the hostile ones
    metadata_store.store.upsert_records(records, replace=True)

    result = scan(store_client, full=True)
    assert result.pages == 1 and result.records == len(records)
    # the good records are stored and qualified in this same scan
    assert set(Dataset.objects.filter(dataset_id__in=[r["datasetId"] for r in good]).values_list("dataset_id", flat=True)) \
        == {r["datasetId"] for r in good}
    assert latest_report("id.157345.999393")[0] == State.INVERTIBLE
    assert latest_report("id.136838.981348")[0] == State.NOT_INVERTIBLE
    assert ObservingProgram.objects.get(instrument_program_execution_id="id.85407.60330").state == State.NOT_INVERTIBLE
    # each refused record is a bad record, its raw JSON kept (escaped where jsonb cannot hold it)
    assert result.errors == len(REFUSED) + 1 == result.record_errors.count()
    escaped = ScanRecordError.objects.get(scan=result, raw__browseMovieUrl="x\\u0000y")
    assert escaped.raw["health"] == {"g\\u0000od": 1} and "datasetId" in escaped.reason
    assert ScanRecordError.objects.filter(scan=result, dataset_id="H\\u0000NUL").exists()
    assert ScanRecordError.objects.filter(scan=result, dataset_id="H\\ud800SUR").exists()
    # each value that cannot be used is a warning on a stored, qualified dataset
    assert result.new == len(good) + len(WARNED)
    warnings = set(ScanRecordWarning.objects.filter(scan=result).values_list("dataset_id", "field"))
    for dataset_id, (name, field) in warned_ids.items():
        assert (dataset_id, field) in warnings, name
        dataset = Dataset.objects.select_related("program").get(dataset_id=dataset_id)
        assert dataset.program.state in (State.INVERTIBLE, State.NOT_INVERTIBLE), name
        assert "\x00" not in json.dumps(dataset.raw), name
    assert result.warnings == len(warnings) == ScanRecordWarning.objects.filter(scan=result).count()
    frames = Dataset.objects.get(dataset_id=next(k for k, v in warned_ids.items() if v[0] == "frameCount 10**30"))
    assert frames.frame_count is None and frames.raw["frameCount"] == BIG  # the raw JSON as sent
    assert "no frameCount data" in latest_report(frames.program.instrument_program_execution_id)[1]["reason"]
    long_line = Dataset.objects.get(dataset_id=next(k for k, v in warned_ids.items() if v[0] == "spectral line over 40"))
    assert long_line.spectral_lines == ["Fe I 630.15"]  # the line that fits is kept

    # the reports made from the records just parsed are those of the stored datasets read back
    from scanning import qualification
    from scanning.prepare import thresholds
    from scanning.qualify import current_records
    programs = dict(ObservingProgram.objects.values_list("pk", "instrument_program_execution_id"))
    for pid, records_back in current_records(list(programs)).items():
        report = qualification.qualify(records_back, thresholds()).to_dict()
        assert latest_report(programs[pid])[1] == json.loads(json.dumps(report)), programs[pid]

    # the next scan runs as well, and an unchanged store costs no writes (the bad records are listed again)
    before = table_rows()
    again = scan(store_client, full=True)
    assert (again.new, again.updated, again.unchanged, again.errors, again.warnings) == (
        0, 0, len(good) + len(WARNED), len(REFUSED) + 1, 0)
    assert table_rows() == before


# --- the new fields ----------------------------------------------------------------------------------
QUALITY = {
    "polarimetricAccuracy": {"min": 0.0011, "p25": 0.0014, "med": 0.0016, "p75": 0.0019, "max": 0.0025},
    "qualityAverageFriedParameter": 0.0842,
    "qualityAveragePolarimetricAccuracy": 0.0017,
    "qualityReportObjectKey": "pid_2_114/{id}/{id}_quality_report.pdf",
    "browseMovieObjectKey": "{id}/{id}_browse_movie.mp4",
    "datasetSize": 81.25,
    "hasAllStokes": True,
    "targetTypes": ["sunspot", "quietsun"],
    "status": "ACTIVE",
    "asdfObjectKey": "pid_2_114/{id}/VISP_L1_{id}.asdf",
}


def with_quality(record: dict) -> dict:
    dataset_id = record["datasetId"]
    filled = {k: (v.format(id=dataset_id) if isinstance(v, str) else v) for k, v in QUALITY.items()}
    return {**record, **copy.deepcopy(filled)}


@pytest.mark.django_db
def test_the_quality_fields_are_stored_and_an_unchanged_rescan_writes_nothing(metadata_store, store_client,
                                                                              fixture_records):
    records = [with_quality(r) for r in program_records(fixture_records, "id.157345.999393")]
    metadata_store.store.upsert_records(records, replace=True)
    first = scan(store_client, full=True)
    assert (first.new, first.warnings, first.errors) == (3, 0, 0)
    d = Dataset.objects.get(dataset_id="BLZLV")
    assert d.polarimetric_accuracy == QUALITY["polarimetricAccuracy"] and d.dataset_size == 81.25
    assert (d.quality_average_fried_parameter, d.quality_average_polarimetric_accuracy) == (0.0842, 0.0017)
    assert d.quality_report_object_key == "pid_2_114/BLZLV/BLZLV_quality_report.pdf"
    assert d.browse_movie_object_key == "BLZLV/BLZLV_browse_movie.mp4"
    assert d.asdf_object_key == "pid_2_114/BLZLV/VISP_L1_BLZLV.asdf"
    assert (d.has_all_stokes, d.target_types, d.status) == (True, ["sunspot", "quietsun"], "ACTIVE")
    assert (d.product_id, d.bucket) == ("L1-BLZLV", "public")  # productId derived by the emulator (the fixtures lack it)
    # polarimetric accuracy is shown, never a rule
    assert latest_report("id.157345.999393")[0] == State.INVERTIBLE
    before = table_rows()
    again = scan(store_client, full=True)
    incremental = scan(store_client)
    assert (again.new, again.updated, again.unchanged) == (0, 0, 3) and incremental.new == incremental.updated == 0
    assert table_rows() == before


# --- supersession with real-shaped reprocessed records ------------------------------------------------
@pytest.mark.django_db
def test_a_reprocessed_dataset_has_a_new_dataset_id_the_same_product_id_and_supersedes(metadata_store, store_client,
                                                                                      fixture_records):
    records = program_records(fixture_records, "id.157345.999393")
    for record in records:
        record["productId"] = f"L1-{record['datasetId']}"  # as a real store sends it
    metadata_store.store.upsert_records(records, replace=True)
    scan(store_client, full=True)
    program = ObservingProgram.objects.get(instrument_program_execution_id="id.157345.999393")
    assert program.state == State.INVERTIBLE and program.dataset_count == 3
    # the Fe arm reprocessed: new datasetId, same productId, newer createDate, and now Stokes I
    now = timezone.now() - timedelta(days=10)
    reprocessed = {**copy.deepcopy(next(r for r in records if r["datasetId"] == "BLZLV")), "datasetId": "BLZLX",
                   "createDate": now.strftime("%Y-%m-%dT%H:%M:%S.%f"), "updateDate": now.strftime("%Y-%m-%dT%H:%M:%S.%f"),
                   "stokesParameters": "I"}
    metadata_store.store.upsert_records([reprocessed])
    result = scan(store_client)
    assert (result.new, result.updated) == (1, 0)
    assert dict(Dataset.objects.filter(program=program).values_list("dataset_id", "superseded")) == {
        "BMRMG": False, "BKRKL": False, "BLZLV": True, "BLZLX": False}
    program.refresh_from_db()
    assert program.dataset_count == 3 and program.state == State.NOT_INVERTIBLE
    history = list(program.transitions.order_by("at", "id").values_list("to_state", "reason"))
    assert history[-2] == (State.DISCOVERED, "datasets changed")
    stokes = next(r for r in latest_report("id.157345.999393")[1]["rules"] if r["name"] == "Stokes")
    assert stokes["dataset_id"] == "BLZLX"  # the current dataset, not the superseded one


# --- a program's view of all its arms ---------------------------------------------------------------------
@pytest.mark.django_db
def test_lines_embargo_and_wavelength_coverage_come_from_all_current_datasets(metadata_store, store_client,
                                                                               fixture_records):
    records = program_records(fixture_records, "id.157345.999393")
    for record in records:  # the last arm by wavelength is embargoed
        if record["datasetId"] == "BMRMG":
            record.update(isEmbargoed=True, embargoEndDate="2031-05-01T00:00:00")
    metadata_store.store.upsert_records(records, replace=True)
    scan(store_client, full=True)
    program = ObservingProgram.objects.get(instrument_program_execution_id="id.157345.999393")
    assert program.is_embargoed is True and program.embargo_end_date.isoformat() == "2031-05-01T00:00:00+00:00"
    assert program.wavelength_ranges == sorted([r["wavelengthMin"], r["wavelengthMax"]] for r in records)
    assert program.spectral_lines == ["Ca II 854.21", "Fe I 630.15", "Fe I 630.25", "Na I D1 589.59", "Na I D2 589.00"]


# --- served: the program API and the program page ------------------------------------------------------
@pytest.mark.django_db
def test_the_program_api_and_page_carry_the_new_fields_with_units(metadata_store, store_client, fixture_records,
                                                                  client, make_user):
    records = [with_quality(r) for r in program_records(fixture_records, "id.157345.999393")]
    for record in records:
        if record["datasetId"] == "BKRKL":
            record.update(boundingBox="(NaN,NaN),(NaN,NaN)", isEmbargoed=True, embargoEndDate="2031-05-01T00:00:00")
    metadata_store.store.upsert_records(records, replace=True)
    scan(store_client, full=True)
    client.force_login(make_user("reader"))
    body = client.get("/api/v1/programs/id.157345.999393").json()
    assert body["isEmbargoed"] is True and body["embargoEndDate"].startswith("2031-05-01")
    assert body["wavelengthRanges"] == sorted([r["wavelengthMin"], r["wavelengthMax"]] for r in records)
    units = body["datasetUnits"]
    assert (units["datasetSize"], units["qualityAverageFriedParameter"], units["wavelengthMin"]) == ("GB", "m", "nm")
    d = {x["datasetId"]: x for x in body["datasets"]}
    blzlv = d["BLZLV"]
    for name in ("polarimetricAccuracy", "qualityAverageFriedParameter", "qualityAveragePolarimetricAccuracy",
                 "datasetSize", "hasAllStokes", "targetTypes", "status"):
        assert blzlv[name] == QUALITY[name], name
    assert blzlv["qualityReportObjectKey"] == "pid_2_114/BLZLV/BLZLV_quality_report.pdf"
    assert blzlv["browseMovieObjectKey"] == "BLZLV/BLZLV_browse_movie.mp4" and blzlv["browseMovieUrl"].startswith("https://")
    assert blzlv["asdfObjectKey"] == "pid_2_114/BLZLV/VISP_L1_BLZLV.asdf" and blzlv["noData"] == []
    assert d["BKRKL"]["boundingBox"] is None and [w["field"] for w in d["BKRKL"]["noData"]] == ["boundingBox"]
    assert d["BKRKL"]["isEmbargoed"] is True and d["BMRMG"]["isEmbargoed"] is False
    optional = {o["line"]: o["present"] for o in body["qualification"]["optional_lines"]}
    assert optional == {"Ca II 854.21": True, "Ca II 849.80": False, "Na I D2 589.00": True}
    spec = client.get("/api/v1/openapi.json").json()
    assert {"polarimetricAccuracy", "asdfObjectKey", "noData"} <= spec["components"]["schemas"]["Dataset"]["properties"].keys()

    html = client.get("/programs/id.157345.999393/").content.decode()
    assert "no boundingBox data" in html and "pol. accuracy 0.0016" in html and "81.3 GB" in html
    assert 'data-line="Ca II 849.80"><span class="muted">✗ missing</span>' in html
    assert "embargoed until 2031-05-01" in html and "588.90–590.16 nm" in html
