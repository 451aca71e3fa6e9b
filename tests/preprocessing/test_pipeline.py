"""The preprocessing pipeline (inversions.pipeline) on real L1 files, its tasks called directly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from inversions import pipeline, tasks, work_orders
from inversions.models import Transition, WorkOrder
from inversions.preprocessing.verify import file_checksum, verify_checksums
from inversions.states import State
from inversions.transfers import local_folder

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch):
    """Messages the tasks would send to the broker (next steps), recorded instead."""
    calls = []
    monkeypatch.setattr(pipeline, "dispatch", lambda order_id, step, **kw: calls.append((order_id, step)))
    return calls


def run(order_id: int, limit: int = 50) -> list[str]:
    """Drive an order through its steps in this process (what the chained tasks do)."""
    order = WorkOrder.objects.get(pk=order_id)
    step, seen = order.step or "stage", []
    for _ in range(limit):
        outcome = pipeline.execute(order_id, step)
        seen.append(step)
        if outcome.retry_in is not None:
            continue
        if outcome.next_step is None:
            return seen
        step = outcome.next_step
    raise AssertionError(f"order {order_id} did not finish: {seen}")


def start(program, **kw) -> WorkOrder:
    result = pipeline.start(program, requested_by="test", **kw)
    assert result.created, result.reason
    return result.order


def test_chained_tasks_preprocess_a_program(l1_program, collections, sent):
    program = l1_program()
    order = start(program)
    step = "stage"
    while step:
        before = len(sent)
        tasks.PREPROCESS_TASKS[step].apply(args=[order.pk]).get()
        step = sent[-1][1] if len(sent) > before else None
    assert [s for _, s in sent] == ["verify", "assemble", "quicklook", "handover"]
    order.refresh_from_db()
    program.refresh_from_db()
    assert order.status == "completed" and order.step == "done" and order.error == ""
    assert program.state == State.PREPROCESSED
    [row] = Transition.objects.filter(program=program, to_state=State.PREPROCESSED)
    assert row.actor == "worker" and row.details["order"] == order.pk and row.details["cubes"] == 2
    assert "2 Stokes cubes handed over to science-cluster:/l2/pid_1_118/" in row.reason
    # progress as the program page shows it
    assert order.progress["files_staged"] == order.progress["files_expected"] == 12 + 8
    assert order.progress["frames_assembled"] == order.progress["frames_total"] == 20
    assert order.progress["bytes_written"] > 0 and order.progress["quicklooks"] == 4  # two IQUV arms: continuum + NCP each
    assert set(order.details["timings"]) == set(pipeline.STEPS)
    assert order.attempts == 5 and order.started_at and order.finished_at


def test_outputs_and_manifest_on_the_science_cluster(l1_program, collections, sent):
    program = l1_program(arms=(("IQUV", 3), ("I", 4)))
    order = start(program)
    assert run(order.pk) == list(pipeline.STEPS)
    order.refresh_from_db()
    science = local_folder("science-cluster", pipeline.science_path(program))
    manifest = json.loads((science / "manifest.json").read_text())
    assert manifest["program"] == program.instrument_program_execution_id and manifest["order"] == order.pk
    # every output listed, with its size and checksum, and there
    names = sorted(o["name"] for o in manifest["outputs"])
    datasets = sorted(d.dataset_id for d in program.datasets.all())
    assert names == sorted([f"{d}.fits" for d in datasets] + [f"quicklook/{datasets[0]}_continuum.png",
                                                               f"quicklook/{datasets[0]}_ncp.png",
                                                               f"quicklook/{datasets[1]}_continuum.png"])
    for output in manifest["outputs"]:
        path = science / output["name"]
        assert path.stat().st_size == output["size"] and file_checksum(path) == output["sha256"]
    # the cubes verify (CHECKSUM/DATASUM) and have the shape of their datasets
    for output in (o for o in manifest["outputs"] if o["kind"] == "stokes cube"):
        with fits.open(science / output["name"], checksum=True) as hdul:
            shape = hdul[0].data.shape
            assert hdul[0].header["DSETID"] == output["dataset_id"] and hdul[0].header["CNORM"] > 0
            assert np.isfinite(hdul[0].data).all()
        assert list(shape) == output["shape"]
    assert {tuple(o["shape"][:1]) for o in manifest["outputs"] if o["kind"] == "stokes cube"} == {(4,), (1,)}
    # inputs: every frame, with its size and checksums, as it was verified
    [iquv] = [i for i in manifest["inputs"] if i["frames"] == 12]
    assert len(iquv["files"]) == 12 and iquv["fingerprint"] == order.input_checksums[iquv["dataset_id"]]
    l1 = {p.name: p for p in l1_program.l1_folder(program.datasets.get(dataset_id=iquv["dataset_id"])).iterdir()}
    for f in iquv["files"]:
        assert l1[f["name"]].stat().st_size == f["size"]
    assert manifest["destination"] == {"collection": "science-cluster", "path": pipeline.science_path(program)}
    assert set(manifest["timings_seconds"]) >= {"stage", "verify", "assemble", "quicklook"}
    # the order keeps the summary, with the manifest's own checksum
    summary = order.details["manifest"]
    assert summary["sha256"] == file_checksum(science / "manifest.json")


def test_redelivered_steps_do_nothing_twice(l1_program, collections, sent):
    program = l1_program()
    order = start(program)
    run(order.pk)
    order.refresh_from_db()
    attempts = order.attempts
    # every step delivered again after the order finished: nothing happens
    for step in pipeline.STEPS:
        assert pipeline.execute(order.pk, step).finished
    order.refresh_from_db()
    assert order.attempts == attempts and order.status == "completed"
    assert Transition.objects.filter(program=program, to_state=State.PREPROCESSED).count() == 1


def test_a_step_delivered_twice_resends_the_next_one(l1_program, collections, sent):
    program = l1_program()
    order = start(program)
    assert pipeline.execute(order.pk, "stage").next_step == "verify"
    # the worker died after advancing the order, before the verify message left: stage comes again
    again = pipeline.execute(order.pk, "stage")
    assert again.next_step == "verify" and again.finished
    # an older step's message (stale) does nothing at all
    assert pipeline.execute(order.pk, "verify").next_step == "assemble"
    stale = pipeline.execute(order.pk, "stage")
    assert stale.next_step is None and stale.finished


def test_resume_after_a_killed_assembly_keeps_finished_cubes(l1_program, collections, sent, monkeypatch):
    from inversions.preprocessing import assemble

    program = l1_program()
    order = start(program)
    for step in ("stage", "verify"):
        pipeline.execute(order.pk, step)
    real = assemble.assemble_cube
    calls = []

    def dies_on_second(inventory, out_path, **kw):
        calls.append(inventory.dataset_id)
        if len(calls) == 2:
            Path(out_path).with_name(f".{Path(out_path).name}.deadbeef.partial").write_bytes(b"half")
            raise KeyboardInterrupt("worker killed")  # not an Exception: nothing classifies it
        return real(inventory, out_path, **kw)

    monkeypatch.setattr(assemble, "assemble_cube", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        pipeline.execute(order.pk, "assemble")
    order.refresh_from_db()
    assert order.status == "started" and order.step == "assemble" and len(order.details["outputs"]) == 1
    monkeypatch.setattr(assemble, "assemble_cube", lambda inventory, out_path, **kw: (calls.append(inventory.dataset_id), real(inventory, out_path, **kw))[1])
    assert pipeline.execute(order.pk, "assemble").next_step == "quicklook"
    assert calls[2:] == [calls[1]]  # only the unfinished cube was assembled again
    folder = local_folder("scratch", order.details["out"])
    assert not list(folder.glob(".*.partial"))
    run(order.pk)
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED


# --- Failures --------------------------------------------------------------------------
def _corrupt_datasum(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # a byte of the frame's data: DATASUM no longer matches
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2880])


def _missing(path: Path) -> None:
    path.unlink()


def _inconsistent(path: Path) -> None:
    with fits.open(path, mode="update", checksum=True) as hdul:
        hdul[1].header["DSETID"] = "ZZZZZ"
        hdul.flush()


@pytest.mark.parametrize(
    "damage, step, words",
    [
        (_corrupt_datasum, "preprocess.verify", "checksum failed"),
        (_truncate, "preprocess.verify", "truncated"),
        (_missing, "preprocess.verify", "frames missing"),
        (_inconsistent, "preprocess.verify", "header DSETID='ZZZZZ' differs"),
    ],
    ids=["bad-checksum", "truncated", "missing-frame", "inconsistent-headers"],
)
def test_bad_l1_sends_the_program_to_error_naming_file_and_problem(l1_program, collections, sent, damage, step,
                                                                   words):
    bad, good = l1_program(), l1_program()
    dataset = bad.datasets.order_by("dataset_id").last()
    victim = sorted(l1_program.l1_folder(dataset).glob("*.fits"))[5]
    damage(victim)
    bad_order, good_order = start(bad), start(good)
    run(bad_order.pk)
    run(good_order.pk)
    bad.refresh_from_db()
    good.refresh_from_db()
    bad_order.refresh_from_db()
    assert bad.state == State.ERROR and good.state == State.PREPROCESSED
    error = Transition.objects.get(program=bad, to_state=State.ERROR)
    assert error.details["step"] == step and error.details["order"] == bad_order.pk
    assert words in error.reason and f"dataset {dataset.dataset_id}" in error.reason
    if damage is not _missing:
        assert victim.name in error.reason
    assert bad_order.status == "failed" and words in bad_order.error
    assert bad_order.details["failure"]["step"] == step


def test_empty_l1_folder_fails_at_stage(l1_program, collections, sent):
    program = l1_program(write=False)
    order = start(program)
    run(order.pk)
    program.refresh_from_db()
    error = Transition.objects.get(program=program, to_state=State.ERROR)
    assert error.details["step"] == "preprocess.stage" and error.details["where"] == "transfer"
    assert error.reason == f"staging the L1 files: dkist-l1:{pipeline.l1_path(program.datasets.first())} is not a folder"


def test_transient_errors_are_retried_then_given_up(l1_program, collections, sent, monkeypatch):
    from inversions.errors import RetryError
    from inversions.preprocessing import quicklook

    program = l1_program()
    order = start(program)
    failures = iter([True, False, False])  # per cube: 2 cubes

    def flaky(*a, **kw):
        if next(failures, True):
            raise RetryError("disk hiccup", step="preprocess.quicklook")
        return real(*a, **kw)

    real = quicklook.quicklook_pngs
    monkeypatch.setattr(quicklook, "quicklook_pngs", flaky)
    seen = run(order.pk)
    assert seen.count("quicklook") == 2  # failed once, passed the second time
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED
    order.refresh_from_db()
    assert order.details["retries"] == {"quicklook": 1}

    # always failing: L2_PREPROCESS_MAX_RETRIES (2) retries, then Error with the reason
    other = l1_program()
    monkeypatch.setattr(quicklook, "quicklook_pngs", lambda *a, **kw: (_ for _ in ()).throw(RetryError("disk gone", step="preprocess.quicklook")))
    seen = run(start(other).pk)
    assert seen.count("quicklook") == 3
    other.refresh_from_db()
    error = Transition.objects.get(program=other, to_state=State.ERROR)
    assert error.reason == "disk gone (gave up after 2 retries)" and error.details["step"] == "preprocess.quicklook"


def test_retry_task_uses_celery_retry_with_backoff(l1_program, collections, sent, monkeypatch, settings):
    from celery.exceptions import Retry

    from inversions.errors import BackoffRetryError

    settings.L2_PREPROCESS_RETRY_SECONDS = 10
    program = l1_program()
    order = start(program)
    monkeypatch.setattr(pipeline, "step_stage", lambda o, p: (_ for _ in ()).throw(BackoffRetryError("Globus busy")))
    monkeypatch.setitem(pipeline.STEP_FUNCTIONS, "stage", pipeline.step_stage)
    retried = []
    monkeypatch.setattr(tasks.preprocess_stage, "retry", lambda **kw: retried.append(kw) or Retry("again"))
    with pytest.raises(Retry):
        tasks.preprocess_stage.run(order.pk)
    assert 5 <= retried[0]["countdown"] <= 10 and retried[0]["max_retries"] is None
    with pytest.raises(Retry):
        tasks.preprocess_stage.run(order.pk)
    assert 10 <= retried[1]["countdown"] <= 20  # exponential, with jitter
    order.refresh_from_db()
    assert order.status == "started" and order.details["last_problem"] == "Globus busy"


def test_unexpected_exception_fails_with_a_readable_reason(l1_program, collections, sent, monkeypatch):
    program = l1_program()
    order = start(program)
    monkeypatch.setitem(pipeline.STEP_FUNCTIONS, "stage", lambda o, p: {}["no such key"])
    assert pipeline.execute(order.pk, "stage").finished
    program.refresh_from_db()
    error = Transition.objects.get(program=program, to_state=State.ERROR)
    assert error.reason == "unexpected error in stage: KeyError: 'no such key'"


def test_program_that_moved_on_cancels_the_order(l1_program, collections, sent):
    from inversions import lifecycle

    program = l1_program()
    order = start(program)
    pipeline.execute(order.pk, "stage")
    lifecycle.datasets_changed([program.pk])  # a scan saw new datasets: back to Discovered
    assert pipeline.execute(order.pk, "verify").finished
    order.refresh_from_db()
    program.refresh_from_db()
    assert order.status == "failed" and "cancelled" in order.error and program.state == State.DISCOVERED


# --- Same inputs, force -------------------------------------------------------------------
def test_same_inputs_do_no_work_the_second_time_unless_forced(l1_program, collections, sent, monkeypatch,
                                                              django_capture_on_commit_callbacks):
    from inversions.preprocessing import assemble

    program = l1_program()
    first = start(program)
    run(first.pk)
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED
    assembled = []
    real = assemble.assemble_cube
    monkeypatch.setattr(assemble, "assemble_cube",
                        lambda inv, out, **kw: (assembled.append(inv.dataset_id), real(inv, out, **kw))[1])

    again = start(program)  # an operator starts it again, inputs unchanged
    assert run(again.pk) == ["stage", "verify"]
    again.refresh_from_db()
    assert again.status == "completed" and again.details["same_as"] == first.pk and assembled == []
    assert again.input_fingerprint == WorkOrder.objects.get(pk=first.pk).input_fingerprint
    assert again.details["outputs"] == WorkOrder.objects.get(pk=first.pk).details["outputs"]
    assert again.progress["files_unchanged"] == 20  # nothing copied either
    assert "inputs unchanged since order" in again.details["note"]

    forced = start(program, forced=True)
    with django_capture_on_commit_callbacks(execute=True):  # the clean-up after completion
        assert run(forced.pk) == list(pipeline.STEPS)
    forced.refresh_from_db()
    assert forced.status == "completed" and sorted(assembled) == sorted(d.dataset_id for d in program.datasets.all())
    assert "same_as" not in forced.details
    # still one Preprocessed row: re-runs of a Preprocessed program change no state
    assert Transition.objects.filter(program=program, to_state=State.PREPROCESSED).count() == 1
    # the first order's folder was cleaned up once the forced one completed
    first.refresh_from_db()
    assert not local_folder("scratch", first.details["out"]).exists()
    assert local_folder("scratch", forced.details["out"]).is_dir()


def test_invertible_again_with_same_inputs_goes_straight_to_preprocessed(l1_program, collections, sent):
    from inversions import lifecycle

    program = l1_program()
    run(start(program).pk)
    program.refresh_from_db()
    lifecycle.datasets_changed([program.pk])  # metadata changed, files did not
    lifecycle.transition(program, State.INVERTIBLE, actor="scan", reason="qualified")
    order = start(program)
    assert run(order.pk) == ["stage", "verify"]
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED
    latest = Transition.objects.filter(program=program).order_by("-id").first()
    assert latest.to_state == State.PREPROCESSED and "inputs unchanged since order" in latest.reason


def test_start_refuses_other_states_and_returns_the_active_order(l1_program, make_program, collections):
    queued = make_program(State.QUEUED)
    with pytest.raises(pipeline.StartRefused, match="is Queued: only Invertible programs are preprocessed"):
        pipeline.start(queued, requested_by="olga")
    program = l1_program()
    first = pipeline.start(program, requested_by="olga")
    second = pipeline.start(program, requested_by="olga", forced=True)
    assert first.created and not second.created and second.order.pk == first.order.pk


# --- Beat ------------------------------------------------------------------------------
def test_beat_starts_invertible_programs_up_to_the_bound(l1_program, make_program, collections, settings,
                                                         django_capture_on_commit_callbacks, sent):
    from inversions import lifecycle

    settings.L2_PREPROCESS_CONCURRENCY = 2
    programs = [l1_program(write=False) for _ in range(3)]
    make_program(State.PREPROCESSED)
    with django_capture_on_commit_callbacks(execute=True):
        result = pipeline.schedule()
    assert len(result["started"]) == 2
    assert sorted(step for _, step in sent) == ["stage", "stage"]
    assert work_orders.count_active(WorkOrder.Kind.PREPROCESS) == 2
    # full: nothing more
    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline.schedule()["started"] == []
    # one finishes (its program Preprocessed): one more starts, the Invertible program without an order
    done = WorkOrder.objects.get(pk=result["started"][0])
    WorkOrder.objects.filter(pk=done.pk).update(status="completed")
    lifecycle.transition(done.program, State.PREPROCESSED, actor="worker")
    with django_capture_on_commit_callbacks(execute=True):
        third = pipeline.schedule()["started"]
    assert len(third) == 1
    assert WorkOrder.objects.get(pk=third[0]).program_id == programs[2].pk
    assert WorkOrder.objects.get(pk=third[0]).requested_by == "beat"


def test_beat_resends_stalled_orders(l1_program, collections, settings, django_capture_on_commit_callbacks, sent):
    from datetime import timedelta

    from django.utils import timezone

    settings.L2_PREPROCESS_CONCURRENCY = 0
    program = l1_program()
    order = start(program)
    pipeline.execute(order.pk, "stage")
    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline.schedule()["redispatched"] == []  # its heartbeat is fresh
    WorkOrder.objects.filter(pk=order.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.L2_HEARTBEAT_STALE_SECONDS + 1))
    with django_capture_on_commit_callbacks(execute=True):
        result = pipeline.schedule()
    assert result == {"started": [], "redispatched": [order.pk], "restaged": []} and sent[-1] == (order.pk, "verify")


def test_beat_task_is_registered(settings):
    from django_celery_beat.models import PeriodicTask

    from inversions.schedules import ensure_periodic_tasks

    ensure_periodic_tasks()
    task = PeriodicTask.objects.get(name="preprocess invertible programs")
    assert task.task == "inversions.preprocess_pending" and task.task in tasks.preprocess_pending.app.tasks


def test_outputs_verify_on_scratch(l1_program, collections, sent):
    program = l1_program()
    order = start(program)
    run(order.pk)
    order.refresh_from_db()
    folder = local_folder("scratch", order.details["out"])
    for cube in order.details["outputs"].values():
        with fits.open(folder / cube["name"], memmap=False) as hdul:
            regions = [(i["hdrLoc"], i["datLoc"], i["datLoc"] + i["datSpan"]) for i in (hdul.fileinfo(n) for n in range(len(hdul)))]
        assert verify_checksums(folder / cube["name"], regions, sha256=True) == cube["sha256"]


def test_private_scratch_pins_the_order_to_the_worker_that_staged_it(l1_program, collections, settings, monkeypatch,
                                                                      django_capture_on_commit_callbacks):
    """With a private scratch the staging worker's name is on the order; a later step that
    reaches another worker is dropped; beat resends a stalled step to the staging worker's own
    queue; every step records its one run and its worker."""
    from datetime import timedelta

    from django.utils import timezone

    queues = []
    monkeypatch.setattr(pipeline, "dispatch", lambda order_id, step, queue=None, **kw: queues.append((step, queue)))
    settings.L2_SCRATCH_PRIVATE = True
    settings.L2_PREPROCESS_CONCURRENCY = 0
    order = start(l1_program())
    assert pipeline.execute(order.pk, "stage", worker="a@host").next_step == "verify"
    stray = pipeline.execute(order.pk, "verify", worker="b@host")
    assert stray.finished and stray.next_step is None and "a@host" in stray.note
    assert WorkOrder.objects.get(pk=order.pk).details["runs"] == {"stage": 1}  # b did nothing
    WorkOrder.objects.filter(pk=order.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.L2_HEARTBEAT_STALE_SECONDS + 1))
    with django_capture_on_commit_callbacks(execute=True):
        assert pipeline.schedule(queue="shared")["redispatched"] == [order.pk]
    assert queues[-1] == ("verify", "a@host.dq2")
    for step in pipeline.STEPS[1:]:
        pipeline.execute(order.pk, step, worker="a@host")
    done = WorkOrder.objects.get(pk=order.pk)
    assert done.status == "completed"
    assert done.details["runs"] == {step: 1 for step in pipeline.STEPS}
    assert done.details["workers"] == {step: "a@host" for step in pipeline.STEPS}
    assert done.details["scratch_worker"] == "a@host"


def test_private_scratch_worker_that_never_comes_back_is_given_up(l1_program, collections, settings, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    """Beat waits L2_SCRATCH_WORKER_GONE_SECONDS for a staging worker that went away (resending its
    step to that worker's queue meanwhile); then the order is unpinned and staged again on any
    worker, which finishes it; the old worker's late step is dropped. A worker that comes back
    in time clears the wait."""
    from datetime import timedelta

    from django.utils import timezone

    queues = []
    monkeypatch.setattr(pipeline, "dispatch", lambda order_id, step, queue=None, **kw: queues.append((step, queue)))
    settings.L2_SCRATCH_PRIVATE = True
    settings.L2_PREPROCESS_CONCURRENCY = 0
    settings.L2_SCRATCH_WORKER_GONE_SECONDS = 600

    def stall(order):
        WorkOrder.objects.filter(pk=order.pk).update(
            heartbeat_at=timezone.now() - timedelta(seconds=settings.L2_HEARTBEAT_STALE_SECONDS + 1))

    def beat():
        with django_capture_on_commit_callbacks(execute=True):
            return pipeline.schedule(queue="shared")

    # a worker that comes back in time: the wait is cleared
    back = start(l1_program())
    assert pipeline.execute(back.pk, "stage", worker="a@host").next_step == "verify"
    stall(back)
    assert beat()["restaged"] == [] and queues[-1] == ("verify", "a@host.dq2")
    assert WorkOrder.objects.get(pk=back.pk).details["waiting_for_worker"]["worker"] == "a@host"
    from inversions import selectors

    assert "waiting for worker a@host" in selectors.running_work(back.program).detail  # the program page says so
    assert pipeline.execute(back.pk, "verify", worker="a@host").next_step == "assemble"
    assert not WorkOrder.objects.get(pk=back.pk).details["waiting_for_worker"]
    pipeline.cancel(WorkOrder.objects.get(pk=back.pk), "assemble", "test: done with it")

    order = start(l1_program())
    assert pipeline.execute(order.pk, "stage", worker="a@host").next_step == "verify"
    stall(order)
    assert beat() == {"started": [], "redispatched": [order.pk], "restaged": []}
    assert queues[-1] == ("verify", "a@host.dq2")
    # not long enough yet: still waiting for a@host
    stall(order)
    assert beat()["restaged"] == [] and queues[-1] == ("verify", "a@host.dq2")
    # ten minutes on, a@host still away
    details = WorkOrder.objects.get(pk=order.pk).details
    since = timezone.now() - timedelta(seconds=settings.L2_SCRATCH_WORKER_GONE_SECONDS + 1)
    WorkOrder.objects.filter(pk=order.pk).update(
        details={**details, "waiting_for_worker": {"worker": "a@host", "since": since.isoformat()}})
    stall(order)
    assert beat()["restaged"] == [order.pk]
    assert queues[-1] == ("stage", "shared")
    rewound = WorkOrder.objects.get(pk=order.pk)
    assert rewound.step == "stage" and rewound.is_active
    assert rewound.details["scratch_worker"] is None and rewound.details["stage"] is None
    assert rewound.details["restaged"]["from_worker"] == "a@host" and "did not come back" in rewound.details["last_problem"]
    assert "staging again: worker a@host did not come back" in selectors.running_work(rewound.program).detail
    # b stages it again and finishes; a's late message is dropped
    assert pipeline.execute(order.pk, "stage", worker="b@host").next_step == "verify"
    late = pipeline.execute(order.pk, "verify", worker="a@host")
    assert late.finished and late.next_step is None and "b@host" in late.note
    for step in pipeline.STEPS[1:]:
        pipeline.execute(order.pk, step, worker="b@host")
    done = WorkOrder.objects.get(pk=order.pk)
    assert done.status == "completed" and done.details["scratch_worker"] == "b@host"
    assert done.details["runs"] == {"stage": 2, **{step: 1 for step in pipeline.STEPS[1:]}}
    assert done.details["workers"] == {step: "b@host" for step in pipeline.STEPS}
    program = done.program
    program.refresh_from_db()
    assert program.state == State.PREPROCESSED


def test_shared_scratch_lets_any_worker_take_any_step(l1_program, collections, settings, sent):
    settings.L2_SCRATCH_PRIVATE = False
    order = start(l1_program())
    assert pipeline.execute(order.pk, "stage", worker="a@host").next_step == "verify"
    assert pipeline.execute(order.pk, "verify", worker="b@host").next_step == "assemble"
    details = WorkOrder.objects.get(pk=order.pk).details
    assert "scratch_worker" not in details and details["workers"] == {"stage": "a@host", "verify": "b@host"}


def test_the_task_sends_the_next_step_to_its_own_queue_with_private_scratch(l1_program, collections, settings,
                                                                             monkeypatch):
    import celery.app.task

    queues = []
    monkeypatch.setattr(pipeline, "dispatch", lambda order_id, step, queue=None, **kw: queues.append((step, queue)))
    monkeypatch.setattr(celery.app.task, "gethostname", lambda: "w1@box")  # the worker's name in apply()
    order = start(l1_program())
    settings.L2_SCRATCH_PRIVATE = True
    tasks.preprocess_stage.apply(args=[order.pk])
    settings.L2_SCRATCH_PRIVATE = False
    tasks.preprocess_verify.apply(args=[order.pk])
    assert queues == [("verify", "w1@box.dq2"), ("assemble", None)]


def test_the_order_ends_with_its_last_run_recorded(l1_program, collections, sent, monkeypatch):
    """The transaction that completes (or fails) an order also records the run of the step that
    ended it: whoever sees the order finished sees that step's run too, once."""
    seen = []
    real_finish = work_orders._finish

    def finishing(order, status, **kw):
        pk = order if isinstance(order, int) else order.pk
        # inside the completing transaction, just before the status changes
        seen.append((status, dict(WorkOrder.objects.get(pk=pk).details.get("runs") or {})))
        return real_finish(order, status, **kw)

    monkeypatch.setattr(work_orders, "_finish", finishing)
    order = start(l1_program())
    assert run(order.pk) == list(pipeline.STEPS)
    assert seen == [("completed", {step: 1 for step in pipeline.STEPS})]
    done = WorkOrder.objects.get(pk=order.pk)
    assert done.status == "completed" and done.details["runs"] == {step: 1 for step in pipeline.STEPS}
    assert set(done.details["timings"]) == set(pipeline.STEPS)

    # a step that fails for good: the failed order lists that run as well
    seen.clear()
    bad = l1_program()
    _missing(sorted(l1_program.l1_folder(bad.datasets.order_by("dataset_id").last()).glob("*.fits"))[5])
    failed = start(bad)
    assert run(failed.pk) == ["stage", "verify"]
    assert seen == [("failed", {"stage": 1, "verify": 1})]
    assert WorkOrder.objects.get(pk=failed.pk).details["runs"] == {"stage": 1, "verify": 1}
