"""Generate (restartable) and publish (transfer, then the metadata store) an inversion (DESIGN §9.1–9.3)."""
from __future__ import annotations

import os
import random
import warnings

import dkist
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from inversions import lifecycle
from inversions.models import OutboxEvent, Transition, WorkOrder
from inversions.states import State
from publishing import intake, pipeline
from publishing.l2files import QUANTITIES, frame_is_valid
from publishing.models import L2File
from publishing.pipeline import Outcome, Refused
from publishing.tasks import generate_l2, publish_l2

from .conftest import DEPTH, SLIT, STEPS

pytestmark = pytest.mark.django_db


def inverted(make_case_for, scientist, **kwargs):
    case = make_case_for(scientist, **kwargs)
    order = intake.submit_report(case.program, user=scientist, actor="han", enqueue=False, **case.report())
    assert intake.run_intake(order.pk) == intake.Outcome.DONE
    case.program.refresh_from_db()
    case.inversion = pipeline.current_inversion(case.program)
    return case


def generated(case, **kwargs):
    order = pipeline.request_generate(case.program, actor="olga", enqueue=False, **kwargs).order
    result = pipeline.run_generate(order.pk)
    assert result.outcome == Outcome.DONE, result
    order.refresh_from_db()
    case.inversion.refresh_from_db()
    return order


def files_folder(case):
    return case.root / "scratch" / case.inversion.l2_path.strip("/")


def last_transition(program):
    return Transition.objects.filter(program=program).latest("id")


# ----------------------------------------------------------------------------- generate


def test_generation_writes_valid_frames_and_the_dataset_file(make_case_for, scientist):
    case = inverted(make_case_for, scientist)
    order = generated(case)
    assert order.status == WorkOrder.Status.COMPLETED and order.progress == {"frames_done": 5, "frames_total": 5}
    assert (order.details["frames"], order.details["written"], order.details["kept"]) == (5, 5, 0)
    case.program.refresh_from_db()
    assert case.program.state == State.INVERTED  # ready to publish

    rows = list(L2File.objects.filter(inversion=case.inversion))
    frames = sorted((r for r in rows if r.kind == L2File.Kind.FRAME), key=lambda r: r.step)
    [meta] = [r for r in rows if r.kind == L2File.Kind.METADATA]
    assert [r.step for r in frames] == list(range(5))
    folder = files_folder(case)
    for row in rows:
        path = folder / row.filename
        assert path.stat().st_size == row.size and pipeline.sha256_of(path) == row.sha256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(folder / frames[2].filename, checksum=True) as hdul:
            hdul.verify("exception")
            assert [h.header["EXTNAME"] for h in hdul[1:12]] == [q.extname for q in QUANTITIES]
            primary = hdul[0].header
            assert (primary["LEVEL"], primary["DSETID"], primary["IP_ID"]) == (2, case.inversion.inversion_id,
                                                                               str(case.program))
            assert primary["DATE-BEG"] == fits.getheader(l1_frame(case, 3), 1)["DATE-BEG"]
            assert [hdul[i].header["EXTNAME"] for i in (12, 13)] == ["Fe I Profile Original", "Fe I Profile Fit"]
            assert len(hdul) == 14  # the two-line Fe arm is one profile
            assert hdul[12].header["CTYPE2"] == "AWAV"
            l2_header = hdul[2].header
    # WCS pixel (0, 0) of the L2 temperature map = pixel (0, 0) of the L1 frame of the same raster step
    l1 = fits.getheader(l1_frame(case, 3), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # MJD-* filled in from DATE-*
        w1, w2 = WCS(l1), WCS(l2_header)
    l1_world = w1.pixel_to_world_values(0, 0, 0)
    l2_world = w2.pixel_to_world_values(0, 0, 0)
    lon = [i for i, c in enumerate(w1.wcs.ctype) if c.startswith("HPLN")][0]
    lat = [i for i, c in enumerate(w1.wcs.ctype) if c.startswith("HPLT")][0]
    lon2 = [i for i, c in enumerate(w2.wcs.ctype) if c.startswith("HPLN")][0]
    lat2 = [i for i, c in enumerate(w2.wcs.ctype) if c.startswith("HPLT")][0]
    assert np.allclose([l2_world[lon2], l2_world[lat2]], [l1_world[lon], l1_world[lat]], atol=1e-9)

    assert meta.filename == f"INV_{case.inversion.inversion_id}_L2_metadata.asdf"
    inversion = dkist.load_dataset(folder / meta.filename)
    assert inversion.meta["inventory"]["inversionId"] == case.inversion.inversion_id
    assert inversion.meta["inventory"]["canonicalDataset"] == case.dataset.dataset_id
    assert list(inversion["temperature"].files.filenames) == [f.filename for f in frames]
    assert np.asarray(inversion["temperature"].data[2]).shape == (SLIT, DEPTH)


def l1_frame(case, dindex3: int):
    """The L1 file of raster step ``dindex3`` (1-based), Stokes I."""
    return next(p for p in sorted(case.l1_folder.glob("*.fits"))
                if fits.getheader(p, 1)["DINDEX3"] == dindex3 and fits.getheader(p, 1)["DINDEX4"] == 1)


def l2_sky_of_pixel_zero(case, step: int = 0) -> tuple[float, float]:
    frames = sorted(L2File.objects.filter(inversion=case.inversion, kind="frame"), key=lambda r: r.step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        world = WCS(fits.getheader(files_folder(case) / frames[step].filename, "Temperature")).pixel_to_world_values(
            0, 0, 0)
    return float(world[2]), float(world[1])  # HPLN, HPLT (axes: depth, slit = HPLT, raster = HPLN)


def l1_sky_of_pixel_zero(folder, step: int = 0) -> tuple[float, float]:
    header = next(fits.getheader(p, 1) for p in sorted(folder.glob("*.fits"))
                  if fits.getheader(p, 1)["DINDEX3"] == step + 1 and fits.getheader(p, 1)["DINDEX4"] == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        world = WCS(header).pixel_to_world_values(0, 0, 0)
    lon = [i for i, c in enumerate(header["CTYPE*"].values()) if str(c).startswith("HPLN")][0]
    lat = [i for i, c in enumerate(header["CTYPE*"].values()) if str(c).startswith("HPLT")][0]
    return float(world[lon]), float(world[lat])


@pytest.mark.parametrize("fiducial", [1, 2])
def test_the_fiducial_arm_gives_the_wcs(make_case_for, scientist, fiducial):
    """DESR-FID names the arm by its L1 VSPARMID: that arm's frames give the spatial WCS."""
    case = inverted(make_case_for, scientist, ca_arm=True, fiducial_arm=fiducial)
    assert len(case.inversion.dataset_ids) == 2 and case.inversion.spectral_lines == ["Fe I (630.15 nm)",
                                                                                      "Ca II (854.21 nm)"]
    generated(case)
    arm = case.dataset if fiducial == 1 else case.ca_arm
    other = case.ca_arm if fiducial == 1 else case.dataset
    for step in (0, 3):
        l2 = l2_sky_of_pixel_zero(case, step)
        assert np.allclose(l2, l1_sky_of_pixel_zero(case.l1_folder_of(arm), step), rtol=0, atol=0.01 / 3600)
        assert not np.allclose(l2, l1_sky_of_pixel_zero(case.l1_folder_of(other), step), rtol=0, atol=1.0 / 3600)
    meta = L2File.objects.get(inversion=case.inversion, kind="metadata")
    inversion = dkist.load_dataset(files_folder(case) / meta.filename)
    assert inversion.meta["inventory"]["canonicalDataset"] == arm.dataset_id
    assert sorted(inversion.profiles.keys()) == ["CaII854_fit", "CaII854_orig", "FeI630_fit", "FeI630_orig"]


def test_no_arm_with_the_fiducial_vsparmid_puts_the_program_in_error(make_case_for, scientist):
    case = inverted(make_case_for, scientist, fiducial_arm=3)
    order = pipeline.request_generate(case.program, actor="olga", enqueue=False).order
    assert pipeline.run_generate(order.pk).outcome == Outcome.FAILED
    case.program.refresh_from_db()
    assert case.program.state == State.ERROR
    reason = last_transition(case.program).reason
    assert "fiducial arm DESR-FID = 3" in reason and f"{case.dataset.dataset_id}: 1" in reason


def test_l1_with_one_raster_step_more_than_the_inversion(make_case_for, scientist):
    case = inverted(make_case_for, scientist, result_steps=STEPS - 1)
    order = generated(case)
    assert order.details["frames"] == STEPS - 1 == case.inversion.raster_steps
    assert np.allclose(l2_sky_of_pixel_zero(case, STEPS - 2), l1_sky_of_pixel_zero(case.l1_folder, STEPS - 2),
                       rtol=0, atol=0.01 / 3600)


def test_generation_is_restartable_and_skips_unchanged_inputs(make_case_for, scientist):
    case = inverted(make_case_for, scientist)
    first = generated(case)
    folder = files_folder(case)
    frames = sorted(L2File.objects.filter(inversion=case.inversion, kind="frame"), key=lambda r: r.step)
    kept = {f.filename: (os.stat(folder / f.filename).st_ino, os.stat(folder / f.filename).st_mtime_ns)
            for f in frames[:3]}
    for f in frames[3:]:
        (folder / f.filename).unlink()
    (folder / frames[0].filename).write_bytes(b"half a file")  # not valid: written again

    again = pipeline.request_generate(case.program, actor="olga", enqueue=False)
    assert again.skipped and again.order.pk == first.pk  # same inputs: nothing to do unless forced
    order = generated(case, force=True)
    assert (order.details["written"], order.details["kept"]) == (3, 2)
    for name, (inode, mtime) in list(kept.items())[1:]:
        assert (os.stat(folder / name).st_ino, os.stat(folder / name).st_mtime_ns) == (inode, mtime)
    assert all(frame_is_valid(folder / f.filename) for f in frames)


def test_missing_l1_frames_or_changed_results_put_the_program_in_error(make_case_for, scientist):
    case = inverted(make_case_for, scientist)
    for path in list(case.l1_folder.glob("*.fits"))[:2]:
        path.unlink()
    order = pipeline.request_generate(case.program, actor="olga", enqueue=False).order
    assert generate_l2.apply(args=[order.pk]).get() == "failed"
    case.program.refresh_from_db()
    row = last_transition(case.program)
    assert case.program.state == State.ERROR and row.details["step"] == "generate"
    assert "the L1 frames cannot be used" in row.reason and "frames missing" in row.reason
    order.refresh_from_db()
    assert order.status == WorkOrder.Status.FAILED and order.step == "headers"

    other = inverted(make_case_for, scientist)
    scratch_mod = other.root / "scratch" / other.inversion.scratch_path.strip("/") / "inv_res_mod.fits"
    with fits.open(scratch_mod, mode="update") as hdul:
        hdul[0].data[1, 0, 0, 0] += 1
    pipeline.run_generate(pipeline.request_generate(other.program, actor="olga", enqueue=False).order.pk)
    row = last_transition(other.program)
    assert row.to_state == State.ERROR and "changed since they were checked: inv_res_mod.fits" in row.reason


def test_generate_is_refused_before_inverted(make_case_for, scientist):
    case = make_case_for(scientist, l1=False)
    with pytest.raises(Refused, match="is Working: L2 files are generated for Inverted programs"):
        pipeline.request_generate(case.program, actor="olga")


# ----------------------------------------------------------------------------- publish


def test_publish_transfers_the_files_and_records_the_inversion_in_the_store(make_case_for, scientist, store_settings):
    case = inverted(make_case_for, scientist)
    generated(case)
    plan = pipeline.publish_plan(case.program)
    inv_id = case.inversion.inversion_id
    assert plan.ok and plan.path == f"/data/pid_1_118/{inv_id}/" and len(plan.files) == 6
    assert plan.record["asdfObjectKey"] == f"pid_1_118/{inv_id}/INV_{inv_id}_L2_metadata.asdf"

    order = pipeline.request_publish(case.program, actor="olga", enqueue=False).order
    assert publish_l2.apply(args=[order.pk]).get() == "done"

    case.program.refresh_from_db()
    case.inversion.refresh_from_db()
    assert case.program.state == State.PUBLISHED
    published = case.root / "publish" / "data" / "pid_1_118" / inv_id
    for f in L2File.objects.filter(inversion=case.inversion):
        assert pipeline.sha256_of(published / f.filename) == f.sha256
        assert f.object_key == f"pid_1_118/{inv_id}/{f.filename}"
    [stored] = store_settings.store.l2_inversions({"inversionId": inv_id})
    assert {k: stored[k] for k in plan.record} == plan.record
    assert case.inversion.store_recorded_at is not None and case.inversion.store_record["inversionId"] == inv_id
    row = last_transition(case.program)
    assert (row.from_state, row.to_state, row.details["inversion_id"]) == (State.INVERTED, State.PUBLISHED, inv_id)
    assert OutboxEvent.objects.filter(transition=row, routing_key="l2.program.published").exists()
    order.refresh_from_db()
    assert order.status == WorkOrder.Status.COMPLETED and order.step == "done"


def test_a_store_answering_5xx_is_retried_with_backoff(make_case_for, scientist, store_settings, settings):
    case = inverted(make_case_for, scientist)
    generated(case)
    store_settings.faults.fail(503, count=1)
    order = pipeline.request_publish(case.program, actor="olga", enqueue=False).order
    result = pipeline.run_publish(order.pk)
    assert result.outcome == Outcome.RETRY and result.delay > 0
    case.program.refresh_from_db()
    order.refresh_from_db()
    assert case.program.state == State.INVERTED and order.status == WorkOrder.Status.STARTED
    assert order.step == "notify" and order.details["notify_failures"] == 1 and "HTTP 503" in order.details["last_store_error"]

    # the task: two more 5xx answers, each followed by a retry with a longer backoff, then the store answers
    store_settings.faults.fail(502, count=2)
    assert publish_l2.apply(args=[order.pk]).get() == "done"
    order.refresh_from_db()
    case.program.refresh_from_db()
    assert case.program.state == State.PUBLISHED
    delays = order.details["notify_backoff"]
    base = settings.L2_PUBLISH_BACKOFF_SECONDS
    assert len(delays) == 3 and all(base * 2 ** n / 2 <= d <= base * 2 ** n for n, d in enumerate(delays))


def test_a_store_down_for_too_long_puts_the_program_in_error(make_case_for, scientist, store_settings, settings):
    settings.L2_PUBLISH_MAX_TRIES = 2
    case = inverted(make_case_for, scientist)
    generated(case)
    store_settings.faults.fail(500, count=5)
    order = pipeline.request_publish(case.program, actor="olga", enqueue=False).order
    assert publish_l2.apply(args=[order.pk]).get() == "failed"
    case.program.refresh_from_db()
    row = last_transition(case.program)
    assert case.program.state == State.ERROR and row.details["step"] == "publish"
    assert "stayed unavailable (2 tries)" in row.reason
    lifecycle.retry(case.program, actor="olga")  # back to Inverted: publish again
    assert case.program.state == State.INVERTED


def test_a_store_answering_4xx_puts_the_program_in_error_with_its_message(make_case_for, scientist, store_settings):
    case = inverted(make_case_for, scientist)
    generated(case)
    store_settings.faults.bad_request("bucket 'data' is not writable by this token")
    order = pipeline.request_publish(case.program, actor="olga", enqueue=False).order
    assert pipeline.run_publish(order.pk).outcome == Outcome.FAILED
    case.program.refresh_from_db()
    row = last_transition(case.program)
    assert case.program.state == State.ERROR and row.details["step"] == "publish"
    assert "the metadata store refused the inversion" in row.reason
    assert "bucket 'data' is not writable by this token" in row.reason
    order.refresh_from_db()
    assert order.status == WorkOrder.Status.FAILED and order.step == "notify"
    assert not store_settings.store.l2_inversions()


def test_publish_needs_generated_files(make_case_for, scientist):
    case = inverted(make_case_for, scientist, l1=False)
    plan = pipeline.publish_plan(case.program)
    assert plan.problems == ["no L2 files have been generated yet"]
    with pytest.raises(Refused, match="no L2 files have been generated yet"):
        pipeline.request_publish(case.program, actor="olga")


def test_backoff_grows_exponentially_with_bounded_jitter():
    rng = random.Random(1)
    for failures in range(1, 8):
        cap = min(3600.0, 30.0 * 2 ** (failures - 1))
        delays = [pipeline.backoff_delay(failures, base=30.0, rng=rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays) and len(set(delays)) > 40
    assert pipeline.backoff_delay(30, base=30.0, rng=rng) <= 3600.0


def test_generation_reads_the_l1_frames_preprocessing_staged(make_case_for, scientist):
    import shutil

    from inversions import work_orders

    case = inverted(make_case_for, scientist)
    staged = f"/preprocess/pid_1_118/{case.program}/l1/{case.dataset.dataset_id}.000000000000/"
    shutil.move(case.l1_folder, case.root / "scratch" / staged.strip("/"))  # no L1 collection copy any more
    order = work_orders.request(case.program, WorkOrder.Kind.PREPROCESS, requested_by="beat").order
    work_orders.complete(order, details={"datasets": [{"dataset_id": case.dataset.dataset_id, "staged": staged}]})
    done = generated(case)
    assert done.details["written"] == 5 and "l1_stage" not in done.details  # nothing staged again
