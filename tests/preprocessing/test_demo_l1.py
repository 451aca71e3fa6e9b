"""Fast demo L1 frames (demo_l1.write_small_dataset) and `manage.py make_demo_l1`."""
from __future__ import annotations

import io

import numpy as np
import pytest
from astropy.io import fits
from django.core.management import call_command

from inversions.preprocessing.demo_l1 import write_small_dataset
from inversions.preprocessing.l1_frames import write_demo_dataset
from inversions.preprocessing.verify import verify_dataset

PER_FRAME = {"FILE_ID", "FILENAME", "DATE", "CHECKSUM", "DATASUM"}


def _by_place(paths):
    out = {}
    for p in paths:
        with fits.open(p, checksum=True) as hdul:
            hdul.verify("exception")
            h = hdul[1].header
            out[(h["STOKES"], h["VSPMAP"], h["VSPSTP"])] = (h.copy(), np.array(hdul[1].data))
    return out


def test_same_frames_as_the_astropy_writer(tmp_path):
    args = dict(n_steps=3, n_maps=2, stokes="IQUV", n_wave=20, n_slit=12, seed=4)
    fast = _by_place(write_small_dataset(tmp_path / "fast", "BDWQK", **args))
    slow = _by_place(write_demo_dataset(tmp_path / "slow", "BDWQK", compress=False, **args))
    assert fast.keys() == slow.keys() and len(fast) == 24
    for place, (header, data) in slow.items():
        other, other_data = fast[place]
        assert list(other.keys()) == list(header.keys())
        for key in header:
            if key not in PER_FRAME:
                assert other[key] == header[key], (place, key)
        assert other_data.shape == data.shape == (1, 20, 12)
        # the same synthetic spectra; only the noise differs
        assert np.allclose(other_data, data, rtol=0.02)


def test_small_dataset_verifies_and_intensity_only(tmp_path):
    paths = write_small_dataset(tmp_path, "AYDEW", n_steps=5, stokes="I")
    inventory = verify_dataset(paths, 5)
    assert inventory.cube_shape == (1, 1, 5, 32, 24) and inventory.stokes == "I"
    assert not list(tmp_path.glob(".*"))  # no temporary files left


@pytest.mark.django_db
def test_make_demo_l1_writes_the_first_programs_beat_takes_once(l1_program, collections, settings):
    from inversions.models import Dataset, ObservingProgram

    big = l1_program(arms=(("IQUV", 9),), write=False)
    small = l1_program(arms=(("IQUV", 3), ("IQUV", 3)), write=False)
    ObservingProgram.objects.filter(pk=small.pk).update(priority=1)  # beat takes it first
    Dataset.objects.filter(program=small).update(bounding_box=[[-30.15, 129.82], [-52.98, 54.94]])
    out = io.StringIO()
    call_command("make_demo_l1", "--programs", "1", stdout=out)
    assert "1 program(s); 24 frames written" in out.getvalue()
    for dataset in small.datasets.all():
        paths = sorted(l1_program.l1_folder(dataset).glob("*.fits"))
        assert len(paths) == 12
        inventory = verify_dataset(paths, 12)
        assert inventory.dataset_id == dataset.dataset_id
        assert inventory.header["IP_ID"] == small.instrument_program_execution_id
    assert not l1_program.l1_folder(big.datasets.get()).exists()
    out = io.StringIO()
    call_command("make_demo_l1", "--programs", "1", stdout=out)  # again: nothing to do
    assert "0 frames written, 2 dataset(s) already there" in out.getvalue()
    settings.L2_DEMO_L1_PROGRAMS = 5
    out = io.StringIO()
    call_command("make_demo_l1", stdout=out)
    assert "2 program(s); 36 frames written" in out.getvalue()


@pytest.mark.django_db
def test_make_demo_l1_needs_a_local_l1_collection(settings):
    from django.core.management.base import CommandError

    settings.L2_COLLECTIONS = {"scratch": "/tmp"}
    with pytest.raises(CommandError, match="the L1 collection is not a folder on this machine"):
        call_command("make_demo_l1")


@pytest.mark.django_db
def test_make_demo_l1_start_preprocesses_only_the_programs_with_frames(l1_program, collections):
    from inversions.models import WorkOrder

    with_files = l1_program(arms=(("IQUV", 3),), write=False)
    without = l1_program(arms=(("IQUV", 3),), write=False)
    out = io.StringIO()
    call_command("make_demo_l1", "--programs", "1", "--start", stdout=out)
    chosen = with_files if WorkOrder.objects.filter(program=with_files).exists() else without
    other = without if chosen == with_files else with_files
    order = WorkOrder.objects.get(program=chosen)
    assert (order.kind, order.status, order.requested_by) == ("preprocess", "queued", "demo")
    assert f"{chosen}: preprocessing started" in out.getvalue()
    assert not WorkOrder.objects.filter(program=other).exists()
    call_command("make_demo_l1", "--programs", "1", "--start", stdout=io.StringIO())  # again: the active order stands
    assert WorkOrder.objects.filter(program=chosen).count() == 1


@pytest.mark.django_db
def test_make_demo_l1_again_keeps_the_same_programs_and_starts_no_more(l1_program, collections):
    from inversions import lifecycle
    from inversions.models import WorkOrder

    programs = [l1_program(arms=(("IQUV", 3),), write=False) for _ in range(3)]
    call_command("make_demo_l1", "--programs", "1", "--start", stdout=io.StringIO())
    [chosen] = [p for p in programs if WorkOrder.objects.filter(program=p).exists()]
    # preprocessing ends: the program is no longer Invertible, as after a first `l2 up`
    WorkOrder.objects.filter(program=chosen).update(status=WorkOrder.Status.COMPLETED)
    lifecycle.transition(chosen, "preprocessed", actor="test", reason="preprocessed")
    out = io.StringIO()
    call_command("make_demo_l1", "--programs", "1", "--start", "--results", stdout=out)  # a restart
    assert WorkOrder.objects.count() == 1  # no other program preprocessed
    assert "1 program(s); 0 frames written, 1 dataset(s) already there" in out.getvalue()
    assert f"{chosen}: demo results" in out.getvalue()
