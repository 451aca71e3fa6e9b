"""The local transfer backend: plain copies between the folders that stand for collections."""
from __future__ import annotations

import os

import pytest

from inversions import transfers
from inversions.errors import DoNotRetryError, RetryError
from inversions.transfers import LocalBackend, TransferItem, get_backend, local_folder, transfer_and_wait


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def dataset(collections):
    """An L1 dataset folder (nested) and a loose file in the l1 collection."""
    root = collections["l1"]
    write(root / "pid_1" / "P1" / "ABCDE" / "f001.fits", b"a" * 100)
    write(root / "pid_1" / "P1" / "ABCDE" / "f002.fits", b"b" * 200)
    write(root / "pid_1" / "P1" / "ABCDE" / "sub" / "f003.fits", b"c" * 300)
    write(root / "pid_1" / "P1" / "notes.txt", b"hello")
    return root / "pid_1" / "P1"


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_copies_files_and_folders_recursively(collections, dataset):
    backend = LocalBackend()
    items = [TransferItem("/pid_1/P1/ABCDE/", "/stage/ABCDE/"), TransferItem("/pid_1/P1/notes.txt", "/stage/notes.txt")]
    task_id = backend.submit("l1", "scratch", items, label="stage", submission_id="sub-1")
    assert task_id == "sub-1"
    stage = collections["scratch"] / "stage"
    assert tree(stage) == ["ABCDE/f001.fits", "ABCDE/f002.fits", "ABCDE/sub/f003.fits", "notes.txt"]
    assert (stage / "ABCDE" / "sub" / "f003.fits").read_bytes() == b"c" * 300
    status = backend.status(task_id)
    assert (status.done, status.ok, status.files, status.files_skipped, status.bytes) == (True, True, 4, 0, 605)
    # copy2 keeps the modification time (what the skip rule compares)
    src, dst = dataset / "notes.txt", stage / "notes.txt"
    assert int(src.stat().st_mtime) == int(dst.stat().st_mtime)


def test_unchanged_files_are_skipped_and_changed_ones_copied(collections, dataset):
    backend = LocalBackend()
    items = [TransferItem("/pid_1/P1/ABCDE/", "/stage/")]
    backend.submit("l1", "scratch", items, label="stage")
    again = backend.status(backend.submit("l1", "scratch", items, label="stage"))
    assert (again.files, again.files_skipped, again.bytes) == (0, 3, 0)
    write(dataset / "ABCDE" / "f002.fits", b"B" * 250)  # new content, new size
    changed = backend.status(backend.submit("l1", "scratch", items, label="stage"))
    assert (changed.files, changed.files_skipped, changed.bytes) == (1, 2, 250)
    assert (collections["scratch"] / "stage" / "f002.fits").read_bytes() == b"B" * 250


def test_a_failed_rename_leaves_no_partial_file(collections, dataset):
    # the destination name is taken by a non-empty folder: the final rename fails
    write(collections["scratch"] / "stage" / "notes.txt" / "keep", b"x")
    with pytest.raises(RetryError, match="copying notes.txt failed") as raised:
        LocalBackend().submit("l1", "scratch", [TransferItem("/pid_1/P1/notes.txt", "/stage/notes.txt")], label="s")
    assert raised.value.step == "transfer"
    assert tree(collections["scratch"]) == ["stage/notes.txt/keep"]


def test_a_copy_failing_halfway_leaves_neither_partial_nor_file(collections, dataset, monkeypatch):
    def disk_full(src, dst, **kwargs):
        with open(dst, "wb") as out:
            out.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transfers.shutil, "copy2", disk_full)
    with pytest.raises(RetryError, match="No space left on device") as raised:
        LocalBackend().submit("l1", "scratch", [TransferItem("/pid_1/P1/ABCDE/", "/stage/")], label="stage")
    assert raised.value.details["file"].endswith("f001.fits")
    assert tree(collections["scratch"]) == []
    monkeypatch.undo()  # the disk has room again
    status = LocalBackend().status(LocalBackend().submit("l1", "scratch", [TransferItem("/pid_1/P1/ABCDE/", "/stage/")],
                                                         label="stage"))
    assert status.ok and tree(collections["scratch"]) == ["stage/f001.fits", "stage/f002.fits", "stage/sub/f003.fits"]


@pytest.mark.parametrize(
    "item, message",
    [
        (TransferItem("/pid_1/P1/missing.fits", "/stage/missing.fits"), "does not exist"),
        (TransferItem("/pid_1/P1/NOPE/", "/stage/"), "is not a folder"),
        (TransferItem("/pid_1/P1/notes.txt/", "/stage/"), "is not a folder"),
        (TransferItem("/pid_1/P1/ABCDE", "/stage/ABCDE"), "does not exist"),  # a folder without its '/'
    ],
)
def test_missing_sources_are_do_not_retry(collections, dataset, item, message):
    with pytest.raises(DoNotRetryError, match=message) as raised:
        LocalBackend().submit("l1", "scratch", [item], label="stage")
    assert raised.value.details == {"collection": "l1", "path": item.source}
    assert tree(collections["scratch"]) == []


def test_unknown_collection_is_do_not_retry(collections, dataset):
    with pytest.raises(DoNotRetryError, match="unknown collection 'nowhere' .known: l1, science, scratch."):
        LocalBackend().submit("l1", "nowhere", [TransferItem("/pid_1/P1/notes.txt", "/n.txt")], label="stage")
    with pytest.raises(DoNotRetryError, match="unknown collection"):
        local_folder("nowhere")


@pytest.mark.parametrize(
    "source, destination, message",
    [
        ("/pid_1/../../elsewhere/secret.txt", "/x.txt", "contains '..'"),
        ("/pid_1/P1/notes.txt", "/../elsewhere/x.txt", "contains '..'"),
        ("pid_1/P1/notes.txt", "/x.txt", "must be absolute"),
        ("/pid_1/P1/notes.txt\x00", "/x.txt", "NUL"),
        ("/link/secret.txt", "/x.txt", "leaves the collection"),
    ],
)
def test_paths_leaving_a_collection_are_do_not_retry(collections, dataset, source, destination, message):
    write(collections["elsewhere"] / "secret.txt", b"secret")
    os.symlink(collections["elsewhere"], collections["l1"] / "link")
    with pytest.raises(DoNotRetryError, match=message):
        LocalBackend().submit("l1", "scratch", [TransferItem(source, destination)], label="stage")
    assert tree(collections["scratch"]) == []


def test_status_of_a_task_submitted_by_another_process_is_complete(collections):
    # a redelivered Celery task: submit only returns once the copy is complete
    status = LocalBackend().status("submitted-elsewhere")
    assert (status.done, status.ok, status.task_id) == (True, True, "submitted-elsewhere")


def test_get_backend_and_transfer_and_wait(collections, dataset, settings):
    settings.L2_TRANSFER_BACKEND = "local"
    backend = get_backend()
    assert isinstance(backend, LocalBackend) and backend.poll_seconds == 0
    status = transfer_and_wait(backend, "l1", "science", [TransferItem("/pid_1/P1/ABCDE/", "/l2/")], label="hand over",
                               sleep=pytest.fail)
    assert status.ok and status.files == 3
    assert tree(collections["science"] / "l2") == ["f001.fits", "f002.fits", "sub/f003.fits"]
    with pytest.raises(DoNotRetryError, match="unknown transfer backend 'ftp'"):
        get_backend("ftp")


def test_a_file_written_again_within_the_same_second_is_copied_again(tmp_path):
    """Same size, same second: rsync's rule at second resolution would keep the old copy (a republish)."""
    from inversions.transfers import _copy_if_changed

    src, dst = tmp_path / "a.fits", tmp_path / "out" / "a.fits"
    src.write_bytes(b"old!")
    assert _copy_if_changed(src, dst) and not _copy_if_changed(src, dst)
    src.write_bytes(b"new!")
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, (st.st_mtime_ns // 10**9) * 10**9 + 1))  # the same whole second as before
    assert _copy_if_changed(src, dst) and dst.read_bytes() == b"new!"
