"""Expected qualification of every ViSP program in the fixtures, derived by hand.

Source: scanning/emulator/data/dataset_inventories_pid_1_118.json and
dataset_inventories_pid_2_114.json, rules of DESIGN §6 with the default thresholds
(health ≥ 0.75, AO ≥ 0.75, GOS open == frameCount, Stokes exactly IQUV, Fe I 630.15 listed
or within a dataset's wavelength range ± 0.5 nm, on disk). Each ``why`` is written from the records, not from running ``qualify``.

Facts shared by all programs below, read off the records:
- GOS: ``gosStatus.open == frameCount`` in every ViSP record → GOS never fails.
- On disk: the farthest ViSP bounding-box corner is ~852″ from disc centre (AJOZJ,
  (830.37, -190.34), 2024-04-22) while the solar radius is ≥ 943.4″ all year (954.2″ on
  2024-04-22) → never fails.
- pid_1_118 (2022-06): 2 arms per program, 630.24–634.39 nm and 854.25–856.79 nm, all IQUV,
  health good == frameCount == 1960. The Fe arm's range starts at 630.2392 nm, so 630.15012
  lies inside it widened by 0.5 nm (630.2392 − 0.5 = 629.7392 ≤ 630.15012): Fe I 630 passes
  on the range, whether spectralLines is null (BVJVO …) or lists only 'Fe I (630.25 nm)'
  (AMDKO, AODMM, BRWJV: the arm observes both Fe I lines; the store named only one).
- pid_2_114 2023-10 programs: 3 arms (Fe 629.42–631.01 listing Fe I 630.15 + 630.25,
  Ca II 853.70–854.64, Na I D1 589.08–590.13). Stokes I programs have low health.
- pid_2_114 2024-04 programs: 3 arms (Fe 629.56–630.73 listing Fe I 630.15 + 630.25,
  Ca II 853.26–855.02, Na I D1+D2 588.90–590.16); health good == frameCount everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

PID_1 = "dataset_inventories_pid_1_118.json"
PID_2 = "dataset_inventories_pid_2_114.json"

ON_DISK, FE, STOKES, HEALTH, GOS, AO = "On disk", "Fe I 630", "Stokes", "Health", "GOS", "AO"


DATA_DIR = Path(__file__).resolve().parents[2] / "scanning" / "emulator" / "data"


def load_raw(fixture: str) -> list[dict[str, Any]]:
    """The raw ``datasetInventories`` records of one fixture file."""
    with open(DATA_DIR / fixture, encoding="utf-8") as fh:
        return json.load(fh)["data"]["datasetInventories"]


class Expected(NamedTuple):
    fixture: str
    invertible: bool
    failing: frozenset[str]
    why: str


def _ok(fixture: str, why: str) -> Expected:
    return Expected(fixture, True, frozenset(), why)


def _fails(fixture: str, failing: set[str], why: str) -> Expected:
    return Expected(fixture, False, frozenset(failing), why)


EXPECTED: dict[str, Expected] = {
    # ---------------------------------------------------------------- pid_1_118 (2022-06)
    "id.85415.1029535": _ok(PID_1, "IQUV, good 1960/1960, AO 1680/1960=0.857, Fe I 630.15 inferred (BVJVO no spectralLines)"),
    "id.85415.1344755": _ok(PID_1, "IQUV, good 1960/1960, AO 1592/1960=0.812 ≥ 0.75, Fe I 630.15 inferred (BXRDY)"),
    "id.85415.162408": _ok(PID_1, "IQUV, good 1960/1960, AO 1924/1960=0.982, Fe I 630.15 inferred (AYDEW)"),
    "id.85415.255722": _ok(PID_1, "IQUV, good 1960/1960, AO 1940/1960=0.990, Fe I 630.15 inferred (BDWQK)"),
    "id.85415.352627": _ok(PID_1, "IQUV, good 1960/1960, AO 1916/1960=0.978, Fe I 630.15 inferred (AGNWO)"),
    "id.85415.449342": _ok(PID_1, "IQUV, good 1960/1960, AO 1956/1960=0.998, Fe I 630.15 inferred (AKNGW)"),
    "id.85415.543493": _ok(PID_1, "AMDKO lists only 'Fe I (630.25 nm)' but its range 630.24–634.39 nm covers 630.15 within 0.5 nm; IQUV, good 1960/1960, AO 1944/1960=0.992"),
    "id.85415.640020": _ok(PID_1, "AODMM lists only 'Fe I (630.25 nm)', range 630.24–634.39 nm covers 630.15 within 0.5 nm; IQUV, good 1960/1960, AO 1784/1960=0.910"),
    "id.85415.734171": _ok(PID_1, "IQUV, good 1960/1960, AO 1644/1960=0.839, Fe I 630.15 inferred (AQNGZ)"),
    "id.85572.153697": _ok(PID_1, "IQUV, good 1960/1960, AO 1952/1960=0.996, Fe I 630.15 inferred (AWOWP)"),
    "id.85572.248037": _ok(PID_1, "BRWJV lists only 'Fe I (630.25 nm)', range 630.24–634.39 nm covers 630.15 within 0.5 nm; IQUV, good 1960/1960, AO 1960/1960"),
    "id.85572.341432": _ok(PID_1, "IQUV, good 1960/1960, AO 1956/1960=0.998, Fe I 630.15 inferred (BPJDD)"),
    "id.85572.434881": _ok(PID_1, "IQUV, good 1960/1960, AO 1944/1960=0.992, Fe I 630.15 inferred (BNKVM)"),
    "id.85572.528411": _ok(PID_1, "IQUV, good 1960/1960, AO 1960/1960, Fe I 630.15 inferred (BLGOX)"),
    "id.85572.621644": _ok(PID_1, "IQUV, good 1960/1960, AO 1956/1960=0.998, Fe I 630.15 inferred (BJNKP)"),
    "id.85572.714418": _ok(PID_1, "IQUV, good 1960/1960, AO 1900/1960=0.969, Fe I 630.15 inferred (AEJQN)"),
    "id.85572.810702": _ok(PID_1, "IQUV, good 1960/1960, AO 1656/1960=0.845, Fe I 630.15 inferred (BZWKJ)"),
    # ---------------------------------------------------------------- pid_2_114, 2023-10, Stokes I
    "id.136838.1082728": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; ANGDE good 1829/10444=0.175; AO 10444/10444"),
    "id.136838.1105125": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; AQLJQ good 2052/10444=0.196; AO 9768/10444=0.935 ok"),
    "id.136838.1127658": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; BWVYD good 1906/10444=0.182; AO 8667/10444=0.830 ok"),
    "id.136838.1362775": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; BGJEM good 1886/10444=0.181; AO 10245/10444=0.981 ok"),
    "id.136838.232972": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; BXYEQ good 3832/10444=0.367; AO 10444/10444"),
    "id.136838.330397": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; BZYJD good 4767/10444=0.456 (best of the Stokes-I set, still < 0.75)"),
    "id.136838.500291": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; BJQRL good 2946/10444=0.282; AO 10404/10444 ok"),
    "id.136838.615320": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; BNGOE good 3158/10444=0.302; AO 10205/10444 ok"),
    "id.136838.714796": _fails(PID_2, {STOKES, HEALTH}, "4 datasets (TIUJCV, created 2025-07-04, duplicates BQLYQ under another datasetId and no productId: both current); Stokes I; BPMPK good 3165/10444=0.303"),
    "id.136838.811330": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; AWVQD good 2600/10444=0.249; AO 9860/10444=0.944 ok"),
    "id.136838.836158": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; AZYRD good 3864/10444=0.370; AO 10285/10444 ok"),
    "id.136838.931423": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; AGJDR good 3571/10444=0.342; AO 9689/10444=0.928 ok"),
    "id.136838.955576": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; BKPDX good 3882/10444=0.372; AO 10444/10444"),
    "id.136838.981348": _fails(PID_2, {STOKES, HEALTH}, "all Stokes I; ALDLJ good 766/1345=0.570; AO 1186/1345=0.882 ok"),
    # ---------------------------------------------------------------- pid_2_114, 2023-10, IQUV
    "id.136838.1387854": _ok(PID_2, "IQUV, good 852/852; AO 656/852=0.770 just ≥ 0.75; AOJVX lists Fe I 630.15"),
    "id.136838.257350": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, BKPLX lists Fe I 630.15"),
    "id.136838.353289": _ok(PID_2, "IQUV, good 896/896, AO 812/896=0.906, BNGDL lists Fe I 630.15"),
    "id.136838.402377": _ok(PID_2, "IQUV, good 1700/1700, AO 1568/1700=0.922, BQLDN lists Fe I 630.15"),
    "id.136838.527585": _ok(PID_2, "IQUV, good 1700/1700, AO 1584/1700=0.932, AWVMV lists Fe I 630.15"),
    "id.136838.638752": _ok(PID_2, "IQUV, good 1700/1700, AO 1680/1700=0.988, AZYDR lists Fe I 630.15"),
    "id.136838.738364": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, AGJOM lists Fe I 630.15"),
    "id.136838.859429": _ok(PID_2, "IQUV, good 1700/1700, AO 1676/1700=0.986, ALDVN lists Fe I 630.15"),
    # ---------------------------------------------------------------- pid_2_114, 2024-04, Stokes I
    "id.156511.1061386": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444"),
    "id.156511.599483": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444"),
    "id.156511.737750": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444"),
    "id.156511.836631": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444"),
    "id.156746.248017": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 9092/10444=0.871 ok"),
    "id.156746.387832": _fails(PID_2, {STOKES, AO}, "Stokes I; AO 5795/10444=0.555 < 0.75 (the only AO failure); good 10444/10444"),
    "id.157041.255742": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444"),
    "id.157345.1396881": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444; farthest corner APWGR ≈ 839″ < radius ≈ 954″"),
    "id.157345.612450": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444"),
    "id.157345.734738": _fails(PID_2, {STOKES}, "Stokes I; good 10444/10444, AO 10444/10444"),
    "id.157345.841468": _fails(PID_2, {STOKES}, "Stokes I; AJOZJ corner (830.37,-190.34) ≈ 852″ < radius ≈ 954″ → on disk"),
    "id.157345.983030": _fails(PID_2, {STOKES}, "Stokes I; 2611 frames, good 2611, AO 2611"),
    # ---------------------------------------------------------------- pid_2_114, 2024-04, IQUV
    "id.156511.1089191": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, BEZKV lists Fe I 630.15"),
    "id.156511.499409": _ok(PID_2, "IQUV, good 1700/1700, AO 1696/1700=0.998, BZPQW lists Fe I 630.15"),
    "id.156511.623969": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, BWRGZ lists Fe I 630.15"),
    "id.156511.765502": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, AQRMX lists Fe I 630.15"),
    "id.156511.861168": _ok(PID_2, "IQUV, good 992/992, AO 988/992=0.996, ANRJZ lists Fe I 630.15"),
    "id.156511.975784": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, AKRDQ lists Fe I 630.15"),
    "id.156746.177859": _ok(PID_2, "IQUV, good 1700/1700, AO 1504/1700=0.885, BEZXZ lists Fe I 630.15"),
    "id.156746.318295": _ok(PID_2, "IQUV, good 1700/1700, AO 1480/1700=0.871, AKRQL lists Fe I 630.15"),
    "id.157041.186826": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, AKRED lists Fe I 630.15"),
    "id.157345.1316517": _ok(PID_2, "IQUV, good 1700/1700, AO 1668/1700=0.981, farthest corner BOYOZ ≈ 794″, on disk"),
    "id.157345.525958": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, AQRWP lists Fe I 630.15"),
    "id.157345.653675": _ok(PID_2, "IQUV, good 1700/1700, AO 1696/1700=0.998, BWRQW lists Fe I 630.15"),
    "id.157345.769048": _ok(PID_2, "IQUV, good 1700/1700, AO 1656/1700=0.974, BZPRN lists Fe I 630.15"),
    "id.157345.907744": _ok(PID_2, "IQUV, good 1700/1700, AO 1556/1700=0.915, BGPDV lists Fe I 630.15"),
    "id.157345.999393": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, BLZLV lists Fe I 630.15"),
    "id.158383.199996": _ok(PID_2, "IQUV, good 1700/1700, AO 1696/1700=0.998, AYWKR lists Fe I 630.15"),
    "id.158383.269839": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, AVNLD lists Fe I 630.15"),
    "id.158383.338710": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, BPWVZ lists Fe I 630.15"),
    "id.158383.558748": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, BMRVN lists Fe I 630.15"),
    "id.158383.633613": _ok(PID_2, "IQUV, good 1700/1700, AO 1572/1700=0.925, BJOVO lists Fe I 630.15"),
    "id.158383.705022": _ok(PID_2, "IQUV, good 1700/1700, AO 1700/1700, ADRLN lists Fe I 630.15"),
    "id.158383.798868": _ok(PID_2, "IQUV, good 1700/1700, AO 1524/1700=0.896, BVNXV lists Fe I 630.15"),
}

INVERTIBLE: frozenset[str] = frozenset(k for k, e in EXPECTED.items() if e.invertible)
"""The 47 ViSP programs of the fixtures that qualify (17 in pid_1_118: all of them, 30 in pid_2_114)."""

NOT_SUPPORTED_REASON = {"VBI": "VBI not supported"}
"""Every VBI program of the fixtures is Not Invertible with this single reason."""
