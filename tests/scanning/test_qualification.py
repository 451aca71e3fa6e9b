"""Qualification rules (DESIGN §6) on the real fixture programs and on edited copies of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from scanning.qualification import (
    RULE_AO,
    RULE_FE_I_630,
    RULE_GOS,
    RULE_HEALTH,
    RULE_INSTRUMENT,
    RULE_NAMES,
    RULE_ON_DISK,
    RULE_STOKES,
    QualificationReport,
    Thresholds,
    apparent_solar_radius_arcsec,
    solar_radii,
    qualify,
)
from scanning.records import DatasetRecord, mark_superseded, parse_record
from tests.scanning.expected_qualification import (
    EXPECTED,
    INVERTIBLE,
    NOT_SUPPORTED_REASON,
    PID_1,
    PID_2,
    load_raw,
)

T = Thresholds()


def _programs() -> dict[str, list[DatasetRecord]]:
    programs: dict[str, list[DatasetRecord]] = defaultdict(list)
    for fixture in (PID_1, PID_2):
        for raw in load_raw(fixture):
            rec = parse_record(raw)
            programs[rec.instrument_program_execution_id].append(rec)
    return dict(programs)


PROGRAMS = _programs()


def program(ipe_id: str) -> list[DatasetRecord]:
    return list(PROGRAMS[ipe_id])


def rule(report: QualificationReport, name: str):
    return next(r for r in report.rules if r.name == name)


def edit(records: list[DatasetRecord], dataset_id: str, **changes) -> list[DatasetRecord]:
    return [replace(r, **changes) if r.dataset_id == dataset_id else r for r in records]


# --------------------------------------------------------------------------- all ViSP programs


def test_expected_table_covers_every_visp_program_of_the_fixtures():
    visp = {k for k, recs in PROGRAMS.items() if recs[0].instrument_name.upper() == "VISP"}
    assert set(EXPECTED) == visp
    assert len(visp) == 73 and len(INVERTIBLE) == 47


@pytest.mark.parametrize("ipe_id", sorted(EXPECTED))
def test_visp_program_outcome_matches_hand_derivation(ipe_id):
    expected = EXPECTED[ipe_id]
    records = program(ipe_id)
    assert not mark_superseded(records)  # every fixture dataset is current
    report = qualify(records, T)
    assert [r.name for r in report.rules] == list(RULE_NAMES)
    assert report.invertible is expected.invertible, expected.why
    assert set(report.failed_rules) == expected.failing, expected.why
    json.dumps(report.to_dict(), allow_nan=False)  # JSON-safe


def test_every_vbi_program_is_not_supported():
    vbi = [k for k, recs in PROGRAMS.items() if recs[0].instrument_name == "VBI"]
    assert len(vbi) == 69
    for ipe_id in vbi:
        report = qualify(program(ipe_id), T)
        assert not report.invertible
        assert [(r.name, r.passed, r.reason) for r in report.rules] == [
            (RULE_INSTRUMENT, False, NOT_SUPPORTED_REASON["VBI"])
        ]
        assert report.reason == "VBI not supported"
        assert report.warnings == []


# --------------------------------------------------------------------------- hand-reasoned cases


def test_981348_stokes_i_only_and_poor_health():
    # id.136838.981348: three arms, all stokesParameters "I" → Stokes fails.
    # Health per arm: ALDLJ 766/1345 = 0.5695, AKPKJ 1162/1345 = 0.864, AJQJL 1165/1345 = 0.866
    # → worst ALDLJ < 0.75 → Health fails. AO 1186/1345 = 0.8818 ≥ 0.75 → passes.
    # AKPKJ lists Fe I (630.15 nm) → Fe I 630 passes. Fried median 0.0195 m < 0.05 → red.
    report = qualify(program("id.136838.981348"), T)
    assert not report.invertible
    assert set(report.failed_rules) == {RULE_STOKES, RULE_HEALTH}
    stokes = rule(report, RULE_STOKES)
    assert stokes.value == "I" and "3 of 3 datasets" in stokes.reason
    health = rule(report, RULE_HEALTH)
    assert health.dataset_id == "ALDLJ" and health.value == pytest.approx(766 / 1345, abs=1e-4)
    assert "766 of 1345" in health.reason
    ao = rule(report, RULE_AO)
    assert ao.passed and ao.value == pytest.approx(1186 / 1345, abs=1e-4)
    fe = rule(report, RULE_FE_I_630)
    assert (fe.dataset_id, fe.value) == ("AKPKJ", "Fe I 630.15 listed, 629.42–631.01 nm")  # the line and the range
    fried = [w for w in report.warnings if w.code == "fried_low"]
    assert [(w.level, w.dataset_id) for w in fried] == [("red", "AJQJL")]
    assert "1.9 cm" in fried[0].message and "below 5 cm" in fried[0].message  # r₀ in cm, as on the plot


@pytest.mark.parametrize(("ipe_id", "fe_arm"), [
    ("id.85415.543493", "AMDKO"), ("id.85415.640020", "AODMM"), ("id.85572.248037", "BRWJV"),
])
def test_an_arm_listing_only_fe_630_25_passes_on_its_range(ipe_id, fe_arm):
    # The three pid_1_118 programs whose Fe arm lists only "Fe I (630.25 nm)": the arm spans
    # 630.2392–634.3898 nm; widened by 0.5 nm it starts at 629.7392 ≤ 630.15012, so it
    # observes Fe I 630.15 too (the store named one of the two lines). The other arm
    # (854.25–856.79 nm, no spectralLines) is the Ca II arm. IQUV, 1960/1960 good, GOS open,
    # AO ≥ 1784/1960 → Invertible.
    report = qualify(program(ipe_id), T)
    assert report.invertible and report.failed_rules == []
    fe = rule(report, RULE_FE_I_630)
    assert fe.dataset_id == fe_arm and fe.value == "Fe I 630.15 in range, 630.24–634.39 nm"
    assert fe.reason == f"{fe_arm} covers Fe I 630.15 (630.15 nm ± 0.5) with 630.24–634.39 nm"
    # with no tolerance the range misses 630.15: the rule fails and says what it saw
    strict = rule(qualify(program(ipe_id), replace(T, line_tolerance_nm=0.0)), RULE_FE_I_630)
    assert not strict.passed and strict.value == "Fe I 630.25"
    assert f"{fe_arm} 630.24–634.39 nm" in strict.reason and "lists or covers Fe I 630.15" in strict.reason


def test_a_listed_fe_i_630_15_passes_whatever_the_range():
    records = edit(program("id.136838.981348"), "AKPKJ", wavelength_min=None, wavelength_max=None)
    fe = rule(qualify(records, T), RULE_FE_I_630)
    assert fe.passed and fe.value == "Fe I 630.15 listed, no wavelength range"


def test_optional_lines_are_shown_present_or_missing():
    # id.157345.999393 (2024-04): Ca II 853.26–855.02 covers 854.21, not 849.80; Na 588.90–590.16
    # lists Na I D1 and D2.
    report = qualify(program("id.157345.999393"), T)
    shown = {o["line"]: o["present"] for o in report.optional_lines}
    assert shown == {"Ca II 854.21": True, "Ca II 849.80": False, "Na I D2 589.00": True}
    assert report.to_dict()["optional_lines"] == report.optional_lines
    # pid_1_118: Fe and Ca arms only
    shown = {o["line"]: o["present"] for o in qualify(program("id.85415.162408"), T).optional_lines}
    assert shown == {"Ca II 854.21": True, "Ca II 849.80": False, "Na I D2 589.00": False}


def test_85415_162408_infers_fe_630_15_from_the_range():
    # id.85415.162408: same instrument set-up but AYDEW has spectralLines null, so Fe I 630.15
    # is inferred: 630.15012 ≥ 630.2392 − 0.5. Ca II 854.2091 ≥ 854.2490 − 0.5 for AZWGJ.
    # IQUV, 1960/1960 good, AO 1924/1960 = 0.982 → invertible; no "Ca II absent" warning.
    report = qualify(program("id.85415.162408"), T)
    assert report.invertible and report.failed_rules == []
    assert rule(report, RULE_FE_I_630).dataset_id == "AYDEW"
    assert "ca_ii_854_absent" not in {w.code for w in report.warnings}
    # Both arms start above their window's lower edge (630.24 > 629.8, 854.25 > 853.2)
    # → one range_too_narrow warning per arm.
    narrow = {w.dataset_id for w in report.warnings if w.code == "range_too_narrow"}
    assert narrow == {"AYDEW", "AZWGJ"}


def test_156746_387832_ao_fails():
    # id.156746.387832: AO 5795 of 10444 frames = 0.5549 < 0.75 (same count on all arms),
    # and all arms Stokes I → AO and Stokes fail; health 10444/10444 passes.
    report = qualify(program("id.156746.387832"), T)
    assert set(report.failed_rules) == {RULE_AO, RULE_STOKES}
    ao = rule(report, RULE_AO)
    assert ao.value == pytest.approx(0.5549, abs=1e-4) and ao.limit == 0.75
    assert "(3 datasets fail)" in ao.reason
    assert rule(report, RULE_HEALTH).value == 1.0


def test_136838_1387854_ao_just_passes():
    # id.136838.1387854: AO 656/852 = 0.7700 ≥ 0.75 → passes; IQUV, 852/852 good → invertible.
    # Fried median 0.0365 m → red warning (does not disqualify).
    report = qualify(program("id.136838.1387854"), T)
    assert report.invertible
    assert rule(report, RULE_AO).value == pytest.approx(656 / 852, abs=1e-4)
    assert {(w.code, w.level) for w in report.warnings} >= {("fried_low", "red")}
    # a stricter AO threshold from settings flips it
    strict = qualify(program("id.136838.1387854"), replace(T, ao_min=0.8))
    assert strict.failed_rules == [RULE_AO]


def test_136838_1082728_health_worst_dataset_reported():
    # id.136838.1082728: good frames ANGDE 1829, AOJED 2061, AMEMQ 2019 of 10444 →
    # worst ANGDE 0.1751; all Stokes I.
    report = qualify(program("id.136838.1082728"), T)
    health = rule(report, RULE_HEALTH)
    assert not health.passed and health.dataset_id == "ANGDE"
    assert health.value == pytest.approx(1829 / 10444, abs=1e-4)
    assert "(3 datasets fail)" in health.reason


def test_157345_841468_closest_to_the_limb_is_on_disk():
    # id.157345.841468 (2024-04-22): AJOZJ box (830.37,-113.31),(694.43,-190.34): farthest
    # corner (830.37,-190.34) at 851.9″; the Sun's radius that day is ~954″ → On disk passes.
    report = qualify(program("id.157345.841468"), T)
    on_disk = rule(report, RULE_ON_DISK)
    assert on_disk.passed and on_disk.dataset_id == "AJOZJ"
    assert on_disk.value == pytest.approx(851.91, abs=0.01)
    assert 953 < on_disk.limit < 955.5


# --------------------------------------------------------------------------- rules the data never fails


def test_on_disk_fails_for_a_corner_beyond_the_limb():
    # Move one arm of an invertible program (id.157345.999393, 2024-04-22, radius ~954″) to
    # the limb: corner (940, 200) lies 961″ from centre → outside.
    records = edit(program("id.157345.999393"), "BLZLV", bounding_box=((940.0, 200.0), (900.0, 150.0)))
    report = qualify(records, T)
    assert report.failed_rules == [RULE_ON_DISK]
    on_disk = rule(report, RULE_ON_DISK)
    assert on_disk.dataset_id == "BLZLV"
    assert on_disk.value == pytest.approx((940**2 + 200**2) ** 0.5, abs=0.01)
    assert "outside the solar radius" in on_disk.reason and "2024-04-22" in on_disk.reason


def test_on_disk_uses_the_radius_of_the_start_date():
    # A corner at 960″ is inside the disc near perihelion (~975″) and outside near aphelion
    # (~944″): a fixed constant could not give both answers.
    records = edit(program("id.157345.999393"), "BLZLV", bounding_box=((960.0, 0.0), (900.0, 10.0)))
    january = [replace(r, start_time=datetime(2024, 1, 3, 18, tzinfo=UTC)) for r in records]
    july = [replace(r, start_time=datetime(2024, 7, 5, 18, tzinfo=UTC)) for r in records]
    assert rule(qualify(january, T), RULE_ON_DISK).passed
    assert not rule(qualify(july, T), RULE_ON_DISK).passed


def test_gos_fails_when_the_occulter_was_not_fully_open():
    # id.157345.999393 is invertible; close the GOS for 100 of BKRKL's 1700 frames.
    records = edit(program("id.157345.999393"), "BKRKL",
                   gos_status={"open": 1600, "closed": 100, "closing": None, "opening": None, "undefined": None})
    report = qualify(records, T)
    assert report.failed_rules == [RULE_GOS]
    gos = rule(report, RULE_GOS)
    assert gos.dataset_id == "BKRKL" and gos.value == pytest.approx(1600 / 1700, abs=1e-4)
    assert "1600 of 1700" in gos.reason


def test_gos_open_null_counts_as_zero():
    records = edit(program("id.157345.999393"), "BKRKL",
                   gos_status={"open": None, "closed": 1700})
    assert rule(qualify(records, T), RULE_GOS).value == 0.0


@pytest.mark.parametrize(
    ("changes", "rule_name", "reason"),
    [
        ({"health": None}, RULE_HEALTH, "no health data"),
        ({"health": {"good": None, "bad": None, "ill": None, "unknown": None}}, RULE_HEALTH, "no health data"),
        ({"gos_status": None}, RULE_GOS, "no gosStatus data"),
        ({"ao_locked": None}, RULE_AO, "no aoLocked data"),
        ({"bounding_box": None}, RULE_ON_DISK, "no boundingBox data"),
        ({"start_time": None}, RULE_ON_DISK, "no startTime data"),
        ({"stokes_parameters": None}, RULE_STOKES, "no stokesParameters data"),
        ({"frame_count": 0}, RULE_AO, "frameCount is 0"),
    ],
)
def test_missing_data_fails_the_rule(changes, rule_name, reason):
    records = edit(program("id.157345.999393"), "BKRKL", **changes)
    report = qualify(records, T)
    assert not report.invertible
    failed = rule(report, rule_name)
    assert not failed.passed and failed.reason == reason and failed.dataset_id == "BKRKL"
    assert failed.value is None


def test_missing_line_data_fails_fe_rule_only_when_nothing_covers_it():
    # id.85415.162408: AYDEW covers Fe I 630.15 by inference. Remove its wavelength range:
    # no spectralLines and no range → its lines are unknown, and the other arm (Ca II) does
    # not cover Fe I → "no spectralLines data".
    records = edit(program("id.85415.162408"), "AYDEW", wavelength_min=None, wavelength_max=None)
    fe = rule(qualify(records, T), RULE_FE_I_630)
    assert (fe.passed, fe.reason, fe.dataset_id) == (False, "no spectralLines data", "AYDEW")
    # Unknown lines in the Ca arm do not matter when the Fe arm covers the line.
    records = edit(program("id.85415.162408"), "AZWGJ", wavelength_min=None, wavelength_max=None)
    assert rule(qualify(records, T), RULE_FE_I_630).passed


def test_required_line_is_a_setting():
    # Requiring Ca II 854.21 instead: the Ca arm ANKLM of id.85415.543493 covers it.
    fe = rule(qualify(program("id.85415.543493"), replace(T, required_line="Ca II 854.21")), RULE_FE_I_630)
    assert fe.passed and fe.dataset_id == "ANKLM"


def test_stokes_accepts_any_order_and_case():
    records = [replace(r, stokes_parameters="vuqi") for r in program("id.157345.999393")]
    assert rule(qualify(records, T), RULE_STOKES).passed
    records = [replace(r, stokes_parameters="I,Q,U,V") for r in program("id.157345.999393")]
    assert rule(qualify(records, T), RULE_STOKES).passed


@pytest.mark.parametrize("stokes", ["IQU", "IQUVX", "IIQUV", "QUV", "IV"])
def test_stokes_must_be_exactly_i_q_u_and_v(stokes):
    records = edit(program("id.157345.999393"), "BKRKL", stokes_parameters=stokes)
    result = rule(qualify(records, T), RULE_STOKES)
    assert not result.passed and result.dataset_id == "BKRKL" and "not exactly IQUV" in result.reason


def test_no_frame_count_or_instrument_is_no_data():
    report = qualify(edit(program("id.157345.999393"), "BKRKL", frame_count=None), T)
    for name in (RULE_HEALTH, RULE_GOS, RULE_AO):
        assert (rule(report, name).reason, rule(report, name).dataset_id) == ("no frameCount data", "BKRKL")
    report = qualify(edit(program("id.157345.999393"), "BKRKL", instrument_name=None), T)
    assert not report.invertible and report.reason == "no instrumentName data"


# --------------------------------------------------------------------------- instruments


def test_instrument_compared_case_insensitively():
    records = [replace(r, instrument_name="ViSP") for r in program("id.157345.999393")]
    report = qualify(records, T)
    assert report.invertible and report.instrument == "ViSP"


def test_supported_instruments_is_a_setting():
    vbi = program("id.85407.60330")
    report = qualify(vbi, replace(T, supported_instruments=("VISP", "vbi")))
    assert [r.name for r in report.rules] == list(RULE_NAMES)
    # VBI data is Stokes I at 486/393 nm: Stokes and Fe I 630 fail
    assert {RULE_STOKES, RULE_FE_I_630} <= set(report.failed_rules)


def test_other_instrument_name_in_reason():
    records = [replace(r, instrument_name="CRYO-NIRSP") for r in program("id.157345.999393")]
    report = qualify(records, T)
    assert report.reason == "CRYO-NIRSP not supported" and not report.invertible


def test_no_datasets_is_not_invertible():
    report = qualify([], T)
    assert not report.invertible and report.rules[0].reason == "no datasets"


# --------------------------------------------------------------------------- warnings


def test_ca_ii_absent_warning():
    # Drop the Ca II arm (BMRMG) of id.157345.999393: still invertible, but amber warning.
    records = [r for r in program("id.157345.999393") if r.dataset_id != "BMRMG"]
    report = qualify(records, T)
    assert report.invertible
    ca = [w for w in report.warnings if w.code == "ca_ii_854_absent"]
    assert len(ca) == 1 and ca[0].level == "amber" and ca[0].dataset_id is None
    assert "ca_ii_854_absent" not in {w.code for w in qualify(program("id.157345.999393"), T).warnings}


def test_range_too_narrow_warnings_follow_the_windows():
    # 2023 arms: Fe 629.42–631.01 spans Fe window 629.8–630.8 → no Fe warning;
    # Ca 853.70–854.64 does not span 853.2–855.2; Na 589.08–590.13 does not span 588.3–590.3.
    report = qualify(program("id.136838.257350"), T)
    narrow = {w.dataset_id: w.message for w in report.warnings if w.code == "range_too_narrow"}
    assert set(narrow) == {"BLDMN", "BJQZW"}  # Ca and Na arms, not the Fe arm BKPLX
    assert "Ca II 854 window 853.20–855.20 nm" in narrow["BLDMN"]
    # 2024 arms: Fe 629.56–630.73 ends before 630.8 → warned as well.
    report = qualify(program("id.157345.999393"), T)
    narrow = {w.dataset_id for w in report.warnings if w.code == "range_too_narrow"}
    assert narrow == {"BLZLV", "BMRMG", "BKRKL"}
    # A wide Fe range (629.0–631.5) is not warned.
    wide = edit(program("id.157345.999393"), "BLZLV", wavelength_min=629.0, wavelength_max=631.5)
    narrow = {w.dataset_id for w in qualify(wide, T).warnings if w.code == "range_too_narrow"}
    assert narrow == {"BMRMG", "BKRKL"}


@pytest.mark.parametrize(
    ("ipe_id", "expected"),
    [
        ("id.85572.248037", None),  # median 0.150 m
        ("id.85415.352627", None),  # 0.0703 m: just above 0.07
        ("id.85415.640020", "amber"),  # 0.0598 m
        ("id.85572.810702", "amber"),  # 0.0688 m
        ("id.85415.734171", "red"),  # 0.0488 m
        ("id.136838.981348", "red"),  # 0.0195 m
    ],
)
def test_fried_parameter_warning_levels(ipe_id, expected):
    report = qualify(program(ipe_id), T)
    levels = [w.level for w in report.warnings if w.code == "fried_low"]
    assert levels == ([] if expected is None else [expected])


def test_missing_fried_parameter_is_an_info_warning():
    records = edit(program("id.157345.999393"), "BKRKL", fried_parameter=None)
    report = qualify(records, T)
    assert report.invertible
    info = [w for w in report.warnings if w.code == "fried_missing"]
    assert [(w.level, w.dataset_id) for w in info] == [("info", "BKRKL")]


# --------------------------------------------------------------------------- report shape


def test_report_to_dict_is_plain_json():
    report = qualify(program("id.136838.981348"), T)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["invertible"] is False and data["instrument"] == "VISP"
    assert [r["name"] for r in data["rules"]] == list(RULE_NAMES)
    assert set(data["rules"][0]) == {"name", "passed", "value", "limit", "reason", "dataset_id"}
    assert all(set(w) == {"code", "level", "message", "dataset_id"} for w in data["warnings"])
    assert data["dataset_ids"] == ["AJQJL", "AKPKJ", "ALDLJ"]
    assert data["reason"].startswith("Stokes: ") and "Health: " in data["reason"]


def test_result_does_not_depend_on_record_order():
    records = program("id.136838.981348")
    assert qualify(records, T).to_dict() == qualify(list(reversed(records)), T).to_dict()


# --------------------------------------------------------------------------- solar radius


def test_apparent_solar_radius_perihelion_and_aphelion():
    perihelion = apparent_solar_radius_arcsec(datetime(2024, 1, 3, 1, tzinfo=UTC))
    aphelion = apparent_solar_radius_arcsec(date(2024, 7, 5))
    assert 975.0 <= perihelion <= 976.0
    assert 943.0 <= aphelion <= 944.0


def test_apparent_solar_radius_is_cached_per_utc_date():
    from scanning import qualification

    day = date(2019, 3, 21)
    apparent_solar_radius_arcsec(day)
    computed = qualification.radii_computed
    same_day = apparent_solar_radius_arcsec(datetime(2019, 3, 21, 23, 59, tzinfo=UTC))
    assert qualification.radii_computed == computed  # from the cache
    assert same_day == apparent_solar_radius_arcsec(day)
    assert apparent_solar_radius_arcsec(datetime(2019, 3, 21, 5)) == same_day  # naive = UTC
    # 21:00 at UTC−5 is 02:00 UTC on the 22nd: that date's radius (near equinox it shrinks
    # by ~0.27″ a day)
    late = datetime.fromisoformat("2019-03-21T21:00:00-05:00")
    assert apparent_solar_radius_arcsec(late) == apparent_solar_radius_arcsec(date(2019, 3, 22))
    assert apparent_solar_radius_arcsec(late) < same_day


def test_solar_radii_of_many_dates_in_one_call_equal_one_by_one():
    from scanning import qualification

    days = [date(2017, 1, 1) + timedelta(days=n) for n in range(0, 700, 7)]
    computed = qualification.radii_computed
    radii = solar_radii([*days, datetime(2017, 1, 1, 23, tzinfo=UTC)])  # the same UTC date twice
    assert qualification.radii_computed == computed + len(days)  # each date once, one astropy call
    assert sorted(radii) == days
    qualification._RADII.clear()  # computed again, one by one
    assert [apparent_solar_radius_arcsec(day) for day in days] == [radii[day] for day in days]
    assert 943.0 < min(radii.values()) < max(radii.values()) < 976.0


def test_apparent_solar_radius_needs_no_network():
    """In a fresh interpreter with sockets and astropy downloads disabled, it still works."""
    code = textwrap.dedent(
        """
        import socket, sys
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(args)
            raise OSError("network disabled in this test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        import astropy.utils.data as data
        data.download_file = refuse
        from datetime import date
        from scanning.qualification import apparent_solar_radius_arcsec
        radius = apparent_solar_radius_arcsec(date(2023, 10, 16))
        print(radius, len(attempts))
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    radius, attempts = done.stdout.split()
    assert 961.0 < float(radius) < 963.0  # mid-October
    assert attempts == "0"
