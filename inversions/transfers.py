"""Moving files between collections (DESIGN §7, §9): one interface, two backends.

A *collection* is a Globus collection id (production) or a name standing for one (the
embedded default). Paths inside a collection are absolute POSIX paths; a folder ends with
``/`` and is copied recursively.

Transfers are asynchronous, like Globus itself, so a Celery task never blocks for hours:

    task_id = backend.submit(src, dst, items, label=..., submission_id=...)
    status = backend.status(task_id)          # poll until status.done

``submission_id`` makes a submission idempotent: submitting again with the same id (a task
redelivered after its worker died) returns the same transfer instead of starting another.
Use :func:`new_submission_id` once, store it (on the work order), and reuse it.

Backends:

- ``local``: plain copies between the folders that stand for collections
  (``settings.L2_COLLECTIONS``). The copy happens inside ``submit``; a file is written to a
  temporary name and renamed, so a killed worker never leaves a half file under the real name.
  Files whose size and modification time already match are skipped (rsync's rule).
- ``globus``: globus-sdk ``TransferClient`` as a confidential client
  (``inversions.globus_transfers``), ``sync_level="checksum"``; poll ``status`` every
  ``backend.poll_seconds`` (``GLOBUS_POLL_SECONDS``).

:func:`transfer_and_wait` submits and polls in one call, for commands and tests.

Failures are classified here, where they happen (``inversions.errors``): an unknown
collection or a missing source is a ``DoNotRetryError``; an I/O error a ``RetryError``;
a service that is down or busy a ``BackoffRetryError``.

``local_folder`` answers where a collection's files are visible on this machine (scratch,
the science cluster's results): for both backends, through ``settings.L2_COLLECTIONS``.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from django.conf import settings

from inversions.errors import DoNotRetryError, RetryError

STEP = "transfer"


@dataclass(frozen=True)
class TransferItem:
    """One file, or one folder (``source`` ending with ``/``, copied recursively)."""

    source: str
    destination: str

    @property
    def recursive(self) -> bool:
        return self.source.endswith("/")


@dataclass(frozen=True)
class TransferStatus:
    """Where a submitted transfer stands. ``ok`` is meaningful once ``done``."""

    task_id: str
    done: bool
    ok: bool
    files: int = 0  # files transferred so far
    files_skipped: int = 0  # already at the destination with the same content
    bytes: int = 0  # bytes transferred so far
    error: str = ""  # why it failed, for people
    details: dict = field(default_factory=dict)


class TransferBackend(ABC):
    """Submit transfers and ask how they are going."""

    name: str
    # How long to wait before polling ``status`` again (the globus backend: GLOBUS_POLL_SECONDS).
    poll_seconds: float = 0.0

    @abstractmethod
    def submit(
        self,
        source_collection: str,
        destination_collection: str,
        items: Sequence[TransferItem],
        *,
        label: str,
        submission_id: str | None = None,
    ) -> str:
        """Start copying ``items``; return the transfer's task id."""

    @abstractmethod
    def status(self, task_id: str) -> TransferStatus:
        """The transfer's current status (``done``, ``ok``, counts, the error if it failed)."""

    def new_submission_id(self) -> str:
        return str(uuid.uuid4())


def check_path(path: str, *, what: str = "path") -> PurePosixPath:
    """An absolute path inside a collection, refusing NULs and ``..``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise DoNotRetryError(f"{what} must be absolute (start with '/'), not {str(path)[:80]!r}", step=STEP)
    if "\x00" in path:
        raise DoNotRetryError(f"{what} contains a NUL character", step=STEP)
    pure = PurePosixPath(path)
    if ".." in pure.parts:
        raise DoNotRetryError(f"{what} {path[:200]!r} contains '..'", step=STEP)
    return pure


def collection_root(collection: str) -> Path:
    """The local folder where ``collection``'s files are visible (``settings.L2_COLLECTIONS``)."""
    roots = getattr(settings, "L2_COLLECTIONS", {}) or {}
    if collection not in roots:
        known = ", ".join(sorted(roots)) or "none configured"
        raise DoNotRetryError(f"unknown collection {collection!r} (known: {known})", step=STEP)
    return Path(roots[collection]).resolve()


def local_folder(collection: str, path: str = "/") -> Path:
    """``<root of collection>/<path>``, refusing paths that leave the collection (links too)."""
    relative = check_path(path).relative_to("/")
    root = collection_root(collection)
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise DoNotRetryError(f"path {path[:200]!r} leaves the collection {collection!r}", step=STEP)
    return target


class LocalBackend(TransferBackend):
    """Plain copies between folders (the embedded default). The copy runs inside ``submit``."""

    name = "local"

    def __init__(self) -> None:
        self._results: dict[str, TransferStatus] = {}

    def submit(self, source_collection, destination_collection, items, *, label, submission_id=None) -> str:
        task_id = submission_id or self.new_submission_id()
        files = skipped = size = 0
        for item in items:
            source = local_folder(source_collection, item.source)
            destination = local_folder(destination_collection, item.destination)
            if item.recursive:
                if not source.is_dir():
                    raise DoNotRetryError(
                        f"{source_collection}:{item.source} is not a folder", step=STEP,
                        details={"collection": source_collection, "path": item.source},
                    )
                pairs = [(p, destination / p.relative_to(source)) for p in sorted(source.rglob("*")) if p.is_file()]
            else:
                if not source.is_file():
                    raise DoNotRetryError(
                        f"{source_collection}:{item.source} does not exist", step=STEP,
                        details={"collection": source_collection, "path": item.source},
                    )
                pairs = [(source, destination)]
            for src, dst in pairs:
                copied = _copy_if_changed(src, dst)
                files += copied
                skipped += not copied
                size += src.stat().st_size if copied else 0
        status = TransferStatus(task_id=task_id, done=True, ok=True, files=files, files_skipped=skipped, bytes=size)
        self._results[task_id] = status
        return task_id

    def status(self, task_id: str) -> TransferStatus:
        # The copy finished inside submit; a task id from another process (a redelivered
        # task) is complete too, because submit only returns once everything is copied.
        return self._results.get(task_id) or TransferStatus(task_id=task_id, done=True, ok=True)


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` unless it is already there (same size and mtime, to the nanosecond:
    ``copy2`` keeps it, and a file written again within the same second is not the same). Atomic."""
    try:
        st = src.stat()
        try:
            dt = dst.stat()
            if dt.st_size == st.st_size and dt.st_mtime_ns == st.st_mtime_ns:
                return False
        except FileNotFoundError:
            pass
        dst.parent.mkdir(parents=True, exist_ok=True)
        partial = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
        try:
            shutil.copy2(src, partial)
            os.replace(partial, dst)
        except BaseException:
            partial.unlink(missing_ok=True)  # nothing half-written stays behind
            raise
        return True
    except OSError as exc:
        raise RetryError(f"copying {src.name} failed: {exc}", step=STEP, details={"file": str(src)}) from exc


def get_backend(name: str | None = None) -> TransferBackend:
    """The configured backend (``settings.L2_TRANSFER_BACKEND``: ``local`` or ``globus``)."""
    name = name or getattr(settings, "L2_TRANSFER_BACKEND", "local")
    if name == "local":
        return LocalBackend()
    if name == "globus":
        from inversions.globus_transfers import GlobusBackend

        return GlobusBackend.from_settings()
    raise DoNotRetryError(f"unknown transfer backend {name!r} (local or globus)", step=STEP)


def transfer_and_wait(
    backend: TransferBackend,
    source_collection: str,
    destination_collection: str,
    items: Sequence[TransferItem],
    *,
    label: str,
    submission_id: str | None = None,
    timeout: float = 3600.0,
    poll_seconds: float | None = None,
    sleep=time.sleep,
) -> TransferStatus:
    """Submit and poll until done, for commands and tests (a Celery task polls by retrying).

    Returns the status of a transfer that succeeded. A failed transfer raises
    ``DoNotRetryError`` (its reason); one still running after ``timeout`` seconds raises
    ``RetryError`` whose details carry the ``task_id`` to keep polling.
    """
    submission_id = submission_id or backend.new_submission_id()
    task_id = backend.submit(source_collection, destination_collection, items, label=label, submission_id=submission_id)
    interval = backend.poll_seconds if poll_seconds is None else poll_seconds
    deadline = time.monotonic() + timeout
    while True:
        status = backend.status(task_id)
        if status.done:
            if not status.ok:
                raise DoNotRetryError(
                    status.error or f"transfer {task_id} failed", step=STEP,
                    details={"task_id": task_id, "submission_id": submission_id, **status.details},
                )
            return status
        if time.monotonic() >= deadline:
            raise RetryError(
                f"transfer {task_id} still running after {timeout:g} s ({status.files} files so far)",
                step=STEP, details={"task_id": task_id, "submission_id": submission_id, **status.details},
            )
        sleep(max(0.0, min(interval, deadline - time.monotonic())))
