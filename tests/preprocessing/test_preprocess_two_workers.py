"""Two real Celery workers, each with its own hostname (``-n``) and its own scratch folder
(``L2_SCRATCH_DIR``), on the real broker, share four programs: each program is preprocessed
exactly once (one run of each step, one order, one transition to Preprocessed), both workers
take part, and every step of a program runs on the worker that staged it, whose scratch
alone holds its files (``CELERY_WORKER_DIRECT``: the steps after stage go to that worker's
own queue).
"""
from __future__ import annotations

import json
import uuid

import pytest
from astropy.io import fits

from inversions import pipeline
from inversions.models import Transition, WorkOrder
from inversions.preprocessing.verify import file_checksum
from inversions.states import State
from inversions.transfers import local_folder
from tests.preprocessing.test_preprocess_worker import _stop, _wait, _worker


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_two_workers_with_own_scratch_share_programs_each_preprocessed_once(l1_program, collections, tmp_path):
    tag = uuid.uuid4().hex[:8]
    queue = f"test-two-{tag}"
    names = [f"a-{tag}@l2test", f"b-{tag}@l2test"]
    scratch = {name: tmp_path / f"scratch-{i}" for i, name in enumerate(names)}
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    programs = [l1_program(arms=(("IQUV", 3), ("IQUV", 2))) for _ in range(4)]
    workers = [
        _worker(queue, collections, log, hostname=name, L2_SCRATCH_DIR=str(scratch[name]))
        for name, log in zip(names, logs)
    ]
    try:
        # both consuming before the first message, so that both can take part
        _wait(lambda: all("ready." in log.read_text() for log in logs if log.exists()) and all(p.exists() for p in logs),
              60, "both workers to be ready", logs)
        orders = [pipeline.start(p, requested_by="test", queue=queue).order for p in programs]

        def all_finished():  # a finished order lists every run, its last step's included (same transaction)
            found = list(WorkOrder.objects.filter(pk__in=[o.pk for o in orders]))
            return found if all(not o.is_active for o in found) else None

        done = _wait(all_finished, 120, "the four orders to finish", logs)
    finally:
        for worker in workers:
            _stop(worker)

    assert all(o.status == "completed" for o in done), [o.error for o in done]
    pinned = {}
    for order in done:
        program = order.program
        program.refresh_from_db()
        assert program.state == State.PREPROCESSED
        assert Transition.objects.filter(program=program, to_state=State.PREPROCESSED).count() == 1
        assert WorkOrder.objects.filter(program=program).count() == 1
        # exactly once: each step ran once, all on the worker that staged the program
        assert order.details["runs"] == {step: 1 for step in pipeline.STEPS}
        owner = order.details["scratch_worker"]
        assert set(order.details["workers"].values()) == {owner}
        pinned[program.pk] = owner
        # its files are on its worker's scratch only
        for name, root in scratch.items():
            present = (root / order.details["out"].lstrip("/") / "manifest.json").is_file()
            assert present == (name == owner), (name, owner)
        science = local_folder("science-cluster", pipeline.science_path(program))
        manifest = json.loads((science / "manifest.json").read_text())
        for output in manifest["outputs"]:
            assert file_checksum(science / output["name"]) == output["sha256"]
        cubes = [o for o in manifest["outputs"] if o["kind"] == "stokes cube"]
        assert len(cubes) == 2
        with fits.open(science / cubes[0]["name"], checksum=True) as hdul:
            hdul.verify("exception")
    assert set(pinned.values()) == set(names), pinned  # both workers took part
    assert not list(collections["scratch"].iterdir())  # the shared default scratch was never used
