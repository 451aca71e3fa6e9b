"""Demo L1 frames for the embedded default: `manage.py make_demo_l1 [--programs N]`.

Writes small ViSP frames with SPEC-214 headers (``inversions.preprocessing.demo_l1``)
for the current datasets of Invertible programs into the L1 collection, at
``L2_L1_PATH``, so that the embedded system preprocesses real files end to end. The
frame count, Stokes parameters, wavelength range, field of view and start time come
from each dataset's record; the frames are small (32 wavelengths × 24 slit pixels).

Idempotent: a dataset folder that already holds its record's number of frames is left
alone, and the programs chosen once stay the demo programs (their ids are kept in
``.l2-demo-programs.json`` in the L1 collection): a restart of ``l2 up`` neither picks nor
preprocesses more programs. At most ``--programs`` programs (``L2_DEMO_L1_PROGRAMS``, to keep ``l2 up`` fast and
small): the first ones beat would preprocess (``pipeline.pickup_order``). The other programs
have no L1 files; their preprocessing ends in Error ("staging the L1 files: … is not a folder").
With ``--start`` it also starts preprocessing those programs (``l2 up`` does this, and turns
beat's own pick-up off with ``L2_PREPROCESS_CONCURRENCY=0`` so that the programs without files
stay Invertible instead of failing one after the other). With ``--results`` it also writes a
fake inversion of each of those programs where the science team would put theirs
(``L2_SCIENCE_COLLECTION``: ``L2_SCIENCE_PATH`` + ``results/``), so the demo can report them
inverted, generate their L2 files and publish them.
"""
from __future__ import annotations

import json
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, Q

from inversions.errors import DoNotRetryError
from inversions.models import Dataset, ObservingProgram
from inversions.states import State
from inversions.pipeline import StartRefused, l1_path, pickup_order, science_path
from inversions.pipeline import start as pipeline_start
from inversions.preprocessing.demo_l1 import write_small_dataset
from inversions.transfers import local_folder

N_WAVE, N_SLIT = 32, 24
N_DEPTH = 16  # optical-depth points of the demo inversion
DEMO_BINNING = 2  # slit binning of the demo inversion (DESR-BIN)
MARKER = ".l2-demo-programs.json"  # in the L1 collection's root: the demo programs chosen so far


def _bbox(value) -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        (x1, y1), (x2, y2) = value
        return (float(x1), float(y1)), (float(x2), float(y2))
    except (TypeError, ValueError):
        return (-60.0, -400.0), (-40.0, -370.0)


class Command(BaseCommand):
    help = "Write small demo L1 frames for Invertible programs into the L1 collection (embedded default)."

    def add_arguments(self, parser):
        parser.add_argument("--programs", type=int, default=None,
                            help="how many Invertible programs (in beat's order); default L2_DEMO_L1_PROGRAMS")
        parser.add_argument("--start", action="store_true",
                            help="also start preprocessing the programs that got frames")
        parser.add_argument("--results", action="store_true",
                            help="also write a fake inversion of those programs in the science collection "
                                 "(L2_SCIENCE_PATH + results/), to report them inverted in the demo")

    def handle(self, *args, programs: int | None, start: bool = False, results: bool = False, **options):
        limit = settings.L2_DEMO_L1_PROGRAMS if programs is None else programs
        if limit < 0:
            raise CommandError("--programs must be 0 or more")
        try:
            root = local_folder(settings.L2_L1_COLLECTION, "/")
        except DoNotRetryError as exc:
            raise CommandError(f"the L1 collection is not a folder on this machine: {exc}") from exc
        chosen = self._choose(root, limit)
        started = time.monotonic()
        written = kept = 0
        for program in chosen:
            for arm, dataset in enumerate(program.datasets.filter(superseded=False).order_by("wavelength_min", "dataset_id"), 1):
                n = self._dataset(program, dataset, arm)
                written += n
                kept += not n
        self.stdout.write(
            f"demo L1 in {root}: {len(chosen)} program(s); {written} frames written, "
            f"{kept} dataset(s) already there ({time.monotonic() - started:.1f} s)"
        )
        if results:
            for program in chosen:
                self._results(program)
        if start:
            for program in chosen:
                if program.state != State.INVERTIBLE:  # made on an earlier start and already on its way
                    continue
                try:
                    result = pipeline_start(program, requested_by="demo")
                except StartRefused as exc:
                    self.stderr.write(str(exc))
                    continue
                self.stdout.write(f"{program}: {'preprocessing started' if result.created else result.reason}")

    def _choose(self, root, limit: int) -> list[ObservingProgram]:
        """The demo programs: those of earlier runs (``MARKER`` in the L1 collection), then beat's next ones.

        So a restart of ``l2 up`` keeps the same demo programs whatever their state now, instead of
        taking (and preprocessing) the next Invertible ones each time.
        """
        marker = root / MARKER
        try:
            earlier = [str(x) for x in json.loads(marker.read_text(encoding="utf-8"))][:limit]
        except (OSError, ValueError, TypeError):
            earlier = []
        found = {p.instrument_program_execution_id: p
                 for p in ObservingProgram.objects.filter(instrument_program_execution_id__in=earlier)}
        chosen = [found[i] for i in earlier if i in found]
        if len(chosen) < limit:
            current = Q(datasets__superseded=False)
            more = (pickup_order().annotate(arms=Count("datasets", filter=current)).filter(arms__gt=0)
                    .exclude(pk__in=[p.pk for p in chosen]))
            chosen += list(more[: limit - len(chosen)])
        ids = [p.instrument_program_execution_id for p in chosen]
        if ids != earlier:
            marker.write_text(json.dumps(ids), encoding="utf-8")
        return chosen

    def _results(self, program: ObservingProgram) -> None:
        """A fake inversion matching the demo frames, shaped as BLANCA writes one, where a scientist would put it.

        As BLANCA's real output: one line id per arm (the line inside the arm's wavelength
        range; a two-line Fe arm is one profile), arms not in wavelength order, offsets in mÅ,
        ``DESR-FID`` = the ``VSPARMID`` of the Fe I arm (the demo frames number the arms in
        wavelength order), the slit binned by ``DEMO_BINNING`` and one raster step fewer than
        the L1 frames (the inversion drops an incomplete last step).
        """
        from publishing.intake import ReportRejected, expected_raster_steps
        from publishing.results import RESULT_FILES, blanca_line_in, write_demo_results

        used = list(program.datasets.filter(superseded=False).order_by("wavelength_min", "dataset_id"))
        try:
            steps = expected_raster_steps(used)
        except ReportRejected as exc:
            self.stderr.write(f"{program}: no demo results ({exc})")
            return
        arms = [(arm, blanca_line_in(d.wavelength_min, d.wavelength_max, tolerance_nm=settings.L2_LINE_TOLERANCE_NM))
                for arm, d in enumerate(used, 1)]
        arms = list({line.key: (arm, line) for arm, line in reversed(arms) if line is not None}.values())[::-1]
        if not arms:
            self.stderr.write(f"{program}: no demo results (no arm covers a line BLANCA inverts)")
            return
        fiducial = next((arm for arm, line in arms if line.key == "FeI630"), arms[0][0])
        line_ids = [line.line_id for _, line in reversed(arms)]  # not in wavelength order, as BLANCA may write
        path = science_path(program) + "results/"
        folder = local_folder(settings.L2_SCIENCE_COLLECTION, path)
        if not all((folder / name).is_file() for name in RESULT_FILES.values()):
            write_demo_results(folder, n_steps=max(steps - 1, 1), n_slit=N_SLIT // DEMO_BINNING, n_depth=N_DEPTH,
                               n_wave=[N_WAVE - 4 * i for i in range(len(line_ids))], line_ids=line_ids,
                               fiducial_arm=fiducial, binning=DEMO_BINNING)
        self.stdout.write(f"{program}: demo results to report from {settings.L2_SCIENCE_COLLECTION}:{path}")

    def _dataset(self, program: ObservingProgram, dataset: Dataset, arm: int) -> int:
        stokes = "IQUV" if (dataset.stokes_parameters or "").upper() == "IQUV" else "I"
        frames = dataset.frame_count or 0
        if frames <= 0 or frames % len(stokes):
            self.stderr.write(f"{dataset.dataset_id}: {frames} frames cannot be {stokes} × raster steps; skipped")
            return 0
        folder = local_folder(settings.L2_L1_COLLECTION, l1_path(dataset))
        present = [p for p in folder.glob("*.fits")] if folder.is_dir() else []
        if len(present) == frames:
            return 0
        for stale in present:
            stale.unlink()
        low = dataset.wavelength_min or 630.05
        high = dataset.wavelength_max if (dataset.wavelength_max or 0) > low else low + 0.3
        start = (dataset.start_time or program.start_time)
        write_small_dataset(
            folder, dataset.dataset_id, n_steps=frames // len(stokes), stokes=stokes, n_wave=N_WAVE, n_slit=N_SLIT,
            wavelength_range=(float(low), float(high)), bbox=_bbox(dataset.bounding_box),
            start_time=start.replace(tzinfo=None) if start else "2022-06-02T17:21:59.6475",
            proposal_id=dataset.primary_proposal_id, experiment_id=dataset.primary_experiment_id or "demo",
            observing_program_id=dataset.observing_program_execution_id or "demo",
            instrument_program_id=dataset.instrument_program_execution_id, arm_id=arm, seed=arm,
        )
        return frames
