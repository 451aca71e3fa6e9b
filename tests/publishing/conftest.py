"""Fixtures of the publishing tests.

``results`` (no database): a small validated result set. ``pipeline_env``: the collections as
folders, and a factory of Working programs whose dataset has demo L1 frames in the L1
collection and demo result files in the science cluster's collection — everything the intake,
generation and publication need, small enough to run in a second.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.utils import timezone

from inversions import lifecycle
from inversions.models import Dataset, ObservingProgram
from inversions.preprocessing.l1_frames import write_demo_dataset
from inversions.states import State
from publishing.results import write_demo_results
from tests.conftest import PATHS
from tests.scanning.conftest import TOKEN, metadata_store  # noqa: F401  (the emulator fixture)

from .helpers import make_results

LINES_CANONICAL = ["Fe I 630.15", "Fe I 630.25"]
LINES_STORE = ["Fe I (630.15 nm)", "Fe I (630.25 nm)"]
STEPS, SLIT, DEPTH, WAVE = 5, 40, 8, 12
COMMIT = "3f2c9e1a"
BUCKET = "data"
_n = itertools.count(1)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("results"))


@dataclass
class Case:
    """A Working program with its L1 frames and result files on disk."""

    program: ObservingProgram
    dataset: Dataset
    root: Path  # the collections' parent folder
    results_path: str  # in the science-cluster collection
    steps: int
    ca_arm: Dataset | None = None  # a second arm (Ca II 854, VSPARMID 2), when asked for

    def l1_folder_of(self, dataset: Dataset) -> Path:
        return self.root / "dkist-l1" / BUCKET / self.program.primary_proposal_id / dataset.dataset_id

    @property
    def l1_folder(self) -> Path:
        return self.root / "dkist-l1" / BUCKET / self.program.primary_proposal_id / self.dataset.dataset_id

    @property
    def results_folder(self) -> Path:
        return self.root / "science-cluster" / self.results_path.strip("/")

    def report(self, **changes) -> dict:
        return {
            "collection": "science-cluster",
            "path": self.results_path,
            "software_commit": COMMIT,
            "dataset_ids": [self.dataset.dataset_id] + ([self.ca_arm.dataset_id] if self.ca_arm else []),
            "notes": "SIR, 3 cycles",
        } | changes


@pytest.fixture
def collections(tmp_path, settings):
    root = tmp_path / "collections"
    names = ("dkist-l1", "scratch", "science-cluster", "publish")
    for name in names:
        (root / name).mkdir(parents=True)
    settings.L2_COLLECTIONS = {name: str(root / name) for name in names}
    settings.L2_TRANSFER_BACKEND = "local"
    settings.L2_L1_COLLECTION, settings.L2_SCRATCH_COLLECTION = "dkist-l1", "scratch"
    settings.L2_PUBLISH_COLLECTION = "publish"
    settings.L2_L1_PATH = "/{bucket}/{proposal}/{dataset}/"
    settings.L2_PUBLISH_PATH = "/{bucket}/{proposal}/{inversion}/"
    settings.L2_SCRATCH_L2_PATH = "/l2/{proposal}/{inversion}/"
    settings.L2_GENERATE_WORKERS = 1
    return root


def make_case(root: Path, claimant, *, steps: int = STEPS, slit: int = SLIT, l1_wave: int = 16,
              depth: int = DEPTH, wave: int = WAVE, result_steps: int | None = None, l1: bool = True,
              stokes: str = "IQUV", fiducial_arm: int = 1, ca_arm: bool = False) -> Case:
    """A Working program: its Fe I arm (VSPARMID 1; with ``ca_arm`` also a Ca II arm, VSPARMID 2,
    elsewhere on the Sun), their L1 frames, and BLANCA result files naming ``fiducial_arm``."""
    n = next(_n)
    ipeid = f"id.pub.{n}"
    dataset_id = f"BPUB{n}"
    now = timezone.now()
    [program] = lifecycle.create_programs([ObservingProgram(
        instrument_program_execution_id=ipeid, primary_proposal_id="pid_1_118", primary_experiment_id="eid_1_118",
        observing_program_execution_id="eid_1_118_opA", instrument_name="VISP", spectral_lines=LINES_CANONICAL,
        dataset_count=2 if ca_arm else 1)], actor="test")
    dataset = Dataset.objects.create(
        dataset_id=dataset_id, program=program, primary_proposal_id="pid_1_118", primary_experiment_id="eid_1_118",
        instrument_program_execution_id=ipeid, instrument_name="VISP", create_date=now, update_date=now,
        wavelength_min=630.05, wavelength_max=630.35, stokes_parameters=stokes, spectral_lines=LINES_CANONICAL,
        frame_count=len(stokes) * steps, bucket=BUCKET, raw={"datasetId": dataset_id}, raw_hash="0" * 40)
    ca = None
    if ca_arm:
        ca = Dataset.objects.create(
            dataset_id=f"BCA{n}", program=program, primary_proposal_id="pid_1_118", primary_experiment_id="eid_1_118",
            instrument_program_execution_id=ipeid, instrument_name="VISP", create_date=now, update_date=now,
            wavelength_min=853.9, wavelength_max=854.5, stokes_parameters=stokes, spectral_lines=["Ca II 854.21"],
            frame_count=len(stokes) * steps, bucket=BUCKET, raw={"datasetId": f"BCA{n}"}, raw_hash="1" * 40)
    for step in PATHS[State.WORKING]:
        lifecycle.transition(program, step, actor="test", user=claimant, reason=f"to {step}")
    program.refresh_from_db()
    case = Case(program, dataset, root, f"/inversions/run-{n}", steps, ca)
    if l1:  # the intake does not need them
        write_demo_dataset(case.l1_folder, dataset_id, n_steps=steps, n_wave=l1_wave, n_slit=slit, compress=False, stokes=stokes,
                           fast=True, proposal_id="pid_1_118", instrument_program_id=ipeid, arm_id=1)
        if ca is not None:
            write_demo_dataset(case.l1_folder_of(ca), ca.dataset_id, n_steps=steps, n_wave=l1_wave, n_slit=slit,
                               compress=False, stokes=stokes, fast=True, proposal_id="pid_1_118",
                               instrument_program_id=ipeid, arm_id=2, wavelength_range=(853.9, 854.5),
                               bbox="(200.0,100.0),(230.0,140.0)")
    write_demo_results(case.results_folder, n_steps=result_steps or steps, n_slit=slit, n_depth=depth, n_wave=wave,
                       line_ids=(4, 23) if ca_arm else (23,), fiducial_arm=fiducial_arm, seed=n)
    # the Fe arm (two Fe I lines listed) is one profile
    return case


@pytest.fixture
def make_case_for(collections):
    def make(claimant, **kwargs) -> Case:
        return make_case(collections, claimant, **kwargs)

    return make


@pytest.fixture
def store_settings(settings, metadata_store):  # noqa: F811
    """Point the metadata-store client at the emulator, with one request per try and no sleeping."""
    settings.METADATA_STORE_URL = metadata_store.url
    settings.METADATA_STORE_TOKEN = TOKEN
    settings.METADATA_STORE_MAX_ATTEMPTS = 1
    settings.METADATA_STORE_BACKOFF_SECONDS = 0.001
    settings.METADATA_STORE_TIMEOUT = 5.0
    settings.L2_PUBLISH_BACKOFF_SECONDS = 0.01
    return metadata_store


@pytest.fixture
def make_inversion(make_program):
    """An Inversion row on a program walked to Published (``recorded``) or Inverted, with its L2 files."""
    from publishing.models import Inversion, L2File

    def make(inversion_id: str, *, lines=("Fe I (630.15 nm)",), recorded: bool = True, files: int = 0,
             proposal: str = "pid_1_118") -> Inversion:
        program = make_program(State.PUBLISHED if recorded else State.INVERTED, ipeid=f"id.{inversion_id}",
                               primary_proposal_id=proposal)
        now = timezone.now()
        inv = Inversion.objects.create(
            inversion_id=inversion_id, program=program, software_commit="abcdef1", dataset_ids=[f"D{inversion_id}"],
            spectral_lines=list(lines), raster_steps=max(files, 1), reported_collection="science-cluster",
            reported_path="/x", scratch_path="/l2/x/", reported_by="han", reported_at=now, bucket="data",
            asdf_object_key=f"{proposal}/{inversion_id}/{inversion_id}_L2_METADATA.asdf",
            store_recorded_at=now if recorded else None, generated_at=now if files else None)
        L2File.objects.bulk_create(
            [L2File(inversion=inv, kind="frame", step=i, filename=f"{inversion_id}_{i:05d}_L2.fits", size=1000 + i,
                    sha256=f"{i:064x}") for i in range(files)]
            + ([L2File(inversion=inv, kind="metadata", filename=f"{inversion_id}_L2_METADATA.asdf", size=500,
                       sha256="f" * 64)] if files else []))
        return inv

    return make
