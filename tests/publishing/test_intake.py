"""Result intake (DESIGN §8): a report is checked at once, its files by a worker, then Inverted or Error."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits

from inversions import lifecycle
from inversions.models import OutboxEvent, Transition, WorkOrder
from inversions.states import State
from publishing import intake
from publishing.intake import Outcome, ReportRejected, submit_report
from publishing.models import Inversion
from publishing.tasks import intake_results

from .conftest import COMMIT, LINES_STORE

pytestmark = pytest.mark.django_db


@pytest.fixture
def make_case_for(make_case_for):
    """Cases without L1 frames: the intake reads only the result files."""
    return lambda claimant, **kwargs: make_case_for(claimant, l1=False, **kwargs)


def snapshot(program):
    program.refresh_from_db()
    return program.state, program.claimed_by_id, Transition.objects.filter(program=program).count()


def report(case, user, **changes):
    return submit_report(case.program, user=user, actor=user.get_username(), enqueue=False, **case.report(**changes))


def test_good_results_become_an_inversion_and_the_program_inverted(make_case_for, scientist):
    case = make_case_for(scientist)
    order = report(case, scientist)
    assert order.kind == WorkOrder.Kind.INTAKE and order.status == WorkOrder.Status.QUEUED
    assert snapshot(case.program)[:2] == (State.WORKING, scientist.pk)  # nothing decided before the files are checked

    assert intake_results.apply(args=[order.pk]).get() == "done"

    case.program.refresh_from_db()
    assert case.program.state == State.INVERTED
    inv = Inversion.objects.get(program=case.program)
    assert inv.inversion_id == order.details["inversion_id"] and inv.inversion_id.startswith("L2")
    assert (inv.software_commit, inv.dataset_ids, inv.raster_steps) == (COMMIT, [case.dataset.dataset_id], case.steps)
    # the two-line Fe arm (LINES_STORE) is one profile, named by BLANCA's id 23
    assert len(LINES_STORE) == 2 and inv.spectral_lines == ["Fe I (630.15 nm)"]
    assert inv.bucket == "data" and inv.reported_by == "han"
    files = {f["name"]: f for f in inv.result_files}
    for name in ("inv_res_mod.fits", "inv_res_pre.fits", "per_ori.fits"):
        data = (case.results_folder / name).read_bytes()
        assert files[name]["size"] == len(data) and files[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert (case.root / "scratch" / inv.scratch_path.strip("/") / name).read_bytes() == data  # fetched copy
    row = Transition.objects.filter(program=case.program).latest("id")
    assert (row.from_state, row.to_state, row.actor) == (State.WORKING, State.INVERTED, "han")
    assert row.details["inversion_id"] == inv.inversion_id and len(row.details["files"]) == 3
    assert OutboxEvent.objects.filter(transition=row, routing_key="l2.program.inverted").exists()
    order.refresh_from_db()
    assert order.status == WorkOrder.Status.COMPLETED and order.attempts == 1
    assert intake.run_intake(order.pk) == Outcome.NOTHING  # a redelivered task does nothing


def test_results_with_one_raster_step_fewer_are_accepted(make_case_for, scientist):
    """The inversion code drops an incomplete last raster step: L1 may have one step more."""
    case = make_case_for(scientist, result_steps=4)
    order = report(case, scientist)
    assert intake.run_intake(order.pk) == Outcome.DONE
    assert Inversion.objects.get(program=case.program).raster_steps == 4


def test_results_with_the_wrong_number_of_steps_send_the_program_to_error(make_case_for, scientist):
    case = make_case_for(scientist, result_steps=3)
    order = report(case, scientist)
    assert intake.run_intake(order.pk) == Outcome.REFUSED
    case.program.refresh_from_db()
    assert case.program.state == State.ERROR
    error = Transition.objects.filter(program=case.program).latest("id")
    assert error.details["step"] == "results"
    assert "were refused" in error.reason and "has 3 raster steps" in error.reason
    assert "the program's L1 datasets have 5" in error.reason
    assert not Inversion.objects.exists()
    order.refresh_from_db()
    assert order.status == WorkOrder.Status.FAILED and order.error == error.reason and order.step == "check"
    assert OutboxEvent.objects.filter(transition=error, routing_key="l2.program.error").exists()
    # an operator's retry brings it back to Working: the team may report corrected files
    lifecycle.retry(case.program, actor="olga")
    assert case.program.state == State.WORKING


def test_missing_and_unreadable_files_are_refused_with_the_file_named(make_case_for, scientist):
    case = make_case_for(scientist)
    (case.results_folder / "per_ori.fits").unlink()
    intake.run_intake(report(case, scientist).pk)
    case.program.refresh_from_db()
    reason = Transition.objects.filter(program=case.program).latest("id").reason
    assert case.program.state == State.ERROR and "per_ori.fits does not exist" in reason

    other = make_case_for(scientist)
    (other.results_folder / "inv_res_pre.fits").write_bytes(b"not FITS" * 400)
    intake.run_intake(report(other, scientist).pk)
    reason = Transition.objects.filter(program=other.program).latest("id").reason
    assert "inv_res_pre.fits is not a readable FITS file" in reason


def test_disagreeing_shapes_are_refused(make_case_for, scientist):
    case = make_case_for(scientist)
    ori = fits.getdata(case.results_folder / "per_ori.fits", ext=0)
    with fits.open(case.results_folder / "per_ori.fits", mode="update") as hdul:
        hdul[0].data = np.ascontiguousarray(ori[:, :-2])
    intake.run_intake(report(case, scientist).pk)
    reason = Transition.objects.filter(program=case.program).latest("id").reason
    assert "differs" in reason and "per_ori.fits" in reason


BAD_FIELDS = [
    ({"collection": ""}, "collection", "collection is required"),
    ({"collection": "blanca"}, "collection", "unknown collection 'blanca' (known: dkist-l1, publish, science-cluster, scratch)"),
    ({"path": "inversions/run"}, "path", "must be absolute"),
    ({"path": "/inversions/../../x"}, "path", "contains '..'"),
    ({"software_commit": "xyz"}, "software_commit", "7 to 40 hexadecimal digits"),
    ({"dataset_ids": []}, "dataset_ids", "name at least one dataset"),
    ({"dataset_ids": ["NOPE"]}, "dataset_ids", "not a current dataset"),
    ({"notes": "x" * 10_001}, "notes", "notes are limited"),
]


def test_bad_fields_are_refused_at_once_with_a_clear_message(make_case_for, scientist):
    case = make_case_for(scientist)
    before = snapshot(case.program)
    for changes, field, message in BAD_FIELDS:
        with pytest.raises(ReportRejected) as info:
            report(case, scientist, **changes)
        assert message in info.value.message and info.value.field == field, changes
    assert snapshot(case.program) == before and not WorkOrder.objects.exists()


def test_claim_state_and_a_second_report_are_checked(make_case_for, scientist, make_user):
    case = make_case_for(scientist)
    other = make_user("blanca", "science")
    with pytest.raises(ReportRejected, match="claimed by han, not by you"):
        report(case, other)
    first = report(case, scientist)
    with pytest.raises(ReportRejected, match=rf"being fetched and checked \(intake #{first.pk}\)"):
        submit_report(case.program, user=other, actor="api:blanca", require_claim=False, enqueue=False,
                      **case.report())
    intake.run_intake(first.pk)
    with pytest.raises(ReportRejected, match="is Inverted, not Working"):
        report(case, scientist)


def test_the_program_released_meanwhile_is_not_made_inverted(make_case_for, scientist):
    case = make_case_for(scientist)
    order = report(case, scientist)
    lifecycle.release(case.program, user=scientist)
    assert intake.run_intake(order.pk) == Outcome.NOTHING
    order.refresh_from_db()
    case.program.refresh_from_db()
    assert case.program.state == State.PREPROCESSED and order.status == WorkOrder.Status.FAILED
    assert "not Working" in order.error and not Inversion.objects.exists()


def test_a_report_enqueues_the_worker_task_on_commit(make_case_for, scientist, django_capture_on_commit_callbacks,
                                                     monkeypatch):
    case = make_case_for(scientist)
    sent = []
    monkeypatch.setattr(intake_results, "delay", lambda order_id: sent.append(order_id))
    with django_capture_on_commit_callbacks(execute=True):
        order = submit_report(case.program, user=scientist, actor="han", **case.report())
    assert sent == [order.pk]
