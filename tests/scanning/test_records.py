"""Parsing of metadata-store dataset records, supersession and spectral lines."""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from scanning.records import (
    DISTRIBUTION_KEYS,
    DatasetRecord,
    RecordError,
    has_line_data,
    lines_of,
    mark_superseded,
    normalise_line_name,
    parse_record,
    product_key,
)
from tests.scanning.expected_qualification import PID_1, PID_2, load_raw

RAW_1 = load_raw(PID_1)
RAW_2 = load_raw(PID_2)
ALL_RAW = RAW_1 + RAW_2


def raw_by_id(dataset_id: str) -> dict:
    return copy.deepcopy(next(r for r in ALL_RAW if r["datasetId"] == dataset_id))


# --------------------------------------------------------------------------- fixtures parse


def test_every_fixture_record_parses():
    records = [parse_record(raw) for raw in ALL_RAW]
    assert len(records) == 508 == len({r.dataset_id for r in records})
    for rec, raw in zip(records, ALL_RAW):
        assert rec.raw is raw
        assert rec.dataset_id == raw["datasetId"]
        assert rec.product_id is None  # the fixtures have no productId
        for when in (rec.create_date, rec.update_date, rec.start_time, rec.end_time):
            assert when.tzinfo is not None and when.utcoffset() == timedelta(0)
        assert rec.start_time <= rec.end_time
        assert isinstance(rec.frame_count, int) and rec.frame_count > 0
        assert isinstance(rec.wavelength_min, float) and rec.wavelength_min <= rec.wavelength_max
        (x1, y1), (x2, y2) = rec.bounding_box
        assert all(isinstance(v, float) and math.isfinite(v) for v in (x1, y1, x2, y2))
        assert set(rec.light_level) == set(DISTRIBUTION_KEYS)
        assert rec.fried_parameter is None or set(rec.fried_parameter) == set(DISTRIBUTION_KEYS)
        assert rec.spectral_lines is None or all(isinstance(s, str) for s in rec.spectral_lines)


def test_known_record_is_parsed_to_exact_values():
    rec = parse_record(raw_by_id("BLKGA"))
    assert rec.instrument_name == "VBI"
    assert rec.instrument_program_execution_id == "id.85407.60330"
    assert rec.observing_program_execution_id == "eid_1_118_opAvoqBr_R001.82591.13964206"
    assert rec.primary_proposal_id == "pid_1_118"
    assert rec.primary_experiment_id == "eid_1_118"
    assert rec.create_date == datetime(2022, 12, 8, 19, 7, 55, 38280, tzinfo=UTC)
    assert rec.update_date == datetime(2025, 7, 8, 4, 18, 31, 436962, tzinfo=UTC)
    assert rec.start_time == datetime(2022, 6, 2, 17, 22, 50, 175505, tzinfo=UTC)
    assert rec.bounding_box == ((-560.16, -347.5), (-677.17, -467.21))
    assert rec.stokes_parameters == "I"
    assert rec.spectral_lines is None
    assert rec.frame_count == 171
    assert rec.health == {"bad": None, "ill": None, "good": 171, "unknown": None}
    assert rec.gos_status == {"open": 171, "closed": None, "closing": None, "opening": None, "undefined": None}
    assert rec.ao_locked == 169
    assert rec.fried_parameter["med"] == pytest.approx(0.09695328367001158)
    assert rec.light_level["p75"] == pytest.approx(398.77070937031095)
    assert rec.wavelength_min == rec.wavelength_max == 486.0
    assert rec.exposure_time == pytest.approx(5.009)
    assert rec.bucket == "public" and rec.is_embargoed is False and rec.embargo_end_date is None
    assert rec.browse_movie_url == "https://vimeo.com/1013203195"


def test_visp_record_with_lines():
    rec = parse_record(raw_by_id("ANGDE"))
    assert rec.spectral_lines == ("Fe I 630.15", "Fe I 630.25")  # the canonical names of "Fe I (630.15 nm)", …
    assert rec.health == {"bad": 6242, "ill": None, "good": 1829, "unknown": 2373}


def test_record_is_immutable_and_hashable():
    rec = parse_record(raw_by_id("ANGDE"))
    with pytest.raises(AttributeError):
        rec.frame_count = 1  # type: ignore[misc]
    assert hash(rec) == hash(parse_record(raw_by_id("ANGDE")))


# --------------------------------------------------------------------------- optional fields


def test_older_record_without_optional_fields():
    raw = raw_by_id("BVJVO")
    for key in ("spectralLines", "health", "gosStatus", "aoLocked", "productId", "lightLevel",
                "friedParameter", "boundingBox", "startTime", "endTime", "wavelengthMin",
                "wavelengthMax", "stokesParameters", "exposureTime", "experimentDescription"):
        raw.pop(key, None)
    rec = parse_record(raw)
    assert rec.spectral_lines is None and rec.health is None and rec.gos_status is None
    assert rec.ao_locked is None and rec.product_id is None and rec.bounding_box is None
    assert rec.start_time is None and rec.wavelength_min is None and rec.stokes_parameters is None
    assert rec.fried_parameter is None and rec.experiment_description is None


def test_null_optional_fields_are_none_like_absent_ones():
    raw = raw_by_id("BVJVO")
    for key in ("spectralLines", "health", "gosStatus", "aoLocked", "boundingBox", "friedParameter"):
        raw[key] = None
    rec = parse_record(raw)
    assert (rec.spectral_lines, rec.health, rec.gos_status, rec.ao_locked, rec.bounding_box,
            rec.fried_parameter) == (None,) * 6


def test_product_id_and_experiment_description_kept():
    raw = raw_by_id("BVJVO") | {"productId": "P-1", "experimentDescription": "Sunspot"}
    rec = parse_record(raw)
    assert rec.product_id == "P-1" and product_key(rec) == "P-1"
    assert rec.experiment_description == "Sunspot"
    assert product_key(parse_record(raw_by_id("BVJVO"))) == "BVJVO"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2022-12-08T19:07:55.038280", datetime(2022, 12, 8, 19, 7, 55, 38280, tzinfo=UTC)),
        ("2022-12-08T19:07:55Z", datetime(2022, 12, 8, 19, 7, 55, tzinfo=UTC)),
        ("2022-12-08T21:07:55+02:00", datetime(2022, 12, 8, 19, 7, 55, tzinfo=UTC)),
        ("2022-12-08 14:07:55.5-05:00", datetime(2022, 12, 8, 19, 7, 55, 500000, tzinfo=UTC)),
        ("2022-12-08", datetime(2022, 12, 8, tzinfo=UTC)),
    ],
)
def test_dates_become_aware_utc(text, expected):
    rec = parse_record(raw_by_id("BVJVO") | {"createDate": text})
    assert rec.create_date == expected
    assert rec.create_date.tzinfo == UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(-560.16,-347.5),(-677.17,-467.21)", ((-560.16, -347.5), (-677.17, -467.21))),
        ("((1,2),(3,4))", ((1.0, 2.0), (3.0, 4.0))),
        (" ( 0.01 , 122.75 ) , ( -0 , 61.96 ) ", ((0.01, 122.75), (-0.0, 61.96))),
        ("(1e2,-2.5E1),(.5,7.)", ((100.0, -25.0), (0.5, 7.0))),
    ],
)
def test_bounding_box_shapes(text, expected):
    assert parse_record(raw_by_id("BVJVO") | {"boundingBox": text}).bounding_box == expected


def test_counts_and_distributions_accept_json_strings_and_upper_case_keys():
    raw = raw_by_id("BVJVO") | {
        "health": json.dumps({"GOOD": 32, "BAD": None}),
        "friedParameter": json.dumps({"min": 0.01, "p25": 0.02, "med": 0.03, "p75": 0.04, "max": 0.05}),
    }
    rec = parse_record(raw)
    assert rec.health == {"good": 32, "bad": None}
    assert rec.fried_parameter == {"min": 0.01, "p25": 0.02, "med": 0.03, "p75": 0.04, "max": 0.05}


def test_distribution_missing_member_is_none():
    rec = parse_record(raw_by_id("BVJVO") | {"friedParameter": {"med": 0.05, "max": None}})
    assert rec.fried_parameter == {"min": None, "p25": None, "med": 0.05, "p75": None, "max": None}


def test_integral_float_frame_count_accepted():
    assert parse_record(raw_by_id("BVJVO") | {"frameCount": 1960.0}).frame_count == 1960


# --------------------------------------------------------------------------- malformed records


def _without(key):
    def mutate(raw):
        del raw[key]
    return mutate


def _set(key, value):
    def mutate(raw):
        raw[key] = value
    return mutate


def _set_in(key, member, value):
    def mutate(raw):
        raw[key][member] = value
    return mutate


REFUSED = [  # the record cannot be identified or placed: a bad record
    ("missing datasetId", _without("datasetId"), "datasetId"),
    ("null datasetId", _set("datasetId", None), "datasetId"),
    ("empty datasetId", _set("datasetId", "  "), "datasetId"),
    ("numeric datasetId", _set("datasetId", 12345), "datasetId"),
    ("datasetId over 64 characters", _set("datasetId", "D" * 65), "datasetId"),
    ("datasetId with a NUL", _set("datasetId", "BVJ\x00VO"), "datasetId"),
    ("datasetId with a lone surrogate", _set("datasetId", "BVJ\ud800VO"), "datasetId"),
    ("missing instrumentProgramExecutionId", _without("instrumentProgramExecutionId"), "instrumentProgramExecutionId"),
    ("instrumentProgramExecutionId over 200", _set("instrumentProgramExecutionId", "i" * 201), "instrumentProgramExecutionId"),
    ("missing createDate", _without("createDate"), "createDate"),
    ("bad createDate", _set("createDate", "yesterday"), "createDate"),
]


@pytest.mark.parametrize(("case", "mutate", "field"), REFUSED, ids=[m[0] for m in REFUSED])
def test_a_record_that_cannot_be_identified_raises_record_error_naming_the_field(case, mutate, field):
    raw = raw_by_id("BVJVO")
    mutate(raw)
    with pytest.raises(RecordError) as info:
        parse_record(raw)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == field
    assert field.split(".")[0] in err.reason  # the reason names the field …
    assert err.reason.endswith(".") and str(err) == err.reason  # … in a sentence


KEPT = [  # (case, mutate, field warned about, attribute that becomes None)
    ("missing instrumentName", _without("instrumentName"), None, "instrument_name"),
    ("list instrumentName", _set("instrumentName", ["VISP"]), "instrumentName", "instrument_name"),
    ("instrumentName over 50", _set("instrumentName", "V" * 51), "instrumentName", "instrument_name"),
    ("missing primaryProposalId", _without("primaryProposalId"), None, "primary_proposal_id"),
    ("productId over 64", _set("productId", "P" * 65), "productId", "product_id"),
    ("dict productId", _set("productId", {"id": 1}), "productId", "product_id"),
    ("impossible updateDate", _set("updateDate", "2024-02-30T10:00:00"), "updateDate", None),
    ("numeric date", _set("startTime", 1700000000), "startTime", "start_time"),
    ("bad endTime", _set("endTime", "2024-13-01T00:00:00"), "endTime", "end_time"),
    ("bad embargoEndDate", _set("embargoEndDate", "soon"), "embargoEndDate", "embargo_end_date"),
    ("missing frameCount", _without("frameCount"), None, "frame_count"),
    ("string frameCount", _set("frameCount", "abc"), "frameCount", "frame_count"),
    ("numeric-string frameCount", _set("frameCount", "1960"), "frameCount", "frame_count"),
    ("negative frameCount", _set("frameCount", -1), "frameCount", "frame_count"),
    ("fractional frameCount", _set("frameCount", 19.5), "frameCount", "frame_count"),
    ("boolean frameCount", _set("frameCount", True), "frameCount", "frame_count"),
    ("NaN frameCount", _set("frameCount", float("nan")), "frameCount", "frame_count"),
    ("frameCount 10**30", _set("frameCount", 10**30), "frameCount", "frame_count"),
    ("string aoLocked", _set("aoLocked", "many"), "aoLocked", "ao_locked"),
    ("negative aoLocked", _set("aoLocked", -5), "aoLocked", "ao_locked"),
    ("NaN wavelengthMin", _set("wavelengthMin", float("nan")), "wavelengthMin", "wavelength_min"),
    ("inf wavelengthMax", _set("wavelengthMax", float("inf")), "wavelengthMax", "wavelength_max"),
    ("string wavelengthMin", _set("wavelengthMin", "630.2"), "wavelengthMin", "wavelength_min"),
    ("negative wavelengthMin", _set("wavelengthMin", -630.2), "wavelengthMin", "wavelength_min"),
    ("wavelengthMin above wavelengthMax", _set("wavelengthMin", 700.0), "wavelengthMin", "wavelength_max"),
    ("NaN exposureTime", _set("exposureTime", float("nan")), "exposureTime", "exposure_time"),
    ("list health", _set("health", [1960, None]), "health", "health"),
    ("string health (not JSON)", _set("health", "good"), "health", "health"),
    ("JSON list string health", _set("health", "[1, 2]"), "health", "health"),
    ("string member in health", _set_in("health", "good", "lots"), "health.good", "health"),
    ("negative member in gosStatus", _set_in("gosStatus", "open", -3), "gosStatus.open", "gos_status"),
    ("list gosStatus", _set("gosStatus", []), "gosStatus", "gos_status"),
    ("number lightLevel", _set("lightLevel", 12.0), "lightLevel", "light_level"),
    ("NaN in friedParameter", _set_in("friedParameter", "med", float("nan")), "friedParameter.med", "fried_parameter"),
    ("inf in lightLevel", _set_in("lightLevel", "max", float("-inf")), "lightLevel.max", "light_level"),
    ("string in friedParameter", _set_in("friedParameter", "p25", "low"), "friedParameter.p25", "fried_parameter"),
    ("string polarimetricAccuracy", _set("polarimetricAccuracy", "good"), "polarimetricAccuracy", "polarimetric_accuracy"),
    ("garbage boundingBox", _set("boundingBox", "somewhere near the limb"), "boundingBox", "bounding_box"),
    ("three-point boundingBox", _set("boundingBox", "(1,2),(3,4),(5,6)"), "boundingBox", "bounding_box"),
    ("NaN boundingBox", _set("boundingBox", "(nan,1),(2,3)"), "boundingBox", "bounding_box"),
    ("the real store's NaN boundingBox", _set("boundingBox", "(NaN,NaN),(NaN,NaN)"), "boundingBox", "bounding_box"),
    ("overflowing boundingBox", _set("boundingBox", "(1e999,1),(2,3)"), "boundingBox", "bounding_box"),
    ("list boundingBox", _set("boundingBox", [[1, 2], [3, 4]]), "boundingBox", "bounding_box"),
    ("string spectralLines", _set("spectralLines", "Fe I (630.15 nm)"), "spectralLines", "spectral_lines"),
    ("spectral line over 40", _set("spectralLines", ["X" * 41]), "spectralLines", "spectral_lines"),
    ("spectral line with a NUL", _set("spectralLines", ["Fe I\x00 (630.15 nm)"]), "spectralLines", "spectral_lines"),
    ("numeric stokesParameters", _set("stokesParameters", 4), "stokesParameters", "stokes_parameters"),
    ("string isEmbargoed", _set("isEmbargoed", "no"), "isEmbargoed", "is_embargoed"),
    ("numeric bucket", _set("bucket", 7), "bucket", "bucket"),
    ("browseMovieUrl over 500", _set("browseMovieUrl", "https://" + "v" * 500), "browseMovieUrl", "browse_movie_url"),
    ("browseMovieUrl with a NUL", _set("browseMovieUrl", "https://vimeo.com/\x00"), "browseMovieUrl", "browse_movie_url"),
    ("experimentDescription with a lone surrogate", _set("experimentDescription", "Sun\udc00spot"),
     "experimentDescription", "experiment_description"),
    ("negative datasetSize", _set("datasetSize", -1.0), "datasetSize", "dataset_size"),
    ("string hasAllStokes", _set("hasAllStokes", "yes"), "hasAllStokes", "has_all_stokes"),
    ("string targetTypes", _set("targetTypes", "sunspot"), "targetTypes", "target_types"),
    ("status over 50", _set("status", "S" * 51), "status", "status"),
]


@pytest.mark.parametrize(("case", "mutate", "field", "attribute"), KEPT, ids=[m[0] for m in KEPT])
def test_an_unusable_field_is_no_data_and_a_warning_the_record_is_kept(case, mutate, field, attribute):
    raw = raw_by_id("BVJVO")
    mutate(raw)
    rec = parse_record(raw)
    assert rec.dataset_id == "BVJVO" and rec.raw is raw
    if attribute is not None:
        assert getattr(rec, attribute) is None
    if field is None:  # missing: no data, and no warning (older records lack fields)
        assert rec.warnings == ()
        return
    [(warned, reason)] = rec.warnings
    assert warned == field and field.split(".")[0] in reason and reason.endswith(".")


def test_an_unusable_update_date_takes_the_create_date():
    rec = parse_record(raw_by_id("BVJVO") | {"updateDate": None})
    assert rec.update_date == rec.create_date and rec.warnings == ()


def test_unusable_items_of_a_list_are_left_out_the_others_kept():
    rec = parse_record(raw_by_id("BVJVO") | {"spectralLines": ["Fe I (630.15 nm)", 630.25, "Y" * 60]})
    assert rec.spectral_lines == ("Fe I 630.15",)
    assert [field for field, _ in rec.warnings] == ["spectralLines", "spectralLines"]


def test_new_quality_fields_are_parsed():
    rec = parse_record(raw_by_id("BVJVO") | {
        "polarimetricAccuracy": {"min": 0.001, "p25": 0.002, "med": 0.003, "p75": 0.004, "max": 0.005},
        "qualityAverageFriedParameter": 0.08, "qualityAveragePolarimetricAccuracy": 0.003,
        "qualityReportObjectKey": "pid_1_118/BVJVO/BVJVO_quality_report.pdf", "browseMovieObjectKey": "BVJVO/movie.mp4",
        "datasetSize": 12.5, "hasAllStokes": True, "targetTypes": ["sunspot", " quietsun ", "sunspot"],
        "status": "ACTIVE", "asdfObjectKey": "pid_1_118/BVJVO/BVJVO.asdf",
    })
    assert rec.polarimetric_accuracy["med"] == 0.003 and rec.quality_average_fried_parameter == 0.08
    assert rec.quality_average_polarimetric_accuracy == 0.003 and rec.dataset_size == 12.5
    assert rec.quality_report_object_key.endswith(".pdf") and rec.browse_movie_object_key == "BVJVO/movie.mp4"
    assert (rec.has_all_stokes, rec.target_types, rec.status) == (True, ("sunspot", "quietsun"), "ACTIVE")
    assert rec.asdf_object_key == "pid_1_118/BVJVO/BVJVO.asdf" and rec.warnings == ()


def test_max_lengths_are_the_columns():
    from inversions.models import Dataset, ObservingProgram
    from scanning.records import MAX_LENGTH

    columns = {
        "datasetId": Dataset._meta.get_field("dataset_id").max_length,
        "productId": Dataset._meta.get_field("product_id").max_length,
        "instrumentProgramExecutionId": min(Dataset._meta.get_field("instrument_program_execution_id").max_length,
                                            ObservingProgram._meta.get_field("instrument_program_execution_id").max_length),
        "observingProgramExecutionId": Dataset._meta.get_field("observing_program_execution_id").max_length,
        "primaryProposalId": Dataset._meta.get_field("primary_proposal_id").max_length,
        "primaryExperimentId": Dataset._meta.get_field("primary_experiment_id").max_length,
        "instrumentName": ObservingProgram._meta.get_field("instrument_name").max_length,
        "stokesParameters": Dataset._meta.get_field("stokes_parameters").max_length,
        "spectralLines": ObservingProgram._meta.get_field("spectral_lines").base_field.max_length,
        "bucket": Dataset._meta.get_field("bucket").max_length,
        "browseMovieUrl": Dataset._meta.get_field("browse_movie_url").max_length,
        "browseMovieObjectKey": Dataset._meta.get_field("browse_movie_object_key").max_length,
        "qualityReportObjectKey": Dataset._meta.get_field("quality_report_object_key").max_length,
        "asdfObjectKey": Dataset._meta.get_field("asdf_object_key").max_length,
        "status": Dataset._meta.get_field("status").max_length,
        "targetTypes": Dataset._meta.get_field("target_types").base_field.max_length,
    }
    assert MAX_LENGTH == columns
    assert Dataset._meta.get_field("spectral_lines").base_field.max_length == MAX_LENGTH["spectralLines"]


@pytest.mark.parametrize("raw", [None, [], "record", 42, [{"datasetId": "X"}]])
def test_non_dict_record_is_an_error(raw):
    with pytest.raises(RecordError) as info:
        parse_record(raw)
    assert info.value.field is None
    assert "JSON object" in info.value.reason


def test_reason_shows_the_bad_value_truncated():
    [(_, reason)] = parse_record(raw_by_id("BVJVO") | {"frameCount": "x" * 500}).warnings
    assert "'xxxx" in reason and len(reason) < 150 and "…" in reason


def test_reason_for_bad_value_quotes_it():
    assert parse_record(raw_by_id("BVJVO") | {"frameCount": "abc"}).warnings == (
        ("frameCount", "frameCount must be a non-negative integer, got str 'abc'."),
    )


def test_storable_json_writes_out_what_jsonb_cannot_hold():
    from scanning.records import storable_json

    raw = {"datasetId": "A\x00B", "x": [math.nan, math.inf, -math.inf, 1.5], "k\x00": "\ud800", "ok": "fine"}
    kept, changed = storable_json(raw)
    assert kept == {"datasetId": "A\\u0000B", "x": ["NaN", "Infinity", "-Infinity", 1.5], "k\\u0000": "\\ud800",
                    "ok": "fine"}
    assert set(changed) == {"datasetId", "x[0]", "x[1]", "x[2]", "k\\u0000"}
    same = {"a": [1, "b"]}
    assert storable_json(same) == (same, [])


def test_garbage_never_escapes_as_another_exception():
    """Random garbage in random fields: the parser either succeeds or raises RecordError (only
    for the fields that identify a record); whatever it keeps is a usable value or None."""
    rng = random.Random(20240422)
    garbage = [None, "", "abc", "NaN", -1, 1.5, float("nan"), float("inf"), True, [], [1, "a"],
               {}, {"good": "x"}, {"med": float("nan")}, "(1,2)", "(1,2),(3", "2024-99-99",
               "{\"open\": 3}", "[]", 10**30, -0.0]
    keys = sorted({k for raw in ALL_RAW for k in raw}) + ["productId"]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        raw = copy.deepcopy(rng.choice(ALL_RAW))
        for key in rng.sample(keys, rng.randint(1, 3)):
            raw[key] = rng.choice(garbage)
        try:
            rec = parse_record(raw)
            outcomes["ok"] += 1
            assert all(reason and field.split(".")[0] in keys for field, reason in rec.warnings)
            assert rec.frame_count is None or isinstance(rec.frame_count, int)
        except RecordError as err:
            assert err.reason and err.field in ("datasetId", "instrumentProgramExecutionId", "createDate")
            outcomes["error"] += 1
    assert outcomes["ok"] > 1000 and outcomes["error"] > 100


# --------------------------------------------------------------------------- supersession


def _rec(dataset_id: str, product: str | None, created: str, updated: str | None = None) -> DatasetRecord:
    raw = raw_by_id("BVJVO") | {
        "datasetId": dataset_id, "productId": product, "createDate": created,
        "updateDate": updated or created,
    }
    return parse_record(raw)


def test_newest_create_date_per_product_is_current():
    records = [
        _rec("A1", "P-A", "2023-01-01T00:00:00"),
        _rec("A2", "P-A", "2024-06-01T00:00:00"),  # reprocessed: current
        _rec("A0", "P-A", "2022-01-01T00:00:00"),
        _rec("B1", "P-B", "2023-01-01T00:00:00"),  # alone in its product
        _rec("C1", None, "2021-01-01T00:00:00"),  # no productId: its own product
        _rec("C2", None, "2025-01-01T00:00:00"),
    ]
    assert mark_superseded(records) == {"A0", "A1"}
    assert mark_superseded(list(reversed(records))) == {"A0", "A1"}


def test_supersession_compares_instants_not_strings():
    # 2024-06-01T01:00+02:00 is 2024-05-31T23:00Z, older than 2024-06-01T00:00Z
    older = _rec("X1", "P", "2024-06-01T01:00:00+02:00")
    newer = _rec("X2", "P", "2024-06-01T00:00:00Z")
    assert mark_superseded([older, newer]) == {"X1"}


def test_supersession_tie_is_deterministic():
    a = _rec("T1", "P", "2024-01-01T00:00:00", "2024-01-02T00:00:00")
    b = _rec("T2", "P", "2024-01-01T00:00:00", "2024-01-03T00:00:00")
    assert mark_superseded([a, b]) == mark_superseded([b, a]) == {"T1"}


def test_fixtures_have_nothing_superseded():
    # No productId in the fixtures, so every dataset is its own product, even TIUJCV, which
    # repeats BQLYQ's data two years later under another datasetId.
    records = [parse_record(raw) for raw in ALL_RAW]
    assert mark_superseded(records) == set()


# --------------------------------------------------------------------------- spectral lines


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Fe I (630.15 nm)", "Fe I 630.15"),
        ("Fe I (630.25 nm)", "Fe I 630.25"),
        ("Ca II (854.21 nm)", "Ca II 854.21"),
        ("Na I D1 (589.59 nm)", "Na I D1 589.59"),
        ("Na I D2 (589.0 nm)", "Na I D2 589.00"),
        ("Ca II K (393.37 nm)", "Ca II K 393.37"),
        ("H beta (486.13 nm)", "H beta 486.13"),
        ("  Fe  I   (630.15nm) ", "Fe I 630.15"),
        ("Fe I 630.15", "Fe I 630.15"),
        ("Na I D2 588.995", "Na I D2 589.00"),
        ("He I 1083", "He I 1083"),  # no recognisable wavelength: kept, whitespace collapsed
    ],
)
def test_normalise_line_name(text, name):
    assert normalise_line_name(text) == name


def test_every_fixture_line_string_normalises_to_a_canonical_name():
    strings = {s for raw in ALL_RAW for s in raw.get("spectralLines") or []}
    names = {normalise_line_name(s) for s in strings}
    assert names == {"Fe I 630.15", "Fe I 630.25", "Ca II 854.21", "Na I D1 589.59",
                     "Na I D2 589.00", "Ca II K 393.37", "H beta 486.13"}


def test_lines_come_from_spectral_lines_when_present():
    rec = parse_record(raw_by_id("AMDKO"))  # 630.24–634.39 nm, lists only Fe I 630.25
    assert rec.spectral_lines == ("Fe I 630.25",)  # canonical names
    assert lines_of(rec) == ("Fe I 630.25",)  # not the inferred Fe I 630.15


def test_lines_inferred_from_range_when_absent():
    # BVJVO: 630.239–634.390 nm, no spectralLines: Fe I 630.15012 is 0.089 nm below the range,
    # within the 0.5 nm tolerance. BWKXP: 854.249–856.786 nm: Ca II 854.2091 is 0.04 nm below.
    assert lines_of(parse_record(raw_by_id("BVJVO"))) == ("Fe I 630.15",)
    assert lines_of(parse_record(raw_by_id("BWKXP"))) == ("Ca II 854.21",)
    # VBI 486 nm / 393 nm: none of the inferred lines nearby
    assert lines_of(parse_record(raw_by_id("BLKGA"))) == ()


def test_inference_tolerance_edges():
    base = parse_record(raw_by_id("BVJVO"))
    just_in = replace(base, spectral_lines=None, wavelength_min=630.65, wavelength_max=632.0)
    just_out = replace(base, spectral_lines=None, wavelength_min=630.66, wavelength_max=632.0)
    assert lines_of(just_in) == ("Fe I 630.15",)
    assert lines_of(just_out) == ()
    assert lines_of(just_out, tolerance_nm=1.0) == ("Fe I 630.15",)
    wide = replace(base, spectral_lines=None, wavelength_min=585.0, wavelength_max=860.0)
    assert lines_of(wide) == ("Fe I 630.15", "Ca II 854.21", "Na I D2 589.00")


def test_na_d2_is_inferred_at_its_real_wavelength():
    # Na I D2 lies at 588.995 nm (DESIGN's 588.95095 lost a digit): a range starting at
    # 589.46 nm reaches it with 0.5 nm tolerance (it would not reach 588.951), one starting
    # at 589.50 does not.
    base = parse_record(raw_by_id("BVJVO"))
    assert lines_of(replace(base, wavelength_min=589.46, wavelength_max=590.5)) == ("Na I D2 589.00",)
    assert lines_of(replace(base, wavelength_min=589.50, wavelength_max=590.5)) == ()


def test_empty_spectral_lines_fall_back_to_inference():
    rec = parse_record(raw_by_id("BVJVO") | {"spectralLines": []})
    assert rec.spectral_lines is None
    assert lines_of(rec) == ("Fe I 630.15",)


def test_duplicate_lines_listed_once():
    rec = parse_record(raw_by_id("BVJVO") | {"spectralLines": ["Fe I (630.15 nm)", "Fe I 630.15"]})
    assert lines_of(rec) == ("Fe I 630.15",)


def test_has_line_data():
    base = parse_record(raw_by_id("BVJVO"))
    assert has_line_data(base)
    assert not has_line_data(replace(base, wavelength_min=None))
    assert has_line_data(replace(base, wavelength_min=None, spectral_lines=("Fe I (630.15 nm)",)))


def test_timezone_offsets_in_other_zone_normalised():
    rec = parse_record(raw_by_id("BVJVO") | {"startTime": "2022-06-02T08:00:00-09:30"})
    assert rec.start_time == datetime(2022, 6, 2, 17, 30, tzinfo=UTC)
    assert rec.start_time.utcoffset() == timedelta(0)
