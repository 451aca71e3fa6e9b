"""Report a program inverted: check the submission and its result files, then move it (DESIGN §8).

Used by the dashboard form and by ``POST /api/v1/programs/<id>/inverted``. A bad submission
raises :class:`ReportRejected` with a message for people and changes nothing; a good one
becomes one ``Working → Inverted`` transition whose details record the submission and the
files (name, size, sha256, shape).

Files are located through ``settings.L2_COLLECTIONS`` (collection id → the local folder
where that Globus collection's files are visible): ``<root>/<path>/inv_res_mod.fits`` …
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db import transaction

from inversions import lifecycle
from inversions.errors import L2Error
from inversions.models import Dataset, ObservingProgram, Transition
from inversions.states import State
from publishing.results import RESULT_FILES, validate_results

COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
MAX_NOTES = 10_000
MAX_FIELD = 1_000


class ReportRejected(Exception):
    """The submission was refused; ``str(exc)`` says why. Nothing was changed."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


def collection_root(collection: str) -> Path:
    """The local folder of a configured collection; ReportRejected for an unknown one."""
    roots = getattr(settings, "L2_COLLECTIONS", {}) or {}
    if collection not in roots:
        known = ", ".join(sorted(roots)) or "none configured"
        raise ReportRejected(f"unknown collection {collection!r} (known: {known})", field="collection")
    return Path(roots[collection]).resolve()


def resolve_folder(collection: str, path: str) -> Path:
    """``<root>/<path>`` of a collection, refusing paths that leave the collection's root."""
    if not path.startswith("/"):
        raise ReportRejected(f"path must be absolute (start with '/'), not {path[:80]!r}", field="path")
    if "\x00" in path:
        raise ReportRejected("path contains a NUL character", field="path")
    root = collection_root(collection)
    relative = PurePosixPath(path).relative_to("/")
    folder = (root / relative).resolve()  # follows symbolic links: a link out of the root is refused too
    if folder != root and root not in folder.parents:
        raise ReportRejected(f"path {path[:200]!r} leaves the collection {collection!r}", field="path")
    return folder


def expected_raster_steps(datasets: Sequence[Dataset]) -> int:
    """Raster steps the result files must have, from the datasets used.

    The inversion's step axis has one entry per raster step of one map. The metadata store
    gives ``frameCount`` (all frames: Stokes × maps × steps) and ``stokesParameters`` but not
    the number of maps, so one map is assumed (the ViSP programs in the store are single
    maps): ``steps = frame_count / len(stokes_parameters)``, which must be a whole number and
    the same for every dataset used (the arms of one program share their raster).
    """
    steps: dict[str, int] = {}
    for d in datasets:
        n_stokes = len(d.stokes_parameters or "")
        if not d.frame_count or not n_stokes:
            raise ReportRejected(
                f"dataset {d.dataset_id} has no frame count or Stokes parameters: cannot check the files",
                field="dataset_ids",
            )
        if d.frame_count % n_stokes:
            raise ReportRejected(
                f"dataset {d.dataset_id} has {d.frame_count} frames, not a whole number of raster steps "
                f"for Stokes {d.stokes_parameters}",
                field="dataset_ids",
            )
        steps[d.dataset_id] = d.frame_count // n_stokes
    if len(set(steps.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in sorted(steps.items()))
        raise ReportRejected(f"the datasets used have different numbers of raster steps ({listed})",
                             field="dataset_ids")
    return next(iter(steps.values()))


def _check_fields(collection: str, path: str, software_commit: str, dataset_ids, notes: str) -> tuple[str, str, str, list[str], str]:
    if not isinstance(collection, str) or not collection.strip():
        raise ReportRejected("collection is required", field="collection")
    if not isinstance(path, str) or not path.strip():
        raise ReportRejected("path is required", field="path")
    if not isinstance(software_commit, str) or not software_commit.strip():
        raise ReportRejected("software_commit is required", field="software_commit")
    if not isinstance(notes, str):
        raise ReportRejected("notes must be text", field="notes")
    collection, path, commit = collection.strip(), path.strip(), software_commit.strip().lower()
    if len(collection) > MAX_FIELD or len(path) > MAX_FIELD:
        raise ReportRejected("collection and path must be shorter than 1000 characters", field="path")
    if not COMMIT_RE.match(commit):
        raise ReportRejected(
            f"software_commit must be a git commit: 7 to 40 hexadecimal digits, not {software_commit[:50]!r}",
            field="software_commit",
        )
    if len(notes) > MAX_NOTES:
        raise ReportRejected(f"notes are limited to {MAX_NOTES} characters", field="notes")
    if not isinstance(dataset_ids, (list, tuple)) or not all(isinstance(d, str) for d in dataset_ids):
        raise ReportRejected("dataset_ids must be a list of dataset ids", field="dataset_ids")
    ids = list(dict.fromkeys(d.strip() for d in dataset_ids if d.strip()))
    if not ids:
        raise ReportRejected("name at least one dataset used", field="dataset_ids")
    return collection, path, commit, ids, notes.strip()


def _check_program(program: ObservingProgram, user, require_claim: bool) -> None:
    if program.state != State.WORKING:
        raise ReportRejected(f"{program} is {program.get_state_display()}, not Working: only a program being "
                             "worked on can be reported inverted")
    if require_claim and program.claimed_by_id != getattr(user, "pk", None):
        who = program.claimed_by.get_username() if program.claimed_by_id else "nobody"
        raise ReportRejected(f"{program} is claimed by {who}, not by you")


def report_inverted(
    program: ObservingProgram,
    *,
    user,
    collection: str,
    path: str,
    software_commit: str,
    dataset_ids: list[str],
    notes: str,
    actor: str,
    require_claim: bool = True,
) -> Transition:
    """Check a report and its three result files; on success move ``program`` to Inverted.

    Checks, in order: the fields (collection and path given, path absolute, commit 7–40 hex
    digits, at least one dataset id); the program is Working and — with ``require_claim``
    (the dashboard) — claimed by ``user`` (the API passes ``require_claim=False``: a science
    token may report any Working program); the dataset ids are current datasets of the
    program; the collection is configured and the path stays inside it; the files pass
    :func:`publishing.results.validate_results` with ``expected_steps`` from
    :func:`expected_raster_steps` and the datasets' spectral lines (when all of them list any).

    Raises :class:`ReportRejected` on any failure, having changed nothing.
    """
    collection, path, commit, ids, notes = _check_fields(collection, path, software_commit, dataset_ids, notes)
    _check_program(program, user, require_claim)

    current = {d.dataset_id: d for d in Dataset.objects.filter(program=program, superseded=False).defer("raw")}
    unknown = [d for d in ids if d not in current]
    if unknown:
        raise ReportRejected(
            f"not a current dataset of {program}: {', '.join(unknown)} (current: {', '.join(sorted(current)) or 'none'})",
            field="dataset_ids",
        )
    used = sorted((current[d] for d in ids), key=lambda d: (d.wavelength_min or 0.0, d.dataset_id))
    steps = expected_raster_steps(used)
    lines = [line for d in used for line in (d.spectral_lines or [])] if all(d.spectral_lines for d in used) else None

    folder = resolve_folder(collection, path)
    try:
        checked = validate_results(folder, expected_steps=steps, spectral_lines=lines or None)
    except L2Error as exc:
        raise ReportRejected(f"the result files in {collection}:{path} were refused: {exc}") from exc

    shapes = {"mod": list(checked.mod_shape), "pre": list(checked.profile_shape), "ori": list(checked.profile_shape)}
    details = {
        "collection": collection,
        "path": path,
        "software_commit": commit,
        "dataset_ids": ids,
        "notes": notes,
        "raster_steps": checked.n_steps,
        "files": [
            {"name": name, "size": checked.sizes.get(role), "sha256": checked.sha256.get(role), "shape": shapes[role]}
            for role, name in RESULT_FILES.items()
        ],
    }
    with transaction.atomic():
        locked = ObservingProgram.objects.select_for_update().get(pk=program.pk)
        _check_program(locked, user, require_claim)  # nobody changed it while the files were read
        try:
            row = lifecycle.transition(
                locked,
                State.INVERTED,
                actor=actor,
                user=user,
                reason="reported inverted",
                details=details,
                expected_from=(State.WORKING,),
            )
        except lifecycle.LifecycleError as exc:
            raise ReportRejected(str(exc)) from exc
    program.refresh_from_db()
    return row
