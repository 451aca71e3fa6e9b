"""Programs built the way the scan builds them: real metadata-store records, a real qualification
report in the history, every state reached through the life-cycle module."""
from __future__ import annotations

import copy
import itertools
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from inversions import lifecycle
from inversions.models import Dataset, ObservingProgram
from inversions.states import State
from scanning.qualification import Thresholds, qualify
from scanning.records import lines_of, parse_record
from scanning.prepare import dataset_fields, raw_hash
from tests.conftest import PATHS
from tests.publishing.conftest import collections, store_settings  # noqa: F401  (fixtures)
from tests.scanning.conftest import metadata_store  # noqa: F401  (the emulator fixture)

DATA = Path(__file__).resolve().parents[2] / "scanning" / "emulator" / "data"
#: ViSP programs of pid_2_114: 3 arms, IQUV, invertible / Stokes I only, not invertible
INVERTIBLE_SOURCE = "id.136838.353289"
NOT_INVERTIBLE_SOURCE = "id.136838.981348"
_n = itertools.count(1)


def _records() -> dict[str, list[dict]]:
    by_program: dict[str, list[dict]] = {}
    for name in ("dataset_inventories_pid_2_114.json", "dataset_inventories_pid_1_118.json"):
        with open(DATA / name, encoding="utf-8") as fh:
            for raw in json.load(fh)["data"]["datasetInventories"]:
                by_program.setdefault(raw["instrumentProgramExecutionId"], []).append(raw)
    return by_program


RECORDS = _records()


def build_program(
    state: str = State.PREPROCESSED,
    *,
    source: str | None = None,
    ipeid: str | None = None,
    walker=None,
    claimant=None,
    settles_in: timedelta | None = None,
    description: str | None = None,
    error_reason: str = "Globus transfer failed: endpoint busy",
    **fields,
) -> ObservingProgram:
    """A program with the datasets of ``source`` (renamed to be unique), walked to ``state``."""
    n = next(_n)
    source = source or (NOT_INVERTIBLE_SOURCE if state == State.NOT_INVERTIBLE else INVERTIBLE_SOURCE)
    ipeid = ipeid or f"{source}.t{n}"
    raws = copy.deepcopy(RECORDS[source])
    for raw in raws:
        raw["instrumentProgramExecutionId"] = ipeid
        raw["datasetId"] = f"{raw['datasetId']}{n}"
    records = [parse_record(raw) for raw in raws]
    first = records[0]
    newest = max(r.create_date for r in records)
    values = dict(
        instrument_program_execution_id=ipeid,
        observing_program_execution_id=first.observing_program_execution_id or "",
        primary_proposal_id=first.primary_proposal_id,
        primary_experiment_id=first.primary_experiment_id or "",
        instrument_name=first.instrument_name,
        experiment_description=description if description is not None else (first.experiment_description or ""),
        spectral_lines=sorted({line for r in records for line in lines_of(r)}),
        start_time=min(r.start_time for r in records),
        end_time=max(r.end_time for r in records),
        newest_create_date=newest,
        settles_at=(timezone.now() + settles_in) if settles_in else newest + timedelta(days=3),
        dataset_count=len(records),
    )
    program = ObservingProgram(**(values | fields))
    lifecycle.create_programs([program], actor="scan")
    Dataset.objects.bulk_create(
        [Dataset(program=program, **dataset_fields(r, raw_hash(r.raw))) for r in records]
    )
    report = qualify(records, Thresholds()).to_dict()
    for step in PATHS[state]:
        details, reason, user = {}, f"to {step}", walker
        if step in (State.INVERTIBLE, State.NOT_INVERTIBLE):
            details, reason, user = report, report["reason"], None
        elif step == State.WORKING and claimant is not None:
            user = claimant
        elif step == State.ERROR:
            details, reason = {"step": "preprocess.stage", "attempts": 3}, error_reason
        lifecycle.transition(program, step, actor=user.get_username() if user else "scan", user=user,
                             reason=reason, details=details)
    program.refresh_from_db()
    return program


@pytest.fixture
def make_op(django_user_model):
    walker = None

    def make(state: str = State.PREPROCESSED, **kwargs) -> ObservingProgram:
        nonlocal walker
        if walker is None:
            walker = django_user_model.objects.get_or_create(username="worker-bee")[0]
        kwargs.setdefault("walker", walker)
        return build_program(state, **kwargs)

    return make


@pytest.fixture
def as_user(client):
    def login(user):
        client.force_login(user)
        return client

    return login


@pytest.fixture
def make_published(collections, store_settings, scientist):  # noqa: F811
    """A Published program whose inversion went the whole way: intake, L2 generation, publication."""
    from publishing import intake, pipeline
    from publishing.tasks import publish_l2
    from tests.publishing.conftest import make_case

    def make(*, line_ids=None, **kwargs):
        case = make_case(collections, scientist, **kwargs)
        if line_ids:  # BLANCA ids: the lines of the profile files (the intake takes them from the files)
            from publishing.results import write_demo_results
            from tests.publishing.conftest import DEPTH, SLIT, WAVE

            write_demo_results(case.results_folder, n_steps=case.steps, n_slit=kwargs.get("slit", SLIT),
                               n_depth=kwargs.get("depth", DEPTH), n_wave=kwargs.get("wave", WAVE),
                               line_ids=line_ids, seed=7)
        order = intake.submit_report(case.program, user=scientist, actor="han", enqueue=False, **case.report())
        assert intake.run_intake(order.pk) == intake.Outcome.DONE
        case.program.refresh_from_db()
        generate = pipeline.request_generate(case.program, actor="olga", enqueue=False).order
        assert pipeline.run_generate(generate.pk).outcome == pipeline.Outcome.DONE
        publish = pipeline.request_publish(case.program, actor="olga", enqueue=False).order
        assert publish_l2.apply(args=[publish.pk]).get() == "done"
        case.program.refresh_from_db()
        case.inversion = pipeline.current_inversion(case.program)
        assert case.program.state == State.PUBLISHED
        return case

    return make
